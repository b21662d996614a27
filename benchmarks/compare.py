"""The comparison's measurements on stored formats: write, single row, gather, scan, cold gather.

Every measurement runs all formats within each repeat, starting with a different one each
time, so a slow spell of this shared machine hits them alike; each figure is the median of the
repeats. A slow format does less work per timed run (fewer accesses, gathers or rows, found by
timing one untimed run first) so that the suite ends in minutes; every figure is a rate or a
time per operation, so the amounts need not match.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

import memshard as ms

from .core import (
    Figure,
    Figures,
    Workload,
    alternate,
    clean_slate,
    remove,
    timed,
    warm_page_cache,
)
from .formats import Format, Reader, byte_view
from .system import EVICTION_TOLERANCE, evict

#: A format whose write takes longer than this is written only once.
SLOW_WRITE_SECONDS = 30.0
#: Bytes of one block of a sequential scan.
SCAN_BLOCK_BYTES = 4 << 20
#: The single-thread ``pread`` baseline of a cold gather, in the tables.
PREAD = "pread, 1 thread"
#: Reads in flight in the parallel ``pread`` baseline (as many threads).
PREAD_THREADS = 32
#: The parallel ``pread`` baseline of a cold gather: the disk's random-read rate with
#: :data:`PREAD_THREADS` reads in flight, in the tables.
PREAD_PARALLEL = f"pread, {PREAD_THREADS} threads"
#: memshard's gather without ``prefetch`` on a cold page cache, in the tables.
MEMSHARD_PLAIN = "memshard, no prefetch"
#: The figures of :func:`measure_extend`.
EXTEND = "memshard extend"
EXTEND_CLOSE = "memshard extend + close"
PLAIN_WRITE = "f.write"
PLAIN_WRITE_FSYNC = "f.write + fsync"


@dataclass(frozen=True)
class Effort:
    """How much each measurement does: repeats, and the seconds one timed run aims at."""

    repeats: int
    slow_repeats: int
    run_seconds: float


def measure_work(
    names: Sequence[str],
    work: Callable[[str, int, int], object],
    probe: int,
    limit: int,
    effort: Effort,
    figure: Callable[[int, int], float],
) -> Figures:
    """``figure(units, ns)`` of each name's ``work(name, units, repeat)``, alternating.

    ``units`` (at most ``limit``) is what lasts about ``effort.run_seconds``, judged by timing
    ``probe`` units once (untimed warm-up for the figures).
    """
    counts = {}
    for name in names:
        per_unit = max(timed(partial(work, name, probe, 0)), 1) / probe
        counts[name] = int(min(limit, max(1, effort.run_seconds * 1e9 / per_unit)))

    def run(name: str, repeat: int) -> float:
        return figure(counts[name], timed(partial(work, name, counts[name], repeat)))

    samples = alternate(names, effort.repeats, run)
    return {name: Figure.of(values, counts[name]) for name, values in samples.items()}


# -- writing ---------------------------------------------------------------------------------
def measure_writes(
    formats: Sequence[Format], batches: Sequence[np.ndarray], nbytes: int, repeats: int
) -> Figures:
    """Bytes per second of each format's ``write`` (including its close or flush).

    Before each timed write the previous copy is removed, dirty pages are flushed and fresh
    memory is touched, since memory the host reclaimed is slow to touch the first time. The
    last copy written stays for the read measurements. A format whose write took over
    :data:`SLOW_WRITE_SECONDS` is not written again (a million ``.npy`` files take minutes):
    its figure is the median of fewer repeats, as its samples show.
    """
    by_name = {fmt.name: fmt for fmt in formats}

    def run(name: str, repeat: int) -> float:
        fmt = by_name[name]
        if name in slow:
            return math.nan  # keep the copy already written
        fmt.remove()
        clean_slate([], nbytes)
        elapsed = timed(lambda: fmt.write(batches))
        if elapsed > SLOW_WRITE_SECONDS * 1e9:
            slow.add(name)
        return nbytes / (elapsed / 1e9)

    slow: set[str] = set()
    samples = alternate(list(by_name), repeats, run)
    return {
        name: Figure.of([v for v in values if not math.isnan(v)], len(batches))
        for name, values in samples.items()
    }


# -- warm reads ------------------------------------------------------------------------------
def open_warm(formats: Sequence[Format]) -> dict[str, Reader]:
    """A reader of every format, with its files in the page cache and its pages touched."""
    readers = {}
    for fmt in formats:
        warm_page_cache(fmt.files())
        reader = fmt.open()
        reader.warm()
        readers[fmt.name] = reader
    return readers


class WrongAnswer(RuntimeError):
    """A format returned other rows than were written: its figures would mean nothing."""


def check_readers(
    formats: Sequence[Format], readers: dict[str, Reader], data: np.ndarray, seed: int
) -> None:
    """Untimed: every reader returns the rows written, by ``row``, ``gather`` and ``scan``.

    Raises:
        WrongAnswer: naming the format and the read that differed.
    """
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(data), size=min(64, len(data)))
    for fmt in formats:
        reader = readers[fmt.name]
        out = fmt.empty(len(indices))
        reader.gather(indices, out)
        check_rows(fmt.name, "gather", out, data[indices])
        check_rows(fmt.name, "row", reader.row(int(indices[0])), data[indices[0]])
        start = int(indices[-1]) // 2
        block = fmt.empty(min(16, len(data) - start))
        reader.scan(start, block)
        check_rows(fmt.name, "scan", block, data[start : start + len(block)])


def check_rows(name: str, read: str, got: np.ndarray, expected: np.ndarray) -> None:
    """Raise :class:`WrongAnswer` unless ``got`` equals ``expected`` exactly."""
    if got.shape != expected.shape or not np.array_equal(got, expected):
        raise WrongAnswer(f"{name}: {read} returned other rows than were written")


def measure_rows(
    readers: dict[str, Reader], rows: int, accesses: int, effort: Effort, seed: int
) -> Figures:
    """Nanoseconds of one ``row(i)`` (get + copy) at random ``i``, per format."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, rows, size=(effort.repeats, accesses)).tolist()

    def access(name: str, count: int, repeat: int) -> None:
        for index in indices[repeat][:count]:
            readers[name].row(index)

    return measure_work(list(readers), access, 100, accesses, effort, lambda n, ns: ns / n)


