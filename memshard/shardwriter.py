"""Appending rows to one field's file of the shard being written.

Rows go to the file with plain ``pwrite`` calls, never through a writable mapping (on a full
disk a mapping turns the error into SIGBUS). Appended bytes collect in a private buffer; it is
a plain ``bytearray``, so a forked child that exits never flushes its parent's rows into the
shared file, as an inherited ``io.BufferedWriter`` would.

Bytes reach the file in pieces that end on a multiple of :data:`~memshard.npyheader.HUGE_PAGE`
(2 MiB) of the file offset; only a commit or a seal writes a piece that ends elsewhere. The
page cache of ext4 and xfs (Linux 6.x) gives each write folios as large as the write's bytes
within one aligned 2 MiB of the file allow, so a 2 MiB stretch written by one call is one
2 MiB folio, which a mapping can map with one TLB entry, while a stretch written by two calls
is split into smaller folios for good (half of every shard, when rows came in unaligned 4 MiB
batches: every other row read cost a TLB miss). Between pieces the buffer holds less than one
huge page per file, and never more than the shard's data.

On tmpfs the size of page-cache pages never depends on the writes (4 KiB, or huge pages by
mount option), so holding bytes back would only cost copies: there a writer writes through,
as everywhere before: appends collect in the buffer up to :data:`WRITE_BUFFER_BYTES`, and a
batch that would overflow it goes out at once with what the buffer holds.

Holding bytes back must not hide a full disk or a file size limit until the commit: once more
than :data:`WRITE_BUFFER_BYTES` are waiting, their file space is reserved with ``fallocate``
(which fails at once with ``ENOSPC`` or ``EFBIG`` and writes no page-cache pages); where that
fails or is not supported, the waiting bytes are written at once instead, and that write
raises the error if there is one.

A writer does not own a descriptor for its whole life: it borrows one from the
:class:`DescriptorBudget` of its appender or part writer, which keeps at most
:data:`MAX_OPEN_SHARD_FILES` open and closes the least recently used beyond that (reopened by
path when next needed). So the descriptors an appender holds do not grow with the number of
fields. Reopening loses nothing: data is written at explicit offsets, and ``fsync`` through
a later descriptor flushes every dirty page of the file (Linux also reports to it a
writeback error that no descriptor has seen yet).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
from collections import OrderedDict
from typing import Any

from .checksum import StreamingChecksum, checksum_of_file
from .durable import start_writeback
from .errors import ShardSizeError
from .handles import OwnedFd
from .manifest import FieldSpec, ShardFile
from .npyheader import HUGE_PAGE, header_bytes

#: Most bytes a writer holds in its buffer without reserving their space in the file.
WRITE_BUFFER_BYTES = 1 << 20
#: ``statfs.f_type`` of tmpfs, whose files are written through (see the module docstring).
TMPFS_MAGIC = 0x01021994
#: Most shard files one appender or part writer keeps open at once.
MAX_OPEN_SHARD_FILES = 64
#: The mode a shard file is created with (less the umask).
OPEN_FILE_MODE = 0o644
#: The permissions a shard file loses when it is sealed (0644 becomes 0444): a sealed file,
#: which readers map, must not be truncated or rewritten by mistake.
WRITE_PERMISSIONS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class DescriptorBudget:
    """The open descriptors of one writer's shard files, at most ``limit`` at a time.

    Not thread-safe: it belongs to one appender or part writer, used from one thread.
    """

    def __init__(self, limit: int = MAX_OPEN_SHARD_FILES) -> None:
        self._limit = limit
        self._open: OrderedDict[int, ShardFileWriter] = OrderedDict()

    @property
    def open_count(self) -> int:
        """How many descriptors the writers of this budget hold now."""
        return len(self._open)

    def use(self, writer: ShardFileWriter) -> None:
        """Note that ``writer`` holds a descriptor and was used last; close the descriptors of
        the least recently used writers beyond the limit."""
        self._open[id(writer)] = writer
        self._open.move_to_end(id(writer))
        while len(self._open) > self._limit:
            _, oldest = self._open.popitem(last=False)
            oldest.release_descriptor()

    def forget(self, writer: ShardFileWriter) -> None:
        """``writer`` closed its descriptor."""
        self._open.pop(id(writer), None)

    def release_all(self) -> None:
        """Close every descriptor the writers of this budget hold (also of writers that their
        owner no longer tracks: a shard whose sealing failed half-way)."""
        for writer in list(self._open.values()):
            writer.release_descriptor()


class ShardFileWriter:
    """One shard file being written: appends rows, keeps their checksum, rewrites the header.

    ``path`` is relative to the dataset directory ``root``; ``end`` is the file offset where
    the next row goes.
    """

    def __init__(
        self,
        root: str,
        path: str,
        spec: FieldSpec,
        checksum: StreamingChecksum,
        budget: DescriptorBudget,
        handle: OwnedFd,
        end: int,
    ) -> None:
        self.root = root
        self.path = path
        self.spec = spec
        self.checksum = checksum
        self.end = end
        self._budget = budget
        self._handle: OwnedFd | None = handle
        self._buffer = bytearray()  # reused: it grows to what one piece needs, never shrinks
        self._buffered = 0
        self._reserved_to = end
        self._writeback_from = end
        self._aligned = file_system_type(handle.fileno()) != TMPFS_MAGIC
        budget.use(self)

    @property
    def full_path(self) -> str:
        """The file's path on disk."""
        return os.path.join(self.root, self.path)

    @classmethod
    def create(
        cls, root: str, relpath: str, spec: FieldSpec, budget: DescriptorBudget
    ) -> ShardFileWriter:
        """Create ``root/relpath`` (which must not exist) holding a header and no rows.

        If writing the header fails, the file is closed and removed before the error is
        raised, so that a full disk gets its space back."""
        where = os.path.join(root, relpath)
        handle = OwnedFd.open(where, os.O_RDWR | os.O_CREAT | os.O_EXCL, OPEN_FILE_MODE)
        writer = cls(root, relpath, spec, StreamingChecksum(), budget, handle, 0)
        try:
            writer._write_all(header_bytes(spec.numpy_dtype, spec.shape, 0))
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError):
                os.unlink(where)
            raise
        writer._writeback_from = writer.end
        return writer

    @classmethod
    def reopen(
        cls, root: str, file: ShardFile, spec: FieldSpec, rows: int, budget: DescriptorBudget
    ) -> ShardFileWriter:
        """Continue an unsealed shard file after its ``rows`` committed rows, cutting off any
        uncommitted bytes a crashed writer left after them.

        Raises:
            ShardSizeError: the file is shorter than its committed rows.
        """
        where = os.path.join(root, file.path)
        _make_writable(where)  # a writer that sealed it may have died before its commit
        handle = OwnedFd.open(where, os.O_RDWR | _NOFOLLOW)
        end = file.data_offset + rows * spec.row_bytes
        try:
            fd = handle.fileno()
            checksum = checksum_of_file(fd, file.data_offset, rows * spec.row_bytes)
            os.ftruncate(fd, end)
            os.pwrite(fd, header_bytes(spec.numpy_dtype, spec.shape, rows), 0)
        except EOFError:
            handle.close()
            raise ShardSizeError(f"{root}/{file.path}: shorter than its committed rows") from None
        except BaseException:
            handle.close()
            raise
        return cls(root, file.path, spec, checksum, budget, handle, end)

    def write(self, data: memoryview) -> None:
        """Append bytes of whole rows: the piece that can go to the file now (see
        :meth:`_piece_end`) goes in one call, the rest waits in the buffer.

        Raises:
            OSError: writing, or reserving space for the waiting bytes, failed.
        """
        self.checksum.update(data)
        boundary = self._piece_end(self.end + self._buffered + len(data))
        if boundary <= self.end:
            self._hold(data)
        else:  # the buffer never reaches a boundary, so the piece takes some of data
            cut = boundary - self.end - self._buffered
            with (
                memoryview(self._buffer) as whole,
                whole[: self._buffered] as held,
                data[:cut] as head,
            ):
                self._write_all(held, head)
            self._buffered = 0
            with data[cut:] as tail:
                self._hold(tail)
        self._reserve_waiting()

    def flush(self) -> None:
        """Write out what the buffer holds, wherever it ends (a commit or a seal needs every
        byte in the file)."""
        if self._buffered:
            with memoryview(self._buffer) as whole, whole[: self._buffered] as held:
                self._write_all(held)
            self._buffered = 0

    def write_header(self, rows: int) -> None:
        """Flush, then state ``rows`` rows in the header (rewritten in place)."""
        self.flush()
        os.pwrite(self._fd(), header_bytes(self.spec.numpy_dtype, self.spec.shape, rows), 0)

    def seal(self, rows: int) -> None:
        """Write the final header (``rows`` rows), make the file read-only (it loses
        :data:`WRITE_PERMISSIONS`) and close it; its ``fsync`` comes later, by path."""
        self.write_header(rows)
        fd = self._fd()
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & ~WRITE_PERMISSIONS)
        self.close()

    def start_writeback(self) -> None:
        """Start writing to disk what reached the file since the last call (see
        :func:`memshard.durable.start_writeback`); the buffer waits for its piece."""
        start_writeback(self._fd(), self._writeback_from, self.end - self._writeback_from)
        self._writeback_from = self.end

    def sync(self) -> None:
        """Make everything written durable."""
        os.fsync(self._fd())

    def release_descriptor(self) -> None:
        """Close the descriptor until the next write needs it again; nothing is lost."""
        handle, self._handle = self._handle, None
        self._budget.forget(self)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        """Close the descriptor for good; buffered bytes not flushed are dropped."""
        self._buffer, self._buffered = bytearray(), 0
        self.release_descriptor()

    def fileno(self) -> int:
        """A descriptor of the file (reopened if it was released)."""
        return self._fd()

    def _fd(self) -> int:
        if self._handle is None:
            self._handle = OwnedFd.open(self.full_path, os.O_RDWR | _NOFOLLOW)
        self._budget.use(self)
        return self._handle.fileno()

    def _piece_end(self, stop: int) -> int:
        """Where the piece to write now ends, when the appended bytes end at file offset
        ``stop``: the last multiple of :data:`~memshard.npyheader.HUGE_PAGE` up to ``stop``;
        written through, ``stop`` once more than :data:`WRITE_BUFFER_BYTES` would wait. No
        piece is due when that is not past :attr:`end`."""
        if self._aligned:
            return stop - stop % HUGE_PAGE
        return stop if stop - self.end > WRITE_BUFFER_BYTES else self.end

    def _hold(self, data: memoryview) -> None:
        """Copy ``data`` after the buffered bytes, growing the buffer (by doubling, to at most
        what a piece holds) only when it is too small: a buffer allocated anew for every
        batch would cost fresh pages each time."""
        stop = self._buffered + len(data)
        if stop > len(self._buffer):
            grown = min(max(stop, 2 * len(self._buffer)), max(stop, HUGE_PAGE))
            self._buffer += bytes(grown - len(self._buffer))
        self._buffer[self._buffered : stop] = data
        self._buffered = stop

    def _reserve_waiting(self) -> None:
        """Reserve the file space of the buffered bytes once more than
        :data:`WRITE_BUFFER_BYTES` of them have none; write them out if that fails."""
        waiting_end = self.end + self._buffered
        unreserved_from = max(self.end, self._reserved_to)
        if waiting_end - unreserved_from <= WRITE_BUFFER_BYTES:
            return
        if reserve_space(self._fd(), unreserved_from, waiting_end - unreserved_from):
            self._reserved_to = waiting_end
        else:  # the write reports ENOSPC or EFBIG itself, or succeeds where fallocate cannot
            self.flush()

    def _write_all(self, *parts: bytes | bytearray | memoryview) -> None:
        """Write ``parts`` one after another at :attr:`end`, in one ``pwrite`` or ``pwritev``
        call unless the kernel writes fewer bytes than asked (then the rest follows)."""
        # The views are released explicitly, not left to reference counting: a sampling
        # profiler (dask's workers run one) may hold this frame, and a live view of the buffer
        # would make growing it (_hold) fail with BufferError.
        fd = self._fd()
        with contextlib.ExitStack() as views:
            rest = [views.enter_context(memoryview(part)) for part in parts if len(part)]
            while rest:
                if len(rest) == 1:
                    written = os.pwrite(fd, rest[0], self.end)
                else:
                    written = os.pwritev(fd, rest, self.end)
                self.end += written
                while rest and written >= len(rest[0]):
                    written -= len(rest.pop(0))
                if written:
                    rest[0] = views.enter_context(rest[0][written:])


