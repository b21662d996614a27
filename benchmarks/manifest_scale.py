"""What a dataset's shard count costs: open, refresh, commit, a spawned worker's first batch and
verify at 10 to 100,000 shards, format 2.0 (the shard table) against the same dataset rewritten
as format 1.1 (every shard in the JSON manifest).

Run from the repository root, on a quiet machine::

    python -m benchmarks.manifest_scale                       # 10 to 100,000 shards (minutes)
    python -m benchmarks.manifest_scale --max-shards 10000    # up to 10,000 shards
    python -m benchmarks.manifest_scale --quick               # 10 and 1,000 shards (CI runs this)

Each dataset holds one row per shard of two fields, ``x: float32[4]`` and ``y: int64``,
written by one ``extend`` into shards of one row and one commit, with ``fsync`` skipped while
building (never while measuring). Format 1.1 is the same dataset rewritten as memshard 1.x
wrote it, its shard files hard links of the 2.0 ones. The report prints how each figure is
measured; speed goals are judged by reading it, never by timed tests.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import xxhash

import memshard as ms
from memshard import manifest as manifest_io
from memshard.layout import MANIFEST_NAME, SHARDS_DIR
from memshard.manifest import Manifest, Shard, ShardFile
from memshard.publish import publish_manifest
from memshard.shardtable import TABLE_NAME, Shards

from . import core
from .core import BATCH_SIZE, SEED, Figure, Option, format_bytes, format_ns, markdown, progress
from .report import Line, loglog_chart

#: The shard counts measured, up to ``--max-shards``.
SHARD_COUNTS = (10, 1_000, 10_000, 100_000)
FIELDS = {"x": ("float32", (4,)), "y": ("int64", ())}
#: Bytes of one row (all fields), and so of one shard: ``shard_bytes`` of one row per shard.
ROW_BYTES = 4 * 4 + 8
#: The format version this library writes (2.x: the shard table), against 1.1.
NEW = manifest_io.FORMAT_VERSION
OLD = "1.1"
FORMATS = (NEW, OLD)
#: The goals, on format 2.x (ns).
MAX_OPEN_NS = 50e6
MAX_REFRESH_NS = 5e6
MAX_COMMIT_NS = 20e6
MAX_FIRST_BATCH_NS = 100e6
#: verify counts as bound by hashing when its rate is at least this fraction of the machine's
#: xxh3 rate over the same bytes in memory (that is, at least half its time goes to hashing).
MIN_VERIFY_HASH_RATIO = 0.5
#: Bytes each repeat of the in-memory hashing speed hashes, in calls over as many bytes as
#: verify hashed, and the most calls it makes.
HASH_BYTES = 64 << 20
MAX_HASH_CALLS = 100_000
SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    max_shards: int
    verify_repeats: int
    out: str

    @property
    def counts(self) -> list[int]:
        """The shard counts measured: those of :data:`SHARD_COUNTS` up to ``max_shards``, and
        ``max_shards`` itself."""
        return sorted({*(n for n in SHARD_COUNTS if n <= self.max_shards), self.max_shards})


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; options left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.manifest_scale",
        __doc__,
        Option("--max-shards", int, "the largest shard count measured", 100_000, 1_000),
        Option("--verify-repeats", int, "repeats of verify (it reads every file)", 3, 1),
        repeats=(7, 2),
    )
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    return Config(**options.parse(argv))


# -- the datasets ----------------------------------------------------------------------------
def _no_fsync(fd: object) -> None:
    """Stands in for ``os.fsync`` while a dataset is built (see :func:`fsync_skipped`)."""


@contextlib.contextmanager
def fsync_skipped() -> Iterator[None]:
    """``os.fsync`` does nothing inside the block; ``os.sync()`` at its end.

    A build of 100,000 shards creates 200,000 files, and syncing each one would take minutes
    on a shared disk while nothing measured depends on their durability. ``os.sync()`` then
    writes everything back, so that no measured ``fsync`` pays for the build's dirty pages.
    """
    real = os.fsync
    os.fsync = _no_fsync
    try:
        yield
    finally:
        os.fsync = real
    os.sync()


def rows_of(first: int, count: int) -> dict[str, np.ndarray]:
    """Rows ``first..first + count`` as :func:`rows_at` gives them."""
    return rows_at(np.arange(first, first + count))


def rows_at(indices: np.ndarray) -> dict[str, np.ndarray]:
    """What the datasets hold at rows ``indices``: ``y`` is the row number and ``x`` counts on
    from ``4 * y`` (exact in float32 up to 4 million rows)."""
    y = np.asarray(indices, dtype=np.int64)
    return {"x": (4 * y[:, None] + np.arange(4)).astype(np.float32), "y": y}


def rows_match(indices: np.ndarray, batch: dict[str, np.ndarray]) -> bool:
    """Whether ``batch`` holds rows ``indices`` of the datasets, of the fields' dtypes."""
    expected = rows_at(indices)
    return all(
        batch[name].dtype == expected[name].dtype and np.array_equal(batch[name], expected[name])
        for name in FIELDS
    )


