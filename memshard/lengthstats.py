"""Statistics of the row lengths of a ragged field (min, median, max, mean), exact, in memory
bounded whatever the number of rows.

The lengths come in blocks (one int64 array per block, e.g. one per shard, read from its
offsets file), from a function that starts them over, so the lengths are never all held at
once. One pass counts the rows, sums them, finds the extremes and counts every length below
:data:`EXACT_BELOW` exactly; the median is read off those counts when it lies there, as it
does for every dataset whose median row is shorter than 65,536 elements. Otherwise more
passes each narrow the range the median lies in by a factor :data:`BUCKETS`, down to one
value: at most four more passes for any int64 lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

#: Lengths below this are counted one by one in the first pass (a table of this many counts).
EXACT_BELOW = 1 << 16
#: Buckets of each further pass over the range where the median lies.
BUCKETS = 1 << 16

Blocks = Callable[[], Iterable[np.ndarray]]


class LengthStats(NamedTuple):
    """The row lengths of a ragged field: how many rows, their total (the elements), and the
    shortest, median, longest and mean row. ``median`` is numpy's: the mean of the two middle
    lengths when the rows are even in number."""

    rows: int
    elements: int
    min: int
    median: float
    max: int
    mean: float


def length_stats(blocks: Blocks) -> LengthStats | None:
    """The statistics of the lengths that ``blocks()`` yields; None when there are none.

    Parameters:
        blocks: called once per pass, each time yielding the same 1-d integer arrays of
            lengths >= 0 (their order does not matter), each summing to less than 2**63, as
            the lengths of one offsets file do.

    Example:
        >>> length_stats(lambda: [np.array([3, 0]), np.array([7])])
        LengthStats(rows=3, elements=10, min=0, median=3.0, max=7, mean=3.3333333333333335)
        >>> length_stats(lambda: []) is None
        True
    """
    rows, elements, low, high = 0, 0, None, None
    small = np.zeros(EXACT_BELOW, dtype=np.int64)
    for block in blocks():
        if not block.size:
            continue
        rows += int(block.size)
        elements += int(block.sum(dtype=np.int64))
        block_low, block_high = int(block.min()), int(block.max())
        low = block_low if low is None else min(low, block_low)
        high = block_high if high is None else max(high, block_high)
        counts = np.bincount(block[block < EXACT_BELOW])
        small[: counts.size] += counts
    if low is None or high is None:
        return None
    middle = [_select(rank, small, blocks, high) for rank in ((rows - 1) // 2, rows // 2)]
    return LengthStats(rows, elements, low, sum(middle) / 2, high, elements / rows)


def _select(rank: int, small: np.ndarray, blocks: Blocks, high: int) -> int:
    """The length of rank ``rank`` (0: the shortest) among those ``blocks()`` yields, given
    ``small``, the counts of each length below :data:`EXACT_BELOW`, and ``high``, the longest."""
    below = np.cumsum(small)
    if rank < int(below[-1]):
        return int(np.searchsorted(below, rank, side="right"))
    rank -= int(below[-1])
    start, stop = EXACT_BELOW, high + 1  # the length sought is in [start, stop)
    while stop - start > 1:
        width = -(-(stop - start) // BUCKETS)
        counts = np.zeros(BUCKETS, dtype=np.int64)
        for block in blocks():
            inside = block[(block >= start) & (block < stop)]
            if inside.size:
                found = np.bincount((inside - start) // width)
                counts[: found.size] += found
        cumulative = np.cumsum(counts)
        bucket = int(np.searchsorted(cumulative, rank, side="right"))
        rank -= int(cumulative[bucket - 1]) if bucket else 0
        start += bucket * width
        stop = min(stop, start + width)
    return start
