"""Variable-length ("ragged") rows: the :class:`Ragged` batch, and :func:`pack_rows`, which
turns what a writer is given for a ragged field into validated packed arrays.

A ragged field's rows differ in length along their first axis and share the trailing shape
``tail`` after it: a row of a field ``("int32", (None,))`` is an int32 array of shape ``(n,)``,
a row of ``("int16", (None, 3))`` one of shape ``(n, 3)``, ``n >= 0`` varying from row to row.

A batch of such rows is held packed, in two arrays:

- ``values``: the rows' elements back to back, shape ``(total, *tail)``;
- ``offsets``: int64, ``rows + 1`` entries, non-decreasing; row ``i`` is
  ``values[offsets[i]:offsets[i + 1]]``.

``offsets[0]`` is always 0 and ``offsets[-1]`` always ``len(values)``: a batch holds its
rows' elements and nothing else, so ``values`` can be handed on (to a file, to torch) as it
is. A batch of ``r`` rows taken from another by a step-1 slice (or any run of consecutive
rows) shares its ``values`` (a view); its ``offsets`` are a new array of ``r + 1`` entries.

A ragged field holds at most :data:`MAX_ELEMENTS` elements per batch.

Where a batch's arrays are made can be chosen: a reader's gather and :meth:`Ragged.to_padded`
take an :data:`Allocator`, called once with the shape only they know (a batch's total
elements are known once its offsets are read), so that, say, a DataLoader worker gathers
straight into shared memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any, NoReturn

import numpy as np

from .dtypes import as_array, stored_array
from .errors import (
    ArgumentError,
    BatchError,
    CastError,
    InvalidIndexError,
    MemshardError,
    OutArrayError,
    RaggedArrayError,
    UnsupportedDtypeError,
)
from .indexing import check_indices, normalize_item, slice_rows

#: The most elements (entries of ``values`` along its first axis) one ragged batch may hold:
#: offsets are int64, and a reader adds a batch's offsets to a base offset of the same size
#: without overflowing.
MAX_ELEMENTS = 2**62
#: The dtype kinds a ragged batch may hold: booleans, integers, floats and complex numbers.
NUMBER_KINDS = "biufc"

#: ``empty(shape, dtype)``: a new, uninitialised, writeable C-contiguous array of that shape
#: and dtype (as ``np.empty``), into which a batch's arrays are written (see :func:`allocate`).
Allocator = Callable[[tuple[int, ...], np.dtype[Any]], np.ndarray]

_VALID_KEYS = (
    "a Ragged batch is indexed by an integer (one row), a slice, or a 1-d array or list of "
    "integers or booleans (a Ragged batch of those rows)"
)


class Ragged:
    """A batch of variable-length rows, packed (see the module docstring).

    ``Ragged(values, offsets)`` takes packed arrays as they are (``values`` is kept as a
    view); :meth:`from_lengths` and :meth:`from_rows` build one from lengths or from a list of
    row arrays. A ``Ragged`` is immutable: ``values`` and ``offsets`` are read-only views, and
    so is every row it hands out.

    As a sequence, ``len(batch)`` is its number of rows, iterating yields each row, and
    ``batch[i]`` is row ``i`` (a read-only view); ``batch[key]`` with a slice, an integer
    array or a boolean mask is a ``Ragged`` of those rows. ``==`` compares identity, as for
    any object; compare ``tolist()`` or ``values`` and ``offsets`` instead. ``np.asarray``
    refuses a ``Ragged`` (:class:`~memshard.errors.RaggedArrayError`): use :meth:`to_padded`
    or ``values``.

    Raises:
        BatchError: ``values`` is 0-d or holds more than :data:`MAX_ELEMENTS` elements, or
            ``offsets`` are not integers from 0 to ``len(values)``, non-decreasing.
        UnsupportedDtypeError: ``values`` are not numbers (booleans, integers, floats,
            complex).

    Example:
        >>> batch = Ragged(np.arange(5), [0, 3, 3, 5])
        >>> len(batch), batch.lengths.tolist(), batch[2].tolist()
        (3, [3, 0, 2], [3, 4])
        >>> batch[[2, 0]].tolist()
        [array([3, 4]), array([0, 1, 2])]
        >>> padded, lengths = batch.to_padded(pad_value=-1)
        >>> padded.tolist()
        [[0, 1, 2], [-1, -1, -1], [3, 4, -1]]
    """

    __slots__ = ("_offsets", "_values")

    _values: np.ndarray
    _offsets: np.ndarray

    def __init__(self, values: Any, offsets: Any) -> None:
        checked = _checked_values(as_array(values, where="Ragged: values"), None, "Ragged")
        _check_number_kind(checked.dtype, "Ragged")
        self._values = _read_only(checked)
        self._offsets = _read_only(_checked_offsets(offsets, len(checked), "Ragged"))

    @classmethod
    def _of(cls, values: np.ndarray, offsets: np.ndarray) -> Ragged:
        """A batch of arrays known to be valid (no checks)."""
        batch = cls.__new__(cls)
        batch._values = _read_only(values)
        batch._offsets = _read_only(offsets)
        return batch

    @classmethod
    def from_lengths(cls, values: Any, lengths: Any) -> Ragged:
        """The batch whose rows take ``lengths[i]`` consecutive elements of ``values``.

        Raises:
            BatchError: ``lengths`` are not non-negative integers summing to ``len(values)``.
        """
        checked = _checked_values(as_array(values, where="Ragged: values"), None, "Ragged")
        _check_number_kind(checked.dtype, "Ragged")
        return cls._of(checked, _offsets_from_lengths(lengths, len(checked), "Ragged"))

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Any],
        *,
        dtype: Any = None,
        tail: tuple[int, ...] | None = None,
    ) -> Ragged:
        """The batch of ``rows``, each an array (or nested list) of shape ``(n, *tail)``.

        ``dtype`` defaults to numpy's promotion of the dtypes of the rows that have elements,
        ``tail`` to the first row's trailing shape; with no rows both must be given. Values
        are converted to ``dtype`` as a writer converts them (:func:`pack_rows`).

        Raises:
            ArgumentError: no rows, and no ``dtype`` or ``tail`` to say what they would hold.
            BatchError, CastError: see :func:`pack_rows`.
        """
        arrays = [as_array(row, where=f"Ragged.from_rows: row {i}") for i, row in enumerate(rows)]
        if not arrays and (dtype is None or tail is None):
            raise ArgumentError(
                "Ragged.from_rows: no rows, so pass dtype= and tail= to say what they hold"
            )
        if dtype is None:
            # Empty rows are left out: numpy makes `[]` float64, which would promote ints.
            dtype = np.result_type(*([a for a in arrays if a.size] or arrays))
        dtype = np.dtype(dtype)
        _check_number_kind(dtype, "Ragged.from_rows")
        tail = arrays[0].shape[1:] if tail is None else tuple(tail)
        return cls._of(*pack_rows(arrays, dtype=dtype, tail=tail, where="Ragged.from_rows"))

    @classmethod
    def concat(cls, batches: Iterable[Ragged]) -> Ragged:
        """The rows of ``batches``, one batch after the other, in one batch.

        The dtype is numpy's promotion of the batches' dtypes (as ``np.concatenate``).

        Raises:
            ArgumentError: no batches, something that is not a ``Ragged``, or batches with
                different trailing shapes.
        """
        pieces = list(batches)
        if not pieces:
            raise ArgumentError("Ragged.concat: no batches given (need at least one)")
        strangers = [type(p).__name__ for p in pieces if not isinstance(p, Ragged)]
        if strangers:
            raise ArgumentError(f"Ragged.concat: expected Ragged batches, got {strangers}")
        tails = {piece.tail for piece in pieces}
        if len(tails) > 1:
            raise ArgumentError(
                f"Ragged.concat: the batches' rows have different trailing shapes {sorted(tails)}"
            )
        if len(pieces) == 1:
            return pieces[0]
        bases = np.cumsum([0] + [len(piece.values) for piece in pieces[:-1]])
        offsets = np.concatenate(
            [np.zeros(1, np.int64)]
            + [piece.offsets[1:] + base for piece, base in zip(pieces, bases.tolist(), strict=True)]
        )
        return cls._of(np.concatenate([piece.values for piece in pieces]), offsets)

    @property
    def values(self) -> np.ndarray:
        """Every row's elements back to back, shape ``(total, *tail)``; read-only."""
        return self._values

    @property
    def offsets(self) -> np.ndarray:
        """int64, ``len(self) + 1`` entries from 0 to ``len(values)``; read-only."""
        return self._offsets

    @property
    def lengths(self) -> np.ndarray:
        """int64, each row's length (a new array)."""
        return np.diff(self._offsets)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype of the elements."""
        return self._values.dtype

    @property
    def tail(self) -> tuple[int, ...]:
        """Each row's shape after its first axis."""
        return tuple(self._values.shape[1:])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __iter__(self) -> Iterator[np.ndarray]:
        values = self._values
        bounds = self._offsets.tolist()
        for start, stop in pairwise(bounds):
            yield values[start:stop]

    def __getitem__(self, key: Any) -> Any:
        """Row ``key`` (a read-only view) for an integer; a ``Ragged`` of the rows selected
        by a slice, an integer array or list, or a boolean mask of ``len(self)`` entries.

        Raises:
            InvalidIndexError: an index out of range, a mask of another length, or a key of
                another kind (a float, a tuple, a 2-d array, ``None``, ``...``).
        """
        rows = len(self)
        item = normalize_item(key) if not isinstance(key, tuple) else key
        if isinstance(item, int):
            if not -rows <= item < rows:
                raise InvalidIndexError(
                    f"index {item} is out of bounds for axis 0 with size {rows}"
                )
            row = item % rows
            return self._values[self._offsets[row] : self._offsets[row + 1]]
        if isinstance(item, slice):
            selected = slice_rows(item, rows)
            return self._take(np.arange(selected.start, selected.stop, selected.step))
        if not isinstance(item, np.ndarray) or item.ndim != 1:
            raise InvalidIndexError(f"{_VALID_KEYS}; got {key!r:.80}")
        if item.dtype.kind == "b":
            if item.size != rows:
                raise InvalidIndexError(
                    f"boolean index did not match indexed array along axis 0; size of axis "
                    f"is {rows} but size of corresponding boolean axis is {item.size}"
                )
            return self._take(np.flatnonzero(item))
        return self._take(check_indices(item, rows))

    def _take(self, rows: np.ndarray) -> Ragged:
        """The batch of ``rows`` (non-negative, in range): a view when they are consecutive
        and increasing, else a copy."""
        if rows.size == 0:
            return Ragged._of(self._values[:0], np.zeros(1, np.int64))
        if rows.size == 1 or bool((np.diff(rows) == 1).all()):
            first, last = int(rows[0]), int(rows[-1]) + 1
            offsets = self._offsets[first : last + 1]
            return Ragged._of(self._values[offsets[0] : offsets[-1]], offsets - offsets[0])
        starts = self._offsets[rows]
        lengths = self._offsets[rows + 1] - starts
        offsets = _cumulative(lengths)
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged._of(self._values[positions], offsets)

    def to_padded(
        self, pad_value: Any = 0, max_len: int | None = None, *, empty: Allocator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows in one array, each padded with ``pad_value`` to a common length.

        Parameters:
            pad_value: a number the dtype holds (exactly for bool and integer dtypes, rounded
                as numpy rounds for float dtypes; never a complex number for a real dtype).
            max_len: the padded length; longer rows are cut to it. ``None``: the longest
                row's length (0 for a batch of no rows).
            empty: makes the padded array (see :data:`Allocator`); default ``np.empty``.

        Returns:
            ``(padded, lengths)``: a new array of shape ``(len(self), max_len, *tail)`` and
            int64 lengths of the rows as they are in it (cut to ``max_len``).

        Raises:
            ArgumentError: ``max_len`` is not an integer >= 0.
            CastError: ``pad_value`` is not a number the dtype holds.
            OutArrayError: ``empty`` returned something else than the array asked for.
        """
        lengths = self.lengths
        width = int(lengths.max(initial=0)) if max_len is None else _checked_max_len(max_len)
        fill = _pad_element(pad_value, self.dtype)
        shape = (len(self), width, *self.tail)
        padded = allocate(empty or _empty, shape, self.dtype, where="to_padded")
        padded[...] = fill
        kept = np.minimum(lengths, width)
        mask = np.arange(width) < kept[:, None]
        if bool((kept == lengths).all()):
            # The mask's true entries, in row-major order, are the elements in order.
            padded[mask] = self._values
        else:
            kept_offsets = _cumulative(kept)
            positions = np.repeat(self._offsets[:-1] - kept_offsets[:-1], kept)
            padded[mask] = self._values[positions + np.arange(kept_offsets[-1])]
        return padded, kept

    def tolist(self) -> list[np.ndarray]:
        """The rows, as a list of read-only views."""
        return list(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> NoReturn:
        raise RaggedArrayError(
            f"a Ragged batch of {len(self)} rows of different lengths is not a rectangular "
            "array: use .to_padded() for a padded array, or .values (with .offsets) for the "
            "packed elements"
        )

    def __repr__(self) -> str:
        return (
            f"Ragged(rows={len(self)}, elements={len(self._values)}, dtype={self.dtype}, "
            f"tail={self.tail})"
        )


def allocate(
    empty: Allocator, shape: tuple[int, ...], dtype: np.dtype[Any], *, where: str
) -> np.ndarray:
    """``empty(shape, dtype)``, checked to be what was asked for.

    Raises:
        OutArrayError: not a numpy array of that shape and dtype, C-contiguous and writeable
            (the message starts with ``where``).
    """
    array = empty(shape, dtype)
    if not isinstance(array, np.ndarray):
        raise OutArrayError(
            f"{where}: the allocator returned {type(array).__name__}, not a numpy array"
        )
    if array.shape != shape or array.dtype != dtype:
        raise OutArrayError(
            f"{where}: the allocator returned shape {array.shape} dtype {array.dtype}, "
            f"asked for shape {shape} dtype {dtype}"
        )
    if not (array.flags.c_contiguous and array.flags.writeable):
        raise OutArrayError(
            f"{where}: the allocator returned an array that is not C-contiguous and writeable"
        )
    return array


def _empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    return np.empty(shape, dtype)


def pack_rows(
    rows: Any, *, dtype: np.dtype[Any], tail: tuple[int, ...], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate what a writer was given for a ragged field, and pack it.

    ``rows`` is one of:

    - a ``list`` or ``tuple`` of rows, each an array (or nested list) of shape ``(n, *tail)``.
      A 2-tuple is two rows, never a packed pair: a pair cannot say whether its second array
      holds offsets or lengths;
    - a mapping ``{"values": ..., "offsets": ...}`` or ``{"values": ..., "lengths": ...}``:
      packed rows (``offsets`` as in the module docstring: from 0 to ``len(values)``);
    - a :class:`Ragged` batch;
    - one array: one row if it has shape ``(n, *tail)``; rows of equal length if it has shape
      ``(rows, n, *tail)``.

    Values are converted to ``dtype`` under the rule fixed-size fields follow
    (:func:`memshard.dtypes.stored_array`); a row with no elements is taken whatever its
    dtype, and a row of shape ``(0,)`` whatever the tail (numpy makes ``[]`` float64 and of
    shape ``(0,)``).

    Returns:
        ``(values, offsets)``: C-contiguous ``values`` of ``dtype`` and shape
        ``(total, *tail)`` (the given array itself where it is that already), and int64
        ``offsets`` of ``rows + 1`` entries from 0 to ``total``.

    Raises:
        BatchError: a row or ``values`` of the wrong shape, more than :data:`MAX_ELEMENTS`
            elements, offsets that are not integers, negative, decreasing, not starting at 0
            or not ending at ``len(values)``, lengths that are not non-negative integers
            summing to ``len(values)``, a mapping with other keys.
        CastError: values ``dtype`` cannot hold (float values in an integer field, ...).
        ArrayConversionError: a value whose own conversion to an array fails.

    Example:
        >>> values, offsets = pack_rows([[1, 2], [], [3]], dtype=np.dtype("<i4"), tail=(),
        ...                             where="tokens")
        >>> values.tolist(), offsets.tolist()
        ([1, 2, 3], [0, 2, 2, 3])
    """
    if isinstance(rows, Ragged):
        values = _checked_values(rows.values, tail, where)
        return stored_array(values, dtype, where=f"{where}: values"), np.array(rows.offsets)
    if isinstance(rows, Mapping):
        return _pack_mapping(rows, dtype, tail, where)
    if isinstance(rows, (list, tuple)):
        return _pack_list(rows, dtype, tail, where)
    array = as_array(rows, where=where)
    if array.ndim == len(tail) + 1:
        return _pack_list([array], dtype, tail, where)
    if array.ndim == len(tail) + 2 and array.shape[2:] == tail:
        count, length = array.shape[:2]
        values = _checked_values(array.reshape((count * length, *tail)), tail, where)
        offsets = np.arange(count + 1, dtype=np.int64) * length
        return stored_array(values, dtype, where=where), offsets
    raise BatchError(
        f"{where}: got an array of shape {array.shape}; expected one row of shape "
        f"{_shape_text(('n', *tail))}, rows of equal length {_shape_text(('rows', 'n', *tail))}, "
        "a list of rows, or {'values': ..., 'offsets' or 'lengths': ...}"
    )


def _pack_list(
    rows: Sequence[Any], dtype: np.dtype[Any], tail: tuple[int, ...], where: str
) -> tuple[np.ndarray, np.ndarray]:
    arrays = [as_array(row, where=f"{where}: row {i}") for i, row in enumerate(rows)]
    for i, array in enumerate(arrays):
        if array.shape == (0,):
            arrays[i] = array.reshape((0, *tail))  # `[]`: an empty row, whatever the tail
        elif array.ndim != len(tail) + 1 or array.shape[1:] != tail:
            raise BatchError(
                f"{where}: row {i} has shape {array.shape}, expected {_shape_text(('n', *tail))}"
            )
    lengths = [len(array) for array in arrays]
    if sum(lengths) > MAX_ELEMENTS:
        raise BatchError(
            f"{where}: {sum(lengths)} elements in one batch, more than the {MAX_ELEMENTS} "
            "(2**62) allowed"
        )
    if not arrays:
        return np.empty((0, *tail), dtype=dtype), np.zeros(1, np.int64)
    stored = [
        # An empty row loses nothing in any dtype, and `[]` is float64 to numpy.
        stored_array(a, dtype, where=f"{where}: row {i}") if a.size else np.empty(a.shape, dtype)
        for i, a in enumerate(arrays)
    ]
    values = stored[0] if len(stored) == 1 else np.concatenate(stored)
    return values, _cumulative(np.array(lengths, dtype=np.int64))


def _pack_mapping(
    rows: Mapping[Any, Any], dtype: np.dtype[Any], tail: tuple[int, ...], where: str
) -> tuple[np.ndarray, np.ndarray]:
    keys = set(rows)
    if keys not in ({"values", "offsets"}, {"values", "lengths"}):
        raise BatchError(
            f"{where}: packed rows need the keys 'values' and 'offsets' or 'values' and "
            f"'lengths', got {sorted(map(str, keys))}"
        )
    values = _checked_values(as_array(rows["values"], where=f"{where}: values"), tail, where)
    if "offsets" in keys:
        offsets = _checked_offsets(rows["offsets"], len(values), where)
    else:
        offsets = _offsets_from_lengths(rows["lengths"], len(values), where)
    return stored_array(values, dtype, where=f"{where}: values"), offsets


def _checked_values(values: np.ndarray, tail: tuple[int, ...] | None, where: str) -> np.ndarray:
    """``values``, if its shape is ``(total, *tail)`` (any tail for None) with ``total`` at
    most :data:`MAX_ELEMENTS`. Looks at the shape only, never at the data."""
    if values.ndim == 0 or (tail is not None and values.shape[1:] != tail):
        expected = _shape_text(("elements", *(tail if tail is not None else ("...",))))
        raise BatchError(f"{where}: values have shape {values.shape}, expected {expected}")
    if len(values) > MAX_ELEMENTS:
        raise BatchError(
            f"{where}: {len(values)} elements in one batch, more than the {MAX_ELEMENTS} "
            "(2**62) allowed"
        )
    return values


def _checked_offsets(offsets: Any, total: int, where: str) -> np.ndarray:
    """``offsets`` as int64, if they run from 0 to ``total`` without decreasing."""
    array = as_array(offsets, where=f"{where}: offsets")
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
        raise BatchError(
            f"{where}: offsets must be a 1-d array of rows + 1 integers, got shape "
            f"{array.shape} dtype {array.dtype}"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise BatchError(f"{where}: offsets must not be negative: offsets[{first}] = {low}")
    if high > MAX_ELEMENTS:
        raise BatchError(
            f"{where}: offsets up to {high}, more than the {MAX_ELEMENTS} (2**62) elements "
            "allowed in one batch"
        )
    array = array.astype(np.int64, copy=False)
    if int(array[0]) != 0:
        raise BatchError(f"{where}: offsets must start at 0, got offsets[0] = {int(array[0])}")
    falls = np.flatnonzero(array[1:] < array[:-1])
    if falls.size:
        i = int(falls[0])
        raise BatchError(
            f"{where}: offsets must not decrease: offsets[{i}] = {int(array[i])} > "
            f"offsets[{i + 1}] = {int(array[i + 1])}"
        )
    if int(array[-1]) != total:
        raise BatchError(
            f"{where}: offsets end at {int(array[-1])}, but values hold {total} elements "
            "(the last offset must be len(values))"
        )
    return np.ascontiguousarray(array)


def offsets_in_order(offsets: np.ndarray, elements: int, *, whole: bool) -> bool:
    """Whether stored ``offsets`` (int64, a shard's, or the part of them a reader uses) may
    slice values of ``elements`` elements: they start at 0, never decrease and end within the
    values, exactly at their end when ``whole`` (every committed row of the shard). The one
    rule readers and ``verify`` apply (``spec/FORMAT.md`` section 5.6)."""
    if not offsets.size:
        return False
    end = int(offsets[-1])
    return (
        int(offsets[0]) == 0
        and not bool((offsets[1:] < offsets[:-1]).any())
        and (end == elements if whole else end <= elements)
    )


def checked_lengths(
    array: np.ndarray, *, error: type[MemshardError] = BatchError, prefix: str = ""
) -> np.ndarray:
    """``array`` (row lengths, already an array) if it is 1-d and of integers >= 0.

    Raises:
        error: naming the shape and dtype, or the first negative length, after ``prefix``.
    """
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)  # np.asarray([]) is float64
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise error(
            f"{prefix}lengths must be a 1-d array of integers >= 0, got shape {array.shape} "
            f"dtype {array.dtype}"
        )
    if array.size and int(array.min()) < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise error(f"{prefix}lengths must not be negative: lengths[{first}] = {int(array[first])}")
    return array


def _offsets_from_lengths(lengths: Any, total: int, where: str) -> np.ndarray:
    """The offsets of rows of ``lengths``, if they are non-negative and sum to ``total``."""
    array = checked_lengths(as_array(lengths, where=f"{where}: lengths"), prefix=f"{where}: ")
    # Each length is below 2**64, so a sum that wraps around uint64 decreases at that step.
    sums = np.cumsum(array, dtype=np.uint64)
    if sums.size and (bool((sums[1:] < sums[:-1]).any()) or int(sums[-1]) > MAX_ELEMENTS):
        raise BatchError(
            f"{where}: lengths sum to more than the {MAX_ELEMENTS} (2**62) elements allowed "
            "in one batch"
        )
    offsets = np.concatenate([np.zeros(1, np.int64), sums.astype(np.int64)])
    if int(offsets[-1]) != total:
        raise BatchError(
            f"{where}: lengths sum to {int(offsets[-1])}, but values hold {total} elements"
        )
    return offsets


def _cumulative(lengths: np.ndarray) -> np.ndarray:
    """Offsets of rows of ``lengths``: ``[0, l0, l0 + l1, ...]`` as int64."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _read_only(array: np.ndarray) -> np.ndarray:
    view: np.ndarray = array.view()
    view.flags.writeable = False
    return view


def _check_number_kind(dtype: np.dtype[Any], where: str) -> None:
    if dtype.kind not in NUMBER_KINDS:
        raise UnsupportedDtypeError(
            f"{where}: values of dtype {dtype} are not numbers; a Ragged batch holds booleans, "
            "integers, floats or complex numbers"
        )


def _checked_max_len(max_len: Any) -> int:
    if isinstance(max_len, (bool, np.bool_)) or not isinstance(max_len, (int, np.integer)):
        raise ArgumentError(f"to_padded: max_len must be an integer >= 0 or None, got {max_len!r}")
    if max_len < 0:
        raise ArgumentError(f"to_padded: max_len must be an integer >= 0 or None, got {max_len}")
    return int(max_len)


def _pad_element(pad_value: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``pad_value`` as a 0-d array of ``dtype``, if the dtype holds it (see ``to_padded``)."""
    source = np.asarray(pad_value)
    numeric = source.ndim == 0 and source.dtype.kind in NUMBER_KINDS
    if numeric and (source.dtype.kind != "c" or dtype.kind == "c"):
        with np.errstate(all="ignore"):
            element = source.astype(dtype)
        if dtype.kind in "fc":
            exact = bool(np.isfinite(element)) or not bool(np.isfinite(source))
        else:
            exact = bool(element == source)
        if exact:
            return element
    raise CastError(
        f"to_padded: pad_value {pad_value!r:.80} cannot be stored in dtype {dtype} (a number "
        "the dtype holds is needed: exactly for bool and integer dtypes, never a complex "
        "number for a real dtype)"
    )


def _shape_text(dims: tuple[Any, ...]) -> str:
    """``('n', 3)`` as ``(n, 3)``; a 1-tuple without the trailing comma."""
    return "(" + ", ".join(str(dim) for dim in dims) + ")"
