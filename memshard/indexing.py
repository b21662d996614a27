"""Index projection: numpy keys onto shards, as pure code with no I/O.

Reading ``column[key]`` happens in three steps:

1. :func:`plan` checks ``key`` against the column's shape exactly as numpy would and splits it
   into the rows it needs from disk (a :class:`RowSelection`) and a key to apply to those rows
   once they are in memory. ``column[key] == rows_array[rewritten_key]`` for every valid key.
2. :func:`project_slice` / :func:`project_indices` map the rows onto shards, giving
   ``(shard, selection in shard, selection in output)`` triples, using the cumulative row
   offsets of the shards.
3. The reader copies (or views) each triple. Only step 3 touches a file.
"""

from __future__ import annotations

import bisect
import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .errors import IndexOverflowError, IndexTypeError, IndexValueError, InvalidIndexError

#: The range of integer indices numpy accepts (it converts them to ``intp``).
INDEX_MIN, INDEX_MAX = -(2**63), 2**63 - 1
#: The builtins numpy raises for a key it refuses; :func:`refusal` turns each into its
#: memshard error.
NUMPY_REFUSALS = (IndexError, OverflowError, ValueError, TypeError)
#: At most this many shards are searched with one boolean mask each; wider spans are grouped
#: with a sort, which costs more per index but nothing per shard.
MASK_GROUPING_MAX_SHARDS = 8

_VALID_INDICES = (
    "only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and integer or "
    "boolean arrays are valid indices"
)


@dataclass(frozen=True)
class SliceRows:
    """Rows ``range(start, stop, step)``, already clipped to the column (``count`` of them)."""

    start: int
    stop: int
    step: int
    count: int


@dataclass(frozen=True)
class IndexRows:
    """Rows ``indices`` (non-negative, in range), in request order, repeats allowed."""

    indices: np.ndarray


RowSelection = SliceRows | IndexRows


@dataclass(frozen=True)
class Plan:
    """What to read (``rows``) and what to apply to it once read (``key``)."""

    rows: RowSelection
    key: tuple[Any, ...]


def _shape_oracle(shape: tuple[int, ...]) -> np.ndarray:
    # A zero-byte array of the column's shape: numpy validates a key on it and computes the
    # result shape with no memory, so every error matches numpy's exactly.
    return np.broadcast_to(np.empty((), dtype=np.dtype([])), shape)


def refusal(exc: Exception) -> InvalidIndexError:
    """The memshard error for numpy refusing a key with ``exc`` (one of
    :data:`NUMPY_REFUSALS`): an :class:`InvalidIndexError` that also inherits ``exc``'s builtin.

    Example:
        >>> error = refusal(ValueError("slice step cannot be zero"))
        >>> type(error).__name__, isinstance(error, ValueError), isinstance(error, IndexError)
        ('IndexValueError', True, True)
    """
    if isinstance(exc, InvalidIndexError):
        return exc
    if isinstance(exc, OverflowError):
        return IndexOverflowError(str(exc))
    if isinstance(exc, ValueError):
        return IndexValueError(str(exc))
    if isinstance(exc, TypeError):
        return IndexTypeError(str(exc))
    return InvalidIndexError(str(exc))


def checked_int(value: int) -> int:
    """``value``, if numpy can index with it.

    Raises:
        IndexOverflowError: ``value`` is outside ``INDEX_MIN .. INDEX_MAX`` (numpy raises
            ``OverflowError`` above the range and ``IndexError`` below it; this is both).
    """
    if not INDEX_MIN <= value <= INDEX_MAX:
        raise IndexOverflowError(
            f"index {value} is out of bounds: numpy indexes with integers from {INDEX_MIN} "
            f"to {INDEX_MAX}"
        )
    return value


