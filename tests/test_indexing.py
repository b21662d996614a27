"""Column indexing equals numpy indexing, for every key form, dtype and shard layout."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard.errors import (
    IndexOverflowError,
    IndexTypeError,
    IndexValueError,
    InvalidIndexError,
    MemshardError,
)
from memshard.indexing import (
    NUMPY_REFUSALS,
    SegmentTable,
    SliceRows,
    check_indices,
    plan,
    project_indices,
    project_slice,
    slice_rows,
    split_pieces,
)
from tests.helpers import write_dataset
from tests.strategies import (
    dtypes,
    huge_ints,
    index_keys,
    row_keys,
    sample_shapes,
    shard_sizes,
    values_of,
)


def _numpy_result(array: np.ndarray, key: Any) -> np.ndarray | None:
    """What numpy reads from ``array`` at ``key``; None where numpy raises IndexError."""
    try:
        return np.asarray(array[key])
    except IndexError:
        return None


def _read_through_projection(array: np.ndarray, sizes: list[int], key: Any) -> np.ndarray:
    """What the reader does, with in-memory shards standing in for mapped files."""
    shards = np.split(array, np.cumsum(sizes)[:-1]) if sizes else []
    table = SegmentTable.from_offsets(np.concatenate(([0], np.cumsum(sizes))).astype(np.int64))
    shape = array.shape
    selection = plan(key, shape)
    rows = selection.rows
    if isinstance(rows, SliceRows):
        parts = [
            (shards[s][in_shard], in_out) for s, in_shard, in_out in project_slice(rows, table)
        ]
        count = rows.count
    else:
        parts = [(shards[s][local], pos) for s, local, pos in project_indices(rows.indices, table)]
        count = rows.indices.size
    out = np.empty((count, *shape[1:]), dtype=array.dtype)
    for values, positions in parts:
        out[positions] = values
    return np.asarray(out[selection.key])


@settings(max_examples=400)
@given(sizes=shard_sizes(), shape=sample_shapes, data=st.data())
def test_projection_matches_numpy(sizes: list[int], shape: tuple[int, ...], data: Any) -> None:
    rows = sum(sizes)
    array = np.arange(rows * int(np.prod(shape))).reshape((rows, *shape))
    key = data.draw(index_keys(array.shape), label="key")
    expected = _numpy_result(array, key)
    if expected is None:
        with pytest.raises(InvalidIndexError):
            _read_through_projection(array, sizes, key)
        return
    got = _read_through_projection(array, sizes, key)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=300)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=8),
    step=st.integers(-5, 5).filter(bool),
    bounds=st.tuples(st.none() | st.integers(-60, 60), st.none() | st.integers(-60, 60)),
)
def test_project_slice_covers_the_slice_in_order(
    sizes: list[int], step: int, bounds: tuple[int | None, int | None]
) -> None:
    total = sum(sizes)
    table = SegmentTable.from_offsets(np.concatenate(([0], np.cumsum(sizes))))
    key = slice(bounds[0], bounds[1], step)
    selection = slice_rows(key, total)
    rows: list[int] = []
    for shard, in_shard, in_out in project_slice(selection, table):
        local = np.arange(sizes[shard])[in_shard]
        assert in_out.stop - in_out.start == local.size > 0
        rows.extend((local + table.offsets[shard]).tolist())
    assert rows == list(range(total))[key]


@settings(max_examples=300)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=20),
    data=st.data(),
)
def test_project_indices_groups_by_shard(sizes: list[int], data: Any) -> None:
    total = sum(sizes)
    indices = np.array(data.draw(st.lists(st.integers(0, total - 1), max_size=60)), dtype=np.int64)
    table = SegmentTable.from_offsets(np.concatenate(([0], np.cumsum(sizes))))
    seen = np.full(indices.size, -1)
    shards_seen = []
    for shard, local, positions in project_indices(indices, table):
        assert ((local >= 0) & (local < sizes[shard])).all()
        assert (seen[positions] == -1).all()
        seen[positions] = local + table.offsets[shard]
        shards_seen.append(shard)
    assert seen.tolist() == indices.tolist()
    assert len(set(shards_seen)) == len(shards_seen)


@given(
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=20),
    rows=st.integers(1, 5),
    data=st.data(),
)
def test_split_pieces_read_the_same_rows_into_the_same_positions(
    sizes: list[int], rows: int, data: Any
) -> None:
    total = sum(sizes)
    indices = np.array(data.draw(st.lists(st.integers(0, total - 1), max_size=60)), dtype=np.int64)
    table = SegmentTable.from_offsets(np.concatenate(([0], np.cumsum(sizes))))
    pieces = project_indices(indices, table)
    split = split_pieces(pieces, rows)
    seen = np.full(indices.size, -1)
    for shard, local, positions in split:
        assert 1 <= local.size <= rows
        assert (seen[positions] == -1).all()
        seen[positions] = local + table.offsets[shard]
    assert seen.tolist() == indices.tolist()
    assert sorted({piece.segment for piece in split}) == sorted(p.segment for p in pieces)
    assert [piece.segment for piece in split] == sorted(
        (piece.segment for piece in split), key=[p.segment for p in pieces].index
    )


def test_uniform_table_divides_instead_of_searching() -> None:
    table = SegmentTable.from_offsets(np.array([0, 4, 8, 10]))
    assert table.uniform_rows == 4
    assert [table.segment_of(r) for r in range(10)] == [0] * 4 + [1] * 4 + [2] * 2
    irregular = SegmentTable.from_offsets(np.array([0, 4, 6, 10]))
    assert irregular.uniform_rows is None
    assert irregular.segments_of(np.arange(10)).tolist() == [0] * 4 + [1] * 2 + [2] * 4


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([10], "index 10 is out of bounds for axis 0 with size 10"),
        ([-11], "index -11 is out of bounds for axis 0 with size 10"),
    ],
)
def test_check_indices_uses_numpys_message(indices: list[int], message: str) -> None:
    with pytest.raises(InvalidIndexError, match=message):
        check_indices(np.array(indices), 10)


@pytest.mark.parametrize(
    "key", [1.5, "x", [1.0, 2.0], np.array([0.5]), [[0, 1], [2]], {1: 2}, (0, "a")]
)
def test_invalid_key_types_raise_index_error(key: Any) -> None:
    with pytest.raises(InvalidIndexError, match="valid indices"):
        plan(key, (10, 3))


@settings(max_examples=80)
@given(dtype=dtypes, shape=sample_shapes, data=st.data())
def test_column_indexing_matches_numpy(
    dtype: np.dtype[Any], shape: tuple[int, ...], data: Any
) -> None:
    rows = data.draw(st.integers(1, 30), label="rows")
    array = data.draw(values_of(dtype, (rows, *shape)), label="array")
    sessions = data.draw(_sessions(rows), label="sessions")
    shard_rows = data.draw(st.integers(1, 6), label="shard_rows")
    keys = data.draw(st.lists(index_keys(array.shape), min_size=1, max_size=8), label="keys")
    with tempfile.TemporaryDirectory() as directory:
        column = write_dataset(f"{directory}/ds", {"x": array}, sessions, shard_rows=shard_rows)[
            "x"
        ]
        assert column.shape == array.shape
        assert column.dtype == array.dtype
        for key in keys:
            expected = _numpy_result(array, key)
            if expected is None:
                with pytest.raises(InvalidIndexError):
                    column[key]
                continue
            got = np.asarray(column[key])
            assert (got.shape, got.dtype) == (expected.shape, expected.dtype), key
            np.testing.assert_array_equal(got, expected)


def _sessions(rows: int) -> st.SearchStrategy[list[int]]:
    return (
        st.lists(st.integers(0, rows), max_size=3)
        .map(lambda cuts: np.diff([0, *sorted(cuts), rows]).tolist())
        .map(lambda sizes: [size for size in sizes if size] or [rows])
    )


# -- keys numpy refuses with other builtins than IndexError ------------------------------------


def _numpy_outcome(array: np.ndarray, key: Any) -> np.ndarray | type[Exception]:
    """``array[key]``, or the class of the builtin numpy raised for it."""
    try:
        return np.asarray(array[key])
    except NUMPY_REFUSALS as exc:
        return type(exc)


def _assert_same_outcome(read: Any, array: np.ndarray, key: Any) -> None:
    """``read(key)`` gives what numpy gives, or raises an InvalidIndexError that is also the
    builtin numpy raised."""
    expected = _numpy_outcome(array, key)
    if isinstance(expected, type):
        with pytest.raises(MemshardError) as caught:
            read(key)
        assert isinstance(caught.value, InvalidIndexError), (key, caught.value)
        assert isinstance(caught.value, expected), (key, expected, type(caught.value))
        return
    got = np.asarray(read(key))
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype), key
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=500)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=0, max_size=5),
    shape=sample_shapes,
    data=st.data(),
)
def test_planned_row_keys_match_numpy_or_raise_its_builtin(
    sizes: list[int], shape: tuple[int, ...], data: Any
) -> None:
    rows = sum(sizes)
    array = np.arange(rows * int(np.prod(shape))).reshape((rows, *shape))
    key = data.draw(row_keys(rows) | st.tuples(row_keys(rows), row_keys(3)), label="key")
    _assert_same_outcome(lambda k: _read_through_projection(array, sizes, k), array, key)


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same 10 rows as one segment (one shard) and as many (shards of 3, two sessions)."""
    array = np.arange(10 * 2, dtype=np.int32).reshape(10, 2)
    root = tmp_path_factory.mktemp("columns")
    one = write_dataset(root / "one", {"x": array}, shard_rows=16)
    many = write_dataset(root / "many", {"x": array}, [4, 6], shard_rows=3)
    assert len(one.shards) == 1
    assert len(many.shards) == 4
    return {
        "array": array,
        "one": one["x"],
        "many": many["x"],
        "one dataset": one,
        "many dataset": many,
    }


