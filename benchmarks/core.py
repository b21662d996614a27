"""The main job: write and read memshard datasets and compare each figure with a numpy peer.

Run from the repository root::

    python -m benchmarks.core            # full: ~1 GiB of images, 1M vectors (1-2 minutes)
    python -m benchmarks.core --quick    # small sizes, well under a minute (CI runs this)

Two workloads, each written to a scratch directory and read back:

* ``images``: float32[3, 64, 64] rows (48 KiB each). Random gathers are compared with the same
  gather on an in-RAM ndarray, ``extend`` writes with plain ``f.write`` of the same batches.
* ``vectors``: float32[128] rows (512 bytes each). Random gathers, single-row access and a
  sequential scan are compared with one ``np.memmap`` ``.npy`` file holding the same rows.

The machine this runs on is shared and its speed swings 1.5-2x between runs, so no figure is
reported alone: memshard and its peer run alternately within every repeat, each is the median
of the repeats, and the verdict is their ratio. Reads run with a warm page cache (every file is
read once, then every page is touched through each mapping) so both sides are measured in the
same steady state. Before each timed write a block of memory is touched and freed, and dirty
pages are flushed, because memory the host reclaimed is slow to touch the first time.

Speed goals are checked by reading this output (or ``--json``), never by timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

import memshard as ms

IMAGE_SHAPE = (3, 64, 64)
VECTOR_SHAPE = (128,)
DTYPE = np.dtype("float32")
#: 21,845 rows of 48 KiB: 48 KiB short of 1 GiB.
FULL_IMAGE_ROWS = 21_845
FULL_VECTOR_ROWS = 1_000_000
QUICK_IMAGE_ROWS = 2_000
QUICK_VECTOR_ROWS = 100_000
FULL_REPEATS = 7
QUICK_REPEATS = 3

IMAGE_GATHER_ROWS = 256
VECTOR_GATHER_ROWS = 1024
#: Gathers timed together in one repeat (each with its own fresh indices), so that one timed
#: run lasts milliseconds rather than microseconds.
GATHERS_PER_REPEAT = 20
SINGLE_ROW_ACCESSES = 100_000
WRITE_BATCH_ROWS = 256
SCAN_BLOCK_ROWS = 1024
#: Buffer of the reads that pull files into the page cache.
WARM_READ_BYTES = 8 << 20
SEED = 20240601

Run = Callable[[], object]
#: Untimed preparation that returns the run to time.
Setup = Callable[[], Run]


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """``rows`` rows of float32 ``shape``, stored in shards of ``shard_bytes``."""

    name: str
    shape: tuple[int, ...]
    rows: int
    shard_bytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return DTYPE.itemsize * math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole workload."""
        return self.rows * self.row_bytes

    @property
    def fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The ``fields`` argument of :func:`memshard.create`: one field ``x``."""
        return {"x": (DTYPE.name, self.shape)}


def shard_bytes_for(rows: int, full_rows: int, quick: bool) -> int:
    """memshard's default shard size in full mode; in quick mode the same fraction of the data.

    Scaling the shard size with the row count keeps the shard count of the full run, so quick
    mode still crosses shard boundaries.

    Example:
        >>> shard_bytes_for(2_000, 21_845, quick=True) // 2**20
        23
    """
    if not quick:
        return ms.DEFAULT_SHARD_BYTES
    return max(1, ms.DEFAULT_SHARD_BYTES * rows // full_rows)


def benchmark_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command line with the options every benchmark in this folder takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--rows-images", type=int, help="rows of float32[3,64,64] images")
    parser.add_argument("--rows-vectors", type=int, help="rows of float32[128] vectors")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (median reported)")
    parser.add_argument(
        "--dir", help="scratch directory (a temporary directory is made inside it and removed)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    return parser


def parse_positive(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, names: Sequence[str]
) -> argparse.Namespace:
    """Parse ``argv``, refusing a value below 1 for any of the options ``names``."""
    args = parser.parse_args(argv)
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; sizes left unset default to the mode's."""
    parser = benchmark_parser(
        "python -m benchmarks.core",
        "Write and read memshard datasets; compare with in-RAM arrays, np.memmap "
        "and plain file writes in the same run, and print ratios against goals.",
    )
    return parse_positive(parser, argv, ("rows_images", "rows_vectors", "repeats"))


