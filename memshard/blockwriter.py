"""Writing a compressed field's rows in blocks: rows collect uncompressed until they make a
block, which is compressed into the field's values file as one frame, and each of its rows
gets the block's end in the offsets file (spec section 5.7).

A block holds as many whole rows as stay within the field's ``block_bytes`` (uncompressed),
and at least one: a row of ``block_bytes`` or more is a block of its own. Rows of a fixed field
that fill a block are compressed straight from the batch given; only the rows of an unfinished
block are copied, and they wait (at most ``block_bytes`` of them) until the block fills or the
shard is committed or sealed, which writes them as a shorter block (:meth:`BlockWriter.flush`).
So a commit never leaves a committed row only in memory, and what the offsets state is always
whole blocks.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .blockcodec import BlockCodec
from .ragged import Ragged


class AppendedFile(Protocol):
    """A file bytes are appended to (a :class:`~memshard.shardwriter.ShardFileWriter`)."""

    def write(self, data: memoryview) -> None:
        """Append ``data``."""


class BlockWriter:
    """One compressed field's files in the shard being written.

    ``stored`` is the bytes of frames in the values file so far; ``elements`` (a ragged field)
    the elements of the shard's rows so far, those waiting for their block included. Not
    thread-safe.
    """

    def __init__(
        self,
        codec: BlockCodec,
        row_bytes: int,
        block_bytes: int,
        ragged: bool,
        values: AppendedFile,
        offsets: AppendedFile,
        *,
        stored: int = 0,
        elements: int = 0,
    ) -> None:
        self.codec = codec
        self.values = values
        self.offsets = offsets
        self.stored = stored
        self.elements = elements
        self._row_bytes = row_bytes
        self._block_bytes = block_bytes
        self._ragged = ragged
        self._pending = bytearray()
        self._pending_ends: list[np.ndarray] = []  # element ends of pending rows (ragged)
        self._pending_rows = 0

    @property
    def pending_rows(self) -> int:
        """Rows waiting for their block to fill."""
        return self._pending_rows

    def write(self, rows: np.ndarray | Ragged, start: int, count: int) -> None:
        """Append rows ``start:start + count`` of a validated batch."""
        if isinstance(rows, Ragged):
            self._write_ragged(rows, start, count)
        else:
            self._write_fixed(rows, start, count)

    def _write_fixed(self, rows: np.ndarray, start: int, count: int) -> None:
        per_block = max(1, self._block_bytes // self._row_bytes)
        data = rows.reshape(-1).view(np.uint8).data
        first, stop = start * self._row_bytes, (start + count) * self._row_bytes
        while first < stop:
            end = min(stop, first + (per_block - self._pending_rows) * self._row_bytes)
            taken = (end - first) // self._row_bytes
            if not self._pending_rows and taken == per_block:
                self._write_block(data[first:end], taken, None)  # a whole block: no copy
            else:
                self._pending += data[first:end]
                self._pending_rows += taken
                if self._pending_rows == per_block:
                    self.flush()
            first = end

    def _write_ragged(self, rows: Ragged, start: int, count: int) -> None:
        offsets = rows.offsets[start : start + count + 1]
        values = rows.values.reshape(-1).view(np.uint8).data
        ends = offsets[1:] * self._row_bytes  # the rows' byte ends in ``values``
        base = self.elements - int(offsets[0])  # element ends count from the shard's first
        done = 0
        while done < count:
            begin = int(offsets[done]) * self._row_bytes
            room = self._block_bytes - len(self._pending)
            fit = int(np.searchsorted(ends[done:], begin + room, side="right"))
            if fit == 0 and self._pending_rows:  # the next row would overflow the block
                self.flush()
                continue
            fit = max(fit, 1)  # a row larger than a block is a block of its own
            self._pending += values[begin : int(ends[done + fit - 1])]
            self._pending_ends.append(offsets[done + 1 : done + fit + 1] + base)
            self._pending_rows += fit
            done += fit
            if done < count or len(self._pending) >= self._block_bytes:
                self.flush()
        self.elements = int(offsets[-1]) + base

    def flush(self) -> None:
        """Write the pending rows as one block (a commit or a seal needs every row written)."""
        if not self._pending_rows:
            return
        ends = np.concatenate(self._pending_ends) if self._ragged else None
        with memoryview(self._pending) as pending:
            self._write_block(pending, self._pending_rows, ends)
        self._pending = bytearray()
        self._pending_ends = []
        self._pending_rows = 0

    def _write_block(self, block: memoryview, rows: int, element_ends: np.ndarray | None) -> None:
        """Compress ``block`` (``rows`` whole rows), append its frame (or the block itself, a
        stored block) to the values file and its end to the offsets file, once per row."""
        frame = self.codec.stored_form(block)
        # Never write a frame a reader would refuse (a library that broke the bounds readers
        # hold frames to): the batch fails instead, and nothing of it is committed.
        problem = self.codec.claim_problem(memoryview(frame), len(block))
        if problem is not None:
            raise RuntimeError(f"{self.codec.name} wrote a frame readers refuse: {problem}")
        self.values.write(memoryview(frame))
        self.stored += len(frame)
        if element_ends is None:
            ends = np.full(rows, self.stored, dtype="<i8")
        else:
            ends = np.empty((rows, 2), dtype="<i8")
            ends[:, 0] = element_ends
            ends[:, 1] = self.stored
        self.offsets.write(ends.data.cast("B"))
