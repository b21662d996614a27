"""Converting HDF5 files into memshard, against plain h5py reading of the same files.

Run from the repository root::

    python -m benchmarks.convert                # full: a 4 GiB contiguous file and two others
    python -m benchmarks.convert --quick        # ~64 MiB files, well under a minute
    python -m benchmarks.convert --size-gib 8   # another size of the contiguous file

Three HDF5 files of float32[3, 64, 64] samples plus an int64 ``labels`` dataset (with a
``labels`` attribute naming 1,000 classes, which memshard takes as the label vocabulary and
checks every value against) are written block by block with h5py, never held in RAM whole:

* ``contiguous``: contiguous layout, ``--size-gib`` of data;
* ``chunked``: the same size in chunks of 64 rows, uncompressed;
* ``gzip``: chunks of 64 rows, gzip level 1 + shuffle, a quarter of the rows (it is slow).

For each file, in the same run and alternating within every repeat:

* the baseline: plain h5py reading every dataset in chunk-aligned blocks of about 8 MiB with
  ``read_direct`` into one reusable buffer (the best plain h5py can do), page cache warm;
* ``memshard.from_hdf5(src, dst, workers=1)`` and ``workers=2`` (``progress=False``), each in a
  fresh child process so that its peak RSS can be taken; ``dst`` is deleted (and its
  ``.memshard-partial`` staging directory) and dirty pages are flushed before every run.

Throughput is MB/s (10**6 bytes) of source data (the datasets' bytes, not the file's, which
for gzip is smaller); a conversion's ratio is its throughput over the plain read's.

Peak RSS is the high-water mark ``VmHWM`` of ``/proc/PID/status``: the child reports its own
when the conversion returns, and a thread of this process samples the worker processes that
memshard starts (the child's descendants) every :data:`SAMPLE_SECONDS` while they run. The
tree figure is the sum of these peaks, an upper bound of the tree's peak (the peaks need not
coincide; the sampled peak of the tree's summed ``VmRSS`` is in the JSON). ``ru_maxrss`` is not
used for the figure: a process started by ``vfork`` + ``exec`` (as :mod:`subprocess` does)
starts with its parent's high-water mark, so the child's ``RUSAGE_SELF`` shows this process's
peak and ``RUSAGE_CHILDREN`` at least the converter's; the JSON keeps them for comparison.

A conversion also writes and fsyncs every byte, so the disk's write bandwidth with fsync is
measured in the same run as context: it bounds what any conversion can reach.

Goals are judged by reading this output (or ``--json``), never by timed tests.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import h5py
import numpy as np

import memshard as ms
from benchmarks.core import (
    IMAGE_SHAPE,
    SEED,
    Run,
    Setup,
    benchmark_parser,
    format_bytes,
    goals_summary,
    machine_info,
    markdown,
    median_ns,
    parse_positive,
    progress,
    remove,
    scratch_directory,
    shard_bytes_for,
    three_digits,
    touch_and_free_memory,
    warm_page_cache,
)

DTYPE = np.dtype("float32")
LABEL_DTYPE = np.dtype("int64")
IMAGES = "images"
LABELS = "labels"
#: Classes named in the ``labels`` attribute of the label dataset.
LABEL_CLASSES = 1000
CLASS_NAMES = [f"class_{index:04d}" for index in range(LABEL_CLASSES)]
IMAGE_BYTES = DTYPE.itemsize * math.prod(IMAGE_SHAPE)
#: Bytes of source data per row: one image and one label.
ROW_BYTES = IMAGE_BYTES + LABEL_DTYPE.itemsize

FULL_SIZE_GIB = 4.0
QUICK_SIZE_GIB = 1 / 16
FULL_REPEATS = 3
QUICK_REPEATS = 1
#: Rows per chunk of the chunked files (3 MiB of images).
CHUNK_ROWS = 64
GZIP_LEVEL = 1
#: The gzip file holds this fraction of the rows of the others.
GZIP_FRACTION = 0.25
#: Size of a read block of the baseline (whole chunks) and of a write block when building.
BLOCK_BYTES = 8 << 20
WORKER_COUNTS = (1, 2)

#: Disk write probe: this many bytes in ``os.write`` calls of :data:`DISK_BLOCK_BYTES`, fsync.
DISK_PROBE_BYTES = 512 << 20
DISK_BLOCK_BYTES = 8 << 20

MIN_RATIO = 0.8
#: Seconds between two samples of the worker processes' memory.
SAMPLE_SECONDS = 0.01
MAX_RSS_BYTES = 512 << 20

#: What a conversion child runs: ``python -c CHILD_CODE src dst workers shard_bytes``.
CHILD_CODE = (
    "import sys; from benchmarks.convert import conversion_child; "
    "sys.exit(conversion_child(sys.argv[1:]))"
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How one source file stores its datasets, and its share of the rows."""

    key: str
    description: str
    chunked: bool
    compression: str | None = None
    fraction: float = 1.0

    def filters(self) -> dict[str, Any]:
        """Compression keyword arguments of ``create_dataset``."""
        if self.compression is None:
            return {}
        return {"compression": self.compression, "compression_opts": GZIP_LEVEL, "shuffle": True}