def build(path: str, shards: int) -> float:
    """Write a dataset of ``shards`` shards of one row with one ``extend`` and one commit,
    ``fsync`` skipped; the seconds it took."""
    start = time.perf_counter()
    with fsync_skipped(), ms.create(path, fields=FIELDS, shard_bytes=ROW_BYTES) as appender:
        appender.extend(rows_of(0, shards))
    return time.perf_counter() - start


def linked_copy(source: str, target: str) -> None:
    """A copy of the dataset at ``source`` whose shard files are hard links (sealed files are
    never written again) and whose other files are copies (a rewrite changes them)."""
    os.makedirs(os.path.join(target, SHARDS_DIR))
    for name in os.listdir(os.path.join(source, SHARDS_DIR)):
        os.link(os.path.join(source, SHARDS_DIR, name), os.path.join(target, SHARDS_DIR, name))
    for entry in os.scandir(source):
        if entry.is_file(follow_symlinks=False):
            shutil.copyfile(entry.path, os.path.join(target, entry.name))


def rewrite_as_format_1_1(root: str) -> None:
    """Rewrite the dataset at ``root`` as memshard 1.x wrote it: every shard listed in a
    version 1.1 manifest, no shard table."""
    path = os.path.join(root, MANIFEST_NAME)
    current = manifest_io.load(path)
    shards = tuple(Shards.of(root, current))
    old = current.model_copy(update={"version": OLD, "table": None, "shards": shards})
    data = manifest_io.dumps(Manifest.model_validate(old.model_dump()))
    with open(path, "wb") as file:
        file.write(data)
    os.unlink(os.path.join(root, TABLE_NAME))


@dataclass(frozen=True)
class Datasets:
    """One shard count's datasets: format 2.0 and its format 1.1 rewrite."""

    shards: int
    paths: dict[str, str]
    build_seconds: float

    @classmethod
    def make(cls, scratch: str, shards: int) -> Datasets:
        """Build the 2.0 dataset of ``shards`` shards in ``scratch``, and its 1.1 copy."""
        paths = {name: os.path.join(scratch, f"{shards}-v{name}") for name in FORMATS}
        seconds = build(paths[NEW], shards)
        with fsync_skipped():
            linked_copy(paths[NEW], paths[OLD])
            rewrite_as_format_1_1(paths[OLD])
        return cls(shards, paths, seconds)

    def manifest_bytes(self) -> dict[str, int]:
        """The size of each format's ``manifest.json``."""
        return {
            name: os.path.getsize(os.path.join(path, MANIFEST_NAME))
            for name, path in self.paths.items()
        }

    def table_bytes(self) -> int:
        """The size of the 2.0 dataset's shard table."""
        return os.path.getsize(os.path.join(self.paths[NEW], TABLE_NAME))

    def remove(self) -> None:
        """Delete both datasets."""
        for path in self.paths.values():
            core.remove(path)


# -- open and refresh ------------------------------------------------------------------------
def check_open(out: core.Report, data: Datasets) -> None:
    """Each format opens with every row and shard (untimed; also warms the page cache)."""
    for name, path in data.paths.items():
        with ms.open(path) as dataset:
            right = len(dataset) == data.shards and len(dataset.shards) == data.shards
            out.check(
                f"{data.shards}_shards_v{name}_open", right and dataset.manifest.version == name
            )


