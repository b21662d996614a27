"""Read-only mappings of shard files, and the per-process cache that bounds them.

Consecutive shards whose data sizes are whole pages are mapped *back to back* into one
reserved range of address space, so a column of many shards reads like one contiguous array:
a gather is one ``numpy.take`` and a slice across shard boundaries is still a view. Such a run
of shards is a *segment*. Shards are page-aligned in the file (the data offset is a multiple
of :data:`memshard.npyheader.DATA_ALIGN`), which is what lets the kernel map them this way.
No file descriptor stays open once a segment is mapped.

:data:`CACHE` bounds the kernel memory areas that segments mapped through it take in one
process (their number per process is limited; half the limit is taken), counting every such
mapping still alive: cached ones, and evicted ones that a view handed out still holds (a
segment is unmapped when the last array or view into it is gone, never before). When those
leave no room for a segment, :meth:`MappingCache.map` declines and the reader copies the rows
with :func:`read_rows`, which maps nothing. A dataset whose segments could not all stay mapped
is read one shard per segment instead (see ``memshard.reader``), so that a read maps only the
shards it needs. The cache is the only process-global state in memshard and is emptied in a
forked child, which maps shards itself.

:data:`MAPPED` knows the address range and files of every live mapping, so that a ``SIGBUS``
from a file truncated while mapped names that file (:mod:`memshard.sigbus`).
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from . import npyheader, sigbus
from .errors import (
    MappingLimitError,
    MemshardError,
    ReadFailedError,
    ShardHeaderError,
    ShardSizeError,
)
from .filemap import FIXED_MAPPINGS, address_of, map_over
from .layout import open_shard
from .manifest import FieldSpec, ShardFile
from .smallfile import read_small_file

#: Memory areas of mapped shards a process keeps where the kernel's limit is unknown.
DEFAULT_MAPPED_AREAS = 4096
#: Fewest memory areas of mapped shards a process keeps, however low the kernel's limit.
MIN_MAPPED_AREAS = 64
#: Where Linux states the most memory areas (mappings) a process may have: 65530 by default.
MAX_MAP_COUNT_PATH = "/proc/sys/vm/max_map_count"
#: Whether shards can be mapped back to back here: the data offset must be a whole number of
#: mapping pages, and the platform must offer ``MAP_FIXED``.
BACK_TO_BACK = npyheader.DATA_ALIGN % mmap.ALLOCATIONGRANULARITY == 0 and FIXED_MAPPINGS


@dataclass(frozen=True)
class SegmentFile:
    """One shard file of a segment: the manifest record and how many rows to map."""

    file: ShardFile
    manifest_rows: int
    sealed: bool
    rows: int


def mapping_capacity(max_map_count: int | None) -> int:
    """Memory areas a process gives mapped shards, given the kernel's limit on its memory
    areas (None if unknown): half of it, leaving the other half to the rest of the program
    (libraries, allocator arenas, thread stacks, torch), and at least :data:`MIN_MAPPED_AREAS`.

    Example:
        >>> mapping_capacity(65530), mapping_capacity(None), mapping_capacity(100)
        (32765, 4096, 64)
    """
    if max_map_count is None:
        return DEFAULT_MAPPED_AREAS
    return max(MIN_MAPPED_AREAS, max_map_count // 2)


def read_max_map_count(path: str = MAX_MAP_COUNT_PATH) -> int | None:
    """The kernel's limit on memory areas per process, or None where it cannot be read."""
    try:
        return int(read_small_file(path, what="the mapping limit", limit=64, error=ReadFailedError))
    except (OSError, ValueError, MemshardError):
        return None


#: Most memory areas the mapped segments of one process take, across all datasets.
MAX_MAPPED_AREAS = mapping_capacity(read_max_map_count())


def segment_areas(shards: int) -> int:
    """Memory areas a segment of ``shards`` shards takes: one per shard file and, mapped back
    to back, the two ends of its reserved range left uncovered (see :func:`map_segment`)."""
    return shards + 2 if BACK_TO_BACK else shards


@dataclass(frozen=True)
class MappedRange:
    """Where the rows of one mapped segment lie: from address ``start``, the rows of file
    ``paths[i]`` (relative to the dataset directory ``root``) end at address ``ends[i]``."""

    root: str
    start: int
    ends: tuple[int, ...]
    paths: tuple[str, ...]

    def file_at(self, address: int) -> str | None:
        """The path of the file whose rows are mapped at ``address``, or None.

        Example:
            >>> rows = MappedRange("/d", 4096, (8192, 12288), ("shards/a.npy", "shards/b.npy"))
            >>> rows.file_at(8191), rows.file_at(8192), rows.file_at(12288)
            ('shards/a.npy', 'shards/b.npy', None)
        """
        if not self.start <= address < self.ends[-1]:
            return None
        return self.paths[bisect.bisect_right(self.ends, address)]


