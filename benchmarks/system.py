"""What the benchmarks ask of the operating system: processes' memory, the page cache, disks.

Shared by every benchmark here, so each measures memory and cold reads the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
#: A cold run counts only if at most this fraction of its files stayed in the page cache.
EVICTION_TOLERANCE = 0.02
#: Seconds between two samples of a process tree's memory.
SAMPLE_SECONDS = 0.01

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


def evict(paths: Sequence[str]) -> float:
    """Drop ``paths`` from the page cache (pages mapped by a live process stay); return the
    fraction of their bytes still cached, checked with ``mincore``."""
    os.sync()
    for path in paths:
        with open(path, "rb") as file:
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    resident, total = resident_bytes(paths)
    return resident / max(total, 1)


def status_bytes(pid: int | str, key: str) -> int | None:
    """A ``kB`` figure of ``/proc/PID/status`` in bytes (``None`` if the process is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    return None


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (started by any of its threads; none once it is gone)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as file:
                found += map(int, file.read().split())
    return found


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, at any depth."""
    return [found for child in children(pid) for found in (child, *descendants(child))]


class TreeSampler:
    """Samples the memory of the processes below ``root`` in a thread, while in a ``with``.

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

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            for pid in children(self.root):
                peak = status_bytes(pid, "VmHWM")
                if peak is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0))
            tree = [self.root, *descendants(self.root)]
            self.tree_rss = max(self.tree_rss, sum(status_bytes(pid, "VmRSS") or 0 for pid in tree))


def disk_counters(path: str) -> dict[str, int]:
    """Reads completed, sectors read and milliseconds busy of the disk holding ``path``, from
    ``/proc/diskstats`` (the whole machine's I/O on that disk, not only ours)."""
    device = os.stat(path).st_dev
    key = (os.major(device), os.minor(device))
    with open("/proc/diskstats") as file:
        for line in file:
            cells = line.split()
            if (int(cells[0]), int(cells[1])) == key:
                return {"reads": int(cells[3]), "sectors": int(cells[5]), "busy_ms": int(cells[12])}
    return {"reads": 0, "sectors": 0, "busy_ms": 0}


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An uninitialised C-contiguous array starting at a page boundary."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)