LAYOUTS = (
    Layout("contiguous", "contiguous", chunked=False),
    Layout("chunked", f"chunks of {CHUNK_ROWS} rows, uncompressed", chunked=True),
    Layout(
        "gzip",
        f"chunks of {CHUNK_ROWS} rows, gzip level {GZIP_LEVEL} + shuffle",
        chunked=True,
        compression="gzip",
        fraction=GZIP_FRACTION,
    ),
)


@dataclass(frozen=True)
class Config:
    """What to run, resolved from the command line."""

    mode: str
    rows: int
    full_rows: int
    repeats: int
    dir: str | None
    json: str | None

    @property
    def quick(self) -> bool:
        """Whether this is the quick (smoke) run."""
        return self.mode == "quick"

    def rows_of(self, layout: Layout) -> int:
        """Rows of the file of ``layout``."""
        return max(1, round(self.rows * layout.fraction))

    @property
    def shard_bytes(self) -> int:
        """memshard's default in full mode; in quick mode the same fraction of the data, so the
        quick run cuts as many shards as the full one and ``workers=2`` has shards to share."""
        return shard_bytes_for(self.rows, self.full_rows, self.quick)


def rows_for_gib(size_gib: float) -> int:
    """Rows of float32[3, 64, 64] images in ``size_gib`` GiB (at least one).

    Example:
        >>> rows_for_gib(4.0)
        87381
    """
    return max(1, int(size_gib * (1 << 30)) // IMAGE_BYTES)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; the size defaults to the mode's."""
    parser = benchmark_parser(
        "python -m benchmarks.convert",
        "Convert HDF5 files (contiguous, chunked, gzip) with memshard.from_hdf5 and compare "
        "with plain h5py reading of the same files; report peak RSS and disk bandwidth.",
    )
    parser.add_argument(
        "--size-gib",
        type=float,
        help=f"GiB of images in the contiguous file (full {FULL_SIZE_GIB:g}, quick "
        f"{QUICK_SIZE_GIB:g}); the chunked file is as large, the gzip one {GZIP_FRACTION:g} of it",
    )
    args = parse_positive(parser, argv, ("rows_images", "repeats"))
    if args.rows_vectors is not None:
        parser.error("--rows-vectors: this benchmark converts images only")
    if args.size_gib is not None and not (args.size_gib > 0 and math.isfinite(args.size_gib)):
        parser.error(f"--size-gib must be > 0, got {args.size_gib}")
    if args.size_gib is not None and args.rows_images is not None:
        parser.error("give --size-gib or --rows-images, not both")
    quick = bool(args.quick)
    size_gib = args.size_gib or (QUICK_SIZE_GIB if quick else FULL_SIZE_GIB)
    return Config(
        mode="quick" if quick else "full",
        rows=args.rows_images or rows_for_gib(size_gib),
        full_rows=rows_for_gib(FULL_SIZE_GIB),
        repeats=args.repeats or (QUICK_REPEATS if quick else FULL_REPEATS),
        dir=args.dir,
        json=args.json,
    )


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """One row of the table: a throughput (``"B/s"``) or a size (``"bytes"``).

    ``ratio`` is a throughput over its baseline's; ``min_ratio`` and ``max_value`` are goals.
    """

    key: str
    measurement: str
    value: float
    unit: str
    ratio: float | None = None
    min_ratio: float | None = None
    max_value: float | None = None
    context: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def goal(self) -> str:
        """The goal as printed in the table."""
        if self.min_ratio is not None:
            return f">= {self.min_ratio:.2f}x"
        if self.max_value is not None:
            return f"< {format_value(self.max_value, self.unit)}"
        return "none (context)"

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (``None`` without a goal)."""
        if self.min_ratio is not None:
            return self.ratio is not None and self.ratio >= self.min_ratio
        if self.max_value is not None:
            return self.value < self.max_value
        return None

    def cells(self) -> list[str]:
        """The table row: measurement, result, ratio, goal, met."""
        result = format_value(self.value, self.unit)
        return [
            self.measurement,
            f"{result} ({self.context})" if self.context else result,
            "-" if self.ratio is None else f"{self.ratio:.3f}x",
            self.goal,
            {True: "yes", False: "no", None: "-"}[self.met],
        ]

    def to_json(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        record = asdict(self)
        record.update(goal=self.goal, met=self.met)
        return record


def format_value(value: float, unit: str) -> str:
    """A throughput in MB/s (10**6 bytes) or a size in binary units.

    Example:
        >>> format_value(1_234_567_890.0, "B/s"), format_value(300 << 20, "bytes")
        ('1235 MB/s', '300 MiB')
    """
    if unit == "B/s":
        return f"{three_digits(value / 1e6)} MB/s"
    return format_bytes(value)


@dataclass
class SourceReport:
    """What was measured on one source file."""

    layout: Layout
    rows: int
    file_bytes: int = 0
    shards: int = 0
    shard_rows: int = 0
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        """Bytes of source data: every image and label."""
        return self.rows * ROW_BYTES


# -- source files ----------------------------------------------------------------------------
def aligned_block_rows(chunk_rows: int, row_bytes: int) -> int:
    """Rows per block: whole chunks, about :data:`BLOCK_BYTES` in all (at least one chunk).

    Example:
        >>> aligned_block_rows(1, 49152), aligned_block_rows(64, 49152)
        (170, 128)
    """
    chunk_bytes = chunk_rows * row_bytes
    return chunk_rows * max(1, BLOCK_BYTES // chunk_bytes)


def build_source(path: str, layout: Layout, rows: int, rng: np.random.Generator) -> None:
    """Write the HDF5 file of ``layout`` block by block: ``images`` holds pixel-like values
    (multiples of 1/255), ``labels`` class indices with the class names as an attribute."""
    chunk_rows = min(CHUNK_ROWS, rows) if layout.chunked else 1
    with h5py.File(path, "w") as handle:
        images = handle.create_dataset(
            IMAGES,
            shape=(rows, *IMAGE_SHAPE),
            dtype=DTYPE,
            chunks=(chunk_rows, *IMAGE_SHAPE) if layout.chunked else None,
            **layout.filters(),
        )
        labels = handle.create_dataset(
            LABELS,
            shape=(rows,),
            dtype=LABEL_DTYPE,
            chunks=(chunk_rows,) if layout.chunked else None,
            **layout.filters(),
        )
        labels.attrs["labels"] = np.array(CLASS_NAMES, dtype=h5py.string_dtype())
        block_rows = aligned_block_rows(chunk_rows, IMAGE_BYTES)
        values = np.empty((min(block_rows, rows), *IMAGE_SHAPE), dtype=DTYPE)
        for start in range(0, rows, block_rows):
            stop = min(rows, start + block_rows)
            block = values[: stop - start]
            pixels = rng.integers(0, 256, size=block.shape, dtype=np.uint8)
            np.multiply(pixels, np.float32(1 / 255), out=block)
            images.write_direct(block, dest_sel=np.s_[start:stop])
            labels[start:stop] = rng.integers(0, LABEL_CLASSES, size=stop - start)


def verify_conversion(src: str, dst: str) -> None:
    """Check that the dataset at ``dst`` holds exactly the rows and label names of ``src``."""
    dataset = ms.open(dst)
    if dataset.labels != {LABELS: tuple(CLASS_NAMES)}:
        raise AssertionError(f"{dst}: labels {list(dataset.labels)} differ from the source's")
    with h5py.File(src, "r") as handle:
        for name in (IMAGES, LABELS):
            source = handle[name]
            column = dataset[name]
            if column.shape != source.shape or column.dtype != source.dtype:
                raise AssertionError(f"{dst}: field {name!r} is {column.shape} {column.dtype}")
            step = aligned_block_rows(1, column.dtype.itemsize * math.prod(source.shape[1:]))
            for start in range(0, source.shape[0], step):
                expected = source[start : start + step]
                if not np.array_equal(np.asarray(column[start : start + step]), expected):
                    raise AssertionError(f"{dst}: field {name!r} differs from rows {start}+")


# -- candidates ------------------------------------------------------------------------------
def plain_h5py_read(path: str) -> Setup:
    """The baseline: every dataset read in chunk-aligned blocks of about :data:`BLOCK_BYTES`
    with ``read_direct`` into one buffer, allocated and touched before the timed run."""

    def setup() -> Run:
        with h5py.File(path, "r") as handle:
            plans = []
            for name in (IMAGES, LABELS):
                dataset = handle[name]
                row_bytes = dataset.dtype.itemsize * math.prod(dataset.shape[1:])
                chunk_rows = dataset.chunks[0] if dataset.chunks else 1
                block_rows = min(dataset.shape[0], aligned_block_rows(chunk_rows, row_bytes))
                plans.append((name, row_bytes, block_rows))
        buffer = np.ones(max(rows * size for _, size, rows in plans), dtype=np.uint8)

        def run() -> int:
            total = 0
            with h5py.File(path, "r") as handle:
                for name, row_bytes, block_rows in plans:
                    dataset = handle[name]
                    rows = dataset.shape[0]
                    for start in range(0, rows, block_rows):
                        stop = min(rows, start + block_rows)
                        out = buffer[: (stop - start) * row_bytes].view(dataset.dtype)
                        out = out.reshape(stop - start, *dataset.shape[1:])
                        dataset.read_direct(out, np.s_[start:stop])
                        total += out.nbytes
            return total

        return run

    return setup


class ConversionChild:
    """``from_hdf5`` in a fresh child process, started (imports done) before the timed run.

    The timed run tells the child to go and waits for its report; the child leaves with
    ``os._exit`` right after reporting, so interpreter teardown is not timed.
    """

    def __init__(self, src: str, dst: str, workers: int, shard_bytes: int) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT, *filter(None, [environment.get("PYTHONPATH")])]
        )
        command = [sys.executable, "-c", CHILD_CODE, src, dst, str(workers), str(shard_bytes)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment, text=True
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._stdin = self.process.stdin
        self._stdout = self.process.stdout
        if self._stdout.readline().strip() != "ready":
            self.process.wait()
            raise RuntimeError(f"conversion child failed to start (exit {self.process.returncode})")

    def run(self) -> dict[str, Any]:
        """Convert; return the child's report, with the peaks of its descendants."""
        sampler = TreeSampler(self.process.pid)
        sampler.start()
        try:
            self._stdin.write("go\n")
            self._stdin.flush()
            line = self._stdout.readline()
            code = self.process.wait()
        finally:
            sampler.finish()
        if code != 0 or not line:
            raise RuntimeError(f"conversion child failed (exit {code}); see its stderr above")
        report: dict[str, Any] = json.loads(line)
        report["worker_peaks"] = sorted(sampler.peaks.values(), reverse=True)
        report["sampled_tree_rss"] = sampler.tree_rss
        return report


def status_bytes(pid: int | str, key: str) -> int | None:
    """A ``kB`` figure of ``/proc/PID/status`` in bytes (``None`` if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        return None
    return None


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (started by any of its threads)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, at any depth."""
    return [found for child in children(pid) for found in (child, *descendants(child))]


class TreeSampler:
    """Samples the memory of the processes below ``root`` in a thread until :meth:`finish`.

    Peaks are kept for the children of ``root`` (the workers memshard starts); deeper
    processes count in the tree total only (``import h5py`` runs ``uname -p`` in a worker).
    """

    def __init__(self, root: int) -> None:
        self.root = root
        #: Highest ``VmHWM`` seen per child of ``root``.
        self.peaks: dict[int, int] = {}
        #: Highest sum of ``VmRSS`` of the root and its descendants in one sample.
        self.tree_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def finish(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        """Record the descendants' high-water marks and the tree's current total."""
        for pid in children(self.root):
            peak = status_bytes(pid, "VmHWM")
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0))
        total = sum(status_bytes(pid, "VmRSS") or 0 for pid in [self.root, *descendants(self.root)])
        self.tree_rss = max(self.tree_rss, total)