def normalize_item(item: Any) -> Any:
    """Turn one element of a key into what numpy would see: int, slice, None, ``...`` or array.

    Raises:
        InvalidIndexError: the item is not a valid index (a float, a string, a ragged list).
        IndexOverflowError: an integer outside the range numpy indexes with.
    """
    if item is None or item is Ellipsis or isinstance(item, slice):
        return item
    if isinstance(item, (bool, np.bool_)):
        return np.asarray(item)
    if isinstance(item, np.ndarray):
        if item.dtype.kind not in "biu":
            raise InvalidIndexError(_VALID_INDICES)
        return item
    if isinstance(item, (list, tuple)):
        return _sequence_to_array(item)
    if isinstance(item, (str, bytes)) or not hasattr(item, "__index__"):
        if hasattr(item, "__array__"):
            return normalize_item(np.asarray(item))
        raise InvalidIndexError(_VALID_INDICES)
    return checked_int(operator.index(item))


def _sequence_to_array(items: list[Any] | tuple[Any, ...]) -> np.ndarray:
    try:
        array = np.asarray(items)
    except ValueError:
        raise InvalidIndexError(_VALID_INDICES) from None
    if array.size == 0 and array.dtype.kind == "f":
        return array.astype(np.intp)
    if array.dtype.kind not in "biu":
        raise InvalidIndexError(_VALID_INDICES)
    return array


def normalize_key(key: Any) -> tuple[Any, ...]:
    """The key as a tuple of normalized items (see :func:`normalize_item`)."""
    items = key if isinstance(key, tuple) else (key,)
    return tuple(normalize_item(item) for item in items)


def _axes_consumed(item: Any) -> int:
    if item is None or item is Ellipsis:
        return 0
    if isinstance(item, np.ndarray) and item.dtype.kind == "b":
        return item.ndim
    return 1


def plan(key: Any, shape: tuple[int, ...]) -> Plan:
    """Split ``key`` on an array of ``shape`` into rows to read and a key to apply after.

    Raises:
        InvalidIndexError: exactly when ``numpy.empty(shape)[key]`` raises; the error also
            inherits the builtin numpy raises (``IndexError``, or see :func:`refusal`), except
            that an integer outside the int64 range is always an :class:`IndexOverflowError`.

    Example:
        >>> p = plan((slice(5, 1, -2), 0), (10, 3))
        >>> p.rows, p.key
        (SliceRows(start=5, stop=1, step=-2, count=2), (slice(None, None, None), 0))
        >>> plan(np.array([2, -1]), (10, 3))
        Plan(rows=IndexRows(indices=array([2, 9])), key=())
    """
    # The keys of most reads, planned without the shape oracle; the empty key they get back
    # tells the reader that the rows read are the result.
    kind = type(key)
    if kind is np.ndarray and key.ndim == 1 and key.dtype.kind in "iu":
        return Plan(IndexRows(check_indices(key, shape[0])), ())
    if kind is slice:
        return Plan(slice_rows(key, shape[0]), ())
    items = normalize_key(key)
    try:
        _shape_oracle(shape)[items]
    except NUMPY_REFUSALS as exc:
        raise refusal(exc) from None
    position = _axis0_position(items, len(shape))
    if position is None:
        return Plan(SliceRows(0, shape[0], 1, shape[0]), items)
    item = items[position]
    if isinstance(item, slice):
        rows: RowSelection = slice_rows(item, shape[0])
        replacement: Any = slice(None)
    elif isinstance(item, int):
        row = item % shape[0]
        rows = SliceRows(row, row + 1, 1, 1)  # a one-row slice keeps the result a view
        replacement = 0
    else:
        return _plan_array(items, position, shape[0])
    return Plan(rows, (*items[:position], replacement, *items[position + 1 :]))


def _axis0_position(items: tuple[Any, ...], ndim: int) -> int | None:
    """Index of the key item that selects along axis 0, or None if an Ellipsis (written or
    implied) covers axis 0."""
    explicit = sum(_axes_consumed(item) for item in items)
    for position, item in enumerate(items):
        if item is Ellipsis:
            if ndim - explicit > 0:
                return None
            continue
        if _axes_consumed(item) > 0:
            return position
    return None