def workloads_from(args: argparse.Namespace) -> tuple[Workload, Workload]:
    """The images and vectors workloads the arguments ask for."""
    quick = bool(args.quick)
    image_rows = args.rows_images or (QUICK_IMAGE_ROWS if quick else FULL_IMAGE_ROWS)
    vector_rows = args.rows_vectors or (QUICK_VECTOR_ROWS if quick else FULL_VECTOR_ROWS)
    return (
        Workload(
            "images", IMAGE_SHAPE, image_rows, shard_bytes_for(image_rows, FULL_IMAGE_ROWS, quick)
        ),
        Workload(
            "vectors",
            VECTOR_SHAPE,
            vector_rows,
            shard_bytes_for(vector_rows, FULL_VECTOR_ROWS, quick),
        ),
    )


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """memshard at least ``min_ratio`` of the baseline's speed, or at most ``max_ns`` per unit."""

    min_ratio: float | None = None
    max_ns: float | None = None

    def describe(self) -> str:
        """The goal as printed in the table."""
        if self.min_ratio is not None:
            return f">= {self.min_ratio:.2f}x"
        return f"<= {format_ns(self.max_ns or 0.0)} (absolute)"

    def met(self, memshard_ns: float, ratio: float) -> bool:
        """Whether a measurement with these figures meets the goal."""
        if self.min_ratio is not None:
            return ratio >= self.min_ratio
        return memshard_ns <= (self.max_ns or 0.0)