def reserve_space(fd: int, offset: int, nbytes: int) -> bool:
    """Allocate ``nbytes`` bytes of file ``fd`` from ``offset`` (Linux ``fallocate``, growing
    the file if it ends before), so that writing them later cannot fail for want of space.

    Returns:
        ``True`` if the space is reserved; ``False`` if not, for whatever reason (no space,
        over the file size limit, not supported by the file system or the platform): a write
        of the bytes then gives the real outcome.
    """
    if _FALLOCATE is None or nbytes <= 0:
        return False
    result: int = _FALLOCATE(fd, 0, offset, nbytes)
    return result == 0


def file_system_type(fd: int) -> int | None:
    """The ``f_type`` of the file system of ``fd`` (Linux ``fstatfs``), or ``None`` if it
    cannot be told."""
    if _FSTATFS is None:
        return None
    result = ctypes.create_string_buffer(256)  # a struct statfs: 120 bytes on 64-bit Linux
    if _FSTATFS(fd, result) != 0:
        return None
    return ctypes.c_long.from_buffer(result).value  # f_type comes first, a long


def _libc_function(name: str, *argtypes: Any) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_FALLOCATE: Any = _libc_function(
    "fallocate64", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64
)
_FSTATFS: Any = _libc_function("fstatfs", ctypes.c_int, ctypes.c_void_p)


def _make_writable(path: str) -> None:
    """Give the owner of the shard file at ``path`` write permission back, if it lacks it."""
    with contextlib.closing(OwnedFd.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)) as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if not mode & stat.S_IWUSR:
            os.fchmod(handle.fileno(), mode | stat.S_IWUSR)
