"""The commit protocol's file operations: durable writes, directory syncs, deferred syncs.

A commit makes rows durable and visible in this order (``spec/FORMAT.md``, "Commit protocol"):

1. the shard files' data and headers are written and ``fsync``-ed;
2. ``shards/`` is ``fsync``-ed when files were created in it;
3. the new manifest is written to a temporary file in the dataset directory and ``fsync``-ed;
4. the temporary file is renamed over ``manifest.json`` (atomic on POSIX);
5. the dataset directory is ``fsync``-ed so the rename itself survives a power cut.

Steps 3 to 5, which need a manifest, are :func:`memshard.publish.publish_manifest`.
"""

from __future__ import annotations

import ctypes
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor

#: Sealed shard files an appender keeps open, unsynced, until the next commit.
MAX_DEFERRED_FILES = 32


def fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_file_range() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` bytes of ``fd`` from ``offset`` to disk now,
    without waiting (Linux ``sync_file_range``; nothing elsewhere).

    A writer that does this after each large block keeps the disk busy while it goes on, so
    the ``fsync`` that makes the file durable finds little left to write. It is a hint, not
    a durability step: failures are ignored here and reported by that ``fsync``.
    """
    if _SYNC_FILE_RANGE is not None and nbytes > 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]


def write_file_durably(path: str, data: bytes) -> None:
    """Create or replace the file at ``path`` with ``data`` and ``fsync`` it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


class DeferredSync:
    """Sealed shard files whose ``fsync`` waits for the next commit.

    Durability is promised at commit, so a sealed shard need not stop the writer for an
    ``fsync`` (which also forces early writeback of everything still dirty). Files are kept by
    path, not by descriptor, so that waiting files hold none; beyond :data:`MAX_DEFERRED_FILES`
    of them, the oldest are synced on a worker thread so that dirty pages do not pile up
    without bound.
    """

    def __init__(self, max_deferred: int = MAX_DEFERRED_FILES) -> None:
        self._max_deferred = max_deferred
        self._deferred: list[str] = []
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def add(self, paths: list[str]) -> None:
        """Sync the files at ``paths`` by :meth:`sync_all` at the latest."""
        self._deferred.extend(paths)
        if len(self._deferred) > self._max_deferred:
            oldest, self._deferred = self._deferred[: -len(paths)], self._deferred[-len(paths) :]
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="memshard-fsync")
            self._pending.append(self._executor.submit(sync_files, oldest))

    def sync_all(self) -> None:
        """Sync every file added; raise the first failure (``OSError``)."""
        deferred, self._deferred = self._deferred, []
        pending, self._pending = self._pending, []
        failures = [future.exception() for future in pending]
        sync_files(deferred)
        for failure in failures:
            if failure is not None:
                raise failure

    def shutdown(self) -> None:
        """Forget every file added without syncing it, after the worker has finished."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending = []
        self._deferred = []


def sync_files(paths: list[str]) -> None:
    """``fsync`` each file in ``paths`` (opened read-only: sealed shards are read-only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
