"""One epoch of a dataset larger than this machine's RAM, against what its disk can give.

Run from the repository root, on a quiet machine (not in CI; its quick mode is)::

    python -m benchmarks.larger_than_ram                 # 1.25x RAM of 48 KiB rows (long)
    python -m benchmarks.larger_than_ram --size-gb 4     # a shorter run that fits in RAM
    python -m benchmarks.larger_than_ram --quick         # 50 MB, seconds (the smoke test)

Every other figure of the benchmarks fits in the page cache, or is cold only because its files
were evicted. This one writes float32[3, 64, 64] rows (48 KiB each) with ``ms.create`` +
``extend`` until the dataset outgrows RAM, measures the disk on the same files (sequential
``preadv`` of 8 MiB and random 48 KiB row reads from 2, 8 and 32 threads, with ``O_DIRECT``
so the page cache plays no part), then reads one epoch through :func:`memshard.torch.loader`
(2 workers, batches of 256) twice: with :class:`memshard.torch.ShardAwareSampler` and
``prefetch=True``, and with torch's plain ``RandomSampler``. It reports samples/s and MB/s
against those limits, the time to the first batch, the data read from disk, and the workers'
RSS and ``Private_Dirty`` sampled from ``/proc/PID/smaps_rollup`` during the epoch.

It refuses to start without free space for the dataset plus a margin, and removes the dataset
at the end, also after an error or Ctrl-C. ``--max-seconds`` stops an epoch early (a random
order on a slow disk can take hours) and the report then gives the rate over what was read.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import multiprocessing
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler

import memshard as ms
import memshard.torch as mt

from .core import (
    BATCH_SIZE,
    DTYPE,
    IMAGE_BYTES,
    IMAGE_SHAPE,
    SEED,
    CommandLine,
    Option,
    Report,
    alternate,
    format_bytes,
    format_count,
    format_duration,
    format_ns,
    format_rate,
    markdown,
    progress,
    scratch_directory,
)
from .system import EVICTION_TOLERANCE, announce, disk_counters, evict, memory_of

NUM_WORKERS = 2
#: The default size: this many times the machine's RAM.
SIZE_OVER_RAM = 1.25
QUICK_SIZE_GB = 0.05
#: Free space asked for beyond the dataset: a fixed part plus a fraction of the dataset.
MARGIN_BYTES = 1 << 30
MARGIN_FRACTION = 0.05
#: Rows are written by cycling through this many random rows, each stamped with its row number
#: (the bytes of element ``[0, 0, 0]`` hold it as an int32).
POOL_ROWS = 1024
SEQUENTIAL_BLOCK = 8 << 20
RANDOM_THREADS = (2, 8, 32)
#: Random row offsets drawn at once by a reading thread.
RANDOM_DRAW = 1024
#: Seconds between two samples of the workers' memory (``smaps_rollup`` walks the mappings).
MEMORY_SAMPLE_SECONDS = 0.5
CONTEXT = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class Config:
    """What to run, resolved from the command line."""

    mode: str
    size_bytes: int
    ram_bytes: int
    repeats: int
    limit_seconds: float
    max_seconds: float | None
    dir: str
    json: str | None

    @property
    def rows(self) -> int:
        """Rows of the dataset: ``size_bytes`` of 48 KiB rows (at least one batch)."""
        return max(BATCH_SIZE, self.size_bytes // IMAGE_BYTES)


def total_ram() -> int:
    """Bytes of physical memory (``MemTotal`` of ``/proc/meminfo``)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; the size defaults to :data:`SIZE_OVER_RAM` times the RAM (quick
    mode: :data:`QUICK_SIZE_GB`)."""
    options = CommandLine(
        "python -m benchmarks.larger_than_ram",
        __doc__,
        Option("--size-gb", float, f"dataset size in GB (default: {SIZE_OVER_RAM}x the RAM)",
               None, None),
        Option("--limit-seconds", float, "seconds of each disk-limit measurement", 5.0, 0.25),
        Option("--max-seconds", float, "stop an epoch after this many seconds (default: never)",
               None, None),
        repeats=(3, 1),
    )  # fmt: skip
    args = options.parse(argv)
    ram = total_ram()
    quick = args["mode"] == "quick"
    default_gb = QUICK_SIZE_GB if quick else SIZE_OVER_RAM * ram / 1e9
    return Config(
        mode=args["mode"],
        size_bytes=int((args["size_gb"] or default_gb) * 1e9),
        ram_bytes=ram,
        repeats=args["repeats"],
        limit_seconds=args["limit_seconds"],
        max_seconds=args["max_seconds"],
        dir=os.path.abspath(args["dir"] or os.curdir),
        json=args["json"],
    )


# -- free space ------------------------------------------------------------------------------
def space_needed(size_bytes: int) -> int:
    """Free bytes a run of ``size_bytes`` asks for: the dataset and a margin.

    Example:
        >>> space_needed(20 * 10**9)  # 20 GB + 1 GiB + 5%
        22073741824
    """
    return size_bytes + MARGIN_BYTES + int(MARGIN_FRACTION * size_bytes)


def free_bytes(path: str) -> tuple[str, int]:
    """The nearest existing directory at or above ``path``, and the bytes an unprivileged
    user may still write on its filesystem (``os.statvfs``)."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    stat = os.statvfs(existing)
    return existing, stat.f_bavail * stat.f_frsize