def conversion_child(argv: Sequence[str]) -> int:
    """The child's side of :class:`ConversionChild`: ``src dst workers shard_bytes``."""
    src, dst, workers, shard_bytes = argv[0], argv[1], int(argv[2]), int(argv[3])
    import memshard.hdf5  # noqa: F401  (imported before the timed run, as h5py)

    # Quick mode cuts the full run's number of shards from a small file: small on purpose.
    warnings.filterwarnings("ignore", category=ms.errors.SmallShardWarning)

    rss_at_start = status_bytes("self", "VmHWM")
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.perf_counter_ns()
    dataset = ms.from_hdf5(src, dst, workers=workers, shard_bytes=shard_bytes, progress=False)
    elapsed = time.perf_counter_ns() - start
    report = {
        "ns": elapsed,
        "rows": len(dataset),
        "shards": len(dataset.shards),
        "shard_rows": max(shard.rows for shard in dataset.shards),
        "rss_at_start": rss_at_start,
        "peak_rss": status_bytes("self", "VmHWM"),
        "ru_maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10,
        "ru_maxrss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10,
    }
    print(json.dumps(report), flush=True)
    os._exit(0)


def conversion(
    src: str, dst: str, workers: int, shard_bytes: int, nbytes: int, reports: list[Any]
) -> Setup:
    """A candidate: remove ``dst`` and its staging directory, flush dirty pages, touch and free
    ``nbytes`` of memory (the output's size) and start the child (all untimed), then convert
    (timed); the child's report goes to ``reports``."""

    def setup() -> Run:
        clear_output(dst)
        touch_and_free_memory(nbytes)
        child = ConversionChild(src, dst, workers, shard_bytes)
        return lambda: reports.append(child.run())

    return setup