@settings(max_examples=300)
@given(layout=st.sampled_from(["one", "many"]), data=st.data())
def test_column_row_keys_match_numpy_or_raise_its_builtin(
    columns: dict[str, Any], layout: str, data: Any
) -> None:
    array, column = columns["array"], columns[layout]
    key = data.draw(row_keys(len(array)), label="key")
    _assert_same_outcome(column.__getitem__, array, key)
    dataset = columns[f"{layout} dataset"]
    _assert_same_outcome(lambda k: dataset[k]["x"], array, key)


@pytest.mark.parametrize("layout", ["one", "many"])
@pytest.mark.parametrize("key", [2**63, -(2**63) - 1, 2**70, (2**63,), (0, 2**63)])
def test_an_int_outside_int64_is_an_index_error_and_an_overflow_error(
    columns: dict[str, Any], layout: str, key: Any
) -> None:
    with pytest.raises(IndexOverflowError) as caught:
        columns[layout][key]
    assert isinstance(caught.value, IndexError)
    assert isinstance(caught.value, OverflowError)
    assert isinstance(caught.value, MemshardError)
    value = key if isinstance(key, int) else key[-1]
    assert f"field 'x': index {value} is out of bounds" in str(caught.value)
    assert str(2**63 - 1) in str(caught.value)


