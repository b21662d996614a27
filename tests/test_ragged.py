"""Ragged batches behave as a Python list of numpy arrays (the reference), and pack_rows turns
every accepted form of a writer's rows into the same packed arrays, or names what is wrong."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memshard.errors import (
    ArgumentError,
    BatchError,
    CastError,
    InvalidIndexError,
    MemshardError,
    OutArrayError,
    RaggedArrayError,
    UnsupportedDtypeError,
)
from memshard.ragged import Ragged, pack_rows
from tests.strategies import ragged_rows, ragged_tails

Rows = tuple[list[np.ndarray], np.dtype[Any], tuple[int, ...]]


def ragged_of(rows: Rows) -> Ragged:
    arrays, dtype, tail = rows
    return Ragged.from_rows(arrays, dtype=dtype, tail=tail)


def assert_rows(
    batch: Ragged, expected: list[np.ndarray], dtype: Any, tail: tuple[int, ...]
) -> None:
    """``batch`` holds exactly ``expected``, with consistent packed arrays."""
    assert len(batch) == len(expected)
    assert batch.dtype == dtype
    assert batch.tail == tail
    for got, want in zip(batch.tolist(), expected, strict=True):
        assert got.dtype == dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert batch.offsets.dtype == np.int64
    assert batch.offsets.shape == (len(expected) + 1,)
    assert batch.offsets[0] == 0
    assert batch.offsets[-1] == len(batch.values)
    assert batch.lengths.tolist() == [len(row) for row in expected]
    assert batch.values.shape == (sum(len(row) for row in expected), *tail)


# Construction ---------------------------------------------------------------------------


@given(ragged_rows())
def test_from_rows_holds_the_rows(rows: Rows) -> None:
    arrays, dtype, tail = rows
    batch = ragged_of(rows)
    assert_rows(batch, arrays, dtype, tail)
    if arrays:
        np.testing.assert_array_equal(batch.values, np.concatenate(arrays))


@given(ragged_rows())
def test_packed_constructors_agree_with_from_rows(rows: Rows) -> None:
    arrays, dtype, tail = rows
    values = np.concatenate(arrays) if arrays else np.empty((0, *tail), dtype)
    lengths = [len(row) for row in arrays]
    assert_rows(Ragged(values, np.cumsum([0, *lengths])), arrays, dtype, tail)
    assert_rows(Ragged.from_lengths(values, lengths), arrays, dtype, tail)


def test_from_rows_infers_dtype_and_tail_ignoring_empty_rows() -> None:
    batch = Ragged.from_rows([[[1, 2]], [], np.zeros((2, 2), np.int8)])
    assert batch.dtype == np.int64
    assert batch.tail == (2,)
    assert batch.lengths.tolist() == [1, 0, 2]


def test_from_rows_needs_dtype_and_tail_when_there_are_no_rows() -> None:
    with pytest.raises(ArgumentError, match="dtype= and tail="):
        Ragged.from_rows([])
    batch = Ragged.from_rows([], dtype="int16", tail=(3,))
    assert len(batch) == 0
    assert batch.values.shape == (0, 3)
    assert batch.dtype == np.int16


def test_the_constructor_keeps_values_as_a_read_only_view() -> None:
    values = np.arange(6, dtype=np.int32)
    batch = Ragged(values, [0, 2, 6])
    assert np.shares_memory(batch.values, values)
    for array in (batch.values, batch.offsets, batch[0]):
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0
    assert values.flags.writeable


@pytest.mark.parametrize(
    ("values", "offsets", "message"),
    [
        (np.arange(3), [0, 2], "offsets end at 2, but values hold 3 elements"),
        (np.arange(3), [1, 3], r"offsets must start at 0, got offsets\[0\] = 1"),
        (np.arange(3), [0, 2, 1, 3], r"must not decrease: offsets\[1\] = 2 > offsets\[2\] = 1"),
        (np.arange(3), [0, -1, 3], r"must not be negative: offsets\[1\] = -1"),
        (np.arange(3), [], r"1-d array of rows \+ 1 integers, got shape \(0,\)"),
        (np.arange(3), [0.0, 3.0], "got shape \\(2,\\) dtype float64"),
        (np.arange(3), [[0, 3]], r"got shape \(1, 2\)"),
        (np.arange(3), [0, 2**62 + 1], "more than the 4611686018427387904"),
        (np.int64(3), [0, 1], r"values have shape \(\)"),
    ],
)
def test_the_constructor_refuses_bad_offsets(values: Any, offsets: Any, message: str) -> None:
    with pytest.raises(BatchError, match=message) as caught:
        Ragged(values, offsets)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("Ragged: ")


def test_a_ragged_batch_holds_numbers_only() -> None:
    with pytest.raises(UnsupportedDtypeError, match="<U1 are not numbers"):
        Ragged(np.array(["a", "b"]), [0, 2])
    with pytest.raises(UnsupportedDtypeError, match="not numbers"):
        Ragged.from_rows([np.array(["a"])])


# Indexing -------------------------------------------------------------------------------


@given(ragged_rows())
def test_an_integer_gives_the_row_as_a_read_only_view(rows: Rows) -> None:
    arrays, _, _ = rows
    batch = ragged_of(rows)
    for i in range(-len(arrays), len(arrays)):
        row = batch[i] if i % 2 else batch[np.int64(i)]
        np.testing.assert_array_equal(row, arrays[i])
        assert row.shape == arrays[i].shape
        assert not row.flags.writeable
        assert row.base is not None  # a view, never a copy


@given(ragged_rows())
def test_an_integer_out_of_range_is_an_index_error(rows: Rows) -> None:
    batch = ragged_of(rows)
    for index in (len(batch), -len(batch) - 1, 2**63 - 1):
        with pytest.raises(InvalidIndexError, match=f"index {index} is out of bounds") as caught:
            batch[index]
        assert isinstance(caught.value, IndexError)


slices = st.builds(
    slice,
    st.none() | st.integers(-10, 10),
    st.none() | st.integers(-10, 10),
    st.none() | st.integers(-3, 3).filter(bool),
)


@given(ragged_rows(), slices)
def test_a_slice_selects_as_a_list_slice_does(rows: Rows, key: slice) -> None:
    arrays, dtype, tail = rows
    assert_rows(ragged_of(rows)[key], arrays[key], dtype, tail)


@given(ragged_rows(), st.integers(-10, 10), st.integers(-10, 10))
def test_consecutive_rows_share_the_values(rows: Rows, start: int, stop: int) -> None:
    batch = ragged_of(rows)
    part = batch[start:stop]
    if part.values.size:
        assert np.shares_memory(part.values, batch.values)


@given(ragged_rows(), st.data())
def test_an_integer_array_selects_those_rows_in_order(rows: Rows, data: st.DataObject) -> None:
    arrays, dtype, tail = rows
    n = len(arrays)
    indices = data.draw(st.lists(st.integers(-n, n - 1), max_size=10)) if n else []
    expected = [arrays[i] for i in indices]
    batch = ragged_of(rows)
    assert_rows(batch[indices], expected, dtype, tail)
    assert_rows(batch[np.array(indices, dtype=np.int64)], expected, dtype, tail)
    assert_rows(batch[np.array(indices, dtype=np.int16)], expected, dtype, tail)


@given(ragged_rows(), st.data())
def test_a_boolean_mask_selects_the_rows_it_marks(rows: Rows, data: st.DataObject) -> None:
    arrays, dtype, tail = rows
    mask = data.draw(st.lists(st.booleans(), min_size=len(arrays), max_size=len(arrays)))
    expected = [row for row, keep in zip(arrays, mask, strict=True) if keep]
    assert_rows(ragged_of(rows)[np.array(mask, dtype=bool)], expected, dtype, tail)


def test_out_of_range_arrays_and_masks_of_another_length_are_index_errors() -> None:
    batch = Ragged.from_rows([[1], [2, 3], []])
    with pytest.raises(InvalidIndexError, match="index 3 is out of bounds for axis 0 with size 3"):
        batch[[0, 3]]
    with pytest.raises(InvalidIndexError, match="index -4 is out of bounds"):
        batch[np.array([-4])]
    with pytest.raises(InvalidIndexError, match="size of axis is 3 but size of corresponding"):
        batch[np.array([True, False])]


@pytest.mark.parametrize(
    "key", [1.0, "1", (0, 1), None, Ellipsis, True, np.zeros((1, 1), np.int64), [0.5]]
)
def test_other_keys_are_refused(key: Any) -> None:
    batch = Ragged.from_rows([[1], [2, 3]])
    with pytest.raises(InvalidIndexError) as caught:
        batch[key]
    assert isinstance(caught.value, IndexError)


@given(ragged_rows())
def test_iteration_yields_the_rows(rows: Rows) -> None:
    arrays, _, _ = rows
    got = list(ragged_of(rows))
    assert len(got) == len(arrays)
    for row, want in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(row, want)


# Padding, concatenation, conversion -------------------------------------------------------


def reference_padded(
    arrays: list[np.ndarray], dtype: Any, tail: tuple[int, ...], pad: Any, width: int | None
) -> tuple[np.ndarray, list[int]]:
    """What to_padded must give, built row by row."""
    width = max((len(row) for row in arrays), default=0) if width is None else width
    out = np.full((len(arrays), width, *tail), pad, dtype=dtype)
    kept = []
    for i, row in enumerate(arrays):
        out[i, : min(len(row), width)] = row[:width]
        kept.append(min(len(row), width))
    return out, kept


@given(ragged_rows(), st.none() | st.integers(0, 7))
def test_to_padded_pads_and_cuts_like_a_loop(rows: Rows, max_len: int | None) -> None:
    arrays, dtype, tail = rows
    padded, lengths = ragged_of(rows).to_padded(pad_value=1, max_len=max_len)
    want, kept = reference_padded(arrays, dtype, tail, 1, max_len)
    assert padded.dtype == dtype
    assert padded.shape == want.shape
    np.testing.assert_array_equal(padded, want)
    assert lengths.dtype == np.int64
    assert lengths.tolist() == kept
    assert padded.flags.writeable
    assert padded.flags.c_contiguous


@pytest.mark.parametrize(
    ("dtype", "pad_value"),
    [("bool", 0), ("bool", True), ("uint8", 255), ("int8", -1), ("int32", 7.0),
     ("float32", 0.1), ("float16", -np.inf), ("float64", np.nan), ("complex64", 1 + 2j)],
)  # fmt: skip
def test_pad_values_the_dtype_holds_are_used(dtype: str, pad_value: Any) -> None:
    padded, _ = Ragged.from_rows([[], np.ones(1, dtype)]).to_padded(pad_value=pad_value)
    np.testing.assert_array_equal(padded[0], np.array([pad_value]).astype(dtype))


@pytest.mark.parametrize(
    ("dtype", "pad_value"),
    [("bool", 2), ("uint8", -1), ("uint8", 256), ("int32", 0.5), ("int32", np.nan),
     ("float32", 1 + 1j), ("float16", 1e6), ("int64", 2**70), ("int32", "0"), ("int32", [0])],
)  # fmt: skip
def test_pad_values_the_dtype_cannot_hold_are_refused(dtype: str, pad_value: Any) -> None:
    batch = Ragged.from_rows([[], np.ones(1, dtype)])
    with pytest.raises(CastError, match=f"pad_value .* cannot be stored in dtype {dtype}"):
        batch.to_padded(pad_value=pad_value)


@pytest.mark.parametrize("max_len", [-1, 1.5, True, "3"])
def test_max_len_must_be_a_non_negative_integer(max_len: Any) -> None:
    with pytest.raises(ArgumentError, match="max_len must be an integer >= 0"):
        Ragged.from_rows([[1, 2]]).to_padded(max_len=max_len)


def test_to_padded_fills_the_array_its_allocator_makes() -> None:
    made: list[np.ndarray] = []

    def empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        made.append(np.full(shape, 99, dtype=dtype))  # stale contents are overwritten
        return made[-1]

    batch = Ragged.from_rows([[[1, 2]], [], [[3, 4], [5, 6]]], dtype="int16")
    padded, lengths = batch.to_padded(pad_value=-1, max_len=1, empty=empty)
    (array,) = made
    assert padded is array
    assert padded.tolist() == [[[1, 2]], [[-1, -1]], [[3, 4]]]
    assert lengths.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("empty", "message"),
    [
        (lambda shape, dtype: [0] * shape[0], "returned list, not a numpy array"),
        (
            lambda shape, dtype: np.empty((1, *shape), dtype),
            r"shape \(1, 2, 2\) dtype int32, asked",
        ),
        (lambda shape, dtype: np.empty(shape, np.int64), r"dtype int64, asked for shape \(2, 2\)"),
        (lambda shape, dtype: np.empty(shape[::-1], dtype).T, "not C-contiguous and writeable"),
        (
            lambda shape, dtype: np.broadcast_to(np.int32(0), shape),
            "not C-contiguous and writeable",
        ),
    ],
)
def test_an_allocator_must_make_the_array_asked_for(empty: Any, message: str) -> None:
    batch = Ragged.from_rows([[1, 2], [3]], dtype="int32")
    with pytest.raises(OutArrayError, match=f"^to_padded: the allocator .*{message}"):
        batch.to_padded(empty=empty)


@given(ragged_tails.flatmap(lambda tail: st.lists(ragged_rows(tail=tail), min_size=1, max_size=4)))
def test_concat_joins_the_rows_in_order(pieces: list[Rows]) -> None:
    tail = pieces[0][2]
    batches = [ragged_of(piece) for piece in pieces]
    expected = [row for arrays, _, _ in pieces for row in arrays]
    dtype = np.result_type(*(dtype for _, dtype, _ in pieces))
    assert_rows(Ragged.concat(batches), expected, dtype, tail)


def test_concat_refuses_nothing_strangers_and_mixed_tails() -> None:
    with pytest.raises(ArgumentError, match="no batches"):
        Ragged.concat([])
    with pytest.raises(ArgumentError, match=r"expected Ragged batches, got \['list'\]"):
        Ragged.concat([Ragged.from_rows([[1]]), [np.array([1])]])  # type: ignore[list-item]
    with pytest.raises(ArgumentError, match=r"different trailing shapes \[\(\), \(2,\)\]"):
        Ragged.concat([Ragged.from_rows([[1]]), Ragged.from_rows([[[1, 2]]])])


def test_concat_promotes_dtypes_as_numpy_does() -> None:
    joined = Ragged.concat([Ragged.from_rows([[1]], dtype="int8"), Ragged.from_rows([[0.5]])])
    assert joined.dtype == np.float64
    assert joined.values.tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    "convert", [np.asarray, np.array, lambda r: np.concatenate([r]), lambda r: np.zeros(2) + r]
)
def test_a_ragged_batch_is_not_an_array(convert: Any) -> None:
    batch = Ragged.from_rows([[1], [2, 3]])
    with pytest.raises(RaggedArrayError, match=r"use \.to_padded\(\).*or \.values") as caught:
        convert(batch)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, MemshardError)


def test_equality_is_identity_and_repr_says_what_it_holds() -> None:
    batch = Ragged.from_rows([[1], [2, 3]], dtype="int32")
    assert batch == batch
    assert batch != Ragged.from_rows([[1], [2, 3]], dtype="int32")
    assert repr(batch) == "Ragged(rows=2, elements=3, dtype=int32, tail=())"


# pack_rows ------------------------------------------------------------------------------


def packed_forms(arrays: list[np.ndarray], dtype: Any, tail: tuple[int, ...]) -> dict[str, Any]:
    """Every form a writer may be given these rows in."""
    values = np.concatenate(arrays) if arrays else np.empty((0, *tail), dtype)
    lengths = [len(row) for row in arrays]
    forms: dict[str, Any] = {
        "list": list(arrays),
        "tuple": tuple(arrays),
        "offsets": {"values": values, "offsets": np.cumsum([0, *lengths])},
        "lengths": {"values": values, "lengths": np.array(lengths, dtype=np.int32)},
        "ragged": Ragged.from_rows(arrays, dtype=dtype, tail=tail),
    }
    if dtype != np.uint64:  # numpy reads a list holding 0 and 2**63 as float64
        forms["nested lists"] = [row.tolist() for row in arrays]
    if len(arrays) == 1:
        forms["one row"] = arrays[0]
    if arrays and len(set(lengths)) == 1:
        forms["equal rows"] = np.stack(arrays)
    return forms


@settings(max_examples=60)
@given(ragged_rows())
def test_every_form_of_rows_packs_to_the_same_arrays(rows: Rows) -> None:
    arrays, dtype, tail = rows
    expected_offsets = np.cumsum([0, *(len(row) for row in arrays)])
    for form, given_rows in packed_forms(arrays, dtype, tail).items():
        values, offsets = pack_rows(given_rows, dtype=dtype, tail=tail, where=form)
        assert values.dtype == dtype, form
        assert values.flags.c_contiguous, form
        assert offsets.dtype == np.int64, form
        assert offsets.tolist() == expected_offsets.tolist(), form
        assert_rows(Ragged(values, offsets), arrays, dtype, tail)


def test_an_array_already_packed_is_not_copied() -> None:
    row = np.arange(6, dtype=np.int32).reshape(3, 2)
    values, _ = pack_rows(row, dtype=np.dtype("<i4"), tail=(2,), where="x")
    assert np.shares_memory(values, row)
    values, _ = pack_rows({"values": row, "lengths": [1, 2]}, dtype=row.dtype, tail=(2,), where="x")
    assert np.shares_memory(values, row)


def test_values_are_cast_by_the_rule_of_fixed_fields() -> None:
    where, i8, f4, b1 = "tokens", np.dtype("|i1"), np.dtype("<f4"), np.dtype("|b1")
    values, _ = pack_rows([np.array([1, -2], np.int64), []], dtype=i8, tail=(), where=where)
    assert values.dtype == i8
    assert values.tolist() == [1, -2]
    values, _ = pack_rows([np.array([0.1]), [3]], dtype=f4, tail=(), where=where)
    assert values.dtype == f4
    assert values.tolist() == [np.float32(0.1), 3.0]
    weird_bools = np.frombuffer(b"\x00\x02\x01", dtype=bool)
    values, _ = pack_rows([weird_bools], dtype=b1, tail=(), where=where)
    assert values.view(np.uint8).tolist() == [0, 1, 1]


HUGE = np.broadcast_to(np.int8(0), (2**62 + 1,))  # no memory: every element is the same byte
HALF = np.broadcast_to(np.int8(0), (2**61 + 1,))


BAD_LISTS = [
    ([np.zeros((2, 4))], "<f4", (3,), BatchError, r"row 0 has shape \(2, 4\), expected \(n, 3\)"),
    ([[1, 2], 3], "<i4", (), BatchError, r"row 1 has shape \(\), expected \(n\)"),
    ([[[1, 2], [3]]], "<i4", (), BatchError, "row 0: not an array of numbers"),
    (np.zeros((2, 2, 2, 2)), "<i4", (), BatchError, r"array of shape \(2, 2, 2, 2\)"),
    (np.int32(1), "<i4", (), BatchError, r"shape \(\); expected one row of shape \(n\)"),
    ([np.array([0.5])], "<i4", (), CastError, "row 0: cannot store float64 values in a int32"),
    ([np.array([1])], "|b1", (), CastError, "cannot store int64 values in a bool field"),
    ([np.array([1j])], "<f8", (), CastError, "cannot store complex128 values in a float64"),
    ([np.array([300])], "|u1", (), CastError, r"values in \[300, 300\] do not fit in a uint8"),
    ([np.array([1e300])], "<f4", (), CastError, "values overflow the field dtype float32"),
    ([HALF, HALF], "|i1", (), BatchError, "4611686018427387906 elements in one batch"),
]  # fmt: skip
BAD_PACKED = [
    ({"values": [1, 2]}, r"need the keys .* got \['values'\]"),
    ({"values": [1], "offsets": [0, 1], "lengths": [1]}, "need the keys"),
    ({"values": [[1]], "offsets": [0, 1]}, r"values have shape \(1, 1\), expected \(elements\)"),
    ({"values": [1, 2], "offsets": [0, -1, 2]}, r"must not be negative: offsets\[1\] = -1"),
    ({"values": [1, 2], "offsets": [0, 2, 1, 2]}, "must not decrease"),
    ({"values": [1, 2], "offsets": [0, 1]}, "offsets end at 1, but values hold 2 elements"),
    ({"values": [1, 2], "offsets": [2, 2]}, "must start at 0"),
    ({"values": [1, 2], "offsets": [0, 2.0]}, "offsets must be a 1-d array of rows"),
    ({"values": [1, 2], "lengths": [1.0, 1.0]}, "lengths must be a 1-d .* dtype float64"),
    ({"values": [1, 2], "lengths": [True, True]}, "lengths must be a 1-d array of integers"),
    ({"values": [1, 2], "lengths": [3, -1]}, r"must not be negative: lengths\[1\] = -1"),
    ({"values": [1, 2], "lengths": [1]}, "lengths sum to 1, but values hold 2 elements"),
    ({"values": HUGE, "offsets": [0, 2**62 + 1]}, "4611686018427387905 elements in one batch"),
    ({"values": [1], "lengths": [2**62, 2**62]}, "lengths sum to more than the 46116860184"),
    ({"values": [1], "lengths": np.array([2**63, 2**63, 1], np.uint64)}, "sum to more than"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "dtype", "tail", "error", "message"),
    [
        *BAD_LISTS,
        *((rows, "<i4", (), BatchError, message) for rows, message in BAD_PACKED),
        ({"values": [1.5], "lengths": [1]}, "<i4", (), CastError, "values: cannot store float"),
    ],
)
def test_bad_rows_are_refused_with_a_named_error(
    rows: Any, dtype: str, tail: tuple[int, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        pack_rows(rows, dtype=np.dtype(dtype), tail=tail, where="field 'tokens'")
    assert str(caught.value).startswith("field 'tokens'")
    assert isinstance(caught.value, BatchError)


def test_an_empty_row_given_as_an_empty_list_fits_any_tail() -> None:
    values, offsets = pack_rows([[], [[1, 2, 3]]], dtype=np.dtype("<i2"), tail=(3,), where="x")
    assert values.tolist() == [[1, 2, 3]]
    assert offsets.tolist() == [0, 0, 1]
