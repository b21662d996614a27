"""What every benchmark in this folder shares: workloads, the command line, timing, preparation,
formatting, and the :class:`Report` each one prints and writes as JSON.

The benchmarks: ``python -m benchmarks`` (memshard against every peer format,
:mod:`benchmarks.suite`), ``benchmarks.torch_loader`` (DataLoader paths in depth),
``benchmarks.convert`` (HDF5 conversion), ``benchmarks.dask_write`` (parallel writes),
``benchmarks.reliability`` (checksums), ``benchmarks.larger_than_ram`` (one epoch of a
dataset larger than RAM against the disk's limits), ``benchmarks.manifest_scale`` (open,
refresh, commit and verify against the number of shards), ``benchmarks.ragged``
(variable-length fields against a flat memmap + offsets, HF datasets, LMDB and HDF5 vlen),
``benchmarks.ragged_torch`` (ragged batching modes and padding waste),
``benchmarks.codecs`` (the codec libraries compressed fields could use),
``benchmarks.compressed`` (compressed fields against LMDB + lz4, Redis + ``savez_compressed``,
zarr + zstd and HDF5 + gzip / blosc),
``benchmarks.build`` (``ms.build`` with 1 and 2 workers and on Dask, against its peers, its
overheads, and a model of the full-size job), ``benchmarks.build_peers`` (those peers alone:
litdata, HF datasets, a pool feeding LMDB) and ``benchmarks.rasterise`` (the doodles
recipe's rasteriser).

The machine they run on is shared and its speed swings 1.5-2x between runs, so no figure is
reported alone: each is compared with a baseline measured in the same run, alternating within
every repeat, and speed goals are judged by reading the output, never by timed tests. A run
exits with 1 only when a correctness check failed (rows that differ from those written).
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
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

import memshard as ms

IMAGE_SHAPE = (3, 64, 64)
VECTOR_SHAPE = (128,)
DTYPE = np.dtype("float32")
IMAGE_BYTES = DTYPE.itemsize * math.prod(IMAGE_SHAPE)
#: 21,845 rows of 48 KiB: 48 KiB short of 1 GiB.
FULL_IMAGE_ROWS = 21_845
FULL_VECTOR_ROWS = 1_000_000
SEED = 20240601
BATCH_SIZE = 256
#: Buffer of the reads that pull files into the page cache.
WARM_READ_BYTES = 8 << 20
SCAN_BLOCK_ROWS = 1024

Number = TypeVar("Number", int, float)
Returned = TypeVar("Returned")
Candidate = TypeVar("Candidate", bound=Hashable)


# -- workloads -------------------------------------------------------------------------------
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

    def describe(self) -> str:
        """``N rows of float32[shape] (size)``."""
        return f"{self.rows:,} rows of float32{list(self.shape)} ({format_bytes(self.nbytes)})"

    @property
    def fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The ``fields`` argument of :func:`memshard.create`: one field ``x``."""
        return {"x": (DTYPE.name, self.shape)}