def clear_output(dst: str) -> None:
    """Remove a conversion's output and staging directory, and flush dirty pages."""
    remove(dst)
    remove(dst + ms.convert.STAGING_SUFFIX)
    os.sync()


# -- measurements ----------------------------------------------------------------------------
def measure_source(
    config: Config, layout: Layout, scratch: str, rng: np.random.Generator
) -> SourceReport:
    """Build the file of ``layout``, time the baseline and both conversions, then delete it."""
    report = SourceReport(layout, config.rows_of(layout))
    src = os.path.join(scratch, f"{layout.key}.h5")
    dst = os.path.join(scratch, f"{layout.key}.memshard")
    progress(f"{layout.key}: writing {format_bytes(report.data_bytes)} ({layout.description})")
    build_source(src, layout, report.rows, rng)
    report.file_bytes = os.path.getsize(src)
    warm_page_cache([src])
    reports: dict[int, list[dict[str, Any]]] = {workers: [] for workers in WORKER_COUNTS}

    def trial() -> list[Setup]:
        conversions = [
            conversion(src, dst, workers, config.shard_bytes, report.data_bytes, reports[workers])
            for workers in WORKER_COUNTS
        ]
        return [plain_h5py_read(src), *conversions]

    progress(f"{layout.key}: timing h5py read and from_hdf5 x {config.repeats} repeats")
    try:
        baseline_ns, *conversion_ns = median_ns(config.repeats, trial, warmups=0)
        verify_conversion(src, dst)
    finally:
        clear_output(dst)
        remove(src)
    last = reports[WORKER_COUNTS[-1]][-1]
    report.shards, report.shard_rows = last["shards"], last["shard_rows"]
    add_figures(report, baseline_ns, conversion_ns, reports)
    return report


