"""The machine's physical limits, measured in the same run as the formats they bound.

memcpy bandwidth bounds every warm read; the page-cache read rate bounds any read of a cached
file through ``read``/``pread``; ``f.write`` into the page cache bounds an unsynced write and
``f.write`` + ``fsync`` the rate of any durable write to this disk.
"""

from __future__ import annotations

import os

import numpy as np

from .compare import Figure, Figures, alternate
from .core import timed, touch_and_free_memory, warm_page_cache

BLOCK_BYTES = 8 << 20
MEMCPY = "memcpy (np.copyto)"
PAGE_CACHE_READ = "page-cache read (preadv, 8 MiB blocks)"
WRITE = "f.write into the page cache"
WRITE_FSYNC = "f.write + fsync (disk)"


def measure_limits(scratch: str, nbytes: int, repeats: int) -> Figures:
    """Bytes per second of each limit over ``nbytes``, alternating within every repeat."""
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.zeros(nbytes, dtype=np.uint8)
    block = np.ones(min(BLOCK_BYTES, nbytes), dtype=np.uint8)
    path = os.path.join(scratch, "limits.bin")

    def write(sync: bool) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for start in range(0, nbytes, len(block)):
                os.write(fd, block[: min(len(block), nbytes - start)])
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            while count := os.preadv(fd, [block], offset):
                offset += count
        finally:
            os.close(fd)

    runs = {
        MEMCPY: lambda: np.copyto(target, source),
        PAGE_CACHE_READ: read,
        WRITE: lambda: write(False),
        WRITE_FSYNC: lambda: write(True),
    }

    def run(name: str, repeat: int) -> float:
        if name in (WRITE, WRITE_FSYNC):
            os.sync()
            touch_and_free_memory(nbytes)
        elif name == PAGE_CACHE_READ:
            warm_page_cache([path])
        return nbytes / (timed(runs[name]) / 1e9)

    write(True)
    for name in runs:  # untimed: fault in both buffers and the file's pages
        run(name, -1)
    samples = alternate(list(runs), repeats, run)
    os.unlink(path)
    return {name: Figure.of(values) for name, values in samples.items()}
