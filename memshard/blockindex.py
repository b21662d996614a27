"""The blocks of a compressed field in one shard, as its offsets file states them (spec
section 5.7): pure functions of the block ends, no I/O.

The offsets file holds ``rows + 1`` block ends (``ends[0] == 0``; ``ends[i + 1]`` is the byte
where the frame of row ``i``'s block ends in the values file). The rows of one block share
their end; a block starts where the one before it ends. So the blocks are the runs of equal
ends, found with one ``numpy.diff``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Blocks(NamedTuple):
    """A shard's blocks, in order: block ``b`` holds rows ``first_rows[b]:stop_rows[b]`` of
    the shard, and its frame is bytes ``byte_starts[b]:byte_ends[b]`` of the values file
    (int64 arrays)."""

    first_rows: np.ndarray
    stop_rows: np.ndarray
    byte_starts: np.ndarray
    byte_ends: np.ndarray

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The block of each of ``rows`` (shard-local, in range)."""
        return np.searchsorted(self.stop_rows, rows, side="right")


def blocks_of(ends: np.ndarray) -> Blocks:
    """The blocks stated by block ends ``ends`` (``rows + 1`` int64 values, checked in order by
    :func:`memshard.ragged.offsets_in_order`).

    Example:
        >>> blocks = blocks_of(np.array([0, 40, 40, 40, 75, 90]))
        >>> blocks.first_rows.tolist(), blocks.stop_rows.tolist(), blocks.byte_starts.tolist()
        ([0, 3, 4], [3, 4, 5], [0, 40, 75])
    """
    row_ends = ends[1:]
    if not row_ends.size:
        empty = np.zeros(0, dtype=np.int64)
        return Blocks(empty, empty, empty, empty)
    stop_rows = np.append(np.flatnonzero(np.diff(row_ends)) + 1, row_ends.size).astype(np.int64)
    byte_ends = row_ends[stop_rows - 1].astype(np.int64)
    first_rows = np.concatenate(([0], stop_rows[:-1])).astype(np.int64)
    byte_starts = np.concatenate(([0], byte_ends[:-1])).astype(np.int64)
    return Blocks(first_rows, stop_rows, byte_starts, byte_ends)