def add_figures(
    report: SourceReport,
    baseline_ns: float,
    conversion_ns: Sequence[float],
    reports: dict[int, list[dict[str, Any]]],
) -> None:
    """The throughput and memory rows of one source file."""
    key, data = report.layout.key, report.data_bytes
    baseline = data / (baseline_ns / 1e9)
    report.figures.append(
        Figure(
            key=f"{key}_h5py_read",
            measurement=f"{key}: plain h5py `read_direct`, ~8 MiB chunk-aligned blocks",
            value=baseline,
            unit="B/s",
            context="baseline",
        )
    )
    for workers, ns in zip(WORKER_COUNTS, conversion_ns, strict=True):
        speed = data / (ns / 1e9)
        child_ns = [sample["ns"] for sample in reports[workers]]
        report.figures.append(
            Figure(
                key=f"{key}_from_hdf5_workers_{workers}",
                measurement=f"{key}: `from_hdf5(workers={workers})`",
                value=speed,
                unit="B/s",
                ratio=speed / baseline,
                min_ratio=MIN_RATIO,
                details={"median_ns": ns, "child_ns": child_ns},
            )
        )
    for workers in WORKER_COUNTS:
        samples = reports[workers]
        peak = max(samples, key=lambda sample: sample["peak_rss"] + sum(sample["worker_peaks"]))
        converter, worker_peaks = peak["peak_rss"], peak["worker_peaks"]
        parts = f"converter {format_bytes(converter)}"
        if worker_peaks:
            parts += " + workers " + " + ".join(format_bytes(value) for value in worker_peaks)
        if workers > 1 and len(worker_peaks) != workers:
            parts += f" ({len(worker_peaks)} of {workers} workers sampled)"
        report.figures.append(
            Figure(
                key=f"{key}_peak_rss_workers_{workers}",
                measurement=f"{key}: peak RSS of `from_hdf5(workers={workers})` process tree",
                value=converter + sum(worker_peaks),
                unit="bytes",
                max_value=MAX_RSS_BYTES,
                context=f"{parts}; source file {format_bytes(report.file_bytes)}",
                details={
                    "converter": converter,
                    "workers": worker_peaks,
                    "converter_after_imports": peak["rss_at_start"],
                    "sampled_tree_rss": max(sample["sampled_tree_rss"] for sample in samples),
                    "ru_maxrss_self": peak["ru_maxrss_self"],
                    "ru_maxrss_children": peak["ru_maxrss_children"],
                    "source_file_bytes": report.file_bytes,
                },
            )
        )


