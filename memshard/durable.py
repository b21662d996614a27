"""The commit protocol's file operations: durable writes, atomic manifest replacement.

A commit makes rows durable and visible in this order (``spec/FORMAT.md``, "Commit protocol"):

1. the shard files' data and headers are written and ``fsync``-ed;
2. ``shards/`` is ``fsync``-ed when files were created in it;
3. the new manifest is written to a temporary file in the dataset directory and ``fsync``-ed;
4. the temporary file is renamed over ``manifest.json`` (atomic on POSIX);
5. the dataset directory is ``fsync``-ed so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from .layout import MANIFEST_NAME, MANIFEST_TEMP_PREFIX
from .manifest import Manifest, dumps


def fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def publish_manifest(root: str, manifest: Manifest) -> None:
    """Steps 3-5 of a commit: atomically replace ``root/manifest.json`` with ``manifest``."""
    temporary = os.path.join(root, f"{MANIFEST_TEMP_PREFIX}{os.getpid()}")
    write_file_durably(temporary, dumps(manifest))
    os.replace(temporary, os.path.join(root, MANIFEST_NAME))
    fsync_directory(root)


class BackgroundSync:
    """``fsync`` and close files on a worker thread while the caller keeps writing.

    A sealed shard is synced here so that appending need not stop for it; the next commit
    calls :meth:`wait` before publishing, so the commit protocol's order is unchanged.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, fds: list[int]) -> None:
        """Sync then close ``fds`` (which now belong to this object)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="memshard-fsync")
        self._pending.append(self._executor.submit(_sync_and_close, fds))

    def wait(self) -> None:
        """Wait for every submitted sync; raise the first failure (``OSError``)."""
        pending, self._pending = self._pending, []
        failures = [future.exception() for future in pending]
        for failure in failures:
            if failure is not None:
                raise failure

    def shutdown(self) -> None:
        """Finish what was submitted (closing every descriptor), ignoring failures."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending = []


def _sync_and_close(fds: list[int]) -> None:
    try:
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