def lack_of_space(directory: str, size_bytes: int) -> str | None:
    """Why a run of ``size_bytes`` in ``directory`` must not start, or ``None`` if it may."""
    where, free = free_bytes(directory)
    needed = space_needed(size_bytes)
    if free >= needed:
        return None
    return (
        f"not enough free space in {where}: {free / 1e9:.2f} GB free (os.statvfs), the run "
        f"needs {needed / 1e9:.2f} GB ({size_bytes / 1e9:.2f} GB of rows + "
        f"{(needed - size_bytes) / 1e9:.2f} GB margin); free some space, pass --dir on "
        "another filesystem, or a smaller --size-gb. Nothing was written."
    )


# -- writing ---------------------------------------------------------------------------------
def write(path: str, rows: int, pool: np.ndarray) -> dict[str, float]:
    """Write ``rows`` rows of the cycled, stamped ``pool`` with ``ms.create`` + ``extend`` in
    batches of :data:`BATCH_SIZE` and one commit; the bytes and the seconds it took."""
    start = time.perf_counter()
    reported = 0
    with ms.create(path, fields={"x": (DTYPE.name, IMAGE_SHAPE)}) as appender:
        for first in range(0, rows, BATCH_SIZE):
            block = pool[first % POOL_ROWS :][: min(BATCH_SIZE, rows - first)]
            block.view(np.int32)[:, 0, 0, 0] = np.arange(first, first + len(block))
            appender.extend({"x": block})
            if first * 10 // rows > reported:
                reported = first * 10 // rows
                progress(f"written {format_bytes(first * IMAGE_BYTES)} ({reported * 10}%)")
    seconds = time.perf_counter() - start
    nbytes = rows * IMAGE_BYTES
    return {"bytes": nbytes, "seconds": seconds, "bytes_per_s": nbytes / seconds}


