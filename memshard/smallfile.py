"""Opening and reading the small files memshard takes to be regular: manifests, part records,
the first bytes of a conversion source.

Opening a FIFO for reading waits for a writer, a socket cannot be opened at all and a device
may never end, so a path that holds one of them where a small file belongs must be refused,
not followed into a hang. Every such read in the package goes through :func:`open_regular`
or :func:`read_small_file`: the path is opened without waiting (``O_NONBLOCK``), without
following a final symbolic link unless the caller allows it (``O_NOFOLLOW``), and ``fstat``
of the open descriptor decides, so a file swapped after a check cannot slip through. At most
``limit`` bytes are ever read.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import MemshardError, ReadFailedError, UnsafePathError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: ``open`` errors of a path that exists but is no file: a socket (``ENXIO``), a device
#: without a driver (``ENODEV``), something the file system cannot open (``EOPNOTSUPP``).
_NOT_A_FILE = frozenset({errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP})
#: Bytes read per ``read`` call.
_READ_CHUNK = 1 << 20


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words.

    Example:
        >>> kind_of(stat.S_IFIFO), kind_of(stat.S_IFREG | 0o644)
        ('a FIFO', 'a regular file')
    """
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return f"a special file (mode {mode:#o})"


def open_regular(
    path: str,
    *,
    what: str,
    error: type[MemshardError],
    follow_symlinks: bool = False,
) -> int:
    """Open the regular file at ``path`` read-only, never waiting, and return its descriptor.

    Parameters:
        what: the file's role in messages, e.g. ``"the manifest"``.
        error: the typed error raised when ``path`` is a FIFO, a socket or a device.
        follow_symlinks: open what a symbolic link at ``path`` points to (a conversion
            source may be one); otherwise a link is refused.

    Raises:
        FileNotFoundError, NotADirectoryError: nothing is at ``path``.
        IsADirectoryError: ``path`` is a directory.
        UnsafePathError: ``path`` is a symbolic link (without ``follow_symlinks``).
        error: ``path`` is a FIFO, a socket, a device or another special file; the message
            names the path and what it is.
        ReadFailedError: it cannot be opened (no permission, too many open files, I/O error).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        raise _open_error(exc, path, what, error, follow_symlinks) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, f"{what} is a directory", path)
        if not stat.S_ISREG(mode):
            raise error(f"{path}: {what} is {kind_of(mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_file(
    path: str,
    *,
    what: str,
    limit: int,
    error: type[MemshardError],
    too_large: type[MemshardError] | None = None,
    follow_symlinks: bool = False,
) -> bytes:
    """The content of the regular file at ``path``, which may hold at most ``limit`` bytes.

    Raises:
        too_large: the file holds more than ``limit`` bytes (the message gives its size);
            ``error`` when not given.
        error: see :func:`open_regular`.
        ReadFailedError: reading failed (an I/O error).
        FileNotFoundError, NotADirectoryError, IsADirectoryError, UnsafePathError: see
            :func:`open_regular`.
    """
    fd = open_regular(path, what=what, error=error, follow_symlinks=follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise ReadFailedError(exc.errno, f"{path}: cannot read {what} ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        refusal = too_large or error
        if size > limit:
            raise refusal(f"{path}: {what} is {size:,} bytes, more than the {limit:,} allowed")
        # A file of the proc file system states size 0 whatever it holds.
        raise refusal(f"{path}: {what} holds more than the {limit:,} bytes allowed")
    return data


def _read_at_most(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    remaining = count
    while remaining > 0:
        chunk = os.read(fd, min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _open_error(
    exc: OSError, path: str, what: str, error: type[MemshardError], follow_symlinks: bool
) -> MemshardError:
    """The typed error for a failed ``open`` of ``path``."""
    if exc.errno == errno.ELOOP and not follow_symlinks:
        return UnsafePathError(f"{path}: {what} is a symbolic link, which memshard never follows")
    if exc.errno in _NOT_A_FILE:
        try:
            kind = kind_of(os.stat(path, follow_symlinks=follow_symlinks).st_mode)
        except OSError:
            kind = "not a file"
        return error(f"{path}: {what} is {kind}, not a regular file")
    return ReadFailedError(exc.errno, f"{path}: cannot open {what} ({exc.strerror})")
