"""File descriptors with exactly one owner, and the exclusive locks built on them.

Every descriptor memshard keeps open beyond one function call lives in an :class:`OwnedFd`:
it is closed exactly once (a second ``close`` does nothing, so an error path and a later
``__del__`` can never close a number the process has since reused for another file), it is
close-on-exec, and a child made by ``fork`` closes its inherited copy at once
(``os.register_at_fork``). The last point is what keeps a lock from outliving its writer: an
``flock`` belongs to the open file description, so a child that kept a copy would hold the
dataset locked after the parent closed or was killed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
import weakref

from .errors import UnsafePathError
from .smallfile import kind_of

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

_live: weakref.WeakSet[OwnedFd] = weakref.WeakSet()
_live_lock = threading.Lock()


class OwnedFd:
    """One open file descriptor and the right to close it, exactly once.

    Example:
        >>> handle = OwnedFd.open(os.devnull, os.O_RDONLY)
        >>> handle.closed
        False
        >>> handle.close(); handle.close(); handle.closed
        True
    """

    __slots__ = ("__weakref__", "_fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path
        with _live_lock:
            _live.add(self)

    @classmethod
    def open(cls, path: str, flags: int, mode: int = 0o644) -> OwnedFd:
        """``os.open(path, flags | O_CLOEXEC, mode)``, owned.

        Raises:
            OSError: as ``os.open`` does.
        """
        return cls(os.open(path, flags | _CLOEXEC, mode), path)

    @property
    def closed(self) -> bool:
        """Whether the descriptor was closed (by :meth:`close`, or in a forked child)."""
        return self._fd < 0

    def fileno(self) -> int:
        """The descriptor number, valid until :meth:`close`.

        Raises:
            ValueError: the descriptor is closed.
        """
        if self._fd < 0:
            raise ValueError(f"{self.path}: the file descriptor is closed")
        return self._fd

    def close(self) -> None:
        """Close the descriptor if it is still open; later calls do nothing."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with _live_lock:
                _live.discard(self)
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.close()

    def __repr__(self) -> str:
        return f"<OwnedFd {self._fd} {self.path!r}>"

    def _forget_in_child(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _close_inherited() -> None:
    """In a forked child: close every descriptor the parent owned (its copies stay open)."""
    global _live_lock
    _live_lock = threading.Lock()  # the parent's may have been held by another thread
    for handle in list(_live):
        handle._forget_in_child()
    _live.clear()


os.register_at_fork(after_in_child=_close_inherited)


class FileLock:
    """An exclusive ``flock`` on a lock file, held until :meth:`release` or process exit.

    A child process never holds it: the descriptor is close-on-exec and closed after ``fork``.
    """

    __slots__ = ("_handle", "path")

    def __init__(self, handle: OwnedFd, path: str) -> None:
        self._handle = handle
        self.path = path

    @classmethod
    def acquire(cls, path: str, *, create: bool = True, wait: bool = False) -> FileLock | None:
        """Lock the regular file ``path`` (created if ``create`` and missing); with ``wait``,
        once whoever holds it has let go.

        Returns:
            The lock, or ``None`` (without ``wait``) when another process (or another lock in
            this one) holds it.

        Raises:
            FileNotFoundError: ``path`` is missing and ``create`` is false.
            UnsafePathError: ``path`` is a symlink, FIFO, socket, device or directory.
            OSError: the file cannot be opened.
        """
        flags = os.O_RDWR | os.O_NONBLOCK | _NOFOLLOW | (os.O_CREAT if create else 0)
        try:
            handle = OwnedFd.open(path, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise UnsafePathError(f"{path}: not a regular lock file ({exc.strerror})") from None
            raise
        try:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise UnsafePathError(f"{path}: not a regular lock file ({kind_of(mode)})")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return None
        except BaseException:
            handle.close()
            raise
        return cls(handle, path)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return not self._handle.closed

    def is_at(self, path: str) -> bool:
        """Whether the file locked is still the one at ``path`` (not replaced or removed)."""
        if not self.held:
            return False
        try:
            there = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        here = os.fstat(self._handle.fileno())
        return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)

    def release(self) -> None:
        """Give the lock up; later calls do nothing."""
        self._handle.close()

    def __repr__(self) -> str:
        return f"<FileLock {self.path!r} {'held' if self.held else 'released'}>"