# -- the disk's limits -----------------------------------------------------------------------
class ShardFiles:
    """The shard files of a dataset, open for reading in row order, bypassing the page cache
    (``O_DIRECT``) where the filesystem allows it; closed exactly once, on leaving the
    ``with``."""

    def __init__(self, dataset: ms.Dataset) -> None:
        self.paths = dataset.shard_files("x")
        self.rows = np.array([shard.rows for shard in dataset.shards], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.rows)[:-1]))
        self.data_offsets = np.array([data_offset(path) for path in self.paths], dtype=np.int64)
        self.direct = direct_io_works(self.paths[0])
        self.fds: list[int] = []

    def __enter__(self) -> ShardFiles:
        flags = os.O_RDONLY | (os.O_DIRECT if self.direct else 0)
        try:
            for path in self.paths:
                self.fds.append(os.open(path, flags))
                if not self.direct:
                    os.posix_fadvise(self.fds[-1], 0, 0, os.POSIX_FADV_RANDOM)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def cold(self) -> None:
        """Without ``O_DIRECT``: drop the files from the page cache before a measurement."""
        if not self.direct:
            evict(self.paths)

    def random_offsets(self, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
        """``(fd, offset)`` of uniformly random rows, for ever."""
        fds = np.array(self.fds)
        while True:
            rows = rng.integers(0, int(self.rows.sum()), RANDOM_DRAW)
            files = np.searchsorted(self.starts, rows, side="right") - 1
            offsets = self.data_offsets[files] + (rows - self.starts[files]) * IMAGE_BYTES
            yield from zip(fds[files].tolist(), offsets.tolist(), strict=True)


def data_offset(path: str) -> int:
    """Where the rows of the ``.npy`` file at ``path`` start (read from its header)."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        if version != (1, 0):  # memshard writes version 1.0 only (spec/FORMAT.md)
            raise ValueError(f"{path}: .npy version {version}, expected (1, 0)")
        np.lib.format.read_array_header_1_0(file)
        return file.tell()


def direct_io_works(path: str) -> bool:
    """Whether ``path``'s filesystem reads with ``O_DIRECT`` (tmpfs, for one, may not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            with mmap.mmap(-1, mmap.PAGESIZE) as buffer:
                os.preadv(fd, [buffer], 0)
        finally:
            os.close(fd)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        return False
    return True


def sequential_rate(files: ShardFiles, seconds: float) -> float:
    """Bytes per second of one thread reading the files in row order in blocks of
    :data:`SEQUENTIAL_BLOCK`, for ``seconds`` (or until the last byte)."""
    files.cold()
    nbytes = 0
    with mmap.mmap(-1, SEQUENTIAL_BLOCK) as buffer:
        start = time.perf_counter()
        for fd in files.fds:
            offset = 0
            while time.perf_counter() - start < seconds and (
                count := os.preadv(fd, [buffer], offset)
            ):
                offset += count
            nbytes += offset
        return nbytes / (time.perf_counter() - start)


def random_rate(files: ShardFiles, threads: int, seconds: float, seed: int) -> float:
    """Rows per second read by ``threads`` threads, each ``preadv``-ing random whole rows one
    after another for ``seconds``."""
    files.cold()
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def read(thread: int) -> None:
        offsets = files.random_offsets(np.random.default_rng([seed, thread]))
        with mmap.mmap(-1, IMAGE_BYTES) as buffer:
            for fd, offset in offsets:
                os.preadv(fd, [buffer], offset)
                counts[thread] += 1
                if time.perf_counter() >= deadline:
                    return

    start = time.perf_counter()
    workers = [threading.Thread(target=read, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


SEQUENTIAL = "sequential"


def limit_names() -> list[str]:
    """The disk measurements: sequential, then random reads per thread count."""
    return [SEQUENTIAL, *(f"random_{threads}" for threads in RANDOM_THREADS)]


def measure_disk(files: ShardFiles, config: Config, round_seed: int) -> dict[str, list[float]]:
    """Every disk limit ``config.repeats`` times, alternating; sequential in bytes/s, random
    in rows/s."""

    def run(name: str, repeat: int) -> float:
        if name == SEQUENTIAL:
            return sequential_rate(files, config.limit_seconds)
        threads = int(name.removeprefix("random_"))
        return random_rate(files, threads, config.limit_seconds, round_seed * 1000 + repeat)

    return alternate(limit_names(), config.repeats, run)


def disk_limits(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, Any]:
    """Each limit's median over the runs before and after the epochs, and the runs."""
    limits: dict[str, Any] = {}
    for name in limit_names():
        median = float(statistics.median(before[name] + after[name]))
        limits[name] = {"median": median, "before": before[name], "after": after[name]}
    return limits


# -- the epochs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A way to read an epoch: the sampler (given the dataset path) and ``prefetch``."""

    key: str
    name: str
    prefetch: bool
    sampler: Callable[[str], Sampler[int]]


def plain_random(path: str) -> Sampler[int]:
    """torch's ``RandomSampler`` over every row, seeded."""
    rows = len(ms.open(path))
    return RandomSampler(range(rows), generator=torch.Generator().manual_seed(SEED))


def shard_aware(path: str) -> Sampler[int]:
    """memshard's sampler, default window, seeded."""
    return mt.ShardAwareSampler(path, seed=SEED)


CANDIDATES = (
    Candidate("shard_aware_prefetch", "`ShardAwareSampler` + `prefetch=True`", True, shard_aware),
    Candidate("random", "`RandomSampler` (plain)", False, plain_random),
)


class WorkerMemory:
    """Samples the RSS and ``Private_Dirty + Swap`` of the workers that announce themselves on
    ``announced`` (:func:`benchmarks.system.announce`), in a thread, while in a ``with``, and
    once more on leaving it."""

    def __init__(self, announced: Any) -> None:
        self.announced = announced
        #: Per worker pid: the highest figures seen, and how many samples were taken.
        self.workers: dict[int, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-memory", daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                _, pid, memory = self.announced.get_nowait()
                self._record(pid, memory)
        for pid in list(self.workers):
            # OSError: the worker is gone; KeyError: it is a zombie (empty smaps_rollup).
            with contextlib.suppress(OSError, KeyError):
                self._record(pid, memory_of(pid))

    def _record(self, pid: int, memory: dict[str, int]) -> None:
        peaks = self.workers.setdefault(pid, {"peak_rss": 0, "peak_private": 0, "samples": 0})
        peaks["peak_rss"] = max(peaks["peak_rss"], memory["rss"])
        peaks["peak_private"] = max(peaks["peak_private"], memory["private"])
        peaks["samples"] += 1


def check_batch(x: torch.Tensor, seen: np.ndarray, marks: np.ndarray) -> bool:
    """Whether every row of the batch ``x`` is a row written (its stamp names it, and its
    second element is that row's) and none came before in this epoch; marks them seen."""
    rows = x[:, 0, 0, 0].numpy().view(np.int32).astype(np.int64)
    if rows.size == 0 or rows.min() < 0 or rows.max() >= seen.size:
        return False
    fresh = not seen[rows].any() and np.unique(rows).size == rows.size
    seen[rows] = True
    return fresh and np.array_equal(x[:, 0, 0, 1].numpy(), marks[rows % marks.size])


def warm_up(path: str) -> None:
    """One batch through a loader like the epochs', untimed: what a process pays once (torch
    starting its shared-memory manager for the first batch handed over) falls on neither."""
    loader = mt.loader(
        path,
        batch_size=BATCH_SIZE,
        num_workers=NUM_WORKERS,
        persistent_workers=False,
        multiprocessing_context=CONTEXT,
    )
    next(iter(loader))


def run_epoch(
    candidate: Candidate, path: str, paths: Sequence[str], config: Config, marks: np.ndarray
) -> dict[str, Any]:
    """One epoch of ``candidate`` right after evicting every shard file: its figures, and
    whether every row came back right (``rows_ok``)."""
    sampler = candidate.sampler(path)
    announced = CONTEXT.Queue()
    loader = mt.loader(
        path,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=NUM_WORKERS,
        prefetch=candidate.prefetch,
        persistent_workers=False,
        multiprocessing_context=CONTEXT,
        worker_init_fn=partial(announce, announced),
    )
    resident = evict(paths)
    seen = np.zeros(config.rows, dtype=bool)
    samples, first, rows_ok = 0, math.nan, True
    before = disk_counters(paths[0])
    with WorkerMemory(announced) as memory:
        start = last = time.perf_counter()
        iterator = iter(loader)
        # Timed to the last batch: stopping the workers (at the end, or when cut short) is not.
        for batch in iterator:
            last = time.perf_counter()
            first = last - start if samples == 0 else first
            rows_ok = check_batch(batch["x"], seen, marks) and rows_ok
            samples += len(batch["x"])
            if config.max_seconds is not None and last - start > config.max_seconds:
                break
        seconds = last - start
        after = disk_counters(paths[0])
    del iterator
    complete = samples == config.rows
    return {
        "samples": samples,
        "epoch_samples": config.rows,
        "complete": complete,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "bytes_per_s": samples * IMAGE_BYTES / seconds,
        "first_batch_seconds": first,
        "disk_bytes_read": (after["sectors"] - before["sectors"]) * 512,
        "resident_before": resident,
        "rows_ok": bool(rows_ok and (seen.all() or not complete)),
        "workers": [{"pid": pid, **figures} for pid, figures in memory.workers.items()],
    }


def add_ratios(epoch: dict[str, Any], limits: dict[str, Any]) -> None:
    """The epoch's speed as a fraction of each disk limit: bytes/s of the sequential read,
    rows/s of each random read."""
    ratios = {SEQUENTIAL: epoch["bytes_per_s"] / limits[SEQUENTIAL]["median"]}
    for threads in RANDOM_THREADS:
        key = f"random_{threads}"
        ratios[key] = epoch["samples_per_s"] / limits[key]["median"]
    epoch["ratios"] = ratios


# -- the report ------------------------------------------------------------------------------
def dataset_section(config: Config, shards: int, written: dict[str, float]) -> str:
    """The dataset and the speed it was written at."""
    ratio = config.rows * IMAGE_BYTES / config.ram_bytes
    return "\n".join(
        [
            f"## dataset: {format_bytes(config.rows * IMAGE_BYTES)}, {ratio:.2f}x the RAM "
            f"({format_bytes(config.ram_bytes)})",
            "",
            f"{config.rows:,} rows of float32{list(IMAGE_SHAPE)} ({format_bytes(IMAGE_BYTES)}) in "
            f"{shards} shards, written with `ms.create` + `extend` (batches of {BATCH_SIZE}, "
            f"one commit, synced): {format_rate(written['bytes_per_s'])} "
            f"({format_duration(written['seconds'])})",
        ]
    )


def limits_section(limits: dict[str, Any], direct: bool, config: Config) -> str:
    """The disk's limits, medians and the runs before and after the epochs."""
    how = "`O_DIRECT`" if direct else "buffered, files evicted first (no `O_DIRECT` here)"

    def show(name: str, value: float) -> str:
        if name == SEQUENTIAL:
            return format_rate(value)
        return f"{format_count(value)} rows/s ({format_rate(value * IMAGE_BYTES)})"

    rows = []
    for name, figures in limits.items():
        label = (
            f"sequential `preadv` of {format_bytes(SEQUENTIAL_BLOCK)}, 1 thread"
            if name == SEQUENTIAL
            else f"random rows, `preadv` of 48 KiB, {name.removeprefix('random_')} threads"
        )
        runs = [", ".join(show(name, v) for v in figures[when]) for when in ("before", "after")]
        rows.append([label, show(name, figures["median"]), *runs])
    head = ["disk limit (same shard files)", "median", "before the epochs", "after the epochs"]
    note = (
        f"Reads {how}, {config.limit_seconds:g} s per run, {config.repeats} runs before and "
        "after the epochs, the measurements alternating."
    )
    return "\n\n".join(["## the disk's limits", markdown(head, rows), note])


def epochs_section(
    epochs: dict[str, dict[str, Any]], limits: dict[str, Any], config: Config
) -> str:
    """The table of the epochs and the notes that say how to read it; the random-read limit
    shown is the thread count that read fastest."""
    best = max(RANDOM_THREADS, key=lambda threads: limits[f"random_{threads}"]["median"])
    rows = []
    for candidate in CANDIDATES:
        epoch = epochs[candidate.key]
        workers = epoch["workers"]
        rss = max((w["peak_rss"] for w in workers), default=0)
        private = max((w["peak_private"] for w in workers), default=0)
        done = (
            "yes" if epoch["complete"] else f"no: {epoch['samples'] / epoch['epoch_samples']:.0%}"
        )
        rows.append(
            [
                candidate.name,
                f"{format_count(epoch['samples_per_s'])} samples/s",
                format_rate(epoch["bytes_per_s"]),
                f"{epoch['ratios'][SEQUENTIAL]:.2f}x",
                f"{epoch['ratios'][f'random_{best}']:.2f}x",
                format_ns(epoch["first_batch_seconds"] * 1e9),
                format_bytes(epoch["disk_bytes_read"]),
                format_bytes(rss),
                format_bytes(private),
                done,
            ]
        )
    head = [
        "loader", "speed", "MB/s", "of sequential", f"of random rows, {best} threads",
        "first batch", "read from disk", "worker RSS, peak", "worker Private_Dirty, peak",
        "whole epoch",
    ]  # fmt: skip
    notes = [
        f"`mt.loader`, `num_workers={NUM_WORKERS}` (forked), `batch_size={BATCH_SIZE}`, "
        "batched fetch; every shard file synced and dropped from the page cache "
        "(`posix_fadvise(POSIX_FADV_DONTNEED)`, checked with `mincore`) before each epoch. "
        "Speed over the whole epoch, worker start-up included; first batch: from `iter(loader)`. "
        "Read from disk: /proc/diskstats of the whole disk over the epoch. Worker memory: the "
        f"highest of either worker, sampled every {MEMORY_SAMPLE_SECONDS:g} s from "
        "`/proc/PID/smaps_rollup`; RSS counts the shard pages a worker has mapped (page cache "
        "the kernel drops when it needs the memory), `Private_Dirty` (+ Swap) what the worker "
        "allocated itself.",
    ]
    stopped = [c.key for c in CANDIDATES if not epochs[c.key]["complete"]]
    if stopped:
        notes.append(
            f"STOPPED EARLY at --max-seconds {config.max_seconds:g}: {', '.join(stopped)}; "
            "their speed is over the samples read, not a whole epoch."
        )
    worst = max(epoch["resident_before"] for epoch in epochs.values())
    if worst > EVICTION_TOLERANCE:
        notes.append(
            f"WARNING: {worst:.0%} of the shard bytes stayed cached after eviction (tmpfs?): "
            "these epochs were not cold; use --dir on a disk filesystem."
        )
    return "\n\n".join(["## one epoch", markdown(head, rows), *notes])


# -- the job ---------------------------------------------------------------------------------
def method(config: Config) -> list[str]:
    """The header lines of the report."""
    size = config.rows * IMAGE_BYTES
    lines = [
        f"torch: {torch.__version__}; dataset {format_bytes(size)} "
        f"({size / config.ram_bytes:.2f}x this machine's RAM), written, measured and removed "
        "in this run",
    ]
    if size <= config.ram_bytes:
        lines.append(
            "NOTE: this dataset fits in RAM, so its epochs are cold only because its files "
            f"were evicted; the full run (default size, {SIZE_OVER_RAM}x RAM) does not fit"
        )
    return lines


def measure(config: Config, scratch: str, out: Report) -> None:
    """Write the dataset in ``scratch``, measure the disk and the epochs, record and print
    every figure (the caller removes ``scratch``)."""
    path = os.path.join(scratch, "rows")
    pool = np.random.default_rng(SEED).random((POOL_ROWS, *IMAGE_SHAPE), dtype=DTYPE)
    progress(f"writing {format_bytes(config.rows * IMAGE_BYTES)} to {path}")
    written = write(path, config.rows, pool)
    dataset = ms.open(path)
    out.add(dataset_section(config, len(dataset.shards), written))
    epochs: dict[str, dict[str, Any]] = {}
    with ShardFiles(dataset) as files:
        progress(f"disk limits, {config.repeats} x {len(limit_names())} runs")
        before = measure_disk(files, config, round_seed=0)
        warm_up(path)
        for candidate in CANDIDATES:
            progress(f"one epoch: {candidate.name}")
            epochs[candidate.key] = run_epoch(
                candidate, path, files.paths, config, pool[:, 0, 0, 1]
            )
            out.check(f"{candidate.key}_rows", epochs[candidate.key]["rows_ok"])
        progress(f"disk limits again, {config.repeats} x {len(limit_names())} runs")
        after = measure_disk(files, config, round_seed=1)
    limits = disk_limits(before, after)
    for epoch in epochs.values():
        add_ratios(epoch, limits)
    out.add(limits_section(limits, files.direct, config))
    out.add(epochs_section(epochs, limits, config))
    out.record.update(
        size_bytes=config.rows * IMAGE_BYTES,
        ram_bytes=config.ram_bytes,
        rows=config.rows,
        row_bytes=IMAGE_BYTES,
        shards=len(dataset.shards),
        batch_size=BATCH_SIZE,
        num_workers=NUM_WORKERS,
        max_seconds=config.max_seconds,
        write=written,
        disk={"direct_io": files.direct, "limit_seconds": config.limit_seconds, **limits},
        epochs=epochs,
    )
    dataset.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Refuse without the space, else run, print the report and optionally write JSON; the
    dataset is removed at the end whatever happens."""
    config = parse_args(argv)
    refusal = lack_of_space(config.dir, config.rows * IMAGE_BYTES)
    if refusal is not None:
        print(f"python -m benchmarks.larger_than_ram: {refusal}", file=sys.stderr)
        return 2
    scratch = ""
    try:
        with scratch_directory(config.dir) as scratch:
            out = Report("memshard larger-than-RAM epoch", config.mode, scratch, method(config))
            measure(config, scratch, out)
    except KeyboardInterrupt:
        gone = "removed" if scratch and not os.path.exists(scratch) else "NOT removed"
        print(f"interrupted; the dataset in {scratch or config.dir} was {gone}", file=sys.stderr)
        return 130
    removed = out.check("dataset_removed", not os.path.exists(scratch))
    out.record["removed"] = removed
    out.add(f"The dataset ({scratch}) was {'removed' if removed else 'NOT removed'}.")
    return out.finish(config.json)


if __name__ == "__main__":
    sys.exit(main())
