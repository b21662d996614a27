"""Read-only shard mappings, and the per-process cache that bounds how many are open.

Each mapping holds one file descriptor (Python's ``mmap`` keeps a duplicate), so a dataset
with many thousands of shards would exhaust the open-files limit if every shard stayed
mapped. :data:`CACHE` keeps at most :data:`MAX_OPEN_MAPPINGS` of them, least recently used
first out. An evicted mapping is unmapped when the last view into it is gone.

The cache is the only process-global state in memshard. It is emptied in a forked child, so a
child maps shards itself instead of sharing its parent's cache.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

from . import npyheader
from .errors import ShardHeaderError, ShardSizeError
from .layout import open_shard
from .manifest import FieldSpec, ShardFile

#: Most shard mappings one process keeps open, across all datasets ...
MAX_OPEN_MAPPINGS = 512
#: ... and at most this fraction of the process's open-files limit, leaving the rest to others.
OPEN_FILES_SHARE = 4


def default_capacity() -> int:
    """How many mappings to keep: :data:`MAX_OPEN_MAPPINGS`, or less under a low file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_MAPPINGS
    return max(1, min(MAX_OPEN_MAPPINGS, soft // OPEN_FILES_SHARE))


class MappingCache:
    """A thread-safe LRU of mapped shard arrays, keyed by whatever identifies a mapping."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._arrays: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached array for ``key``, marked as most recently used, or None."""
        array = self._arrays.get(key)
        if array is not None:
            # Another thread may have evicted it in between; the array is still good.
            with contextlib.suppress(KeyError):
                self._arrays.move_to_end(key)
        return array

    def put(self, key: Hashable, array: np.ndarray) -> None:
        """Cache ``array`` under ``key``, evicting the least recently used beyond capacity."""
        with self._lock:
            self._arrays[key] = array
            self._arrays.move_to_end(key)
            while len(self._arrays) > self.capacity:
                self._arrays.popitem(last=False)

    def clear(self) -> None:
        """Forget every mapping (views handed out stay valid)."""
        self._arrays = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._arrays)


CACHE = MappingCache(default_capacity())
os.register_at_fork(after_in_child=CACHE.clear)


def map_shard_file(
    root: str, file: ShardFile, spec: FieldSpec, *, shard_rows: int, sealed: bool, rows: int
) -> np.ndarray:
    """Map the first ``rows`` rows of one shard file as a read-only array.

    Before mapping, the file's size and header are checked against the manifest (``shard_rows``
    rows, sealed or not), so a truncated or foreign file is an error, never a SIGBUS.

    Raises:
        ShardMissingError, UnsafePathError: see :func:`memshard.layout.open_shard`.
        ShardSizeError: the file is shorter than the manifest says, or longer for a sealed shard.
        ShardHeaderError: the header is not the canonical one for this field and row count.
    """
    where = os.path.join(root, file.path)
    fd = open_shard(root, file.path)
    try:
        _check_size(fd, where, file, sealed)
        header = os.pread(fd, file.data_offset, 0)
        header_rows = npyheader.rows_in_header(header, spec.numpy_dtype, spec.shape, where=where)
        if header_rows < shard_rows or (sealed and header_rows != shard_rows):
            raise ShardHeaderError(
                f"{where}: header states {header_rows} rows, the manifest {shard_rows}"
            )
        length = file.data_offset + rows * spec.row_bytes
        mapping = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    array: np.ndarray[Any, Any] = np.frombuffer(
        mapping,
        dtype=spec.numpy_dtype,
        count=rows * (spec.row_bytes // spec.numpy_dtype.itemsize),
        offset=file.data_offset,
    )
    return array.reshape((rows, *spec.shape))


def _check_size(fd: int, where: str, file: ShardFile, sealed: bool) -> None:
    size = os.fstat(fd).st_size
    expected = file.data_offset + file.nbytes
    if size < expected:
        raise ShardSizeError(
            f"{where}: file is {size} bytes, the manifest needs {expected} (truncated shard)"
        )
    if sealed and size != expected:
        raise ShardSizeError(
            f"{where}: sealed shard is {size} bytes, the manifest says {expected} (trailing bytes)"
        )