@pytest.mark.parametrize("layout", ["one", "many"])
@pytest.mark.parametrize(
    "key", [slice(None, None, 0), slice(2, 5, 0), (slice(None), slice(None, None, 0))]
)
def test_a_zero_step_is_a_value_error(columns: dict[str, Any], layout: str, key: Any) -> None:
    with pytest.raises(IndexValueError, match="slice step cannot be zero") as caught:
        columns[layout][key]
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidIndexError)


@pytest.mark.parametrize("layout", ["one", "many"])
def test_a_float_slice_bound_is_a_type_error(columns: dict[str, Any], layout: str) -> None:
    with pytest.raises(IndexTypeError, match="slice indices must be integers") as caught:
        columns[layout][1.5:]
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, InvalidIndexError)


@given(value=huge_ints)
def test_plan_refuses_huge_ints_purely(value: int) -> None:
    with pytest.raises(IndexOverflowError, match=f"index {value} is out of bounds"):
        plan(value, (10, 3))
    with pytest.raises(IndexOverflowError):
        plan((0, value), (10, 3))


def test_a_ragged_row_list_on_a_dataset_is_an_index_error(columns: dict[str, Any]) -> None:
    dataset = ms.open(Path(columns["many dataset"].path))
    with pytest.raises(InvalidIndexError, match="valid indices"):
        dataset[[[0, 1], [2]]]
