"""The machine's physical limits, measured in the same run as the figures they bound.

memcpy bandwidth bounds every warm read; the page-cache read rate bounds any read of a cached
file through ``read``/``pread``; ``f.write`` into the page cache bounds an unsynced write and
``f.write`` + ``fsync`` the rate of any durable write to this disk (the conversion and dask
benchmarks measure only that one, as the bound of their writes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import core
from .core import Figure, Figures, Result, format_bytes

BLOCK_BYTES = 8 << 20
#: Bytes each limit moves: a full run, and a quick one.
FULL_BYTES = 512 << 20
QUICK_BYTES = 32 << 20
MEMCPY = "memcpy (np.copyto)"
PAGE_CACHE_READ = "page-cache read (preadv, 8 MiB blocks)"
WRITE = "f.write into the page cache"
WRITE_FSYNC = "f.write + fsync (disk)"
LIMITS = (MEMCPY, PAGE_CACHE_READ, WRITE, WRITE_FSYNC)


def write_file(path: str, block: memoryview, nbytes: int, sync: bool) -> None:
    """Write ``nbytes`` to a new file at ``path`` in ``os.write`` calls of ``block``, then
    ``fsync`` it if ``sync``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, nbytes, len(block)):
            view = block[: min(len(block), nbytes - start)]
            while view:
                view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_range(path: str, buffer: memoryview, start: int = 0, end: int | None = None) -> int:
    """Read bytes ``start:end`` of ``path`` (default: all) with ``preadv`` into ``buffer``,
    over and over; return the bytes read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        offset, stop = start, os.fstat(fd).st_size if end is None else end
        while offset < stop and (count := os.preadv(fd, [buffer[: stop - offset]], offset)):
            offset += count
        return offset - start
    finally:
        os.close(fd)


def measure_limits(
    scratch: str, nbytes: int, repeats: int, names: Sequence[str] = LIMITS
) -> Figures:
    """Bytes per second of each limit of ``names`` over ``nbytes``, alternating within every
    repeat, after one untimed run of each (to fault in the buffers and the file's pages)."""
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.zeros(nbytes, dtype=np.uint8)
    block = memoryview(np.ones(min(BLOCK_BYTES, nbytes), dtype=np.uint8).data)
    path = os.path.join(scratch, "limits.bin")
    runs = {
        MEMCPY: lambda: np.copyto(target, source),
        PAGE_CACHE_READ: lambda: read_range(path, block),
        WRITE: lambda: write_file(path, block, nbytes, sync=False),
        WRITE_FSYNC: lambda: write_file(path, block, nbytes, sync=True),
    }

    def run(name: str, repeat: int) -> float:
        if name in (WRITE, WRITE_FSYNC):
            core.clean_slate([], nbytes)
        elif name == PAGE_CACHE_READ:
            core.warm_page_cache([path])
        return nbytes / (core.timed(runs[name]) / 1e9)

    write_file(path, block, nbytes, sync=True)
    samples = core.alternate_warm(names, repeats, run)
    os.unlink(path)
    return {name: Figure.of(values) for name, values in samples.items()}


def disk_result(scratch: str, quick: bool, repeats: int) -> Result:
    """The disk's write rate with ``fsync`` (:data:`WRITE_FSYNC` over :data:`QUICK_BYTES` or
    :data:`FULL_BYTES`), as the row of a report whose writes it bounds."""
    nbytes = QUICK_BYTES if quick else FULL_BYTES
    figure = measure_limits(scratch, nbytes, repeats, [WRITE_FSYNC])[WRITE_FSYNC]
    block = format_bytes(min(BLOCK_BYTES, nbytes))
    return Result(
        "disk_write_fsync",
        f"disk: `os.write` of {format_bytes(nbytes)} in {block} blocks + `fsync`",
        figure.value,
        "B/s",
        details={"median_ns": nbytes / figure.value * 1e9},
    )
