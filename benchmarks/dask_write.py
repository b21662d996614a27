"""Writing a dataset from dask with :func:`memshard.dask.from_dask` on a real dask cluster.

Run from the repository root::

    python -m benchmarks.dask_write                      # full: ~4 GiB of images (minutes)
    python -m benchmarks.dask_write --quick              # ~256 MiB, well under a minute
    python -m benchmarks.dask_write --storage-gbps 25    # another storage cap for the estimate

Images and labels generated on the workers (any row can be recomputed to check it) are written
by ``from_dask`` on LocalClusters of N = 1 and 2 single-threaded worker processes, against
generation alone and one process's ``create().extend()`` from RAM; the first output of each N
is checked. The goal of the issue: a ``from_dask`` speedup of at least 1.6x from N = 1 to 2.
Then the time to build 50,000,000 such rows is estimated from the per-worker rate, capped by
``--storage-gbps``, plus the commit, whose cost per part is measured (see docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import secrets
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
import dask.array as da
import distributed
import numpy as np
from dask.utils import key_split
from distributed import Client, LocalCluster, get_task_stream

import memshard as ms
from memshard.dask import from_dask
from memshard.parts import PartTarget
from memshard.schema import field_specs
from memshard.schema import rows_per_shard as memshard_rows_per_shard

from . import core
from .core import DTYPE, IMAGE_BYTES, IMAGE_SHAPE, Option, format_bytes, format_duration, progress
from .labelled import CLASS_NAMES, FIELDS, IMAGES, LABEL_DTYPE, LABELS, ROW_BYTES
from .limits import disk_result

#: 64 MiB shards: 1,024 rows (48 MiB of images) once rounded down to whole huge pages.
SHARD_MIB = 64
#: Shards per dask block (and so per part): 4 (192 MiB blocks) wrote fastest of 1, 2, 4 and 8
#: (``docs/scaling.md``): every part has fixed costs (a few tasks, a lock, a record, fsyncs,
#: a scheduler round trip in which a single-threaded worker idles), which one worker alone
#: pays in full. Quick mode keeps one shard per block, so that its 256 MiB still make 6 blocks.
FULL_BLOCK_SHARDS = 4
WORKER_COUNTS = (1, 2)
GOAL_SPEEDUP = 1.6
#: Threads that write the one-row parts (untimed; each part close is a handful of fsyncs).
PART_WRITER_THREADS = 8
#: Rows of the output whose images are compared with the generator's (besides block edges).
SAMPLE_ROWS = 512
#: The estimate: a dataset of this many rows, built by this many workers.
TARGET_ROWS = 50_000_000
TARGET_WORKERS = (1, 2, 8, 32, 100, 500)
#: distributed's log level: its INFO chatter on every cluster start would drown the report.
CLUSTER_LOG_LEVEL = logging.ERROR
#: The fixed part of every image: one value per pixel, the same for every row.
PATTERN = (np.arange(IMAGE_BYTES // DTYPE.itemsize, dtype=DTYPE) % 251 / 251).reshape(IMAGE_SHAPE)
EXTEND = "extend_in_process"
#: The candidates in the order of even repeats (odd repeats run them backwards).
CANDIDATES = (
    EXTEND,
    *(f"{kind}_workers_{n}" for n in WORKER_COUNTS for kind in ("generate", "from_dask")),
)


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    rows: int
    storage_gbps: float
    shard_mib: int
    block_shards: int
    #: One-row parts committed to measure the commit's cost per part.
    commit_parts: int

    @property
    def shard_bytes(self) -> int:
        """The ``shard_bytes`` of every dataset written."""
        return self.shard_mib << 20

    @property
    def shard_rows(self) -> int:
        """Rows of a full shard of the dataset (memshard rounds ``shard_bytes`` down)."""
        return rows_per_shard(self.shard_bytes)

    @property
    def block_rows(self) -> int:
        """Rows of a dask block: a whole number of shards."""
        return self.shard_rows * self.block_shards

    @property
    def blocks(self) -> int:
        """Blocks (and so parts) of the dataset."""
        return -(-self.rows // self.block_rows)

    @property
    def data_bytes(self) -> int:
        """Bytes of data written: every image and label."""
        return self.rows * ROW_BYTES

    def to_json(self) -> dict[str, Any]:
        """The configuration and what follows from it."""
        derived = ("shard_bytes", "shard_rows", "block_rows", "blocks", "data_bytes")
        return {
            **asdict(self),
            **{name: getattr(self, name) for name in derived},
            "row_bytes": ROW_BYTES,
        }


def rows_per_shard(shard_bytes: int) -> int:
    """Rows of a full shard of the benchmark's fields for ``shard_bytes``.

    Example:
        >>> rows_per_shard(64 << 20), rows_per_shard(256 << 20)
        (1024, 5120)
    """
    return memshard_rows_per_shard(field_specs(FIELDS), shard_bytes)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.dask_write",
        __doc__,
        Option("--rows", int, "rows of images and labels", *map(core.rows_for_gib, (4, 0.25))),
        Option("--storage-gbps", float, "storage GB/s of the estimate", 10.0, 10.0),
        Option("--shard-mib", int, "shard_bytes in MiB", SHARD_MIB, SHARD_MIB),
        Option("--block-shards", int, "shards per block", FULL_BLOCK_SHARDS, 1),
        Option("--commit-parts", int, "one-row parts of the commit (>= 2)", 1000, 200),
        repeats=(3, 2),
    )
    config = Config(**options.parse(argv))
    if config.commit_parts == 1:
        options.error("--commit-parts must be >= 2 (one commit of 1 part is the fixed cost)")
    return config


# -- the data (computed on the workers) ------------------------------------------------------
def image_rows(index: np.ndarray) -> np.ndarray:
    """The images of rows ``index``: :data:`PATTERN` plus ``index % 1000`` (one pass).

    Example:
        >>> image_rows(np.array([0, 1001]))[:, 0, 0, :2].astype(float).round(4).tolist()
        [[0.0, 0.004], [1.0, 1.004]]
    """
    offsets = (index % 1000).astype(DTYPE).reshape(-1, 1, 1, 1)
    return np.add(PATTERN, offsets, dtype=DTYPE)


def label_rows(index: np.ndarray) -> np.ndarray:
    """The labels of rows ``index``: indices of :data:`~benchmarks.labelled.CLASS_NAMES`.

    Example:
        >>> label_rows(np.array([0, 1, 2])).tolist()
        [0, 919, 838]
    """
    return (index * 7919 % len(CLASS_NAMES)).astype(LABEL_DTYPE)


def source_arrays(rows: int, block_rows: int) -> dict[str, Any]:
    """``{field: dask array}`` of ``rows`` rows in blocks of ``block_rows``, computed on the
    workers from the row indices (nothing but the block index travels in the graph)."""
    index = da.arange(rows, chunks=block_rows, dtype=np.int64)
    images = index.map_blocks(
        image_rows,
        new_axis=[1, 2, 3],
        chunks=(index.chunks[0], *((size,) for size in IMAGE_SHAPE)),
        dtype=DTYPE,
        meta=np.empty((0, *IMAGE_SHAPE), dtype=DTYPE),
    )
    labels = index.map_blocks(label_rows, dtype=LABEL_DTYPE, meta=np.empty(0, LABEL_DTYPE))
    return {IMAGES: images, LABELS: labels}


def block_rows_of(*blocks: np.ndarray) -> int:
    """The generation-only task: take a block of every field, keep only its row count."""
    return len(blocks[0])


def generate_only(arrays: dict[str, Any]) -> int:
    """Compute every block as :func:`memshard.dask.from_dask` does (``to_delayed`` blocks, one
    task per block taking every field's block), but throw the blocks away; the rows seen."""
    blocks = [list(array.to_delayed().ravel()) for array in arrays.values()]
    delayed = dask.delayed(block_rows_of, pure=False)  # type: ignore[attr-defined]
    tasks = [delayed(*parts) for parts in zip(*blocks, strict=True)]
    return sum(dask.compute(*tasks))  # type: ignore[attr-defined,no-untyped-call]


def write_in_process(path: str, config: Config, rows: tuple[np.ndarray, np.ndarray]) -> None:
    """One ``extend`` of every row from RAM in this process, then ``close``."""
    labels = {LABELS: CLASS_NAMES}
    with ms.create(path, FIELDS, shard_bytes=config.shard_bytes, labels=labels) as appender:
        appender.extend({IMAGES: rows[0], LABELS: rows[1]})


def in_ram_rows(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Every row of the dataset in RAM (for the in-process write), built block by block."""
    images = np.empty((config.rows, *IMAGE_SHAPE), dtype=DTYPE)
    for start in range(0, config.rows, config.shard_rows):
        index = np.arange(start, min(config.rows, start + config.shard_rows))
        images[start : start + index.size] = image_rows(index)
    return images, label_rows(np.arange(config.rows))


# -- clusters --------------------------------------------------------------------------------
@dataclass
class Cluster:
    """A running LocalCluster of ``workers`` single-threaded worker processes and its client."""

    workers: int
    cluster: Any
    client: Any

    def close(self) -> None:
        """Close the client, then the cluster (its worker processes)."""
        self.client.close()
        self.cluster.close()

    def run(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """``call`` with this client as the scheduler of every dask computation in it."""

        def on_cluster() -> Any:
            with self.client.as_current(), dask.config.set(scheduler=self.client):
                return call()

        return on_cluster


def start_cluster(workers: int) -> Cluster:
    """A LocalCluster with ``workers`` worker processes of one thread, no dashboard, and
    distributed's logging at :data:`CLUSTER_LOG_LEVEL` (in this process and the workers).

    Close clusters in the reverse order of their start: each restores the log level it found
    when it closes, so closing the first one early would let the others log at INFO."""
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # No dashboard, but the scheduler still serves /health on an HTTP port: a free one,
        # not 8787, which the first cluster takes (a second would warn that it is in use).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=CLUSTER_LOG_LEVEL,
    )
    try:
        client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
    except BaseException:
        cluster.close()
        raise
    return Cluster(workers, cluster, client)


# -- measurements ----------------------------------------------------------------------------
@dataclass
class Measurement:
    """The timed runs of one candidate."""

    key: str
    label: str
    workers: int | None
    rows: int
    samples_ns: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        """Median of the samples."""
        return float(statistics.median(self.samples_ns))

    @property
    def rows_per_s(self) -> float:
        """Rows per second at the median time."""
        return self.rows / (self.median_ns / 1e9)

    def to_json(self) -> dict[str, Any]:
        """Every figure, with the bytes of data (images and labels) per second."""
        rates = {"rows_per_s": self.rows_per_s, "bytes_per_s": self.rows_per_s * ROW_BYTES}
        return {**asdict(self), "median_ns": self.median_ns, **rates}


@dataclass
class Check:
    """The untimed check of the first ``from_dask`` output of one N."""

    workers: int
    rows: int
    expected_rows: int
    shards: int
    expected_shards: int
    sampled_rows: int
    images_equal: bool
    labels_equal: bool
    #: Blocks written by each worker of the cluster (from the task stream).
    blocks_per_worker: list[int]
    workers_of_cluster: bool
    #: Seconds the workers spent, all together, computing the tasks of each kind (dask's key
    #: prefix: ``write_block`` writes a part, the others generate the blocks), and moving
    #: data between workers.
    task_seconds: dict[str, float]
    transfer_seconds: float

    @property
    def passed(self) -> bool:
        """Whether the output is the generated data, in full."""
        counts = (self.rows, self.shards) == (self.expected_rows, self.expected_shards)
        return counts and self.images_equal and self.labels_equal and self.workers_of_cluster

    def to_json(self) -> dict[str, Any]:
        """The check, for ``--json``."""
        return {**asdict(self), "passed": self.passed}


def check_output(
    config: Config, dataset: ms.Dataset, cluster: Cluster, stream: list[dict[str, Any]]
) -> Check:
    """Compare ``dataset`` with the generator: its rows and shards, every label, and the
    images of every block's first and last row plus :data:`SAMPLE_ROWS` random rows; count
    the blocks each worker wrote (``stream``: the task stream of the run)."""
    starts = np.arange(0, config.rows, config.block_rows, dtype=np.int64)
    ends = np.minimum(starts + config.block_rows, config.rows) - 1
    random_rows = np.random.default_rng(core.SEED).integers(0, config.rows, size=SAMPLE_ROWS)
    sample = np.unique(np.concatenate([starts, ends, random_rows]))
    images_equal = labels_equal = False
    if len(dataset) == config.rows:
        images = dataset.take(sample, fields=[IMAGES])[IMAGES]
        images_equal = bool(np.array_equal(images, image_rows(sample)))
        labels = np.asarray(dataset[LABELS][:])
        labels_equal = bool(np.array_equal(labels, label_rows(np.arange(config.rows))))
    addresses = sorted(cluster.client.scheduler_info()["workers"])
    writers = [task["worker"] for task in stream if key_split(task["key"]) == "write_block"]
    task_seconds: dict[str, float] = {}
    transfer_seconds = 0.0
    for task in stream:
        for span in task["startstops"]:
            seconds = span["stop"] - span["start"]
            if span["action"] == "compute":
                prefix = key_split(task["key"])
                task_seconds[prefix] = task_seconds.get(prefix, 0.0) + seconds
            elif span["action"] == "transfer":
                transfer_seconds += seconds
    return Check(
        workers=cluster.workers,
        rows=len(dataset),
        expected_rows=config.rows,
        shards=len(dataset.shards),
        expected_shards=-(-config.rows // config.shard_rows),
        sampled_rows=int(sample.size),
        images_equal=images_equal,
        labels_equal=labels_equal,
        blocks_per_worker=[writers.count(address) for address in addresses],
        workers_of_cluster=len(writers) == config.blocks and set(writers) <= set(addresses),
        task_seconds=dict(sorted(task_seconds.items(), key=lambda item: -item[1])),
        transfer_seconds=transfer_seconds,
    )


def flipped(names: Sequence[str], repeat: int) -> list[str]:
    """The order of repeat ``repeat``: ``names``, backwards every other repeat, so that the
    order of N, of the two measurements of an N and the place of the in-process write all
    flip every repeat.

    Example:
        >>> flipped(CANDIDATES, 1)  # doctest: +NORMALIZE_WHITESPACE
        ['from_dask_workers_2', 'generate_workers_2', 'from_dask_workers_1',
         'generate_workers_1', 'extend_in_process']
    """
    return list(names[::-1] if repeat % 2 else names)


def measure(
    config: Config, clusters: dict[int, Cluster], scratch: str
) -> tuple[dict[str, Measurement], dict[int, Check]]:
    """Every candidate once per repeat, in the order :func:`flipped` gives; the first
    ``from_dask`` output of each N is checked (untimed)."""
    dst = os.path.join(scratch, "dataset.memshard")
    arrays = source_arrays(config.rows, config.block_rows)
    labels = {
        "from_dask": "`from_dask` end to end",
        "generate": "generation only (same graph, blocks thrown away)",
    }
    results = {
        f"{kind}_workers_{n}": Measurement(f"{kind}_workers_{n}", label, n, config.rows)
        for kind, label in labels.items()
        for n in WORKER_COUNTS
    }
    label = "in one process: `create().extend()` + `close()` from RAM"
    results[EXTEND] = Measurement(EXTEND, label, None, config.rows)
    checks: dict[int, Check] = {}
    in_ram: list[tuple[np.ndarray, np.ndarray]] = []

    def run(name: str, repeat: int) -> float:
        progress(f"repeat {repeat + 1} of {config.repeats}: {name}")
        if name == EXTEND and not in_ram:
            progress(f"building the {format_bytes(config.data_bytes)} in-RAM copy (untimed)")
            in_ram.append(in_ram_rows(config))
        core.clean_slate([dst], config.data_bytes)
        gc.collect()
        if name == EXTEND:
            ns, _ = core.timed_call(lambda: write_in_process(dst, config, in_ram[0]))
        elif name.startswith("generate"):
            cluster = clusters[int(name.rsplit("_", 1)[1])]
            ns, seen = core.timed_call(cluster.run(lambda: generate_only(arrays)))
            if seen != config.rows:
                raise AssertionError(f"{name}: generation saw {seen} rows, not {config.rows}")
        else:
            cluster, labels = clusters[int(name.rsplit("_", 1)[1])], {LABELS: CLASS_NAMES}
            write = cluster.run(
                lambda: from_dask(arrays, dst, shard_bytes=config.shard_bytes, labels=labels)
            )
            with get_task_stream(cluster.client) as stream:
                ns, dataset = core.timed_call(write)
            if cluster.workers not in checks:
                checks[cluster.workers] = check_output(config, dataset, cluster, stream.data)
            del dataset
        results[name].samples_ns.append(ns)
        return ns

    core.alternate(CANDIDATES, config.repeats, run, order=flipped)
    core.clean_slate([dst], 0)
    return results, checks


def warm_up(config: Config, clusters: dict[int, Cluster], scratch: str) -> None:
    """An untimed small ``from_dask`` and generation on every cluster: the workers import
    memshard, pydantic and the generator before the first timed run."""
    rows = min(config.rows, 2 * max(WORKER_COUNTS) * config.block_rows)
    arrays = source_arrays(rows, config.block_rows)
    dst = os.path.join(scratch, "warm-up.memshard")
    for cluster in clusters.values():
        cluster.run(lambda: generate_only(arrays))()
        cluster.run(lambda: from_dask(arrays, dst, shard_bytes=config.shard_bytes))()
        core.remove(dst)
    os.sync()


# -- the commit ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommitCost:
    """What committing parts costs, as ``from_dask`` commits them (``commit_parts``,
    ``discard_parts`` of the job, ``close``, then reopening the dataset)."""

    parts: int
    #: Nanoseconds of the commit of one part, and of ``parts`` parts.
    one_part_ns: int
    many_parts_ns: int

    @property
    def per_part_ns(self) -> float:
        """The cost of one more part: the slope between the two commits."""
        return (self.many_parts_ns - self.one_part_ns) / (self.parts - 1)

    def seconds_for(self, parts: int) -> float:
        """The linear extrapolation to ``parts`` parts, in seconds."""
        return (self.one_part_ns + self.per_part_ns * (parts - 1)) / 1e9


def write_one_row_part(target: PartTarget, group: str, index: int) -> ms.Part:
    """Part ``index`` of ``group``: row ``index`` of the generated data."""
    rows = np.array([index])
    with target.start(key=index, group=group) as part:
        part.extend({IMAGES: image_rows(rows), LABELS: label_rows(rows)})
    return part.close()


def time_commit(config: Config, scratch: str, parts: int) -> int:
    """Write ``parts`` one-row parts of a new dataset (untimed, on threads), then time their
    commit as ``from_dask`` does it."""
    path = os.path.join(scratch, "commit.memshard")
    core.remove(path)
    labels = {LABELS: CLASS_NAMES}
    ms.create(path, FIELDS, shard_bytes=config.shard_bytes, labels=labels).close()
    target, group = PartTarget.of(path), f"c{secrets.token_hex(4)}"
    with ThreadPoolExecutor(PART_WRITER_THREADS) as pool:
        records = list(pool.map(lambda i: write_one_row_part(target, group, i), range(parts)))
    os.sync()

    def commit() -> ms.Dataset:
        with ms.append(path) as appender:
            ms.commit_parts(appender, records, order="key")
            ms.discard_parts(appender, group=group)
        return ms.open(path)

    gc.collect()
    ns, dataset = core.timed_call(commit)
    rows = len(dataset)
    core.remove(path)
    if rows != parts:
        raise AssertionError(f"the commit of {parts} one-row parts left {rows} rows")
    return ns


# -- the estimate ----------------------------------------------------------------------------
def target_parts(config: Config) -> int:
    """Parts of the :data:`TARGET_ROWS`-row build: one per block of ``config.block_rows``."""
    return -(-TARGET_ROWS // config.block_rows)


def estimate(
    basis: str, workers: int, rate: float, storage_bps: float, commit_s: float
) -> dict[str, Any]:
    """The time to build :data:`TARGET_ROWS` rows with ``workers`` workers of ``rate`` rows/s
    each: ``rows / (workers * rate)``, at most ``storage_bps`` bytes/s in all, then the commit
    (``uncapped_*``: without the storage's limit)."""
    uncapped_bps = workers * rate * ROW_BYTES
    bps = min(uncapped_bps, storage_bps)
    write_s = TARGET_ROWS * ROW_BYTES / bps
    return {
        "basis": basis,
        "workers": workers,
        "per_worker_rows_s": rate,
        "storage_bps": storage_bps,
        "commit_s": commit_s,
        "rows": TARGET_ROWS,
        "uncapped_bps": uncapped_bps,
        "capped": uncapped_bps > storage_bps,
        "bps": bps,
        "uncapped_s": TARGET_ROWS / (workers * rate),
        "write_s": write_s,
        "total_s": write_s + commit_s,
    }


def estimates(
    config: Config, results: dict[str, Measurement], commit: CommitCost
) -> dict[str, list[dict[str, Any]]]:
    """The build time for every N of :data:`TARGET_WORKERS`, from two per-worker rates: the
    ``from_dask`` rate of one worker alone (``isolated``), and the two-worker rate halved
    (``shared_host``: two workers sharing this host's cores and disk)."""
    bases = {
        "isolated": results["from_dask_workers_1"].rows_per_s,
        "shared_host": results["from_dask_workers_2"].rows_per_s / 2,
    }
    commit_s = commit.seconds_for(target_parts(config))
    storage_bps = config.storage_gbps * 1e9
    return {
        basis: [estimate(basis, n, rate, storage_bps, commit_s) for n in TARGET_WORKERS]
        for basis, rate in bases.items()
    }


def commit_extrapolations(config: Config) -> dict[str, int]:
    """Parts of the :data:`TARGET_ROWS`-row build: with this run's blocks, and with one block
    per shard of :data:`SHARD_MIB` (the most parts a build with such shards has)."""
    shard_rows = rows_per_shard(SHARD_MIB << 20)
    return {
        f"1 part per block of {config.block_rows:,} rows (this run's)": target_parts(config),
        f"1 part per {SHARD_MIB} MiB shard ({shard_rows:,} rows)": -(-TARGET_ROWS // shard_rows),
    }


def speedups(results: dict[str, Measurement]) -> dict[str, float]:
    """Ratios of medians: N=2 over N=1 for ``from_dask`` and for generation, how much of the
    generation speed ``from_dask`` keeps at each N, and N=2 over the in-process write."""

    def over(slow: str, fast: str) -> float:
        return results[slow].median_ns / results[fast].median_ns

    figures = {
        f"{kind}_2_over_1": over(f"{kind}_workers_1", f"{kind}_workers_2")
        for kind in ("from_dask", "generate")
    }
    for n in WORKER_COUNTS:
        figures[f"from_dask_over_generate_{n}"] = over(
            f"generate_workers_{n}", f"from_dask_workers_{n}"
        )
    figures["from_dask_2_over_extend"] = over(EXTEND, "from_dask_workers_2")
    return figures


# -- the report ------------------------------------------------------------------------------
def render_writes(
    results: dict[str, Measurement],
    checks: dict[int, Check],
    disk: core.Result,
    figures: dict[str, float],
) -> str:
    """The throughput table, the ratios and the checks."""
    head = ["measurement", "workers", "median time", "rows/s", "MB/s", "vs N=1"]
    rows = []
    for key, result in results.items():
        first = results.get(key.rsplit("_", 1)[0] + "_1") if result.workers else None
        rows.append(
            [
                result.label,
                "-" if result.workers is None else str(result.workers),
                core.format_ns(result.median_ns),
                f"{result.rows_per_s:,.0f}",
                core.three_digits(result.rows_per_s * ROW_BYTES / 1e6),
                "-" if first is None else f"{first.median_ns / result.median_ns:.2f}x",
            ]
        )
    disk_ns = core.format_ns(disk.details["median_ns"])
    disk_mbs = core.three_digits(disk.value / 1e6)
    rows.append([f"{disk.measurement} (context)", "-", disk_ns, "-", disk_mbs, "-"])
    speedup = figures["from_dask_2_over_1"]
    notes = [
        f"- `from_dask` N=2 / N=1: {speedup:.2f}x (goal >= {GOAL_SPEEDUP}x: "
        f"{'met' if speedup >= GOAL_SPEEDUP else 'not met'}); generation alone N=2 / N=1: "
        f"{figures['generate_2_over_1']:.2f}x",
        "- `from_dask` speed / generation speed: "
        + ", ".join(f"N={n} {figures[f'from_dask_over_generate_{n}']:.2f}" for n in WORKER_COUNTS),
        f"- `from_dask` N=2 / in-process extend: {figures['from_dask_2_over_extend']:.2f}x",
    ]
    equal = {True: "equal", False: "DIFFER"}
    for n, check in checks.items():
        notes.append(
            f"- check N={n}: {'passed' if check.passed else 'FAILED'} ({check.rows:,} rows of "
            f"{check.expected_rows:,}, {check.shards} shards of {check.expected_shards}, all "
            f"labels {equal[check.labels_equal]}, images of {check.sampled_rows} sampled rows "
            f"{equal[check.images_equal]}; blocks written per worker {check.blocks_per_worker})"
        )
    for n, check in checks.items():
        wall = results[f"from_dask_workers_{n}"].samples_ns[0] / 1e9
        busy = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in check.task_seconds.items())
        notes.append(
            f"- task time on the workers, checked `from_dask` run with N={n} ({wall:.2f} s wall "
            f"x {n} worker(s) = {wall * n:.2f} s): {busy}; transfers {check.transfer_seconds:.2f} s"
        )
    return "\n\n".join(["## Writing the dataset", core.markdown(head, rows), "\n".join(notes)])


def render_commit(config: Config, commit: CommitCost) -> str:
    """The commit's cost and its extrapolations."""
    head = ["commit (as `from_dask`: commit_parts + discard_parts + close + open)", "time"]
    rows = [
        ["1 one-row part", core.format_ns(commit.one_part_ns)],
        [f"{commit.parts:,} one-row parts", core.format_ns(commit.many_parts_ns)],
        ["per part (slope)", core.format_ns(commit.per_part_ns)],
    ]
    for how, parts in commit_extrapolations(config).items():
        what = f"extrapolated to {TARGET_ROWS:,} rows: {parts:,} parts, {how}"
        rows.append([what, format_duration(commit.seconds_for(parts))])
    return "\n\n".join(["## The commit", core.markdown(head, rows)])


def render_estimates(config: Config, tables: dict[str, list[dict[str, Any]]]) -> str:
    """The 50M-row build tables and their assumptions."""
    cap = core.format_rate(config.storage_gbps * 1e9)
    total_tb = TARGET_ROWS * ROW_BYTES / 1e12
    floor = format_duration(TARGET_ROWS * ROW_BYTES / (config.storage_gbps * 1e9))
    commit = format_duration(next(iter(tables.values()))[0]["commit_s"])
    lines = [
        f"## Estimate: building {TARGET_ROWS:,} rows of float32{list(IMAGE_SHAPE)} + int64 "
        f"labels ({TARGET_ROWS * IMAGE_BYTES / 1e12:.2f} TB of images, {total_tb:.2f} TB in all)",
        "",
        "- assumption: every worker writes at the measured per-worker rate, independently of "
        "the others: write time = rows / (N * per-worker rate); the aggregate is capped by the "
        f"storage's write bandwidth, --storage-gbps = {cap}: write time = "
        f"max(that, {total_tb:.2f} TB / {cap} = {floor})",
        f"- then one commit of {target_parts(config):,} parts in one process, extrapolated "
        f"linearly from the measured commit: {commit}; not included: "
        "cluster start-up, generating the data (here it is a cheap function; real "
        "decoding or augmenting costs more than writing), the scheduler's overhead per task at "
        "that scale",
    ]
    head = ["workers", "aggregate (uncapped)", "write (uncapped)", "aggregate", "write"]
    titles = {
        "isolated": "per-worker rate = `from_dask` N=1 (one worker alone on this host)",
        "shared_host": "per-worker rate = `from_dask` N=2 / 2 (two workers sharing this host)",
    }
    for basis, table in tables.items():
        rate = table[0]["per_worker_rows_s"]
        per_worker = f"{rate:,.0f} rows/s = {core.format_rate(rate * ROW_BYTES)} per worker"
        rows = [
            [
                str(row["workers"]),
                core.format_rate(row["uncapped_bps"]),
                format_duration(row["uncapped_s"]),
                core.format_rate(row["bps"]) + (" (capped)" if row["capped"] else ""),
                *(format_duration(row[key]) for key in ("write_s", "commit_s", "total_s")),
            ]
            for row in table
        ]
        table_text = core.markdown([*head, "commit", "total"], rows)
        lines += ["", f"### {titles[basis]}: {per_worker}", "", table_text]
    return "\n".join(lines)


def check_room(config: Config, scratch: str) -> None:
    """Refuse to start without room for one output on disk and the in-RAM copy in memory."""
    free_disk = shutil.disk_usage(scratch).free
    if free_disk < config.data_bytes * 1.1 + (1 << 30):
        raise SystemExit(
            f"{scratch}: {format_bytes(free_disk)} free, the run needs "
            f"{format_bytes(config.data_bytes)} plus room; pick another --dir or fewer --rows"
        )
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if available < config.data_bytes * 1.5:
        progress(
            f"warning: {format_bytes(available)} of RAM free for an in-RAM copy of "
            f"{format_bytes(config.data_bytes)}; the in-process write may swap or be evicted"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Start both clusters, measure, estimate, print the report, optionally write JSON."""
    config = parse_args(argv)
    method = [
        f"dask {dask.__version__}, distributed {distributed.__version__}; LocalCluster("  # type: ignore[attr-defined]
        "n_workers=N, threads_per_worker=1, processes=True), both clusters started before "
        "timing and warmed up",
        f"data: {config.rows:,} rows of float32{list(IMAGE_SHAPE)} + int64 labels "
        f"({format_bytes(config.data_bytes)}, {ROW_BYTES:,} bytes a row), generated on the "
        "workers",
        f"shard_bytes {format_bytes(config.shard_bytes)} -> {config.shard_rows:,} rows a shard; "
        f"dask blocks of {config.block_shards} shard(s) = {config.block_rows:,} rows -> "
        f"{config.blocks} blocks (parts)",
        f"each figure: median of {config.repeats} repeats; the order of N, and of the "
        "candidates, flips every repeat",
        "throughput: rows/s and MB/s (10**6 bytes) of images and labels; before every timed "
        "run the previous output is deleted, dirty pages flushed, and memory of the data's "
        "size touched and freed",
    ]
    with core.scratch_directory(config.dir) as scratch:
        check_room(config, scratch)
        out = core.Report("memshard from_dask benchmark", config.mode, scratch, method)
        progress("disk: timing os.write + fsync")
        disk = disk_result(scratch, config.quick, config.repeats)
        progress(f"commit: writing and committing 1 and {config.commit_parts} one-row parts")
        one, many = (time_commit(config, scratch, n) for n in (1, config.commit_parts))
        commit = CommitCost(config.commit_parts, one, many)
        clusters: dict[int, Cluster] = {}
        with contextlib.ExitStack() as stack:  # closes the clusters last started first
            for n in WORKER_COUNTS:
                progress(f"starting a LocalCluster of {n} worker process(es)")
                clusters[n] = start_cluster(n)
                stack.callback(clusters[n].close)
            warm_up(config, clusters, scratch)
            results, checks = measure(config, clusters, scratch)
    figures = speedups(results)
    tables = estimates(config, results, commit)
    out.add(render_writes(results, checks, disk, figures))
    out.add(render_commit(config, commit))
    out.add(render_estimates(config, tables))
    met = out.goal("from_dask_2_over_1", figures["from_dask_2_over_1"] >= GOAL_SPEEDUP)
    for n, check in checks.items():
        out.check(f"check_workers_{n}", check.passed)
    extrapolated = {str(p): commit.seconds_for(p) for p in commit_extrapolations(config).values()}
    out.record.update(
        config=config.to_json(),
        results={key: result.to_json() for key, result in results.items()},
        speedups=figures,
        goal={"from_dask_2_over_1": GOAL_SPEEDUP, "met": met},
        checks={str(n): check.to_json() for n, check in checks.items()},
        disk=disk.to_json(),
        commit={
            **asdict(commit),
            "per_part_ns": commit.per_part_ns,
            "extrapolated_s": extrapolated,
        },
        estimate={
            "rows": TARGET_ROWS,
            "row_bytes": ROW_BYTES,
            "parts": target_parts(config),
            "storage_bps": config.storage_gbps * 1e9,
            "tables": tables,
        },
    )
    return out.finish(config.json)


if __name__ == "__main__":
    # Run as the importable module, so that the workers unpickle its functions by reference.
    from benchmarks.dask_write import main as module_main

    sys.exit(module_main())