def measure_disk(scratch: str, repeats: int) -> Figure:
    """Write :data:`DISK_PROBE_BYTES` to a new file in ``os.write`` calls of
    :data:`DISK_BLOCK_BYTES` and fsync it; median bytes per second."""
    path = os.path.join(scratch, "disk-probe.bin")
    block = np.random.default_rng(SEED).integers(0, 256, DISK_BLOCK_BYTES, dtype=np.uint8)
    count = DISK_PROBE_BYTES // DISK_BLOCK_BYTES

    def setup() -> Run:
        remove(path)
        os.sync()
        touch_and_free_memory(DISK_PROBE_BYTES)

        def run() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for _ in range(count):
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

        return run

    try:
        (ns,) = median_ns(repeats, lambda: [setup], warmups=0)
    finally:
        remove(path)
    return Figure(
        key="disk_write_fsync",
        measurement=f"disk: `os.write` of {format_bytes(DISK_PROBE_BYTES)} in "
        f"{format_bytes(DISK_BLOCK_BYTES)} blocks + `fsync`",
        value=DISK_PROBE_BYTES / (ns / 1e9),
        unit="B/s",
        details={"median_ns": ns},
    )


def bound_note(report: SourceReport, disk: Figure) -> str:
    """What reading at the baseline's speed, then writing at the disk's, would reach."""
    read = report.figures[0].value
    serial = 1 / (1 / read + 1 / disk.value)
    return (
        f"- {report.layout.key}: reading at the h5py speed then writing at the disk's, one "
        f"after the other, would reach {format_value(serial, 'B/s')} "
        f"({serial / read:.3f}x of the read)"
    )


