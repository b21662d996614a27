"""Appending rows to one field's file of the shard being written.

Rows go to the file with plain ``write`` calls, never through a writable mapping (on a full
disk a mapping turns the error into SIGBUS). Small appends collect in a private buffer first;
it is a plain ``bytearray``, so a forked child that exits never flushes its parent's rows
into the shared file, as an inherited ``io.BufferedWriter`` would.
"""

from __future__ import annotations

import contextlib
import os
import stat

from .checksum import StreamingChecksum, checksum_of_file
from .durable import start_writeback
from .errors import ShardSizeError
from .manifest import FieldSpec, ShardFile
from .npyheader import header_bytes

#: Appends smaller than this collect in memory before a ``write`` call.
WRITE_BUFFER_BYTES = 1 << 20
#: The mode a shard file is created with (less the umask).
OPEN_FILE_MODE = 0o644
#: The permissions a shard file loses when it is sealed (0644 becomes 0444): a sealed file,
#: which readers map, must not be truncated or rewritten by mistake.
WRITE_PERMISSIONS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class ShardFileWriter:
    """One open shard file: appends rows, keeps their checksum, rewrites the header."""

    def __init__(self, fd: int, path: str, spec: FieldSpec, checksum: StreamingChecksum) -> None:
        self.fd = fd
        self.path = path
        self.spec = spec
        self.checksum = checksum
        self._pending = bytearray()
        self._writeback_from = 0

    @classmethod
    def create(cls, root: str, relpath: str, spec: FieldSpec) -> ShardFileWriter:
        """Create ``root/relpath`` (which must not exist) holding a header and no rows.

        If writing the header fails, the file is closed and removed before the error is
        raised, so that a full disk gets its space back."""
        where = os.path.join(root, relpath)
        fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, OPEN_FILE_MODE)
        writer = cls(fd, relpath, spec, StreamingChecksum())
        try:
            writer._write_all(header_bytes(spec.numpy_dtype, spec.shape, 0))
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError):
                os.unlink(where)
            raise
        return writer

    @classmethod
    def reopen(cls, root: str, file: ShardFile, spec: FieldSpec, rows: int) -> ShardFileWriter:
        """Continue an unsealed shard file after its ``rows`` committed rows, cutting off any
        uncommitted bytes a crashed writer left after them. A writer that sealed the file and
        died before the commit left it read-only; it is made writable again.

        Raises:
            ShardSizeError: the file is shorter than its committed rows.
        """
        where = os.path.join(root, file.path)
        _make_writable(where)
        fd = os.open(where, os.O_RDWR | os.O_NOFOLLOW | _CLOEXEC)
        end = file.data_offset + rows * spec.row_bytes
        try:
            checksum = checksum_of_file(fd, file.data_offset, rows * spec.row_bytes)
            os.ftruncate(fd, end)
            os.pwrite(fd, header_bytes(spec.numpy_dtype, spec.shape, rows), 0)
            os.lseek(fd, end, os.SEEK_SET)
        except EOFError:
            os.close(fd)
            raise ShardSizeError(f"{root}/{file.path}: shorter than its committed rows") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, file.path, spec, checksum)

    def write(self, data: memoryview) -> None:
        """Append bytes of whole rows."""
        self.checksum.update(data)
        if len(self._pending) + len(data) <= WRITE_BUFFER_BYTES:
            self._pending += data
            return
        self.flush()
        self._write_all(data)

    def flush(self) -> None:
        """Write out what the buffer holds."""
        if self._pending:
            self._write_all(self._pending)
            self._pending.clear()

    def write_header(self, rows: int) -> None:
        """Flush, then state ``rows`` rows in the header (rewritten in place)."""
        self.flush()
        os.pwrite(self.fd, header_bytes(self.spec.numpy_dtype, self.spec.shape, rows), 0)

    def seal(self, rows: int) -> None:
        """Write the final header (``rows`` rows) and make the file read-only (it loses
        :data:`WRITE_PERMISSIONS`); the descriptor stays writable, for the ``fsync`` to come."""
        self.write_header(rows)
        os.fchmod(self.fd, stat.S_IMODE(os.fstat(self.fd).st_mode) & ~WRITE_PERMISSIONS)

    def start_writeback(self) -> None:
        """Flush, and start writing to disk what was written since the last call (see
        :func:`memshard.durable.start_writeback`)."""
        self.flush()
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        start_writeback(self.fd, self._writeback_from, end - self._writeback_from)
        self._writeback_from = end

    def sync(self) -> None:
        """Make everything written durable."""
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor; buffered bytes not flushed are dropped."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        # The views are released explicitly, not left to reference counting: a sampling
        # profiler (dask's workers run one) may hold this frame, and a live view of the buffer
        # would make flush()'s clear() fail with BufferError.
        with memoryview(data) as whole:
            written = 0
            while written < len(whole):
                with whole[written:] as rest:
                    written += os.write(self.fd, rest)


def _make_writable(path: str) -> None:
    """Give the owner of the shard file at ``path`` write permission back, if it lacks it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if not mode & stat.S_IWUSR:
            os.fchmod(fd, mode | stat.S_IWUSR)
    finally:
        os.close(fd)