def time_open(path: str) -> float:
    """``ms.open(path)``, in ns."""
    elapsed, dataset = core.timed_call(lambda: ms.open(path))
    dataset.close()
    return elapsed


def time_first_refresh(path: str, out: core.Report) -> float:
    """The first ``refresh()`` of a freshly opened dataset, nothing committed since, in ns: it
    loads the manifest again (it has no change token yet)."""
    with ms.open(path) as dataset:
        elapsed, changed = core.timed_call(dataset.refresh)
    out.check("refresh_is_no_op", changed is False)
    return elapsed


def time_later_refresh(path: str, calls: int = 5) -> float:
    """A later no-op ``refresh()``, which compares the manifest's change token only: the
    median of ``calls`` calls after a first one, in ns."""
    with ms.open(path) as dataset:
        dataset.refresh()
        return statistics.median(core.timed(dataset.refresh) for _ in range(calls))


# -- commits ---------------------------------------------------------------------------------
class TableCommits:
    """Format 2.0: an appender held open; each :meth:`run` extends one shard's rows (sealing
    it) untimed and times the commit, with real ``fsync``."""

    def __init__(self, path: str) -> None:
        self.appender = ms.append(path)
        self.shards_before: list[int] = []

    def run(self) -> float:
        """One timed commit of one new shard, in ns."""
        appender = self.appender
        table = appender.manifest.table
        self.shards_before.append((table.records if table else 0) + len(appender.manifest.shards))
        appender.extend(rows_of(appender.rows, 1))
        return core.timed(appender.commit)

    def close(self) -> None:
        """Close the appender (nothing left to commit)."""
        self.appender.close()


class ManifestCommits:
    """Format 1.1, a lower bound: what memshard 1.x's commit did after syncing the shard files,
    for a manifest listing one more shard each :meth:`run`: ``Manifest.model_validate`` of its
    ``model_dump()`` and ``publish_manifest`` (``dumps``, write and ``fsync`` a temporary file,
    rename it, ``fsync`` the directory), into a side directory on the same file system."""

    def __init__(self, path: str, side: str) -> None:
        self.manifest = manifest_io.load(os.path.join(path, MANIFEST_NAME))
        self.side = side
        os.makedirs(side)
        self.shards_before: list[int] = []

    def run(self) -> float:
        """One timed manifest commit of one new shard, in ns."""
        previous = self.manifest
        self.shards_before.append(len(previous.shards))
        shard = new_shard(previous)

        def commit() -> Manifest:
            manifest = previous.model_copy(
                update={
                    "generation": previous.generation + 1,
                    "rows": previous.rows + shard.rows,
                    "shards": (*previous.shards, shard),
                }
            )
            manifest = Manifest.model_validate(manifest.model_dump())
            publish_manifest(self.side, manifest)
            return manifest

        elapsed, self.manifest = core.timed_call(commit)
        return elapsed

    def close(self) -> None:
        """Remove the side directory."""
        core.remove(self.side)


def new_shard(manifest: Manifest) -> Shard:
    """The record of one more sealed shard of one row after ``manifest``'s rows."""
    index = len(manifest.shards)
    files = {
        name: ShardFile(
            path=f"{SHARDS_DIR}/bench-{index:08d}.{name}.npy",
            data_offset=spec.data_offset,
            nbytes=spec.row_bytes,
            checksum="xxh3_64:" + "0" * 16,
        )
        for name, spec in manifest.fields.items()
    }
    return Shard(row_offset=manifest.rows, rows=1, sealed=True, files=files)


# -- a spawned worker's first batch ----------------------------------------------------------
def first_batch(blob: bytes, indices: np.ndarray, results: Connection) -> None:
    """In a spawned worker (numpy and memshard already imported, with this module): unpickle
    the dataset and gather ``indices``; send the ns from just before ``pickle.loads`` to the
    batch, the monotonic clock at the batch, and the batch."""
    start = time.monotonic_ns()
    dataset = pickle.loads(blob)
    batch = dataset.take(indices)
    end = time.monotonic_ns()
    results.send((end - start, end, batch))
    results.close()