# -- report ----------------------------------------------------------------------------------
def header(config: Config, machine: dict[str, str]) -> str:
    """What ran where, and how to read the table."""
    lines = [f"# memshard conversion benchmark ({config.mode} mode)", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += [
        f"- each figure: median of {config.repeats} repeats; the h5py read and both "
        "conversions alternate within every repeat, page cache warm for the source",
        "- throughput: MB/s (10**6 bytes) of source data; ratio = conversion throughput / "
        "plain h5py read throughput of the same file (1.00x = as fast)",
        f"- shard_bytes {format_bytes(config.shard_bytes)}",
        "- before each conversion and each disk probe, memory of the output's size is touched "
        "and freed: on a VM that hands free memory back to the host (virtio-balloon free page "
        "reporting), page-cache writes into reclaimed memory run several times slower",
    ]
    return "\n".join(lines)


def describe_sources(reports: Sequence[SourceReport]) -> list[str]:
    """One line per source file: rows, sizes, layout, shards."""
    return [
        f"- {report.layout.key}: {report.rows:,} rows of float32{list(IMAGE_SHAPE)} + int64 "
        f"labels ({format_bytes(report.data_bytes)} of data, file "
        f"{format_bytes(report.file_bytes)}; {report.layout.description}) -> "
        f"{report.shards} shards of up to {report.shard_rows:,} rows"
        for report in reports
    ]


def render(reports: Sequence[SourceReport], disk: Figure) -> str:
    """The table, then the source files and the disk bounds."""
    figures = [figure for report in reports for figure in report.figures] + [disk]
    head = ["measurement", "result", "ratio", "goal", "met"]
    table = markdown(head, [figure.cells() for figure in figures])
    notes = describe_sources(reports) + [bound_note(report, disk) for report in reports]
    return "\n\n".join(["## HDF5 -> memshard", table, "\n".join(notes)])


def summary(figures: Sequence[Figure]) -> str:
    """Goals met, and which were missed."""
    return goals_summary([(f.key, f.met) for f in figures if f.met is not None])


def to_json(
    config: Config,
    machine: dict[str, str],
    reports: Sequence[SourceReport],
    disk: Figure,
    seconds: float,
) -> dict[str, Any]:
    """Everything the table shows, as plain data."""
    return {
        "mode": config.mode,
        "machine": machine,
        "repeats": config.repeats,
        "shard_bytes": config.shard_bytes,
        "seconds": seconds,
        "sources": {
            report.layout.key: {
                "description": report.layout.description,
                "rows": report.rows,
                "data_bytes": report.data_bytes,
                "file_bytes": report.file_bytes,
                "shards": report.shards,
                "shard_rows": report.shard_rows,
                "results": [figure.to_json() for figure in report.figures],
            }
            for report in reports
        },
        "disk": disk.to_json(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the disk and every source file, print the report, optionally write JSON."""
    config = parse_args(argv)
    started = time.monotonic()
    rng = np.random.default_rng(SEED)
    with scratch_directory(config.dir) as scratch:
        machine = machine_info(scratch)
        print(header(config, machine), end="\n\n", flush=True)
        progress(f"disk: timing write + fsync of {format_bytes(DISK_PROBE_BYTES)}")
        disk = measure_disk(scratch, config.repeats)
        reports = [measure_source(config, layout, scratch, rng) for layout in LAYOUTS]
    print(render(reports, disk), end="\n\n", flush=True)
    figures = [figure for report in reports for figure in report.figures] + [disk]
    seconds = time.monotonic() - started
    print(summary(figures), flush=True)
    print(f"ran in {seconds:.0f} s", flush=True)
    if config.json:
        with open(config.json, "w") as file:
            json.dump(to_json(config, machine, reports, disk, seconds), file, indent=2)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