def _plan_array(items: tuple[Any, ...], position: int, length: int) -> Plan:
    item = items[position]
    extra: tuple[Any, ...] = ()
    if item.dtype.kind == "b":
        first, *extra_list = item.nonzero()
        item, extra = first, tuple(extra_list)
    indices = item.astype(np.int64, copy=False).ravel()
    indices = np.where(indices < 0, indices + length, indices)
    replacement = np.arange(indices.size, dtype=np.intp).reshape(item.shape)
    key = (*items[:position], replacement, *extra, *items[position + 1 :])
    return Plan(IndexRows(indices), key)


def slice_rows(item: slice, length: int) -> SliceRows:
    """The rows a slice selects from ``length`` rows, clipped as numpy clips them.

    Raises:
        IndexValueError: the step is 0.
        IndexTypeError: a bound is not an integer or None.
    """
    try:
        start, stop, step = item.indices(length)
    except (ValueError, TypeError) as exc:
        raise refusal(exc) from None
    return SliceRows(start, stop, step, len(range(start, stop, step)))


def as_index_array(indices: Any, *, where: str) -> np.ndarray:
    """``indices`` (a sequence or array of integers) as a 1-d integer array.

    Raises:
        InvalidIndexError: not 1-d, or not integers (floats and bools are refused, never
            rounded); the message starts with ``where``.
    """
    array = np.asarray(indices)
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InvalidIndexError(
            f"{where}: indices must be a 1-d array of integers, got shape {array.shape} "
            f"dtype {array.dtype}"
        )
    return array


def check_indices(indices: np.ndarray, length: int) -> np.ndarray:
    """Validate a 1-d integer index array against ``length`` rows; return it non-negative.

    Raises:
        InvalidIndexError: with numpy's message, for the first out-of-range index.
    """
    if indices.size == 0:
        return indices.astype(np.int64, copy=False)
    low, high = int(indices.min()), int(indices.max())
    if low < -length or high >= length:
        bad = high if high >= length else low
        raise InvalidIndexError(f"index {bad} is out of bounds for axis 0 with size {length}")
    if low < 0:
        return np.where(indices < 0, indices + length, indices).astype(np.int64, copy=False)
    return indices


@dataclass(frozen=True)
class SegmentTable:
    """Where segments start (a segment: rows read together, one shard or a run of shards
    mapped back to back). ``offsets[s]`` is the first row of segment ``s``; the last entry is
    the total row count. ``uniform_rows`` is set when every segment but the last has that many
    rows, which turns the row-to-segment search into a division."""

    offsets: np.ndarray
    uniform_rows: int | None

    @classmethod
    def from_offsets(cls, offsets: np.ndarray) -> SegmentTable:
        """Build the table from ``len(shards) + 1`` cumulative offsets."""
        sizes = np.diff(offsets)
        uniform = None
        if sizes.size and (sizes[:-1] == sizes[0]).all() and 0 < sizes[-1] <= sizes[0]:
            uniform = int(sizes[0])
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        offsets.flags.writeable = False
        return cls(offsets, uniform)

    def segment_of(self, row: int) -> int:
        """The segment holding ``row`` (``0 <= row < total``)."""
        if self.uniform_rows is not None:
            return row // self.uniform_rows
        return bisect.bisect_right(self.offsets, row) - 1

    def segments_of(self, rows: np.ndarray) -> np.ndarray:
        """The segment of each row, vectorised."""
        if self.uniform_rows is not None:
            return rows // self.uniform_rows
        return np.searchsorted(self.offsets, rows, side="right") - 1


class Piece(NamedTuple):
    """One segment's share of a read: which ``rows`` of the segment (a slice or an index
    array), and where they go in the output (``positions``: a slice or an index array)."""

    segment: int
    rows: Any
    positions: Any