class MappedRanges:
    """Every mapping of shard files alive in this process, found by address.

    A mapping leaves when its memory is unmapped, that is when the last array or view into it
    is gone (its ``mmap`` object is deallocated); a callback given with it runs then.
    """

    def __init__(self) -> None:
        self._ranges: dict[
            int, tuple[weakref.ref[mmap.mmap], MappedRange, Callable[[], Any] | None]
        ] = {}

    def add(
        self, region: mmap.mmap, mapped: MappedRange, on_unmap: Callable[[], Any] | None
    ) -> None:
        """Record ``mapped``, which lives as long as ``region``; call ``on_unmap`` after it."""
        ref = weakref.ref(region, self._forget)
        self._ranges[id(ref)] = (ref, mapped, on_unmap)

    def _forget(self, ref: weakref.ref[mmap.mmap]) -> None:
        entry = self._ranges.pop(id(ref), None)
        if entry is not None and entry[2] is not None:
            entry[2]()

    def find(self, address: int) -> tuple[str, str] | None:
        """The dataset directory and shard path mapped at ``address``, or None (the most
        recent mapping first: an address may be reused before an old entry leaves)."""
        for _, mapped, _ in reversed(list(self._ranges.values())):
            path = mapped.file_at(address)
            if path is not None:
                return mapped.root, path
        return None

    def __len__(self) -> int:
        return len(self._ranges)


MAPPED = MappedRanges()


