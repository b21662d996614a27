"""The variable-length workloads of :mod:`benchmarks.ragged`: token sequences and pen strokes
with long-tailed lengths, generated from a seed, held in RAM as one packed pair (every row's
values back to back, and int64 offsets) that is the reference every format is checked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .core import format_bytes

#: Rows of each workload in a full run, and in a quick one (the smoke test).
FULL_TOKEN_ROWS = 2_000_000
FULL_STROKE_ROWS = 500_000
QUICK_TOKEN_ROWS = 4_000
QUICK_STROKE_ROWS = 2_000
#: Rows of one ``extend`` (and of one write batch of every format).
WRITE_ROWS = 1024
#: Token ids are drawn below this (GPT-2's vocabulary).
VOCABULARY = 50_257
#: Stroke points are pen offsets ``(dx, dy)`` within this bound and a pen state of 0 or 1.
STROKE_STEP = 255


class Packed(NamedTuple):
    """Rows back to back: ``values`` of shape ``(total, *tail)`` and int64 ``offsets`` of
    ``rows + 1`` entries from 0 (row ``i`` is ``values[offsets[i]:offsets[i + 1]]``)."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Each row's length."""
        return np.diff(self.offsets)

    def row(self, index: int) -> np.ndarray:
        """Row ``index`` (a view)."""
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def take(self, indices: np.ndarray) -> Packed:
        """Rows ``indices`` (in that order), packed.

        Example:
            >>> rows = Packed(np.arange(6), np.array([0, 1, 3, 6]))
            >>> rows.take(np.array([2, 0])).values.tolist()
            [3, 4, 5, 0]
        """
        return pack([self.row(index) for index in np.asarray(indices).tolist()], self.values)

    def batches(self, rows: int) -> list[Packed]:
        """Consecutive batches of ``rows`` rows, each a view of the values with offsets from 0.

        Example:
            >>> rows = Packed(np.arange(6), np.array([0, 1, 3, 6]))
            >>> [batch.offsets.tolist() for batch in rows.batches(2)]
            [[0, 1, 3], [0, 3]]
        """
        out = []
        for first in range(0, len(self), rows):
            offsets = self.offsets[first : first + rows + 1]
            out.append(Packed(self.values[offsets[0] : offsets[-1]], offsets - offsets[0]))
        return out


def pack(rows: list[np.ndarray], like: np.ndarray) -> Packed:
    """``rows`` (arrays of ``like``'s dtype and trailing shape) packed into one pair."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    if not rows:
        return Packed(np.empty((0, *like.shape[1:]), dtype=like.dtype), offsets)
    return Packed(np.concatenate(rows), offsets)


def same_rows(got: Packed, expected: Packed) -> bool:
    """Whether ``got`` holds exactly the rows of ``expected``: same offsets, same values of the
    same dtype and trailing shape."""
    return (
        got.values.dtype == expected.values.dtype
        and got.values.shape == expected.values.shape
        and np.array_equal(got.offsets, expected.offsets)
        and np.array_equal(got.values, expected.values)
    )


@dataclass(frozen=True)
class RaggedWorkload:
    """``rows`` rows of ``dtype[None, *tail]`` whose lengths are lognormal (median
    ``median``, shape ``sigma``), rounded and clipped to ``1..max_len``."""

    name: str
    dtype: str
    tail: tuple[int, ...]
    rows: int
    median: float
    sigma: float
    max_len: int
    #: What one element is called in the tables (a token, a stroke point).
    element: str
    shard_bytes: int

    @property
    def fields(self) -> dict[str, tuple[str, tuple[int | None, ...]]]:
        """The ``fields`` argument of :func:`memshard.create`: one ragged field, ``name``."""
        return {self.name: (self.dtype, (None, *self.tail))}

    @property
    def element_bytes(self) -> int:
        """Bytes of one element (one token, one stroke point)."""
        return np.dtype(self.dtype).itemsize * math.prod(self.tail)

    def lengths(self, seed: int) -> np.ndarray:
        """Every row's length, int64.

        Example:
            >>> tokens(rows=5).lengths(7).tolist()
            [300, 404, 228, 123, 190]
        """
        rng = np.random.default_rng([seed, 0])
        drawn = rng.lognormal(math.log(self.median), self.sigma, self.rows)
        return np.clip(np.rint(drawn), 1, self.max_len).astype(np.int64)

    def generate(self, seed: int) -> Packed:
        """Every row, packed: token ids below :data:`VOCABULARY`, or stroke points
        ``(dx, dy, pen)``."""
        offsets = np.zeros(self.rows + 1, dtype=np.int64)
        np.cumsum(self.lengths(seed), out=offsets[1:])
        rng = np.random.default_rng([seed, 1])
        shape = (int(offsets[-1]), *self.tail)
        if self.name == "tokens":
            values = rng.integers(0, VOCABULARY, shape, dtype=self.dtype)
        else:
            values = rng.integers(-STROKE_STEP, STROKE_STEP + 1, shape, dtype=self.dtype)
            values[:, 2] &= 1
        return Packed(values, offsets)

    def describe(self, data: Packed) -> str:
        """``N rows of dtype[None, ...], lengths median/mean/max, size``."""
        lengths = data.lengths
        return (
            f"{self.rows:,} rows of {self.dtype}{[None, *self.tail]}, {self.element} counts "
            f"median {int(np.median(lengths))}, mean {lengths.mean():.0f}, max "
            f"{int(lengths.max())} (lognormal, sigma {self.sigma:g}, clipped to "
            f"{self.max_len:,}); {len(data.values):,} {self.element}s, "
            f"{format_bytes(data.values.nbytes)}"
        )


def tokens(rows: int, shard_bytes: int = 256 << 20) -> RaggedWorkload:
    """Token sequences: int32 ids, lengths of median 300, at most 8,192."""
    return RaggedWorkload("tokens", "int32", (), rows, 300, 1.0, 8192, "token", shard_bytes)


def strokes(rows: int, shard_bytes: int = 256 << 20) -> RaggedWorkload:
    """Pen strokes of a sketch: int16 ``(n, 3)`` points, n of median 60, at most 1,000."""
    return RaggedWorkload("strokes", "int16", (3,), rows, 60, 0.8, 1000, "point", shard_bytes)
