"""What the page cache holds of mapped rows, and asking the kernel to read rows ahead.

A gather from a mapped file whose pages are not in the page cache faults on one page after
another, and each fault waits for its own read from the disk: the reads of a batch run one at
a time, at the disk's latency. Asking the kernel for every row first (``MADV_WILLNEED``) starts
all the reads at once, so the gather waits for about one round of I/O instead. On rows already
cached the advice only costs a system call per run of adjacent rows, which is why a reader asks
first whether a batch is cached (:func:`is_resident`, one ``mincore`` call) and advises only
batches that are not. :func:`advised_ahead` lets a reader copy rows while the advice of later
rows is still being given (``madvise`` waits while the disk's queue is full).

Both :func:`advise_will_need` and :func:`is_resident` work on any array whose rows lie in
mapped memory (a segment of :mod:`memshard.mappings`); neither reads a byte of the array nor
fails for a reason of its rows: the kernel's answers are advice and hints, and a refusal
leaves the reads to the faults. Rows copied out of the page cache go to buffers that start on
a page (:func:`page_aligned_empty`). No state outlives a call: the thread of
:func:`advised_ahead` is joined before it returns, so there is nothing to reset after
``fork``.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
#: Alignment of the arrays gathers allocate (see :func:`page_aligned_empty`).
PAGE_SIZE = 4096


def _libc_function(name: str, *argtypes: Any) -> Any:
    function = getattr(ctypes.CDLL(None, use_errno=True), name)
    function.restype = ctypes.c_int
    function.argtypes = list(argtypes)
    return function


_LIBC_MADVISE: Any = _libc_function("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_LIBC_MINCORE: Any = _libc_function("mincore", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def _address(array: np.ndarray) -> int:
    address: int = array.__array_interface__["data"][0]
    return address


def advise_will_need(array: np.ndarray, rows: np.ndarray) -> int:
    """Ask the kernel to start reading ``rows`` of a mapped array now (``MADV_WILLNEED``).

    The reads run asynchronously and in parallel, so a gather of cold rows that follows waits
    for one batch of I/O instead of one read per row in turn. Adjacent rows are advised
    together. Returns the number of ``madvise`` calls made.

    Parameters:
        array: rows in mapped memory (C-contiguous rows, any sample shape).
        rows: indices into ``array`` (in range, any order, repeats allowed).
    """
    if rows.size == 0 or not array.size:
        return 0
    wanted = np.unique(rows)
    return advise_ranges(array, wanted, wanted + 1)


def advise_ranges(array: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> int:
    """Ask the kernel to start reading rows ``starts[i]:stops[i]`` of a mapped array now
    (``MADV_WILLNEED``), for every ``i``; ``starts`` sorted, ranges non-empty and in range.
    Ranges whose pages touch are advised together. Returns the number of ``madvise`` calls.
    """
    if starts.size == 0 or not array.size:
        return 0
    page = mmap.PAGESIZE
    row_bytes = array.strides[0]
    base = _address(array)
    first_pages = (base + starts * row_bytes) // page
    ends = (base + stops * row_bytes + page - 1) // page
    ends = np.maximum.accumulate(ends)
    starts = first_pages
    gaps = np.flatnonzero(starts[1:] > ends[:-1]) + 1
    run_starts = starts[np.concatenate(([0], gaps))]
    run_ends = ends[np.concatenate((gaps - 1, [ends.size - 1]))]
    for first, last in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
        _LIBC_MADVISE(first * page, (last - first) * page, mmap.MADV_WILLNEED)
    return int(run_starts.size)


def is_resident(array: np.ndarray, row: int) -> bool:
    """Whether the page holding the first byte of row ``row`` of a mapped array is in the page
    cache and up to date (``mincore``); True where the kernel cannot tell (an empty row, a
    failed call), so that a caller advises nothing it cannot check.

    One page stands for a batch: a gather of random rows from data larger than memory finds
    its first row cached about as often as any other.
    """
    if not array.strides[0]:
        return True
    page = mmap.PAGESIZE
    address = (_address(array) + row * array.strides[0]) // page * page
    status = ctypes.create_string_buffer(1)
    if _LIBC_MINCORE(address, 1, status) != 0:
        return True
    return bool(status.raw[0] & 1)


def advised_ahead(items: Sequence[T], advise: Callable[[T], object]) -> Generator[T, None, None]:
    """Yield each of ``items`` once ``advise(item)`` has returned, the advice running in a
    thread of its own: the caller's work on an item (copying rows the kernel is reading)
    overlaps the advice of the items after it, whose ``madvise`` calls wait while the disk's
    queue is full. One item is advised and yielded without a thread.

    The thread lives for one pass: it is joined when the generator finishes or is closed
    (close it when leaving early), so nothing of it outlives the call, or a ``fork``.

    Raises:
        whatever ``advise`` raised, at the item it failed on.
    """
    if len(items) < 2:
        for item in items:
            advise(item)
            yield item
        return
    ready = threading.Semaphore(0)  # released once per item advised, or at the failure
    failed: list[tuple[int, BaseException]] = []
    stop = threading.Event()

    def run() -> None:
        for index, item in enumerate(items):
            if stop.is_set():
                return
            try:
                advise(item)
            except BaseException as exc:  # handed to the consumer, which raises it
                failed.append((index, exc))
                ready.release()
                return
            ready.release()

    thread = threading.Thread(target=run, name="memshard-advise", daemon=True)
    thread.start()
    try:
        for index, item in enumerate(items):
            ready.acquire()
            if failed and failed[0][0] == index:
                raise failed[0][1]
            yield item
    finally:
        stop.set()
        thread.join()


def page_aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An uninitialised C-contiguous array starting on a page boundary.

    Shard rows are page-aligned; copying them to a destination a few bytes past a page
    boundary hits a slow path of common ``memcpy`` implementations (4K aliasing), several
    times slower for large rows. ``np.empty`` of a large array typically starts 16 bytes in.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + PAGE_SIZE, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE_SIZE
    return raw[start : start + nbytes].view(dtype).reshape(shape)
