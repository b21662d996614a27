"""What every benchmark in this folder shares: workloads, timing, preparation, formatting.

The benchmarks themselves: ``python -m benchmarks`` (the comparison with every peer format,
:mod:`benchmarks.suite`), ``benchmarks.torch_loader`` (samplers and loaders in depth),
``benchmarks.convert`` (conversion from HDF5) and ``benchmarks.reliability`` (checksums).

The machine they run on is shared and its speed swings 1.5-2x between runs, so no figure is
reported alone: each is compared with a baseline measured in the same run, alternating within
every repeat, and speed goals are judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
from dataclasses import dataclass
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


# -- timing ----------------------------------------------------------------------------------
def ready(run: Run) -> Setup:
    """A setup with nothing to prepare."""
    return lambda: run


def timed(run: Callable[[], object]) -> int:
    """Nanoseconds of one call of ``run``, garbage collection paused (not forced before: a
    full collection with torch loaded takes tens of milliseconds)."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run()
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def time_once(setup: Setup) -> int:
    """Nanoseconds of one call of the run ``setup()`` returns (setup untimed, collected
    garbage first, gc paused)."""
    run = setup()
    gc.collect()
    return timed(run)


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
