"""Checksums of shard data: xxh3-64 over the data bytes of a sealed shard file.

A checksum is written ``"xxh3_64:" + 16 lowercase hex digits``. It covers the data region
only (from the data offset to the end of the file); the header is checked separately, byte for
byte, against the manifest.
"""

from __future__ import annotations

import os
import re

import xxhash

ALGORITHM = "xxh3_64"
CHECKSUM_PATTERN = re.compile(r"xxh3_64:[0-9a-f]{16}")
#: Size of the reads used to hash an existing file.
READ_CHUNK = 8 << 20


class StreamingChecksum:
    """An incremental checksum: feed it the data bytes in order, read :meth:`digest`."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()

    def update(self, data: bytes | memoryview) -> None:
        """Add the next bytes of the data region."""
        self._hasher.update(data)

    def digest(self) -> str:
        """The checksum of everything fed so far, in manifest form."""
        return f"{ALGORITHM}:{self._hasher.hexdigest()}"


def checksum_of_file(fd: int, start: int, nbytes: int) -> StreamingChecksum:
    """Hash ``nbytes`` bytes of the open file ``fd`` from offset ``start``.

    Raises:
        EOFError: the file ends before ``start + nbytes``.
    """
    state = StreamingChecksum()
    offset, end = start, start + nbytes
    while offset < end:
        chunk = os.pread(fd, min(READ_CHUNK, end - offset), offset)
        if not chunk:
            raise EOFError(f"file ends at byte {offset}, expected {end}")
        state.update(chunk)
        offset += len(chunk)
    return state