def spawned_first_batch(path: str, indices: np.ndarray) -> tuple[int, int, bool]:
    """Spawn a worker that gets the pickled dataset at ``path`` and gathers ``indices``: the ns
    it measured, the ns from ``Process.start()`` to its batch, and whether the rows are right."""
    with ms.open(path) as dataset:
        blob = pickle.dumps(dataset)
    receiver, sender = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=first_batch, args=(blob, indices, sender))
    started = time.monotonic_ns()
    process.start()
    sender.close()
    try:
        in_child, finished, batch = receiver.recv()
    finally:
        receiver.close()
        process.join()
    return in_child, finished - started, rows_match(indices, batch)


# -- verify ----------------------------------------------------------------------------------
def time_verify(path: str, data: Datasets, out: core.Report) -> tuple[float, int]:
    """``ms.open(path).verify()``, in ns, and the bytes it hashed; it must find the dataset
    intact, every file checked."""
    with ms.open(path) as dataset:
        elapsed, report = core.timed_call(dataset.verify)
    intact = report.ok and report.files == 2 * data.shards
    out.check(f"{data.shards}_shards_verify_ok", intact)
    return elapsed, report.bytes_hashed


def time_hashing(nbytes: int, repeats: int) -> Figure:
    """One xxh3-64 call over ``nbytes`` random bytes in memory, in ns: each of ``repeats``
    repeats times enough calls to hash :data:`HASH_BYTES` (at most :data:`MAX_HASH_CALLS`)
    and divides, so that a call of a few hundred bytes is not lost in the timer's noise."""
    data = np.random.default_rng(SEED).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    calls = min(MAX_HASH_CALLS, max(1, HASH_BYTES // max(1, nbytes)))

    def hash_all() -> None:
        for _ in range(calls):
            xxhash.xxh3_64_intdigest(data)

    return Figure.of([core.timed(hash_all) / calls for _ in range(repeats)], work=calls)


def time_read_floor(path: str, repeats: int) -> Figure:
    """Every shard file of the dataset at ``path`` opened, read whole with one ``pread`` and
    closed: the system calls a per-file check cannot avoid, in ns (median of ``repeats``)."""
    with ms.open(path) as dataset:
        files = [name for field in FIELDS for name in dataset.shard_files(field)]

    def read_all() -> None:
        for name in files:
            fd = os.open(name, os.O_RDONLY)
            try:
                os.pread(fd, 1 << 16, 0)
            finally:
                os.close(fd)

    return Figure.of([core.timed(read_all) for _ in range(repeats)])


# -- one shard count -------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """A group of rows of the table and two lines of the chart: the goal's limit on format 2.0
    in ns (None: no goal), judged at every shard count or at the largest."""

    key: str
    title: str
    limit_ns: float | None = None
    every_count: bool = False
    colour: str = "tab:blue"

    def goal(self) -> str:
        """The goal as the tables print it."""
        if self.limit_ns is None:
            return "none (context)"
        where = "at every count" if self.every_count else "at the largest count"
        return f"<= {format_ns(self.limit_ns)} {where}"


MEASUREMENTS = (
    Measurement("open", "`ms.open`", MAX_OPEN_NS, colour="tab:blue"),
    Measurement(
        "refresh_first", "no-op `refresh()`, first after open", MAX_REFRESH_NS, colour="tab:orange"
    ),
    Measurement("refresh", "no-op `refresh()`, later calls", colour="tab:brown"),
    Measurement("commit", "commit of one new shard", MAX_COMMIT_NS, True, colour="tab:green"),
    Measurement(
        "worker_first_batch",
        "spawned worker: `pickle.loads` to first `take` (in child)",
        MAX_FIRST_BATCH_NS,
        True,
        colour="tab:red",
    ),
    Measurement(
        "worker_start_to_batch", "spawned worker: `Process.start()` to batch", colour="tab:pink"
    ),
    Measurement("verify", "`verify()`", colour="tab:purple"),
)


def measure_count(config: Config, data: Datasets, out: core.Report) -> dict[str, Any]:
    """Every measurement of one shard count, both formats alternating within each repeat;
    the record of that count."""
    check_open(out, data)
    paths, repeats, count = data.paths, config.repeats, data.shards
    manifest_bytes, table_bytes = data.manifest_bytes(), data.table_bytes()  # before commits
    samples: dict[str, dict[str, list[float]]] = {}
    progress(f"{count:,} shards: open and refresh")
    samples["open"] = core.alternate_warm(FORMATS, repeats, lambda f, _: time_open(paths[f]))
    samples["refresh_first"] = core.alternate(
        FORMATS, repeats, lambda f, _: time_first_refresh(paths[f], out)
    )
    samples["refresh"] = core.alternate(FORMATS, repeats, lambda f, _: time_later_refresh(paths[f]))

    progress(f"{count:,} shards: spawned workers")
    rng = np.random.default_rng([SEED, count])
    walls: dict[str, list[float]] = {name: [] for name in FORMATS}

    def worker(name: str, _: int) -> float:
        indices = rng.integers(0, count, BATCH_SIZE)
        in_child, wall, right = spawned_first_batch(paths[name], indices)
        out.check(f"{count}_shards_v{name}_worker_rows", right)
        walls[name].append(wall)
        return in_child

    samples["worker_first_batch"] = core.alternate(FORMATS, repeats, worker)
    samples["worker_start_to_batch"] = walls

    progress(f"{count:,} shards: verify")
    hashed: list[int] = []

    def verify(name: str, _: int) -> float:
        elapsed, nbytes = time_verify(paths[name], data, out)
        hashed.append(nbytes)
        return elapsed

    samples["verify"] = core.alternate_warm(FORMATS, config.verify_repeats, verify)
    verify_record = verify_figures(config, data, samples["verify"], hashed, out)

    progress(f"{count:,} shards: commits")
    commits: dict[str, TableCommits | ManifestCommits] = {
        NEW: TableCommits(paths[NEW]),
        OLD: ManifestCommits(paths[OLD], paths[OLD] + "-commits"),
    }
    try:
        os.sync()
        samples["commit"] = core.alternate(FORMATS, repeats, lambda f, _: commits[f].run())
    finally:
        for commit in commits.values():
            commit.close()
    shards_before = {name: commit.shards_before for name, commit in commits.items()}

    figures = {}
    for measurement in MEASUREMENTS:
        by_format = {name: Figure.of(samples[measurement.key][name]) for name in FORMATS}
        if measurement.key == "commit":
            for name in FORMATS:
                by_format[name].extra["shards_before"] = shards_before[name]
        figures[measurement.key] = {
            **{name: asdict(figure) for name, figure in by_format.items()},
            "ratio": by_format[OLD].value / by_format[NEW].value,
        }
    return {
        "shards": count,
        "rows": count,
        "files": 2 * count,
        "build_seconds": data.build_seconds,
        "manifest_bytes": manifest_bytes,
        "table_bytes": table_bytes,
        "figures": figures,
        "verify": verify_record,
    }


def verify_figures(
    config: Config,
    data: Datasets,
    verify: dict[str, list[float]],
    hashed: list[int],
    out: core.Report,
) -> dict[str, Any]:
    """verify's rate against xxh3 over the same bytes in memory, and its time per file against
    the files' read floor."""
    nbytes = hashed[0]
    out.check(f"{data.shards}_shards_verify_bytes", all(n == nbytes for n in hashed))
    hashing = time_hashing(nbytes, max(config.repeats, 5))
    floor = time_read_floor(data.paths[NEW], config.verify_repeats)
    files = 2 * data.shards
    record: dict[str, Any] = {
        "bytes": nbytes,
        "files": files,
        "hash_ns": asdict(hashing),
        "hash_bytes_per_s": nbytes / hashing.value * 1e9,
        "read_floor_ns": asdict(floor),
        "read_floor_ns_per_file": floor.value / files,
    }
    for name in FORMATS:
        seconds = statistics.median(verify[name]) / 1e9
        record[name] = {
            "bytes_per_s": nbytes / seconds,
            "hash_ratio": hashing.value / 1e9 / seconds,
            "ns_per_file": seconds * 1e9 / files,
            "over_read_floor": seconds * 1e9 / floor.value,
        }
    return record


# -- the report ------------------------------------------------------------------------------
def largest(sizes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The record of the largest shard count."""
    return max(sizes, key=lambda size: int(size["shards"]))


def judged(
    measurement: Measurement, size: dict[str, Any], sizes: Sequence[dict[str, Any]]
) -> bool | None:
    """Whether ``size``'s format 2.0 figure meets ``measurement``'s goal (None: not judged
    there)."""
    if measurement.limit_ns is None:
        return None
    if not measurement.every_count and size is not largest(sizes):
        return None
    return bool(size["figures"][measurement.key][NEW]["value"] <= measurement.limit_ns)


def timings_table(sizes: Sequence[dict[str, Any]]) -> str:
    """Every timed measurement against shard count, both formats and their ratio."""
    rows = []
    for measurement in MEASUREMENTS:
        for size in sizes:
            figures = size["figures"][measurement.key]
            old = format_ns(figures[OLD]["value"])
            if measurement.key == "commit":
                old += " (lower bound)"
            met = judged(measurement, size, sizes)
            rows.append(
                [
                    measurement.title,
                    f"{size['shards']:,}",
                    format_ns(figures[NEW]["value"]),
                    old,
                    f"{figures['ratio']:.1f}x",
                    measurement.goal() if met is not None else "",
                    core.yes_no(met),
                ]
            )
    head = [
        "measurement",
        "shards",
        f"format {NEW}",
        f"format {OLD}",
        f"{OLD} / {NEW}",
        "goal",
        "met",
    ]
    return markdown(head, rows)


def verify_table(sizes: Sequence[dict[str, Any]]) -> str:
    """verify's rate against hashing, per shard count."""
    rows = []
    for size in sizes:
        record = size["verify"]
        new = record[NEW]
        rows.append(
            [
                f"{size['shards']:,}",
                f"{record['files']:,}",
                format_bytes(record["bytes"]),
                core.format_rate(new["bytes_per_s"]),
                core.format_rate(record[OLD]["bytes_per_s"]),
                core.format_rate(record["hash_bytes_per_s"]),
                f"{new['hash_ratio']:.2g}x",
                format_ns(new["ns_per_file"]),
                format_ns(record["read_floor_ns_per_file"]),
                core.yes_no(new["hash_ratio"] >= MIN_VERIFY_HASH_RATIO),
            ]
        )
    head = [
        "shards", "files", "bytes hashed", f"verify {NEW}", f"verify {OLD}", "xxh3 in memory",
        f"{NEW} verify / xxh3", f"{NEW} per file", "read floor per file",
        f"bound by hashing (>= {MIN_VERIFY_HASH_RATIO:g}x)",
    ]  # fmt: skip
    return markdown(head, rows)


def sizes_table(sizes: Sequence[dict[str, Any]]) -> str:
    """What was built for each shard count."""
    rows = [
        [
            f"{size['shards']:,}",
            f"{size['files']:,}",
            core.format_duration(size["build_seconds"]),
            format_bytes(size["manifest_bytes"][NEW]),
            format_bytes(size["table_bytes"]),
            format_bytes(size["manifest_bytes"][OLD]),
        ]
        for size in sizes
    ]
    head = [
        "shards", "shard files", "build (fsync skipped)", f"{NEW} manifest", f"{NEW} shard table",
        f"{OLD} manifest",
    ]  # fmt: skip
    return markdown(head, rows)


def goals(sizes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal with the figure that decides it (the worst over the counts it covers)."""
    results = []
    for measurement in MEASUREMENTS:
        if measurement.limit_ns is None:
            continue
        covered = sizes if measurement.every_count else [largest(sizes)]
        worst = max(covered, key=lambda size: size["figures"][measurement.key][NEW]["value"])
        value = worst["figures"][measurement.key][NEW]["value"]
        results.append(
            {
                "key": measurement.key,
                "goal": f"{measurement.title} {measurement.goal()}",
                "shards": worst["shards"],
                "value": value,
                "limit": measurement.limit_ns,
                "unit": "ns",
                "met": bool(value <= measurement.limit_ns),
            }
        )
    worst = min(sizes, key=lambda size: size["verify"][NEW]["hash_ratio"])
    ratio = worst["verify"][NEW]["hash_ratio"]
    results.append(
        {
            "key": "verify",
            "goal": f"`verify()` bound by hashing: its rate >= {MIN_VERIFY_HASH_RATIO:g}x xxh3's "
            "over the same bytes in memory, at every count",
            "shards": worst["shards"],
            "value": ratio,
            "limit": MIN_VERIFY_HASH_RATIO,
            "unit": "ratio",
            "met": bool(ratio >= MIN_VERIFY_HASH_RATIO),
        }
    )
    return results


def goals_table(results: Sequence[dict[str, Any]]) -> str:
    """PASS or MISS for each goal, with its deciding figure."""
    rows = [
        [
            goal["goal"],
            f"{goal['shards']:,}",
            format_ns(goal["value"]) if goal["unit"] == "ns" else f"{goal['value']:.2g}x",
            "PASS" if goal["met"] else "**MISS**",
        ]
        for goal in results
    ]
    return markdown(["goal (format 2.0)", "decided at shards", "figure", "result"], rows)


def notes(config: Config) -> str:
    """How each figure is measured."""
    return "\n".join(
        [
            "- `ms.open`: median of the repeats, each on a closed dataset (after one untimed open "
            "of each format).",
            "- No-op `refresh()`: nothing committed since. The first call after `ms.open` loads "
            "the manifest again (it has no change token yet); later calls compare the manifest's "
            "change token only (the median of 5 calls per repeat).",
            f"- Commit, format {NEW}: `ms.append` held open; each repeat extends one shard's row "
            "(which seals it) untimed, then times `commit()` with real `fsync` (the shard's two "
            "files, `shards/`, the shard table, the manifest and the directory). Shards before "
            "each commit: the count, then one more per repeat (`shards_before` in the JSON).",
            f"- Commit, format {OLD}: a LOWER BOUND of a 1.x commit. Appending to a 1.1 dataset "
            "upgrades it to 2.0 at its first commit, and the 1.x library is not in this run, "
            "so this is what a 1.x commit did after syncing the shard files: "
            "`Manifest.model_validate(manifest.model_dump())` of the manifest with one more "
            "shard, then `publish_manifest` (`memshard.manifest.dumps`, write and `fsync` a "
            "temporary file, rename it, `fsync` the directory), published into a side directory "
            "on the same file system. A real 1.x commit also synced the new shard's files and "
            f"`shards/`, so the {OLD} / {NEW} ratio of commits understates the gain.",
            "- Spawned worker: a `multiprocessing` spawn-context process that imported numpy and "
            "memshard (with this module) gets the pickled `Dataset` as its argument and measures "
            f"from just before `pickle.loads` to the return of its first `take` of {BATCH_SIZE} "
            "random rows (with replacement); its rows are checked. `Process.start()` to batch "
            "adds the interpreter's start and imports (information only).",
            "- `verify()`: the whole dataset, page cache warm, every file found intact. Its rate "
            "is the bytes it hashed over its time; xxh3 in memory is one `xxh3_64` call over as "
            f"many random bytes (timed over enough calls to hash {format_bytes(HASH_BYTES)}). "
            "The read floor is every shard file opened, read with one `pread` and closed, in "
            "Python: the system calls a per-file check cannot avoid. Median of "
            f"{config.verify_repeats} repeats. With {ROW_BYTES} bytes of data per shard, verify "
            "here is bound by its work per file, not by hashing: the per-file time and the read "
            "floor show how far; its speed over large shards is what "
            "`python -m benchmarks.reliability` measures.",
            f"- Every time is the median of {config.repeats} repeats (verify: "
            f"{config.verify_repeats}), the two formats alternating within each repeat, a "
            "different one first each time; garbage collection paused during each timed call.",
        ]
    )


#: The chart's panels: the measurements each shows.
PANELS = (
    ("open, refresh and commit: ms (median)", ("open", "refresh_first", "refresh", "commit")),
    (
        "spawned worker and verify: ms (median)",
        ("worker_first_batch", "worker_start_to_batch", "verify"),
    ),
)


def chart(sizes: Sequence[dict[str, Any]], path: str, mode: str) -> None:
    """Each measurement against shard count, log-log: a line per measurement and format, and
    a dotted one at each goal's limit."""
    counts = [size["shards"] for size in sizes]
    measurements = {measurement.key: measurement for measurement in MEASUREMENTS}
    panels = []
    for axis_label, keys in PANELS:
        lines = []
        for measurement in (measurements[key] for key in keys):
            title = measurement.title.replace("`", "")
            for name in FORMATS:
                values = [size["figures"][measurement.key][name]["value"] / 1e6 for size in sizes]
                style = "--" if name == OLD else "-"
                bound = " (lower bound)" if measurement.key == "commit" and name == OLD else ""
                label = f"{title}, {name}{bound}"
                lines.append(Line(label, counts, values, measurement.colour, style))
            if measurement.limit_ns is not None:
                limit = [measurement.limit_ns / 1e6] * 2
                edges = [counts[0], counts[-1]]
                lines.append(
                    Line(f"goal: {measurement.goal()}", edges, limit, measurement.colour, ":")
                )
        panels.append((axis_label, lines))
    title = (
        f"memshard: time against shard count ({mode} mode)\n"
        f"format {NEW} solid, {OLD} dashed, goals dotted"
    )
    loglog_chart(panels, path, title, "shards")


def method(config: Config) -> list[str]:
    """The header lines of the report."""
    fields = ", ".join(f"{name}: {dtype}{list(shape)}" for name, (dtype, shape) in FIELDS.items())
    return [
        f"command: `python -m benchmarks.manifest_scale{' --quick' if config.quick else ''}`",
        f"datasets: one row per shard ({fields}; {ROW_BYTES} bytes a row), written by one "
        "`extend` with `shard_bytes` of one row and one commit; FSYNC SKIPPED WHILE BUILDING "
        "(`os.fsync` a no-op, then `os.sync()`), never while measuring",
        f"format {OLD}: the same dataset rewritten as memshard 1.x wrote it (every shard in the "
        "JSON manifest, no shard table), its shard files hard links of the 2.0 ones",
        f"shard counts: {', '.join(f'{count:,}' for count in config.counts)}",
        f"ratio: format {OLD}'s time over format {NEW}'s (how many times faster {NEW} is)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Build and measure each shard count, print the report, write it, its JSON and chart."""
    config = parse_args(argv)
    sizes: list[dict[str, Any]] = []
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard shard-count scaling", config.mode, scratch, method(config))
        for count in config.counts:
            progress(f"{count:,} shards: building")
            data = Datasets.make(scratch, count)
            try:
                sizes.append(measure_count(config, data, out))
            finally:
                data.remove()
    results = goals(sizes)
    for goal in results:
        out.goal(goal["key"], goal["met"])
    out.add("## Datasets", sizes_table(sizes))
    out.add(f"## Time against shard count (format {NEW} and {OLD})", timings_table(sizes))
    out.add(f"## verify against hashing speed (format {NEW})", verify_table(sizes))
    out.add("## Goals", goals_table(results))
    out.add("## How each figure is measured", notes(config))
    out.add("![time against shard count](manifest-scale.png)")
    out.record.update(
        shard_counts=config.counts,
        fields={name: [dtype, list(shape)] for name, (dtype, shape) in FIELDS.items()},
        rows_per_shard=1,
        repeats=config.repeats,
        verify_repeats=config.verify_repeats,
        batch_size=BATCH_SIZE,
        fsync_while_building=False,
        sizes=sizes,
        goals=results,
    )
    os.makedirs(config.out, exist_ok=True)
    chart(sizes, os.path.join(config.out, "manifest-scale.png"), config.mode)
    json_path = os.path.join(config.out, "manifest-scale.json")
    code = out.finish(json_path, os.path.join(config.out, "manifest-scale.md"))
    if config.json is not None and os.path.abspath(config.json) != os.path.abspath(json_path):
        shutil.copyfile(json_path, config.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