def project_slice(rows: SliceRows, table: SegmentTable) -> list[Piece]:
    """A :class:`Piece` (segment, slice in it, slice of the output) for every segment the slice
    touches, in output order.

    Example:
        >>> t = SegmentTable.from_offsets(np.array([0, 4, 8, 10]))
        >>> for piece in project_slice(SliceRows(1, 10, 3, 3), t):
        ...     print(piece)
        Piece(segment=0, rows=slice(1, 2, 3), positions=slice(0, 1, None))
        Piece(segment=1, rows=slice(0, 4, 3), positions=slice(1, 3, None))
    """
    if rows.count == 0:
        return []
    offsets = table.offsets
    first = rows.start
    last = rows.start + (rows.count - 1) * rows.step
    triples: list[Piece] = []
    done = 0
    shard = table.segment_of(first)
    step_shard = 1 if rows.step > 0 else -1
    while done < rows.count:
        row = first + done * rows.step
        while not offsets[shard] <= row < offsets[shard + 1]:
            shard += step_shard
        low, high = int(offsets[shard]), int(offsets[shard + 1])
        end_row = min(last, high - 1) if rows.step > 0 else max(last, low)
        count = (end_row - row) // rows.step + 1
        local_start = row - low
        local_stop = local_start + (count - 1) * rows.step + (1 if rows.step > 0 else -1)
        triples.append(
            Piece(
                shard,
                slice(local_start, local_stop if local_stop >= 0 else None, rows.step),
                slice(done, done + count),
            )
        )
        done += count
    return triples


def project_indices(indices: np.ndarray, table: SegmentTable) -> list[Piece]:
    """A :class:`Piece` (segment, indices in it, positions in the output) per segment.

    ``indices`` must be 1-d, non-negative and in range. The output positions are a ``slice``
    when one shard serves every index.

    Example:
        >>> t = SegmentTable.from_offsets(np.array([0, 4, 8]))
        >>> [(s, a.tolist(), p if isinstance(p, slice) else p.tolist())
        ...  for s, a, p in project_indices(np.array([5, 1, 6]), t)]
        [(0, [1], [1]), (1, [1, 2], [0, 2])]
    """
    if indices.size == 0:
        return []
    offsets = table.offsets
    shards = table.segments_of(indices)
    low, high = int(shards.min()), int(shards.max())
    if low == high:
        return [Piece(low, indices - offsets[low], slice(0, indices.size))]
    if high - low < MASK_GROUPING_MAX_SHARDS:
        triples: list[Piece] = []
        for shard in range(low, high + 1):
            positions = np.flatnonzero(shards == shard)
            if positions.size:
                triples.append(Piece(shard, indices[positions] - offsets[shard], positions))
        return triples
    order = np.argsort(shards, kind="stable")
    grouped = shards[order]
    cuts = np.flatnonzero(grouped[1:] != grouped[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [indices.size]))
    return [
        Piece(int(grouped[a]), indices[order[a:b]] - offsets[grouped[a]], order[a:b])
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def split_pieces(pieces: list[Piece], rows: int) -> list[Piece]:
    """The :class:`Piece` s of :func:`project_indices`, each cut into pieces of at most
    ``rows`` rows (``rows >= 1``), in the same order: together they read the same rows into
    the same positions.

    Example:
        >>> t = SegmentTable.from_offsets(np.array([0, 4, 8]))
        >>> [(s, a.tolist(), p if isinstance(p, slice) else p.tolist())
        ...  for s, a, p in split_pieces(project_indices(np.array([5, 1, 6, 7]), t), 2)]
        [(0, [1], [1]), (1, [1, 2], [0, 2]), (1, [3], [3])]
        >>> [p.positions for p in split_pieces(project_indices(np.array([3, 1, 2]), t), 2)]
        [slice(0, 2, None), slice(2, 3, None)]
    """
    result: list[Piece] = []
    for segment, local, positions in pieces:
        for start in range(0, local.size, rows):
            stop = min(start + rows, local.size)
            if isinstance(positions, slice):
                part: Any = slice(positions.start + start, positions.start + stop)
            else:
                part = positions[start:stop]
            result.append(Piece(segment, local[start:stop], part))
    return result