class MappingCache:
    """A thread-safe LRU of mapped segments, bounded by the kernel memory areas that the
    segments mapped through it take while they live (:func:`segment_areas` each;
    :data:`MAX_MAPPED_AREAS` by default).

    Evicting a segment that a view still holds frees nothing, so such a segment still counts
    until the view is gone; meanwhile a later miss on it finds it again instead of mapping it
    twice. When the live segments leave no room, :meth:`map` returns None rather than map.
    """

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is None:
            capacity = MAX_MAPPED_AREAS
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._arrays: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._evicted: weakref.WeakValueDictionary[Hashable, np.ndarray] = (
            weakref.WeakValueDictionary()
        )
        self._live = 0
        self._lock = threading.Lock()  # taken to map and evict
        self._count_lock = threading.Lock()  # also taken when a segment is unmapped

    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached array for ``key``, marked as most recently used, or None."""
        arrays = self._arrays
        array = arrays.get(key)
        if array is None:
            return None
        # try/except, not contextlib.suppress: this is the per-row hot path (suppress costs
        # ~0.3 us). KeyError: another thread evicted it in between; the array is still good.
        try:  # noqa: SIM105
            arrays.move_to_end(key)
        except KeyError:
            pass
        return array

    def map(
        self, key: Hashable, root: str, spec: FieldSpec, parts: Sequence[SegmentFile]
    ) -> np.ndarray | None:
        """The array of segment ``key`` (the rows of ``parts``), mapped with
        :func:`map_segment` and cached, evicting the least recently used segments for room.

        Returns None, mapping nothing, if the segments still alive leave no room for it (views
        hold them), or if the kernel refuses the mapping for lack of memory areas or address
        space (:class:`~memshard.errors.MappingLimitError`); read the rows with
        :func:`read_rows` then.

        Raises:
            see :func:`map_segment`.
        """
        areas = segment_areas(len(parts))
        with self._lock:
            array = self._arrays.get(key)
            if array is None:
                array = self._evicted.pop(key, None)  # still mapped: a view holds it
            if array is None:
                if not self._make_room(areas):
                    return None
                try:
                    array = map_segment(root, spec, parts, partial(self._unmapped, areas))
                except MappingLimitError:
                    return None
                with self._count_lock:
                    self._live += areas
            self._arrays[key] = array
            return array

    def _make_room(self, areas: int) -> bool:
        while self._live + areas > self.capacity and self._arrays:
            oldest, array = self._arrays.popitem(last=False)
            self._evicted[oldest] = array
            del array  # unmapped now unless a view holds it
        return self._live + areas <= self.capacity

    def evict(self, which: Callable[[Hashable], bool]) -> int:
        """Drop the cached segments whose key satisfies ``which``, as if evicted: each is
        unmapped now unless a view holds it (then when the last view is gone). Returns how
        many were dropped."""
        with self._lock:
            keys = [key for key in self._arrays if which(key)]
            for key in keys:
                self._evicted[key] = self._arrays.pop(key)
        return len(keys)

    def _unmapped(self, areas: int) -> None:
        with self._count_lock:
            self._live -= areas

    @property
    def memory_areas(self) -> int:
        """How many memory areas the live segments mapped through this cache take, cached or
        held by views."""
        return self._live

    def clear(self) -> None:
        """Forget every mapping (views handed out stay valid, and count until they are gone)."""
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        arrays, self._arrays = self._arrays, OrderedDict()
        self._evicted = weakref.WeakValueDictionary()
        del arrays

    def __len__(self) -> int:
        return len(self._arrays)


CACHE = MappingCache()
os.register_at_fork(after_in_child=CACHE.clear)


def map_segment(
    root: str,
    spec: FieldSpec,
    parts: Sequence[SegmentFile],
    on_unmap: Callable[[], Any] | None = None,
) -> np.ndarray:
    """Map the rows of consecutive shard files of one field as one read-only array.

    Every shard but the last must hold a whole number of pages of data (see
    :func:`segment_breaks_after`). Before mapping, each file's size and header are checked
    against the manifest, so a file truncated before it is mapped is an error, never a SIGBUS.
    A file truncated *while* mapped cannot be caught: the next read of its lost pages kills the
    process with SIGBUS, after one line on stderr naming the file (:mod:`memshard.sigbus`).
    The mapping lives until the last view of the array is gone; ``on_unmap`` is called then.

    Raises:
        ShardMissingError, UnsafePathError: see :func:`memshard.layout.open_shard`.
        ShardSizeError: a file is shorter than the manifest says, or longer for a sealed shard.
        ShardHeaderError: a header is not the canonical one for this field and row count.
        MappingLimitError: the kernel refused the mapping for lack of memory areas or address
            space (``ENOMEM``).
    """
    try:
        region, offset = _map(root, spec, parts)
    except OSError as exc:
        if exc.errno != errno.ENOMEM or isinstance(exc, MemshardError):
            raise
        raise MappingLimitError(
            exc.errno,
            f"{root}: cannot map {_files(parts)}: the kernel refused the mapping "
            f"({os.strerror(exc.errno)}); this process has used up its memory areas "
            f"(vm.max_map_count = {read_max_map_count()}) or its address space. Drop the "
            "arrays and views of shards that are no longer needed, or raise the limit",
        ) from exc
    rows = sum(part.rows for part in parts)
    array: np.ndarray = np.ndarray(
        (rows, *spec.shape), dtype=spec.numpy_dtype, buffer=region, offset=offset
    )
    start: int = array.__array_interface__["data"][0]
    ends = np.cumsum([part.rows * spec.row_bytes for part in parts]) + start
    paths = tuple(part.file.path for part in parts)
    MAPPED.add(region, MappedRange(root, start, tuple(ends.tolist()), paths), on_unmap)
    sigbus.install(MAPPED.find)
    return array


def _map(root: str, spec: FieldSpec, parts: Sequence[SegmentFile]) -> tuple[mmap.mmap, int]:
    if BACK_TO_BACK:
        return _map_back_to_back(spec, parts, lambda part: _open_checked(root, spec, part))
    (part,) = parts
    fd = _open_checked(root, spec, part)
    try:
        region = mmap.mmap(
            fd, part.file.data_offset + part.rows * spec.row_bytes, access=mmap.ACCESS_READ
        )
    finally:
        os.close(fd)
    return region, part.file.data_offset


def _files(parts: Sequence[SegmentFile]) -> str:
    first = parts[0].file.path
    return first if len(parts) == 1 else f"{first} and {len(parts) - 1} more shard files"


def read_rows(
    root: str, spec: FieldSpec, parts: Sequence[SegmentFile], rows: np.ndarray
) -> np.ndarray:
    """Copy rows ``rows`` (indices into the segment of ``parts``, any order, repeats allowed)
    with ``pread``, mapping nothing: how the reader reads when the mapping cache has no room.
    Each file read from is checked first, as :func:`map_segment` checks it.

    Returns:
        A new array of shape ``(rows.size, *spec.shape)``, the rows in the order asked.

    Raises:
        ShardMissingError, UnsafePathError, ShardSizeError, ShardHeaderError: as
            :func:`map_segment`; ``ShardSizeError`` also if a file ends while being read.
    """
    increasing = rows.size < 2 or bool((rows[1:] > rows[:-1]).all())  # a row, a slice
    wanted, inverse = (rows, None) if increasing else np.unique(rows, return_inverse=True)
    data = np.empty((wanted.size, *spec.shape), dtype=spec.numpy_dtype)
    data_bytes = data.reshape(wanted.size, -1).view(np.uint8)
    first = 0
    for part in parts:
        low, high = np.searchsorted(wanted, [first, first + part.rows]).tolist()
        if high > low:
            fd = _open_checked(root, spec, part)
            try:
                _read_runs(fd, part, wanted[low:high] - first, data_bytes[low:high], root)
            finally:
                os.close(fd)
        first += part.rows
    if inverse is None:
        return data
    gathered: np.ndarray = data[inverse]
    return gathered


def _read_runs(fd: int, part: SegmentFile, rows: np.ndarray, out: np.ndarray, root: str) -> None:
    """Read sorted, distinct ``rows`` of one file into the rows of ``out``, one ``preadv`` per
    run of adjacent rows."""
    row_bytes = out.shape[1]
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    for begin, end in zip([0, *breaks], [*breaks, rows.size], strict=True):
        offset = part.file.data_offset + int(rows[begin]) * row_bytes
        with memoryview(out[begin:end].data).cast("B") as target:
            done = 0
            while done < len(target):
                with target[done:] as rest:
                    count = os.preadv(fd, [rest], offset + done)
                if count == 0:
                    where = os.path.join(root, part.file.path)
                    raise ShardSizeError(
                        f"{where}: file ended at byte {offset + done} while reading, the "
                        f"manifest needs {part.file.data_offset + part.file.nbytes} "
                        "(truncated shard)"
                    )
                done += count


def segment_breaks_after(spec: FieldSpec, rows: np.ndarray) -> np.ndarray:
    """Whether a segment must end after each shard, of ``rows`` rows each, of this field."""
    breaks: np.ndarray = ((rows * spec.row_bytes) % npyheader.DATA_ALIGN != 0) | (not BACK_TO_BACK)
    return breaks


def check_shard_file(root: str, spec: FieldSpec, part: SegmentFile) -> None:
    """Check one shard file's size and header against the manifest (see :func:`map_segment`)."""
    os.close(_open_checked(root, spec, part))