@dataclass(frozen=True)
class Result:
    """One measurement: median nanoseconds per ``unit`` for memshard and its baseline.

    ``nbytes`` is the data moved per unit; when ``throughput`` is set the table shows bytes
    per second instead of time.
    """

    key: str
    measurement: str
    unit: str
    memshard_ns: float
    baseline_ns: float
    baseline_name: str
    goal: Goal
    nbytes: int
    throughput: bool = False

    @property
    def ratio(self) -> float:
        """memshard's speed as a fraction of the baseline's: baseline time / memshard time."""
        return self.baseline_ns / self.memshard_ns

    @property
    def met(self) -> bool:
        """Whether the goal is met."""
        return self.goal.met(self.memshard_ns, self.ratio)

    def to_json(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        record = asdict(self)
        record.update(goal=self.goal.describe(), ratio=self.ratio, met=self.met)
        return record


@dataclass
class WorkloadReport:
    """The results of one workload and the shape of the dataset they were measured on."""

    workload: Workload
    shards: int = 0
    shard_rows: int = 0
    results: list[Result] = field(default_factory=list)


# -- timing ----------------------------------------------------------------------------------
def ready(run: Run) -> Setup:
    """A setup with nothing to prepare."""
    return lambda: run


def time_once(setup: Setup) -> int:
    """Nanoseconds of one call of the run ``setup()`` returns (setup untimed, gc paused)."""
    run = setup()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run()
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def median_ns(repeats: int, trial: Callable[[], Sequence[Setup]], warmups: int = 1) -> list[float]:
    """Median nanoseconds of each candidate over ``repeats`` trials.

    ``trial()`` is called once per repeat and returns one setup per candidate, built from the
    same fresh inputs. The candidates run one after another, starting with a different one each
    repeat, so a slow spell of the machine hits them alike. ``warmups`` trials run untimed first.
    """
    for _ in range(warmups):
        for setup in trial():
            setup()()
    times: list[list[int]] = []
    for repeat in range(repeats):
        setups = list(trial())
        if not times:
            times = [[] for _ in setups]
        start = repeat % len(setups)
        for candidate in [*range(start, len(setups)), *range(start)]:
            times[candidate].append(time_once(setups[candidate]))
    return [float(statistics.median(samples)) for samples in times]


# -- preparation -----------------------------------------------------------------------------
def random_rows(workload: Workload, rng: np.random.Generator) -> np.ndarray:
    """A C-contiguous in-RAM array holding every row of ``workload``."""
    data = np.empty((workload.rows, *workload.shape), dtype=DTYPE)
    for start in range(0, workload.rows, 4096):
        block = data[start : start + 4096]
        rng.random(dtype=DTYPE, out=block)
    return data


def batches_of(data: np.ndarray, rows: int) -> list[np.ndarray]:
    """``data`` cut into consecutive views of ``rows`` rows."""
    return [data[start : start + rows] for start in range(0, len(data), rows)]


def write_dataset(path: str, workload: Workload, batches: Sequence[np.ndarray]) -> None:
    """Write ``batches`` to a new memshard dataset at ``path`` with ``extend``, then close."""
    appender = ms.create(path, fields=workload.fields, shard_bytes=workload.shard_bytes)
    with appender:
        for batch in batches:
            appender.extend({"x": batch})


def files_under(path: str) -> list[str]:
    """Every regular file under ``path`` (or ``path`` itself if it is a file)."""
    if os.path.isfile(path):
        return [path]
    return [os.path.join(top, name) for top, _, names in os.walk(path) for name in names]


def warm_page_cache(paths: Sequence[str]) -> None:
    """Read every file under ``paths`` once, so timed reads find them in the page cache."""
    buffer = bytearray(WARM_READ_BYTES)
    for path in paths:
        for name in files_under(path):
            with open(name, "rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass


def touch_mapping(array: Any, rows: int) -> None:
    """Read every row of a mapped array once, so its pages are mapped in this process."""
    for start in range(0, rows, SCAN_BLOCK_ROWS * 16):
        np.asarray(array[start : start + SCAN_BLOCK_ROWS * 16]).sum()


def touch_and_free_memory(nbytes: int) -> None:
    """Write to ``nbytes`` of fresh memory and free it: pages the host reclaimed are slow on
    first touch, and a timed write should not pay for that."""
    block = np.ones(nbytes, dtype=np.uint8)
    del block


def remove(path: str) -> None:
    """Remove a file or directory tree if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def clean_slate(paths: Sequence[str], nbytes: int) -> None:
    """Before a timed write: remove earlier outputs, flush dirty pages, pre-touch memory."""
    for path in paths:
        remove(path)
    os.sync()
    touch_and_free_memory(nbytes)


# -- measurements ----------------------------------------------------------------------------
def measure_extend(
    workload: Workload, data: np.ndarray, repeats: int, scratch: str
) -> list[Result]:
    """Writing the workload in batches of :data:`WRITE_BATCH_ROWS`, two ways.

    Page cache: ``extend`` of every batch against ``f.write`` of the same batches to one
    file (neither durable yet; a sealed shard's fsync runs on memshard's worker thread).
    Durable: the same plus ``close()`` (commit: fsync, manifest, rename) against the same plus
    ``os.fsync`` and ``close``. Each repeat times both sides, alternating which goes first.
    """
    batches = batches_of(data, WRITE_BATCH_ROWS)
    dataset_path = os.path.join(scratch, "write-memshard")
    file_path = os.path.join(scratch, "write-plain.bin")

    def memshard_pass() -> tuple[int, int]:
        clean_slate([dataset_path, file_path], workload.nbytes)
        appender = ms.create(dataset_path, fields=workload.fields, shard_bytes=workload.shard_bytes)
        os.sync()  # let create()'s journal commits finish outside the timed region
        start = time.perf_counter_ns()
        for batch in batches:
            appender.extend({"x": batch})
        written = time.perf_counter_ns()
        appender.close()
        return written - start, time.perf_counter_ns() - start

    def plain_pass() -> tuple[int, int]:
        clean_slate([dataset_path, file_path], workload.nbytes)
        with open(file_path, "wb") as file:
            os.sync()
            start = time.perf_counter_ns()
            for batch in batches:
                file.write(batch.data)
            file.flush()
            written = time.perf_counter_ns()
            os.fsync(file.fileno())
        return written - start, time.perf_counter_ns() - start

    samples: dict[str, list[tuple[int, int]]] = {"memshard": [], "plain": []}
    for repeat in range(repeats):
        order = [("memshard", memshard_pass), ("plain", plain_pass)]
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            gc.collect()
            gc.disable()
            try:
                samples[name].append(run())
            finally:
                gc.enable()
    for path in (dataset_path, file_path):
        remove(path)

    def median(name: str, part: int) -> float:
        return float(statistics.median(sample[part] for sample in samples[name]))

    page_cache = Result(
        key="extend_images",
        measurement=f"`extend` in {WRITE_BATCH_ROWS}-row batches (into the page cache)",
        unit="pass",
        memshard_ns=median("memshard", 0),
        baseline_ns=median("plain", 0),
        baseline_name="`f.write` of the same batches (page cache only)",
        goal=Goal(min_ratio=0.7),
        nbytes=workload.nbytes,
        throughput=True,
    )
    durable = replace(
        page_cache,
        key="extend_images_durable",
        measurement=f"`extend` in {WRITE_BATCH_ROWS}-row batches + `close()` (commit, fsync)",
        memshard_ns=median("memshard", 1),
        baseline_ns=median("plain", 1),
        baseline_name="`f.write` + `os.fsync` + close",
        goal=Goal(min_ratio=0.8),
    )
    return [page_cache, durable]


def measure_gather(
    key: str,
    measurement: str,
    rows: int,
    count: int,
    memshard_gather: Callable[[np.ndarray], np.ndarray],
    baseline_gather: Callable[[np.ndarray], np.ndarray],
    baseline_name: str,
    goal: Goal,
    repeats: int,
    rng: np.random.Generator,
) -> Result:
    """Gather ``count`` random unsorted rows (int64 indices, fresh each repeat and shared by
    both sides); time per gather. Checks once that both sides return the same rows."""
    probe = rng.integers(0, rows, size=count, dtype=np.int64)
    if not np.array_equal(memshard_gather(probe), baseline_gather(probe)):
        raise AssertionError(f"{key}: memshard and {baseline_name} returned different rows")
    row_bytes = memshard_gather(probe[:1]).nbytes

    def loop(gather: Callable[[np.ndarray], np.ndarray], indices: list[np.ndarray]) -> Run:
        def run() -> None:
            for index in indices:
                gather(index)

        return run

    def trial() -> list[Setup]:
        indices = [
            rng.integers(0, rows, size=count, dtype=np.int64) for _ in range(GATHERS_PER_REPEAT)
        ]
        return [ready(loop(memshard_gather, indices)), ready(loop(baseline_gather, indices))]

    memshard_ns, baseline_ns = median_ns(repeats, trial)
    return Result(
        key=key,
        measurement=measurement,
        unit="gather",
        memshard_ns=memshard_ns / GATHERS_PER_REPEAT,
        baseline_ns=baseline_ns / GATHERS_PER_REPEAT,
        baseline_name=baseline_name,
        goal=goal,
        nbytes=count * row_bytes,
    )


def measure_single_row(
    column: ms.Column, memmap: np.ndarray, repeats: int, rng: np.random.Generator
) -> list[Result]:
    """``column[i]`` against ``memmap[i]`` in a loop of :data:`SINGLE_ROW_ACCESSES` random
    Python ints (fresh each repeat, shared); time per access, loop overhead included on both
    sides."""
    rows = len(column)

    def loop(source: Any, indices: list[int]) -> Run:
        def run() -> None:
            for index in indices:
                source[index]

        return run

    def trial() -> list[Setup]:
        indices = rng.integers(0, rows, size=SINGLE_ROW_ACCESSES).tolist()
        return [ready(loop(column, indices)), ready(loop(memmap, indices))]

    memshard_ns, baseline_ns = median_ns(repeats, trial)
    absolute = Result(
        key="single_row_vectors_ns",
        measurement="single-row access `col[i]`",
        unit="access",
        memshard_ns=memshard_ns / SINGLE_ROW_ACCESSES,
        baseline_ns=baseline_ns / SINGLE_ROW_ACCESSES,
        baseline_name="np.memmap `mm[i]`",
        goal=Goal(max_ns=1500.0),
        nbytes=column.nbytes // rows,
    )
    return [absolute, replace(absolute, key="single_row_vectors", goal=Goal(min_ratio=1 / 1.5))]


def measure_scan(column: ms.Column, memmap: np.ndarray, repeats: int) -> Result:
    """Sum ``col[a:b]`` views of :data:`SCAN_BLOCK_ROWS` rows over the whole column, against the
    same on ``memmap``; bytes per second of one pass."""
    rows = len(column)

    def scan(source: Any) -> Run:
        def run() -> None:
            for start in range(0, rows, SCAN_BLOCK_ROWS):
                source[start : start + SCAN_BLOCK_ROWS].sum()

        return run

    memshard_ns, baseline_ns = median_ns(
        repeats, lambda: [ready(scan(column)), ready(scan(memmap))]
    )
    return Result(
        key="scan_vectors",
        measurement=f"sequential scan, `col[a:b].sum()` per {SCAN_BLOCK_ROWS} rows",
        unit="pass",
        memshard_ns=memshard_ns,
        baseline_ns=baseline_ns,
        baseline_name="np.memmap, same blocks",
        goal=Goal(min_ratio=0.9),
        nbytes=column.nbytes,
        throughput=True,
    )


# -- workloads -------------------------------------------------------------------------------
def describe_dataset(report: WorkloadReport, path: str) -> None:
    """Record the shard count and rows per shard of the dataset at ``path``."""
    dataset = ms.open(path)
    report.shards = len(dataset.shards)
    report.shard_rows = max(shard.rows for shard in dataset.shards)


def run_images(
    workload: Workload, repeats: int, scratch: str, rng: np.random.Generator
) -> WorkloadReport:
    """Writes, then random gathers against an in-RAM array, on the images workload."""
    report = WorkloadReport(workload)
    data = random_rows(workload, rng)
    progress(f"images: timing extend of {format_bytes(workload.nbytes)} x {repeats} repeats")
    report.results.extend(measure_extend(workload, data, repeats, scratch))
    path = os.path.join(scratch, "images")
    write_dataset(path, workload, batches_of(data, WRITE_BATCH_ROWS))
    describe_dataset(report, path)
    dataset = ms.open(path)
    warm_page_cache([path])
    touch_mapping(dataset["x"], workload.rows)
    progress("images: timing random gathers")
    report.results.append(
        measure_gather(
            "gather_images",
            f'random gather of {IMAGE_GATHER_ROWS} unsorted rows, `ds["x"][idx]`',
            workload.rows,
            IMAGE_GATHER_ROWS,
            lambda index: dataset["x"][index],
            lambda index: data[index],
            "in-RAM ndarray `a[idx]`",
            Goal(min_ratio=0.9),
            repeats,
            rng,
        )
    )
    return report


def run_vectors(
    workload: Workload, repeats: int, scratch: str, rng: np.random.Generator
) -> WorkloadReport:
    """Random gathers, single-row access and a sequential scan against one np.memmap file."""
    report = WorkloadReport(workload)
    data = random_rows(workload, rng)
    path = os.path.join(scratch, "vectors")
    npy_path = os.path.join(scratch, "vectors.npy")
    progress(f"vectors: writing {format_bytes(workload.nbytes)} twice (memshard, .npy)")
    write_dataset(path, workload, batches_of(data, 65536))
    np.save(npy_path, data)
    del data
    describe_dataset(report, path)
    column = ms.open(path)["x"]
    memmap = np.load(npy_path, mmap_mode="r")
    warm_page_cache([path, npy_path])
    touch_mapping(column, workload.rows)
    touch_mapping(memmap, workload.rows)
    progress("vectors: timing random gathers, single-row access, sequential scan")
    report.results.append(
        measure_gather(
            "gather_vectors",
            f"random gather of {VECTOR_GATHER_ROWS} unsorted rows, `col[idx]`",
            workload.rows,
            VECTOR_GATHER_ROWS,
            column.__getitem__,
            memmap.__getitem__,
            "np.memmap `mm[idx]`",
            Goal(min_ratio=0.7),
            repeats,
            rng,
        )
    )
    report.results.extend(measure_single_row(column, memmap, repeats, rng))
    report.results.append(measure_scan(column, memmap, repeats))
    return report


# -- report ----------------------------------------------------------------------------------
def three_digits(value: float) -> str:
    """``value`` with three significant digits (no exponent below 1000).

    Example:
        >>> three_digits(1.1), three_digits(42.345), three_digits(812.4)
        ('1.10', '42.3', '812')
    """
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f}"


def format_ns(ns: float) -> str:
    """A duration with a readable unit.

    Example:
        >>> format_ns(812.4), format_ns(2_310_000.0)
        ('812 ns', '2.31 ms')
    """
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{three_digits(ns / scale)} {unit}"
    return f"{ns:.0f} ns"


def format_bytes(nbytes: float) -> str:
    """A size in binary units.

    Example:
        >>> format_bytes(3 << 29)
        '1.50 GiB'
    """
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{three_digits(nbytes / scale)} {unit}"
    return f"{nbytes:.0f} B"


def format_figure(result: Result, ns: float) -> str:
    """One cell: throughput for passes over the data, else time per unit."""
    if result.throughput:
        return f"{format_bytes(result.nbytes / (ns / 1e9))}/s"
    return f"{format_ns(ns)}/{result.unit}"


def machine_info(scratch: str) -> dict[str, str]:
    """CPU, memory, OS, Python, numpy and memshard versions, and the scratch filesystem."""
    info = {
        "cpus": str(os.cpu_count()),
        "cpu model": _first_value("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "memory": _memory_total(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "memshard": f"{ms.__version__} ({_source_revision()})",
        "scratch": f"{scratch} ({_filesystem_of(scratch)})",
        "load average at start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus"] += f" ({len(os.sched_getaffinity(0))} usable by this process)"
    return info


def _source_revision() -> str:
    """Where memshard was imported from and, in a git checkout, its commit and whether
    ``memshard/`` has uncommitted changes: figures from different runs compare only if equal."""
    package = os.path.dirname(os.path.abspath(ms.__file__))
    git = ["git", "-C", package]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return package
    return f"{package}, git {commit}" + (", with uncommitted changes" if changes else "")


def _first_value(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError), open(path) as file:
        for line in file:
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def _memory_total() -> str:
    kib = (_first_value("/proc/meminfo", "MemTotal") or "").removesuffix(" kB")
    return format_bytes(int(kib) << 10) if kib.isdigit() else "?"


def _filesystem_of(path: str) -> str:
    best = ("", "?", "?")
    with contextlib.suppress(OSError), open("/proc/mounts") as file:
        for line in file:
            device, mount, fstype, *_ = line.split()
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return f"{best[1]} on {best[2]}"


def header(mode: str, machine: dict[str, str], repeats: int) -> str:
    """What ran where, and how to read the tables."""
    lines = [f"# memshard core benchmark ({mode} mode)", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += [
        f"- each figure: median of {repeats} repeats; memshard and its baseline alternate "
        "within every repeat, page cache warm for reads",
        "- ratio = baseline time / memshard time: memshard's speed as a fraction of the "
        "baseline's (1.00x = as fast, higher is better); goals are on this ratio unless "
        "marked absolute",
    ]
    return "\n".join(lines)


def table(report: WorkloadReport) -> str:
    """The markdown table of one workload, with a title line naming its dataset."""
    workload = report.workload
    title = (
        f"## {workload.name}: {workload.rows:,} rows of float32{list(workload.shape)} "
        f"({format_bytes(workload.nbytes)}), memshard dataset of {report.shards} shards "
        f"(up to {report.shard_rows:,} rows each; shard_bytes {format_bytes(workload.shard_bytes)})"
    )
    head = ["measurement", "memshard", "baseline", "baseline name", "ratio", "goal", "met"]
    rows = [
        [
            result.measurement,
            format_figure(result, result.memshard_ns),
            format_figure(result, result.baseline_ns),
            result.baseline_name,
            f"{result.ratio:.3f}x",
            result.goal.describe(),
            "yes" if result.met else "no",
        ]
        for result in report.results
    ]
    return "\n".join([title, "", markdown(head, rows)])


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with padded columns (shared by every benchmark)."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(head), rule, *(line(row) for row in rows)])


def goals_summary(judged: Sequence[tuple[str, bool]]) -> str:
    """``goals met: N of M (missed: ...)`` for ``(key, met)`` pairs, and the load average."""
    missed = [key for key, met in judged if not met]
    text = f"goals met: {len(judged) - len(missed)} of {len(judged)}"
    text += f" (missed: {', '.join(missed)})" if missed else ""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{text}\nload average at end: {load}"


def summary(reports: Sequence[WorkloadReport]) -> str:
    """Goals met, and which were missed."""
    return goals_summary(
        [(result.key, result.met) for report in reports for result in report.results]
    )


def to_json(
    mode: str, machine: dict[str, str], repeats: int, reports: Sequence[WorkloadReport]
) -> dict[str, Any]:
    """Everything the tables show, as plain data."""
    return {
        "mode": mode,
        "machine": machine,
        "repeats": repeats,
        "workloads": {
            report.workload.name: {
                "rows": report.workload.rows,
                "shape": list(report.workload.shape),
                "dtype": DTYPE.name,
                "nbytes": report.workload.nbytes,
                "shard_bytes": report.workload.shard_bytes,
                "shards": report.shards,
                "shard_rows": report.shard_rows,
                "results": [result.to_json() for result in report.results],
            }
            for report in reports
        },
    }


def progress(message: str) -> None:
    """A progress note on stderr, so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch_directory(parent: str | None) -> Iterator[str]:
    """A fresh directory inside ``parent`` (default: the system temp dir), removed at the end."""
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix="memshard-bench-", dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both workloads, print the report and optionally write it as JSON."""
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    images, vectors = workloads_from(args)
    rng = np.random.default_rng(SEED)
    with scratch_directory(args.dir) as scratch:
        machine = machine_info(scratch)
        print(header(mode, machine, repeats), end="\n\n", flush=True)
        reports = [run_images(images, repeats, scratch, rng)]
        print(table(reports[-1]), end="\n\n", flush=True)
        reports.append(run_vectors(vectors, repeats, scratch, rng))
        print(table(reports[-1]), end="\n\n", flush=True)
    print(summary(reports), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(to_json(mode, machine, repeats, reports), file, indent=2)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