def measure_gathers(
    formats: Sequence[Format],
    readers: dict[str, Reader],
    gather_rows: int,
    per_run: int,
    effort: Effort,
    seed: int,
) -> Figures:
    """Nanoseconds of one gather of ``gather_rows`` random unsorted rows into a ready array."""
    rows = formats[0].workload.rows
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, rows, size=(effort.repeats, per_run, gather_rows))
    outs = {fmt.name: fmt.empty(gather_rows) for fmt in formats}
    for out in outs.values():
        out.fill(0)

    def gather(name: str, count: int, repeat: int) -> None:
        for chosen in indices[repeat][:count]:
            readers[name].gather(chosen, outs[name])

    return measure_work(list(readers), gather, 1, per_run, effort, lambda n, ns: ns / n)


def measure_scans(
    formats: Sequence[Format], readers: dict[str, Reader], window: int, effort: Effort
) -> Figures:
    """Bytes per second copying rows in order, in blocks of :data:`SCAN_BLOCK_BYTES`."""
    row_bytes = formats[0].workload.row_bytes
    block = max(1, min(window, SCAN_BLOCK_BYTES // row_bytes))
    outs = {fmt.name: fmt.empty(block) for fmt in formats}
    for out in outs.values():
        out.fill(0)

    def scan(name: str, rows: int, repeat: int) -> None:
        for start in range(0, rows, block):
            readers[name].scan(start, outs[name][: min(block, rows - start)])

    def rate(rows: int, ns: int) -> float:
        return rows * row_bytes / (ns / 1e9)

    return measure_work(list(readers), scan, min(block, 256), window, effort, rate)


def close_all(readers: dict[str, Reader]) -> None:
    """Close every reader and drop the mappings they held."""
    for reader in readers.values():
        reader.close()
    readers.clear()
    gc.collect()


# -- cold reads ------------------------------------------------------------------------------
class PreadReader(Reader):
    """The physical baseline: one ``os.preadv`` per row, in request order from one thread, or
    from ``threads`` threads (a pool made when the reader opens) each reading every
    ``threads``-th row."""

    def __init__(self, path: str, threads: int = 1) -> None:
        self.offset = int(np.load(path, mmap_mode="r").offset)  # where the array data starts
        self.fd = os.open(path, os.O_RDONLY)
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def row(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        flat, size = byte_view(out)

        def read(first: int) -> None:
            for slot in range(first, len(indices), self.threads):
                offset = self.offset + int(indices[slot]) * size
                os.preadv(self.fd, [flat[slot * size : (slot + 1) * size]], offset)

        if self.pool is None:
            read(0)
        else:
            list(self.pool.map(read, range(self.threads)))

    def scan(self, start: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        os.close(self.fd)


@dataclass(frozen=True)
class ColdCandidate:
    """A way to gather cold rows: its files and how to open a reader over them."""

    name: str
    files: Callable[[], list[str]]
    open: Callable[[], Reader]
    cold: bool = True


def cold_candidates(formats: Sequence[Format]) -> list[ColdCandidate]:
    """Every on-disk format (memshard with ``prefetch``), memshard without it, and ``pread``
    from one thread and from :data:`PREAD_THREADS`."""
    candidates = [ColdCandidate(fmt.name, fmt.files, fmt.open) for fmt in formats if fmt.on_disk]
    by_name = {fmt.name: fmt for fmt in formats}
    memshard = by_name.get("memshard")
    if memshard is not None:
        candidates.append(ColdCandidate(MEMSHARD_PLAIN, memshard.files, memshard.open, False))
    memmap = by_name.get("np.memmap")
    if memmap is not None:
        path = memmap.files()[0]
        candidates.append(ColdCandidate(PREAD, lambda: [path], lambda: PreadReader(path)))
        candidates.append(
            ColdCandidate(PREAD_PARALLEL, lambda: [path], lambda: PreadReader(path, PREAD_THREADS))
        )
    return candidates


def measure_cold(
    formats: Sequence[Format], data: np.ndarray, gather_rows: int, repeats: int, seed: int
) -> tuple[Figures, dict[str, str]]:
    """Bytes per second of a random gather right after the data left the page cache.

    Each run evicts the candidate's files (``POSIX_FADV_DONTNEED``), checks with ``mincore``
    that at most :data:`EVICTION_TOLERANCE` of them stayed cached, opens a fresh reader and
    times one gather, then checks the rows (untimed). Returns the figures, and the
    candidates whose eviction failed, with why.
    """
    candidates = {candidate.name: candidate for candidate in cold_candidates(formats)}
    drop_caches = [fmt.drop_caches for fmt in formats]
    workload = formats[0].workload
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, workload.rows, size=(repeats, gather_rows))
    out = formats[0].empty(gather_rows)
    out.fill(0)
    residents: dict[str, list[float]] = {name: [] for name in candidates}

    def run(name: str, repeat: int) -> float:
        candidate = candidates[name]
        files = candidate.files()
        for drop in drop_caches:
            drop()
        gc.collect()
        residents[name].append(evict(files))
        reader = candidate.open()
        try:
            gather = reader.cold_gather if candidate.cold else reader.gather
            elapsed = timed(lambda: gather(indices[repeat], out))
        finally:
            reader.close()
        check_rows(name, "cold gather", out, data[indices[repeat]])
        return gather_rows * workload.row_bytes / (elapsed / 1e9)

    samples = alternate(list(candidates), repeats, run)
    failures = {
        name: f"{max(values):.1%} of its files stayed in the page cache after eviction"
        for name, values in residents.items()
        if max(values) > EVICTION_TOLERANCE
    }
    figures = {
        name: Figure.of(values, gather_rows, resident_after_eviction=max(residents[name]))
        for name, values in samples.items()
    }
    return figures, failures


# -- conversion ------------------------------------------------------------------------------
def measure_conversion(source: Format, scratch: str, repeats: int) -> Figures:
    """Bytes per second of ``memshard.from_hdf5`` with 1 and 2 workers, against reading the
    same HDF5 file with h5py (:class:`~benchmarks.formats.hdf5_file.PlainRead`), page cache
    warm."""
    from .formats.hdf5_file import PlainRead

    path = os.path.join(source.root, "data.h5")
    target = os.path.join(scratch, "converted")
    nbytes = source.workload.nbytes
    runs: dict[str, Callable[[], object]] = {
        "h5py read": PlainRead(path),
        "from_hdf5, 1 worker": lambda: ms.from_hdf5(path, target, workers=1, progress=False),
        "from_hdf5, 2 workers": lambda: ms.from_hdf5(path, target, workers=2, progress=False),
    }
    warm_page_cache([path])

    def run(name: str, repeat: int) -> float:
        clean_slate([target], nbytes)
        return nbytes / (timed(runs[name]) / 1e9)

    samples = alternate(list(runs), repeats, run)
    remove(target)
    return {name: Figure.of(values) for name, values in samples.items()}


# -- memshard's writes against plain file writes ----------------------------------------------
def measure_extend(
    workload: Workload, batches: Sequence[np.ndarray], repeats: int, scratch: str
) -> Figures:
    """Bytes per second of memshard's ``extend`` of every batch against ``f.write`` of the
    same batches to one file, each at two points: after the last batch (the page cache only;
    a sealed shard's fsync runs on memshard's worker thread) and after ``close()`` (memshard
    commits: fsync, manifest, rename) or ``fsync`` + close. The two alternate every repeat.
    """
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

    passes = {"memshard": memshard_pass, "plain": plain_pass}
    times: dict[str, list[tuple[int, int]]] = {name: [] for name in passes}

    def run(name: str, repeat: int) -> float:
        gc.disable()
        try:
            times[name].append(passes[name]())
        finally:
            gc.enable()
        return 0.0

    alternate(list(passes), repeats, run)
    clean_slate([dataset_path, file_path], 0)

    def rates(name: str, part: int) -> list[float]:
        return [workload.nbytes / (sample[part] / 1e9) for sample in times[name]]

    return {
        EXTEND: Figure.of(rates("memshard", 0), len(batches)),
        PLAIN_WRITE: Figure.of(rates("plain", 0), len(batches)),
        EXTEND_CLOSE: Figure.of(rates("memshard", 1), len(batches)),
        PLAIN_WRITE_FSYNC: Figure.of(rates("plain", 1), len(batches)),
    }