def shard_bytes_for(rows: int, full_rows: int, quick: bool) -> int:
    """memshard's default shard size in full mode; in quick mode the same fraction of the data,
    so that quick mode keeps the shard count of the full run and still crosses shard boundaries.

    Example:
        >>> shard_bytes_for(2_000, 21_845, quick=True) // 2**20
        23
    """
    if not quick:
        return ms.DEFAULT_SHARD_BYTES
    return max(1, ms.DEFAULT_SHARD_BYTES * rows // full_rows)


def rows_for_gib(size_gib: float) -> int:
    """Rows of float32[3, 64, 64] images in ``size_gib`` GiB (at least one).

    Example:
        >>> rows_for_gib(4.0)
        87381
    """
    return max(1, int(size_gib * (1 << 30)) // IMAGE_BYTES)


# -- the command line ------------------------------------------------------------------------
def positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse ``type``: the text as ``kind``, refused unless finite and above zero."""

    def parse(text: str) -> Number:
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid value" message
    return parse


class Option(NamedTuple):
    """A number option (above zero) and its value when not given, in full and in quick mode."""

    name: str
    kind: Callable[[str], Any]
    help: str
    full: Any
    quick: Any

    def described(self) -> str:
        """The help text, with the defaults if there are any (``None``: all).

        Example:
            >>> Option("--rows", int, "rows", 1_000_000, None).described()
            'rows (full 1,000,000, quick all)'
        """
        if self.full is None and self.quick is None:
            return self.help
        full, quick = ("all" if n is None else f"{n:,}" for n in (self.full, self.quick))
        defaults = f"default {full}" if full == quick else f"full {full}, quick {quick}"
        return f"{self.help} ({defaults})"


def workload_options(quick_images: int, quick_vectors: int) -> tuple[Option, Option]:
    """``--rows-images`` and ``--rows-vectors``: full sizes, or ``quick_*`` rows in quick mode."""
    images = Option(
        "--rows-images", int, "rows of float32[3,64,64] images", FULL_IMAGE_ROWS, quick_images
    )
    return images, Option(
        "--rows-vectors", int, "rows of float32[128] vectors", FULL_VECTOR_ROWS, quick_vectors
    )


class CommandLine(argparse.ArgumentParser):
    """The options every benchmark takes (``--quick``, ``--dir``, ``--json``, ``--repeats``,
    whose defaults are ``repeats``: full, quick) and its own; ``doc`` (the module's docstring)
    gives the description."""

    def __init__(
        self, prog: str, doc: str | None, *options: Option, repeats: tuple[int, int]
    ) -> None:
        super().__init__(prog=prog, description=(doc or "").strip().split("\n\n")[0])
        self.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
        self.add_argument("--dir", help="scratch directory (a temporary folder inside is removed)")
        self.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
        self.options = (Option("--repeats", int, "repeats per measurement", *repeats), *options)
        for option in self.options:
            self.add_argument(option.name, type=positive(option.kind), help=option.described())

    def parse(self, argv: Sequence[str] | None) -> dict[str, Any]:
        """The arguments by name, ``mode`` (``"quick"`` or ``"full"``) in place of ``quick``,
        every option not given at its value in that mode."""
        args = vars(self.parse_args(argv))
        quick = args.pop("quick")
        for option in self.options:
            dest = option.name.removeprefix("--").replace("-", "_")
            if args[dest] is None:
                args[dest] = option.quick if quick else option.full
        return {"mode": "quick" if quick else "full", **args}


@dataclass(frozen=True)
class Run:
    """What every benchmark's command line asks for (see :class:`CommandLine`)."""

    mode: str
    dir: str | None
    json: str | None
    repeats: int

    @property
    def quick(self) -> bool:
        """Whether this is a quick run."""
        return self.mode == "quick"


@dataclass(frozen=True)
class WorkloadRun(Run):
    """A run over the images and vectors workloads of :func:`workload_options`."""

    rows_images: int
    rows_vectors: int

    @property
    def images(self) -> Workload:
        """The images workload."""
        return self.workload("images", IMAGE_SHAPE, FULL_IMAGE_ROWS)

    @property
    def vectors(self) -> Workload:
        """The vectors workload."""
        return self.workload("vectors", VECTOR_SHAPE, FULL_VECTOR_ROWS)

    def workload(self, name: str, shape: tuple[int, ...], full_rows: int) -> Workload:
        """The workload ``name`` of the rows asked for, a full run having ``full_rows``."""
        rows = getattr(self, f"rows_{name}")
        return Workload(name, shape, rows, shard_bytes_for(rows, full_rows, self.quick))


# -- timing ----------------------------------------------------------------------------------
def timed(run: Callable[[], object]) -> int:
    """Nanoseconds of one call of ``run`` (see :func:`timed_call`)."""
    return timed_call(run)[0]


def timed_call(run: Callable[[], Returned]) -> tuple[int, Returned]:
    """Nanoseconds of one call of ``run``, garbage collection paused (not forced before: a
    full collection with torch loaded takes tens of milliseconds), and what it returned."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        result = run()
        return time.perf_counter_ns() - start, result
    finally:
        gc.enable()


def rotated(names: Sequence[Candidate], repeat: int) -> list[Candidate]:
    """The order of repeat ``repeat``: a different candidate first each time.

    Example:
        >>> rotated(["a", "b", "c"], 1)
        ['b', 'c', 'a']
    """
    start = repeat % max(1, len(names))
    return [*names[start:], *names[:start]]


def alternate(
    names: Sequence[Candidate],
    repeats: int,
    run: Callable[[Candidate, int], float],
    order: Callable[[Sequence[Candidate], int], list[Candidate]] = rotated,
) -> dict[Candidate, list[float]]:
    """``run(name, repeat)`` for every name in every repeat, in ``order(names, repeat)``, so
    that a slow spell of the machine hits the candidates alike; every value, by name."""
    samples: dict[Candidate, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in order(names, repeat):
            samples[name].append(run(name, repeat))
    return samples


def alternate_warm(
    names: Sequence[Candidate], repeats: int, run: Callable[[Candidate, int], float]
) -> dict[Candidate, list[float]]:
    """:func:`alternate`, after an untimed warm-up: ``run(name, -1)`` once for every name."""
    for name in names:
        run(name, -1)
    return alternate(names, repeats, run)


@dataclass
class Figure:
    """One measured figure: the median and every repeat's value."""

    value: float
    samples: list[float]
    #: Units of work in each timed run (accesses, gathers, rows or samples).
    work: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, samples: Sequence[float], work: int = 0, **extra: Any) -> Figure:
        """The median of ``samples``."""
        return cls(float(statistics.median(samples)), list(samples), work, dict(extra))


Figures = dict[str, Figure]


# -- preparation -----------------------------------------------------------------------------
def random_rows(workload: Workload, rng: np.random.Generator) -> np.ndarray:
    """A C-contiguous in-RAM array holding every row of ``workload``."""
    data = np.empty((workload.rows, *workload.shape), dtype=DTYPE)
    for start in range(0, workload.rows, 4096):
        rng.random(dtype=DTYPE, out=data[start : start + 4096])
    return data


def batches_of(data: np.ndarray, rows: int) -> list[np.ndarray]:
    """``data`` cut into consecutive views of ``rows`` rows."""
    return [data[start : start + rows] for start in range(0, len(data), rows)]


def write_dataset(path: str, workload: Workload, batches: Iterable[np.ndarray]) -> None:
    """Write ``batches`` to a new memshard dataset at ``path`` with ``extend``, then close."""
    with ms.create(path, fields=workload.fields, shard_bytes=workload.shard_bytes) as appender:
        for batch in batches:
            appender.extend({"x": batch})


def files_under(path: str) -> list[str]:
    """Every regular file under ``path`` (or ``path`` itself if it is a file), sorted."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(top, name) for top, _, names in os.walk(path) for name in names)


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


def remove(path: str) -> None:
    """Remove a file or directory tree if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def clean_slate(paths: Sequence[str], nbytes: int) -> None:
    """Before a timed write: remove earlier outputs, flush dirty pages, and write to
    ``nbytes`` of fresh memory and free it (pages the host reclaimed are slow on first touch,
    and a timed write should not pay for that)."""
    for path in paths:
        remove(path)
    os.sync()
    block = np.ones(nbytes, dtype=np.uint8)
    del block


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


def progress(message: str) -> None:
    """A progress note on stderr, so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- formatting ------------------------------------------------------------------------------
def three_digits(value: float) -> str:
    """``value`` with three significant digits (no exponent below 1000).

    Example:
        >>> three_digits(1.1), three_digits(42.345), three_digits(812.4)
        ('1.10', '42.3', '812')
    """
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f}"


def scaled(value: float, units: Sequence[tuple[str, float]], below: str) -> str:
    """``value`` in the first of ``units`` (suffix, scale; largest first) it reaches, else
    ``below``."""
    for unit, scale in units:
        if value >= scale:
            return f"{three_digits(value / scale)}{unit}"
    return below


def format_ns(ns: float) -> str:
    """A duration with a readable unit.

    Example:
        >>> format_ns(812.4), format_ns(2_310_000.0)
        ('812 ns', '2.31 ms')
    """
    return scaled(ns, ((" s", 1e9), (" ms", 1e6), (" us", 1e3)), f"{ns:.0f} ns")


def format_duration(seconds: float) -> str:
    """A long duration in s, min, h or days.

    Example:
        >>> format_duration(42.0), format_duration(600.0), format_duration(7200.0)
        ('42.0 s', '10.0 min', '2.00 h')
    """
    units = ((" days", 86400.0), (" h", 3600.0), (" min", 60.0))
    return scaled(seconds, units, f"{three_digits(seconds)} s")


def format_bytes(nbytes: float) -> str:
    """A size in binary units (signed if negative).

    Example:
        >>> format_bytes(3 << 29), format_bytes(-2048)
        ('1.50 GiB', '-2.00 KiB')
    """
    units = ((" GiB", 1 << 30), (" MiB", 1 << 20), (" KiB", 1 << 10))
    size = abs(nbytes)
    return ("-" if nbytes < 0 else "") + scaled(size, units, f"{size:.0f} B")


def format_rate(bytes_per_s: float) -> str:
    """A throughput in MB/s or GB/s (powers of 10).

    Example:
        >>> format_rate(412_345_678.0), format_rate(12_300_000_000.0)
        ('412 MB/s', '12.3 GB/s')
    """
    return scaled(bytes_per_s, ((" GB/s", 1e9),), f"{three_digits(bytes_per_s / 1e6)} MB/s")


def format_count(value: float) -> str:
    """A count with k/M suffixes.

    Example:
        >>> format_count(252_400.0), format_count(812.0)
        ('252k', '812')
    """
    return scaled(value, (("M", 1e6), ("k", 1e3)), f"{value:.0f}")


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with padded columns."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(head), rule, *(line(row) for row in rows)])


# -- goals and the report --------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A goal: a ratio to the baseline of at least ``min_ratio``, or a value below
    ``max_value``; neither is a figure shown for context."""

    min_ratio: float | None = None
    max_value: float | None = None

    def describe(self, show: Callable[[float], str]) -> str:
        """The goal as the tables print it, ``show`` formatting ``max_value``."""
        if self.min_ratio is not None:
            return f">= {self.min_ratio:.2f}x"
        if self.max_value is not None:
            return f"< {show(self.max_value)}"
        return "none (context)"

    def met(self, ratio: float | None, value: float) -> bool | None:
        """Whether ``ratio`` or ``value`` meets the goal (``None`` without a goal)."""
        if self.min_ratio is not None:
            return ratio is not None and ratio >= self.min_ratio
        if self.max_value is not None:
            return value < self.max_value
        return None


@dataclass(frozen=True)
class Result:
    """One row of a table: a throughput (``unit="B/s"``) or a size (``"bytes"``), its ratio to
    a baseline of the same run, and its goal."""

    key: str
    measurement: str
    value: float
    unit: str
    ratio: float | None = None
    target: Target = Target()
    context: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def show(self, value: float) -> str:
        """``value`` in this row's unit."""
        return format_rate(value) if self.unit == "B/s" else format_bytes(value)

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (``None`` without a goal)."""
        return self.target.met(self.ratio, self.value)

    def cells(self) -> list[str]:
        """The table row: measurement, result, ratio, goal, met."""
        result = self.show(self.value) + (f" ({self.context})" if self.context else "")
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}x"
        return [self.measurement, result, ratio, self.target.describe(self.show), yes_no(self.met)]

    def to_json(self) -> dict[str, Any]:
        """Every figure, the goal flattened into ``min_ratio`` and ``max_value``."""
        record = asdict(self)
        record.update(record.pop("target"), goal=self.target.describe(self.show), met=self.met)
        return record


RESULT_HEAD = ["measurement", "result", "ratio", "goal", "met"]


def tally(what: str, judged: Sequence[tuple[str, bool]], others: str) -> str:
    """``what: N of M (others: keys)``.

    Example:
        >>> tally("goals met", [("a", True), ("b", False)], "missed")
        'goals met: 1 of 2 (missed: b)'
    """
    missed = [key for key, ok in judged if not ok]
    text = f"{what}: {len(judged) - len(missed)} of {len(judged)}"
    return text + (f" ({others}: {', '.join(missed)})" if missed else "")


def yes_no(met: bool | None) -> str:
    """A table's ``met`` cell."""
    return {True: "yes", False: "no", None: "-"}[met]


class Report:
    """What one benchmark run prints and records.

    The header (title, mode, machine, how to read the figures) and each section are printed
    as they come; goals and correctness checks are judged along the way; :meth:`finish`
    prints the summary and writes :attr:`record` (plain data, with ``mode``, ``machine`` and
    ``seconds``) as JSON and, if asked, everything printed as markdown.
    """

    def __init__(self, title: str, mode: str, scratch: str, method: Sequence[str]) -> None:
        self.started = time.monotonic()
        self.machine = machine_info(scratch)
        self.record: dict[str, Any] = {"mode": mode, "machine": self.machine}
        self.goals: list[tuple[str, bool]] = []
        self.checks: list[tuple[str, bool]] = []
        self.blocks: list[str] = []
        lines = [f"# {title} ({mode} mode)", ""]
        lines += [f"- {name}: {value}" for name, value in self.machine.items()]
        self.add("\n".join(lines + [f"- {line}" for line in method]))

    def add(self, *blocks: str, at: int | None = None) -> None:
        """Print ``blocks`` (markdown) now, as one section; the markdown file has it at
        position ``at`` (default: after the others)."""
        text = "\n\n".join(block for block in blocks if block)
        print(text, end="\n\n", flush=True)
        self.blocks.insert(len(self.blocks) if at is None else at, text)

    def goal(self, key: str, met: bool) -> bool:
        """Record whether the goal ``key`` was met in this run."""
        self.goals.append((key, met))
        return met

    def check(self, key: str, passed: bool) -> bool:
        """Record a correctness check: a failed one makes the run exit with 1."""
        self.checks.append((key, passed))
        return passed

    def summary(self) -> str:
        """Goals met and checks passed (naming the others), load average, run time."""
        lines = [tally("goals met", self.goals, "missed")]
        lines += [tally("checks passed", self.checks, "failed")] if self.checks else []
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
        seconds = self.record["seconds"]
        return "\n".join([*lines, f"load average at end: {load}", f"ran in {seconds:.0f} s"])

    def finish(self, json_path: str | None, markdown_path: str | None = None) -> int:
        """Print the summary, write the files asked for; 1 if a check failed, else 0."""
        self.record["seconds"] = time.monotonic() - self.started
        summary = self.summary()
        print(summary, flush=True)
        if markdown_path is not None:
            with open(markdown_path, "w") as file:
                file.write("\n\n".join([*self.blocks, summary]) + "\n")
        if json_path is not None:
            with open(json_path, "w") as file:
                json.dump(self.record, file, indent=1)
                file.write("\n")
        return 0 if all(passed for _, passed in self.checks) else 1


# -- the machine -----------------------------------------------------------------------------
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
        commit, changes = (
            subprocess.run([*git, *args], capture_output=True, text=True, check=True).stdout.strip()
            for args in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "--", "."])
        )
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