def _open_checked(root: str, spec: FieldSpec, part: SegmentFile) -> int:
    where = os.path.join(root, part.file.path)
    fd = open_shard(root, part.file.path)
    try:
        _check_size(fd, where, part)
        header = os.pread(fd, part.file.data_offset, 0)
        # Nearly always the canonical header of the manifest's row count: comparing with it is
        # the whole check, and costs a tenth of parsing (which reads rows past the bound).
        if header != npyheader.header_bytes(spec.numpy_dtype, spec.shape, part.manifest_rows):
            _check_header(header, spec, part, where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_header(header: bytes, spec: FieldSpec, part: SegmentFile, where: str) -> None:
    header_rows = npyheader.rows_in_header(header, spec.numpy_dtype, spec.shape, where=where)
    if header_rows < part.manifest_rows or (part.sealed and header_rows != part.manifest_rows):
        raise ShardHeaderError(
            f"{where}: header states {header_rows} rows, the manifest {part.manifest_rows}"
        )


def _check_size(fd: int, where: str, part: SegmentFile) -> None:
    size = os.fstat(fd).st_size
    expected = part.file.data_offset + part.file.nbytes
    if size < expected:
        raise ShardSizeError(
            f"{where}: file is {size} bytes, the manifest needs {expected} (truncated shard)"
        )
    if part.sealed and size != expected:
        raise ShardSizeError(
            f"{where}: sealed shard is {size} bytes, the manifest says {expected} (trailing bytes)"
        )


def _map_back_to_back(
    spec: FieldSpec, parts: Sequence[SegmentFile], open_part: Callable[[SegmentFile], int]
) -> tuple[mmap.mmap, int]:
    """Reserve address space for every part, then map each file's data into its place: one
    file at a time, opened (and checked) by ``open_part`` and closed once mapped, so a segment
    of any number of shards needs one free file descriptor.

    Returns the reservation and the offset in it where the rows start. The reservation is an
    ordinary read-only anonymous ``mmap`` object: it gives numpy a buffer with the right
    lifetime, and unmapping it (when the last view is gone) unmaps the file mappings placed
    over it. The rows start at an address congruent to their file offset modulo
    :data:`~memshard.npyheader.HUGE_PAGE`, the condition for the kernel to map large
    page-cache folios with 2 MiB entries (far fewer TLB misses when gathering large rows).
    """
    lengths = [part.rows * spec.row_bytes for part in parts]
    page = mmap.ALLOCATIONGRANULARITY
    reserved = -(-sum(lengths) // page) * page + npyheader.HUGE_PAGE
    region = mmap.mmap(-1, reserved, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    start = address_of(region)
    start_offset = (parts[0].file.data_offset - start) % npyheader.HUGE_PAGE
    base = start + start_offset
    offset = 0
    try:
        for part, length in zip(parts, lengths, strict=True):
            fd = open_part(part)
            try:
                if length:
                    map_over(base + offset, length, fd, part.file.data_offset, part.file.path)
            finally:
                os.close(fd)
            offset += length
    except BaseException:
        region.close()  # also unmaps the files already placed over it
        raise
    return region, start_offset
