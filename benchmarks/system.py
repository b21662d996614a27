"""What the benchmarks ask of the operating system: a process's memory, the page cache.

Shared by every benchmark here, so each measures memory and cold reads the same way.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def memory_of(pid: int | str = "self") -> dict[str, int]:
    """Bytes of RSS, USS (Private_Clean + Private_Dirty) and anonymous private memory
    (Private_Dirty + Swap) of a process, from ``/proc/PID/smaps_rollup``.

    RSS and USS count page-cache pages the process has mapped (a memory-mapped file it read),
    which the kernel drops whenever it needs the memory; ``private`` is what the process
    itself allocated and would leak.
    """
    kib: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                kib[name] = int(value.split()[0])
    return {
        "rss": kib["Rss"] << 10,
        "uss": (kib["Private_Clean"] + kib["Private_Dirty"]) << 10,
        "private": (kib["Private_Dirty"] + kib.get("Swap", 0)) << 10,
    }


def announce(queue: Any, worker_id: int) -> None:
    """``worker_init_fn``: report this worker's pid and memory before its first batch."""
    queue.put((worker_id, os.getpid(), memory_of()))


def resident_bytes(paths: Sequence[str]) -> tuple[int, int]:
    """Bytes of ``paths`` in the page cache, and their total size, by ``mincore`` (a fresh
    mapping reports the page cache without reading anything)."""
    resident = total = 0
    for path in paths:
        size = os.path.getsize(path)
        total += size
        if not size:
            continue
        pages = -(-size // PAGE)
        vector = ctypes.create_string_buffer(pages)
        with open(path, "rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as m:
            probe = np.frombuffer(m, dtype=np.uint8)
            status = _LIBC.mincore(ctypes.c_void_p(probe.ctypes.data), size, vector)
            del probe
        if status != 0:
            raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
        resident += np.frombuffer(vector.raw, dtype=np.uint8).__and__(1).sum() * PAGE
    return min(int(resident), total), total


def evict(paths: Sequence[str]) -> None:
    """Drop ``paths`` from the page cache (pages mapped by a live process stay)."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
