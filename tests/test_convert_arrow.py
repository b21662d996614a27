"""from_arrow and from_parquet: Arrow types as fields, Parquet files read row group by row group,
nulls and unsupported types refused by column, resume, workers and the command line."""

from __future__ import annotations

import itertools
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import arrow as ms_arrow
from memshard import cli
from memshard import sources as ms_sources
from memshard.convert import STAGING_SUFFIX, convert
from memshard.errors import (
    ConversionStateError,
    LabelError,
    SmallShardWarning,
    SourceError,
    UnsupportedSourceError,
)
from memshard.ragged import Ragged
from tests.convert_helpers import assert_same_values, staging_of, with_stop

NUMERIC = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
]  # fmt: skip


# -- building Arrow data -----------------------------------------------------------------------


def random_values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values of ``dtype`` spanning its range (every bit pattern of a float but NaN's)."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype) * 1000
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def nested_list(values: np.ndarray) -> pa.Array:
    """``values`` of shape ``(rows, *sample)`` as nested ``fixed_size_list`` (one per axis)."""
    array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def tensor(logical: np.ndarray, permutation: list[int] | None = None) -> pa.ExtensionArray:
    """Rows ``logical`` (shape ``(rows, *sample)``) as ``arrow.fixed_shape_tensor`` values with
    ``permutation``, laid out as the Arrow specification says: "the i-th dimension of the
    logical view corresponds to the dimension with number permutation[i] of the physical
    tensor", the type's ``shape`` being the physical one.

    The storage is built here rather than by pyarrow: pyarrow 26's ``from_numpy_ndarray`` and
    ``to_numpy_ndarray`` disagree with each other, and with the specification, on
    permutations that are not their own inverse (``to_numpy_ndarray`` returns overlapping
    strides for ``[2, 0, 1]``)."""
    axes = list(range(logical.ndim - 1)) if permutation is None else permutation
    inverse = [int(axis) for axis in np.argsort(axes)]
    physical = np.ascontiguousarray(logical.transpose(0, *(axis + 1 for axis in inverse)))
    kind = pa.fixed_shape_tensor(
        pa.from_numpy_dtype(logical.dtype), list(physical.shape[1:]), permutation=permutation
    )
    size = int(np.prod(physical.shape[1:]))
    storage = pa.FixedSizeListArray.from_arrays(pa.array(physical.reshape(-1)), size)
    return pa.ExtensionArray.from_storage(kind, storage)


def expected(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """What a column holds, as one NumPy array of rows: its logical values (for a tensor
    column, those :func:`tensor` was built from)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    kind = column.type
    if isinstance(kind, pa.FixedShapeTensorType):
        permutation = kind.permutation or list(range(len(kind.shape)))
        rows = [
            chunk.storage.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), *kind.shape)
            for chunk in chunks
        ]
        logical: np.ndarray = np.concatenate(rows).transpose(0, *(a + 1 for a in permutation))
        return logical
    whole = pa.chunked_array(chunks, type=kind).to_pylist()
    return np.array(whole, dtype=_dtype(kind)).reshape(len(whole), *_sample_shape(kind))


def _sample_shape(kind: pa.DataType) -> tuple[int, ...]:
    sizes = []
    while pa.types.is_fixed_size_list(kind):
        sizes.append(kind.list_size)
        kind = kind.value_type
    return tuple(sizes)


def _dtype(kind: pa.DataType) -> np.dtype[Any]:
    while pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    dtype: np.dtype[Any] = np.dtype(kind.to_pandas_dtype())
    return dtype


def assert_matches(ds: ms.Dataset, table: pa.Table, names: dict[str, str] | None = None) -> None:
    """Every field holds its column's values (field name -> column; default: the same)."""
    names = names or {name: name for name in table.column_names}
    assert set(ds.fields) == set(names)
    assert len(ds) == table.num_rows
    for field, column in names.items():
        assert_same_values(ds[field][:], expected(table.column(column)))


def sample_table(rows: int = 500, seed: int = 0) -> pa.Table:
    """A table of the supported kinds: scalars, nested fixed-size lists and tensors."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "flag": pa.array(rng.random(rows) < 0.3),
            "half": pa.array(random_values(rng, "float16", (rows,))),
            "vec": nested_list(random_values(rng, "float32", (rows, 5))),
            "grid": nested_list(random_values(rng, "uint8", (rows, 2, 3, 4))),
            "image": tensor(random_values(rng, "int16", (rows, 4, 6))),
            "moved": tensor(random_values(rng, "float64", (rows, 2, 3, 4)), [2, 0, 1]),
        }
    )


#: Bytes of one row of :func:`sample_table`.
ROW_BYTES = 8 + 1 + 2 + 20 + 24 + 48 + 192


def write_parquet(path: Path, table: pa.Table, row_group_size: int, **options: Any) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size, **options)
    return path


def checksums(ds: ms.Dataset) -> list[tuple[int, int, dict[str, str | None]]]:
    return [
        (shard.row_offset, shard.rows, {name: f.checksum for name, f in shard.files.items()})
        for shard in ds.shards
    ]


# -- types -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_numeric_type_as_scalars_lists_and_tensors(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(NUMERIC.index(dtype))
    table = pa.table(
        {
            "scalar": pa.array(random_values(rng, dtype, (40,))),
            "list": nested_list(random_values(rng, dtype, (40, 3))),
            **(
                {} if dtype == "bool" else {"tensor": tensor(random_values(rng, dtype, (40, 2, 2)))}
            ),
        }
    )
    ds = ms.from_arrow(table, tmp_path / "arrow")
    assert_matches(ds, table)
    assert ds.fields["list"].shape == (3,)
    assert dtype == "bool" or ds.fields["tensor"].shape == (2, 2)
    path = write_parquet(tmp_path / "t.parquet", table, 7)
    assert_matches(ms.from_parquet(path, tmp_path / "parquet"), table)


def test_sample_shapes_follow_nested_lists_and_tensor_permutations(tmp_path: Path) -> None:
    table = sample_table(60)
    ds = ms.from_arrow(table, tmp_path / "out")
    shapes = {name: info.shape for name, info in ds.fields.items()}
    assert shapes == {
        "id": (), "flag": (), "half": (), "vec": (5,), "grid": (2, 3, 4), "image": (4, 6),
        "moved": (2, 3, 4),
    }  # fmt: skip
    assert_matches(ds, table)
    source = ds.attrs["memshard.source"]
    assert source["format"] == "arrow"
    assert source["fields"]["moved"]["attrs"]["arrow_type"].startswith("extension<arrow.fixed")


@pytest.mark.parametrize("permutation", [list(p) for p in itertools.permutations(range(3))])
def test_every_tensor_permutation_gives_the_logical_view(
    tmp_path: Path, permutation: list[int]
) -> None:
    logical = np.arange(5 * 2 * 3 * 4, dtype=np.int32).reshape(5, 2, 3, 4)
    table = pa.table({"t": tensor(logical, permutation)})
    assert table.column("t").type.shape == [logical.shape[1:][i] for i in np.argsort(permutation)]
    ds = ms.from_parquet(write_parquet(tmp_path / "t.parquet", table, 2), tmp_path / "out")
    assert_same_values(ds["t"][:], logical)
    if permutation == [permutation.index(i) for i in range(3)]:  # its own inverse
        assert_same_values(ds["t"][:], table.column("t").chunk(0).to_numpy_ndarray())


def test_the_specification_example_of_a_permutation(tmp_path: Path) -> None:
    """``shape [100, 200, 500]`` and ``permutation [2, 0, 1]``: a logical ``[500, 100, 200]``."""
    kind = pa.fixed_shape_tensor(pa.uint8(), [100, 200, 500], permutation=[2, 0, 1])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(10**7, np.uint8)), 10**7)
    table = pa.table({"t": pa.ExtensionArray.from_storage(kind, storage)})
    assert ms_arrow.plan_table(table).fields["t"].shape == (500, 100, 200)


def test_tensor_dimension_names_are_recorded(tmp_path: Path) -> None:
    kind = pa.fixed_shape_tensor(pa.float32(), [2, 3], dim_names=["y", "x"])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12, np.float32)), 6)
    table = pa.table({"t": pa.ExtensionArray.from_storage(kind, storage)})
    ds = ms.from_arrow(table, tmp_path / "out")
    assert ds.attrs["memshard.source"]["fields"]["t"]["attrs"]["dim_names"] == ["y", "x"]


def test_sliced_and_chunked_tables(tmp_path: Path) -> None:
    whole = sample_table(300)
    table = pa.concat_tables([whole.slice(7, 50), whole.slice(100, 1), whole.slice(150, 140)])
    assert table.column("vec").num_chunks == 3
    ds = ms.from_arrow(table, tmp_path / "out", shard_bytes=33 * ROW_BYTES, workers=2)
    assert_matches(ds, table)


@pytest.mark.parametrize(
    "src",
    [
        pytest.param(lambda t: t.to_batches(max_chunksize=30)[0], id="record-batch"),
        pytest.param(lambda t: t.to_batches(max_chunksize=30), id="list-of-batches"),
        pytest.param(lambda t: pa.RecordBatchReader.from_batches(t.schema, t.to_batches(17)),
                     id="record-batch-reader"),
    ],
)  # fmt: skip
def test_arrow_inputs_other_than_a_table(tmp_path: Path, src: Any) -> None:
    table = sample_table(100)
    given_src = src(table)
    ds = ms.from_arrow(given_src, tmp_path / "out")
    reference = (
        pa.Table.from_batches([given_src]) if isinstance(given_src, pa.RecordBatch) else table
    )
    assert_matches(ds, reference)


@pytest.mark.parametrize("src", [np.zeros(3), [], {"a": [1, 2]}, "table.parquet", None])
def test_what_is_not_arrow_data(tmp_path: Path, src: Any) -> None:
    with pytest.raises(SourceError, match="expected a pyarrow Table"):
        ms.from_arrow(src, tmp_path / "out")
    assert not os.path.lexists(tmp_path / "out")


def test_batches_of_different_schemas(tmp_path: Path) -> None:
    batches = [pa.record_batch({"a": [1, 2]}), pa.record_batch({"a": [1.5]})]
    with pytest.raises(SourceError, match="cannot form one table"):
        ms.from_arrow(batches, tmp_path / "out")


def test_zero_rows(tmp_path: Path) -> None:
    table = sample_table(0)
    assert len(ms.from_arrow(table, tmp_path / "arrow")) == 0
    ds = ms.from_parquet(write_parquet(tmp_path / "t.parquet", table, 10), tmp_path / "parquet")
    assert len(ds) == 0
    assert ds.fields["image"].shape == (4, 6)


def test_fields_rename_and_choose_columns(tmp_path: Path) -> None:
    table = sample_table(80)
    ds = ms.from_arrow(table, tmp_path / "out", fields={"x": "image", "y": "id", "y2": "id"})
    assert_matches(ds, table, {"x": "image", "y": "id", "y2": "id"})


def test_missing_column(tmp_path: Path) -> None:
    table = sample_table(10)
    with pytest.raises(SourceError, match=r"field 'x': no array 'nope' \(arrays found: .*flag"):
        ms.from_arrow(table, tmp_path / "out", fields={"x": "nope"})


def test_labels_and_a_label_out_of_range(tmp_path: Path) -> None:
    table = pa.table({"y": pa.array([0, 1, 2, 1], pa.int8())})
    ds = ms.from_arrow(table, tmp_path / "out", labels={"y": ["a", "b", "c"]})
    assert list(ds["y"].labels) == ["a", "b", "c"]
    path = write_parquet(tmp_path / "t.parquet", table, 2)
    with pytest.raises(LabelError, match="row 2 holds label 2"):
        ms.from_parquet(path, tmp_path / "bad", labels={"y": ["a", "b"]})


# -- what is refused ---------------------------------------------------------------------------


UNSUPPORTED = {
    "text": (pa.array(["a", "b", "c"]), "text"),
    "blob": (pa.array([b"a", b"b", b"c"]), "binary data"),
    "category": (pa.array(["a", "b", "a"]).dictionary_encode(), "dictionary-encoded"),
    "record": (pa.array([{"p": 1}, {"p": 2}, {"p": 3}]), "structs"),
    "nested": (pa.array([[[1]], [[2, 3]], []]), "lists of lists"),
    "when": (pa.array(np.arange(3).astype("datetime64[s]")), "values that are not numbers"),
    "money": (pa.array([1, 2, 3], pa.decimal128(5, 2)), "values that are not numbers"),
    "nothing": (pa.nulls(3), "nulls only"),
    "words": (
        pa.FixedSizeListArray.from_arrays(pa.array(list("abcdef")), 2),
        r"text \(type fixed_size_list",
    ),
    "empty": (pa.array([[], [], []], pa.list_(pa.int8(), 0)), "which hold no elements"),
}


@pytest.mark.parametrize("column", sorted(UNSUPPORTED))
def test_an_unsupported_column_is_refused_by_name(tmp_path: Path, column: str) -> None:
    values, why = UNSUPPORTED[column]
    table = pa.table({"ok": pa.array([1, 2, 3]), column: values})
    with pytest.raises(
        UnsupportedSourceError,
        match=f"field 'f': column {column!r} .*{why}.*; memshard takes columns of bool",
    ):
        ms.from_arrow(table, tmp_path / "out", fields={"f": column})
    assert not os.path.lexists(tmp_path / "out")
    assert not os.path.lexists(staging_of(tmp_path / "out"))


def test_unsupported_columns_are_left_out_of_an_automatic_selection(tmp_path: Path) -> None:
    columns = {name: values for name, (values, _) in UNSUPPORTED.items() if name != "empty"}
    table = pa.table({"ok": pa.array([1, 2, 3]), **columns})
    plan = ms_arrow.plan_table(table)
    assert list(plan.fields) == ["ok"]
    assert set(plan.skipped) == set(columns)
    assert plan.skipped["text"] == "column 'text' holds text (type string)"
    path = write_parquet(tmp_path / "t.parquet", table, 2)
    assert list(ms.from_parquet(path, tmp_path / "out").fields) == ["ok"]


def test_a_table_without_any_column_memshard_takes(tmp_path: Path) -> None:
    message = (
        r"nothing to convert \(column 'text' holds text \(type string\)\); memshard takes columns"
    )
    with pytest.raises(SourceError, match=message):
        ms.from_arrow(pa.table({"text": ["a"]}), tmp_path / "out")


def nulls_at(rows: int, null_rows: list[int], kind: str) -> pa.Array:
    """A column of ``kind`` with nulls at ``null_rows`` (a null row, or a null value inside
    a row of a list or tensor column)."""
    values = np.arange(rows * 6, dtype=np.int32)
    mask = np.zeros(rows * 6, bool)
    if kind == "scalar":
        mask[:rows][null_rows] = True
        return pa.array(values[:rows], mask=mask[:rows])
    for row in null_rows:
        mask[row * 6 + 4] = True
    inner = pa.array(values, mask=mask)
    if kind == "list":
        return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(inner, 3), 2)
    storage = pa.FixedSizeListArray.from_arrays(inner, 6)
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.int32(), [2, 3]), storage)


@pytest.mark.parametrize("kind", ["scalar", "list", "tensor"])
def test_nulls_are_refused_naming_the_column_and_the_first_row(tmp_path: Path, kind: str) -> None:
    table = pa.table({"ok": np.arange(100), "holey": nulls_at(100, [73, 41, 90], kind)})
    message = r"column 'holey' holds a null at row 41; memshard stores no missing values"
    with pytest.raises(UnsupportedSourceError, match=message):
        ms.from_arrow(table, tmp_path / "arrow")
    with pytest.raises(UnsupportedSourceError, match=message):  # without fields, refused too
        ms.from_parquet(write_parquet(tmp_path / "t.parquet", table, 8), tmp_path / "parquet")
    assert os.listdir(tmp_path) == ["t.parquet"]  # refused before anything was written


def test_a_null_list_row_is_refused(tmp_path: Path) -> None:
    rows = pa.array([[1, 2], None, [5, 6]], pa.list_(pa.int64(), 2))
    with pytest.raises(UnsupportedSourceError, match="column 'v' holds a null at row 1"):
        ms.from_arrow(pa.table({"v": rows}), tmp_path / "out")


def test_a_null_found_only_when_read_stops_the_conversion(tmp_path: Path) -> None:
    """Without statistics the files cannot tell before they are read."""
    table = pa.table({"x": nulls_at(1000, [777], "list"), "y": np.arange(1000)})
    path = write_parquet(tmp_path / "t.parquet", table, 100, write_statistics=False)
    with pytest.raises(
        UnsupportedSourceError, match=r"t.parquet: rows .*column 'x' holds a null at row 777"
    ):
        ms.from_parquet(path, tmp_path / "out", shard_bytes=200 * 32)
    assert len(ms.open(staging_of(tmp_path / "out"))) == 600  # the shards before it


def test_a_row_group_whose_statistics_count_nulls_elsewhere_is_read_to_find_the_row(
    tmp_path: Path,
) -> None:
    table = pa.table({"a": nulls_at(300, [250], "scalar"), "b": nulls_at(300, [3], "scalar")})
    path = write_parquet(tmp_path / "t.parquet", table, 100)
    with pytest.raises(
        UnsupportedSourceError, match="field 'a': column 'a' holds a null at row 250"
    ):
        ms.from_parquet(path, tmp_path / "out", fields={"a": "a"})


# -- Parquet files -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_many_row_groups_across_shards(tmp_path: Path, workers: int) -> None:
    table = sample_table(1000)
    path = write_parquet(tmp_path / "t.parquet", table, 37)
    assert pq.ParquetFile(path).metadata.num_row_groups == 28
    ds = ms.from_parquet(path, tmp_path / "out", shard_bytes=101 * ROW_BYTES, workers=workers)
    assert len(ds.shards) == 10
    assert_matches(ds, table)
    reference = ms.from_arrow(table, tmp_path / "ref", shard_bytes=101 * ROW_BYTES)
    assert checksums(ds) == checksums(reference)


def test_a_directory_and_a_list_of_files_are_one_table(tmp_path: Path) -> None:
    table = sample_table(600)
    folder = tmp_path / "parts"
    folder.mkdir()
    pieces = [(0, 250), (250, 250), (250, 330), (330, 600)]  # one file holds no row
    for number, (start, stop) in enumerate(pieces):
        write_parquet(folder / f"part-{number}.parquet", table.slice(start, stop - start), 40)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-9.parquet.crc").write_text("")
    write_parquet(folder / "_temporary.parquet", table.slice(0, 5), 40)  # not the table's
    write_parquet(folder / ".hidden.parquet", table.slice(0, 5), 40)
    ds = ms.from_parquet(folder, tmp_path / "out", shard_bytes=70 * ROW_BYTES, workers=2)
    assert_matches(ds, table)
    assert ds.attrs["memshard.source"]["identity"]["files"][0][0] == "part-0.parquet"
    files = sorted(folder.glob("part-*.parquet"), reverse=True)
    reversed_table = pa.concat_tables([pq.read_table(f) for f in files])
    assert_matches(ms.from_parquet(files, tmp_path / "list"), reversed_table)


def test_files_with_different_schemas(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", pa.table({"x": [1, 2], "y": [1.0, 2.0]}), 10)
    write_parquet(tmp_path / "b.parquet", pa.table({"x": [1, 2], "y": [1, 2]}), 10)
    with pytest.raises(
        SourceError, match=r"b.parquet: its columns differ .*column 'y': double there, int64 here"
    ):
        ms.from_parquet(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("make", ["missing", "empty-dir", "text", "fifo", "empty-list", "numbers"])
def test_what_is_not_parquet(tmp_path: Path, make: str) -> None:
    src: Any = tmp_path / "src"
    if make == "empty-dir":
        src.mkdir()
        (src / "x.npy").write_bytes(b"")
    elif make == "text":
        src.write_text("hello, not parquet")
    elif make == "fifo":
        os.mkfifo(src)
    elif make == "empty-list":
        src = []
    elif make == "numbers":
        src = [1, 2]
    with pytest.raises(SourceError, match=r"src|expected a Parquet file") as caught:
        ms.from_parquet(src, tmp_path / "out")
    assert make != "text" or "not a readable Parquet file" in str(caught.value)
    assert not os.path.lexists(tmp_path / "out")


def test_a_damaged_file_is_refused_at_planning(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", sample_table(100), 10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"t\.parquet: not a readable Parquet file"):
        ms.from_parquet(path, tmp_path / "out")


def test_a_file_damaged_after_planning_names_the_file_and_rows(tmp_path: Path) -> None:
    rows = np.arange(400 * 16384, dtype=np.float32).reshape(400, 16384)  # 64 KiB a row
    table = pa.table({"id": np.arange(400), "big": nested_list(rows)})
    path = write_parquet(tmp_path / "t.parquet", table, 50, compression="none")
    plan = ms_arrow.plan_parquet(path)
    page = pq.ParquetFile(path).metadata.row_group(5).column(1).data_page_offset  # rows 250:300
    with open(path, "r+b") as handle:
        handle.seek(page)
        handle.write(b"\xff" * 16)  # the page header cannot be decoded any more
    message = r"t\.parquet: rows 2\d\d:\d+ of the columns 'id', 'big' cannot be read .*damaged"
    with pytest.raises(SourceError, match=message):
        convert(plan, tmp_path / "out", shard_bytes=100 * (8 + 65536))
    assert len(ms.open(staging_of(tmp_path / "out"))) == 200


@pytest.mark.parametrize("row_group_rows", [256, 4096], ids=["16-row-groups", "one-row-group"])
def test_memory_holds_a_read_block_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, row_group_rows: int
) -> None:
    """pyarrow pre-buffers every row group a reader asks for, and reads a column chunk whole,
    unless told otherwise: either would hold the whole 16 MiB file here, in blocks of 1 MiB."""
    monkeypatch.setattr(ms_sources, "READ_BLOCK_BYTES", 256 << 10)
    monkeypatch.setattr(ms_sources, "MAX_BLOCK_BYTES", 1 << 20)
    rows = np.arange(4096 * 1024, dtype=np.float32).reshape(4096, 1024)  # 4 KiB a row
    path = write_parquet(
        tmp_path / "t.parquet", pa.table({"x": nested_list(rows)}), row_group_rows,
        compression="none",
    )  # fmt: skip
    held: list[int] = []
    read = ms_arrow.ParquetReader.read

    def measured(self: Any, name: str, start: int, stop: int, out: np.ndarray) -> None:
        read(self, name, start, stop, out)
        held.append(pa.total_allocated_bytes() - before)

    monkeypatch.setattr(ms_arrow.ParquetReader, "read", measured)
    before = pa.total_allocated_bytes()
    ds = ms.from_parquet(path, tmp_path / "out")
    assert len(held) >= 16
    assert max(held) < 8 << 20, held
    assert_same_values(ds["x"][:], rows)


def test_the_opener_travels_to_workers_and_the_table_opener_does_not(tmp_path: Path) -> None:
    table = sample_table(300)
    plan = ms_arrow.plan_parquet(write_parquet(tmp_path / "t.parquet", table, 30))
    reader = pickle.loads(pickle.dumps(plan.opener))()
    try:
        out = np.empty((20, 2, 3, 4), np.uint8)
        reader.read("grid", 55, 75, out)
        assert_same_values(out, expected(table.column("grid"))[55:75])
    finally:
        reader.close()
    with pytest.raises(TypeError, match="never sent to processes"):
        pickle.dumps(ms_arrow.plan_table(table).opener)


@settings(max_examples=40)
@given(
    rows=st.integers(1, 300),
    row_group_size=st.integers(1, 80),
    reads=st.lists(st.tuples(st.integers(0, 299), st.integers(1, 90)), min_size=1, max_size=12),
)
def test_reads_in_any_order_return_the_rows_asked_for(
    rows: int, row_group_size: int, reads: list[tuple[int, int]]
) -> None:
    """The reader keeps a cursor and seeks back or ahead; every read is still exact."""
    table = sample_table(rows, seed=rows)
    with tempfile.TemporaryDirectory() as folder:
        path = write_parquet(Path(folder) / "t.parquet", table, row_group_size)
        plan = ms_arrow.plan_parquet(path)
        reader = plan.opener()
        try:
            for start, count in reads:
                start = min(start, rows - 1)
                stop = min(rows, start + count)
                for name in ("id", "moved"):
                    source = plan.fields[name]
                    out = np.empty((stop - start, *source.shape), source.dtype)
                    reader.read(name, start, stop, out)
                    assert_same_values(out, expected(table.column(name))[start:stop])
        finally:
            reader.close()


KINDS = st.sampled_from(["scalar", "list", "tensor"])


@settings(max_examples=25)
@given(
    dtype=st.sampled_from(NUMERIC),
    kind=KINDS,  # pyarrow has no bool tensors: those draws are lists
    sample=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    rows=st.integers(0, 200),
    row_group_size=st.integers(1, 64),
    shard_rows=st.integers(10, 90),
    seed=st.integers(0, 2**16),
)
def test_any_column_converts_through_parquet(
    dtype: str, kind: str, sample: list[int], rows: int, row_group_size: int, shard_rows: int,
    seed: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    shape = () if kind == "scalar" else tuple(sample)
    values = random_values(rng, dtype, (rows, *shape))
    if kind == "scalar":
        column = pa.array(values)
    elif kind == "list" or dtype == "bool":
        column = nested_list(values)
    else:
        column = tensor(values, [int(axis) for axis in rng.permutation(len(shape))])
    table = pa.table({"c": column, "n": np.arange(rows, dtype=np.int32)})
    row_bytes = np.dtype(dtype).itemsize * int(np.prod(shape)) + 4
    with tempfile.TemporaryDirectory() as folder:
        path = write_parquet(Path(folder) / "t.parquet", table, row_group_size)
        ds = ms.from_parquet(path, Path(folder) / "out", shard_bytes=shard_rows * row_bytes)
        assert_matches(ds, table)
        ds.close()


# -- list columns: ragged fields -----------------------------------------------------------------


def random_rows(
    rng: np.random.Generator, rows: int, dtype: str, tail: tuple[int, ...], longest: int = 12
) -> list[np.ndarray]:
    """``rows`` arrays of ``dtype`` and shape ``(n, *tail)``, ``n`` from 0 to ``longest``."""
    return [random_values(rng, dtype, (int(n), *tail)) for n in rng.integers(0, longest + 1, rows)]


def list_column(
    rows: list[np.ndarray], tail: tuple[int, ...], dtype: str, large: bool = False
) -> pa.Array:
    """``rows`` as a ``list`` (or ``large_list``) column of ``fixed_size_list`` elements."""
    element: pa.DataType = pa.from_numpy_dtype(np.dtype(dtype))
    for size in reversed(tail):
        element = pa.list_(element, size)
    kind = pa.large_list(element) if large else pa.list_(element)
    return pa.array([row.tolist() for row in rows], kind)


def expected_rows(
    column: pa.ChunkedArray | pa.Array, dtype: str, tail: tuple[int, ...]
) -> list[np.ndarray]:
    """What pyarrow makes of a list column: each row's elements as a NumPy array."""
    return [np.array(row, dtype=dtype).reshape(-1, *tail) for row in column.to_pylist()]


def assert_same_rows(got: Any, rows: list[np.ndarray]) -> None:
    """A ragged field's batch holds exactly ``rows``: lengths, dtype, trailing shape, values."""
    assert got.lengths.tolist() == [len(row) for row in rows]
    assert got.tail == rows[0].shape[1:] if rows else True
    for mine, theirs in zip(got, rows, strict=True):
        assert_same_values(mine, theirs)


def ragged_table(rows: int, seed: int = 0) -> tuple[pa.Table, dict[str, list[np.ndarray]]]:
    """A table with a ``list<int32>`` and a ``list<fixed_size_list<int16>[3]>`` column (each
    holding empty rows), and the rows each holds."""
    rng = np.random.default_rng(seed)
    tokens = random_rows(rng, rows, "int32", (), longest=40)
    strokes = random_rows(rng, rows, "int16", (3,))
    table = pa.table(
        {
            "tokens": list_column(tokens, (), "int32"),
            "strokes": list_column(strokes, (3,), "int16"),
            "label": pa.array(np.arange(rows) % 7, pa.int8()),
        }
    )
    return table, {"tokens": tokens, "strokes": strokes}


@pytest.mark.parametrize("workers", [1, 2])
def test_list_columns_round_trip_through_parquet(tmp_path: Path, workers: int) -> None:
    table, rows = ragged_table(3000)
    path = write_parquet(tmp_path / "t.parquet", table, 250)
    assert pq.ParquetFile(path).metadata.num_row_groups == 12
    ds = ms.from_parquet(path, tmp_path / "out", shard_bytes=16 << 10, workers=workers)
    assert ds.fields["tokens"].shape == (None,)
    assert ds.fields["strokes"].shape == (None, 3)
    assert len(ds.shards) > 6
    assert_same_rows(ds["tokens"][:], expected_rows(table.column("tokens"), "int32", ()))
    assert_same_rows(ds["strokes"][:], expected_rows(table.column("strokes"), "int16", (3,)))
    assert_same_rows(ds["tokens"][:], rows["tokens"])  # the arrays the table was built from
    assert_same_rows(ds["strokes"][:], rows["strokes"])
    assert_same_values(ds["label"][:], (np.arange(3000) % 7).astype(np.int8))
    assert ds.verify().ok
    reference = ms.from_arrow(table, tmp_path / "ref", shard_bytes=16 << 10)
    assert checksums(ds) == checksums(reference)


def test_list_columns_of_every_element_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    built = {
        "bools": (random_rows(rng, 60, "bool", ()), (), "bool", False),
        "halves": (random_rows(rng, 60, "float16", (2,)), (2,), "float16", True),
        "grids": (random_rows(rng, 60, "uint64", (2, 3)), (2, 3), "uint64", False),
    }
    columns = {
        name: list_column(r, tail, dtype, large) for name, (r, tail, dtype, large) in built.items()
    }
    images = random_values(rng, "float32", (100, 2, 3))
    ends = np.sort(rng.integers(0, 100, 59))
    offsets = np.concatenate([[0], ends, [100]]).astype(np.int32)
    columns["tensors"] = pa.ListArray.from_arrays(pa.array(offsets), tensor(images, [1, 0]))
    table = pa.table(columns)
    for source in (table, write_parquet(tmp_path / "t.parquet", table, 16)):
        dst = tmp_path / f"out-{type(source).__name__}"
        ds = (
            ms.from_arrow(source, dst)
            if isinstance(source, pa.Table)
            else ms.from_parquet(source, dst)
        )
        for name, (expected, tail, _, _) in built.items():
            assert ds.fields[name].shape == (None, *tail)
            assert_same_rows(ds[name][:], expected)
        assert ds.fields["tensors"].shape == (None, 2, 3)  # the logical shape, stored (3, 2)
        assert_same_rows(ds["tensors"][:], [images[a:b] for a, b in itertools.pairwise(offsets)])


def test_sliced_and_chunked_list_columns(tmp_path: Path) -> None:
    """A slice of a list array keeps the offsets into its whole child array."""
    whole, _ = ragged_table(400, seed=3)
    table = pa.concat_tables([whole.slice(13, 100), whole.slice(200, 1), whole.slice(250, 150)])
    assert table.column("strokes").chunk(0).offset == 13
    ds = ms.from_arrow(table, tmp_path / "out", shard_bytes=4 << 10, workers=2)
    assert_same_rows(ds["strokes"][:], expected_rows(table.column("strokes"), "int16", (3,)))
    assert_same_rows(ds["tokens"][:], expected_rows(table.column("tokens"), "int32", ()))
    opener = ms_arrow.plan_table(table).opener
    assert isinstance(opener, ms_arrow.TableOpener)
    reader = opener()
    values, offsets = reader.read_ragged("strokes", 90, 130)  # across the three chunks
    assert offsets[0] == 0
    assert offsets[-1] == len(values)
    assert_same_rows(
        Ragged(values, offsets),
        expected_rows(table.column("strokes").slice(90, 40), "int16", (3,)),
    )
    values, offsets = reader.read_ragged("strokes", 5, 5)
    assert values.shape == (0, 3)
    assert offsets.tolist() == [0]


def test_a_list_column_of_empty_rows_only_and_zero_rows(tmp_path: Path) -> None:
    table = pa.table({"t": pa.array([[], [], []], pa.list_(pa.int32()))})
    ds = ms.from_arrow(table, tmp_path / "empty-rows")
    assert ds["t"][:].lengths.tolist() == [0, 0, 0]
    path = write_parquet(tmp_path / "t.parquet", table.slice(0, 0), 10)
    assert len(ms.from_parquet(path, tmp_path / "no-rows")) == 0


@pytest.mark.parametrize("where", ["row", "element"])
def test_nulls_in_list_columns_are_refused_by_row(tmp_path: Path, where: str) -> None:
    rows: list[Any] = [[1, 2], [3], [], [4, 5, 6]] * 100
    if where == "row":
        rows[345] = None
    else:
        rows[345] = [7, None]
    table = pa.table({"t": pa.array(rows, pa.list_(pa.int32())), "n": np.arange(400)})
    message = "column 't' holds a null at row 345"
    with pytest.raises(UnsupportedSourceError, match=message):
        ms.from_arrow(table, tmp_path / "arrow")
    assert not os.path.lexists(tmp_path / "arrow")
    path = write_parquet(tmp_path / "t.parquet", table, 50)
    with pytest.raises(UnsupportedSourceError, match=rf"t\.parquet: rows \d+:\d+: {message}"):
        ms.from_parquet(path, tmp_path / "parquet", shard_bytes=2 << 10)  # found when read
    assert len(ms.open(staging_of(tmp_path / "parquet"))) <= 345


def test_an_interrupted_list_conversion_resumes(tmp_path: Path) -> None:
    table, rows = ragged_table(2000, seed=5)
    path = write_parquet(tmp_path / "t.parquet", table, 128)
    dst = tmp_path / "out"
    plan = with_stop(ms_arrow.plan_parquet(path), 1100, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=8 << 10)
    staged = ms.open(staging_of(dst))
    assert 0 < len(staged) <= 1100
    assert_same_rows(staged["tokens"][:], rows["tokens"][: len(staged)])
    staged.close()
    refusal = r"up to 8\.0 KiB \(shard_bytes=8192\), but shard_bytes=4096"
    with pytest.raises(ConversionStateError, match=refusal):
        ms.from_parquet(path, dst, shard_bytes=4 << 10, resume=True)
    ds = ms.from_parquet(path, dst, resume=True, workers=2)
    assert_same_rows(ds["tokens"][:], rows["tokens"])
    assert_same_rows(ds["strokes"][:], rows["strokes"])


def test_the_mean_row_length_sizes_the_reads_and_the_shard_warning(tmp_path: Path) -> None:
    table, rows = ragged_table(1000, seed=11)
    mean = {name: np.mean([len(row) for row in made]) for name, made in rows.items()}
    empty = {name: np.mean([len(row) == 0 for row in made]) for name, made in rows.items()}
    in_memory = ms_arrow.plan_table(table).fields
    parquet = ms_arrow.plan_parquet(write_parquet(tmp_path / "t.parquet", table, 100)).fields
    for name, element_size in (("tokens", 1), ("strokes", 3)):
        assert in_memory[name].ragged
        assert parquet[name].ragged
        assert in_memory[name].elements_per_row == pytest.approx(mean[name])
        # A Parquet leaf column holds one value for each empty list too.
        estimate = mean[name] + empty[name] / element_size
        assert parquet[name].elements_per_row == pytest.approx(estimate)
    assert in_memory["strokes"].row_bytes == int(np.ceil(6 * mean["strokes"])) + 8
    with pytest.warns(SmallShardWarning, match="shards smaller than 1.0 MiB"):
        ms.from_arrow(table, tmp_path / "small", shard_bytes=64 << 10)


@settings(max_examples=25)
@given(
    dtype=st.sampled_from(NUMERIC),
    tail=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    rows=st.integers(0, 150),
    longest=st.integers(0, 30),
    row_group_size=st.integers(1, 50),
    shard_bytes=st.integers(256, 4096),
    seed=st.integers(0, 2**16),
)
def test_any_list_column_converts_through_parquet(
    dtype: str, tail: tuple[int, ...], rows: int, longest: int, row_group_size: int,
    shard_bytes: int, seed: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    made = random_rows(rng, rows, dtype, tail, longest)
    table = pa.table({"r": list_column(made, tail, dtype, large=bool(seed % 2))})
    with tempfile.TemporaryDirectory() as folder:
        path = write_parquet(Path(folder) / "t.parquet", table, row_group_size)
        ds = ms.from_parquet(path, Path(folder) / "out", shard_bytes=shard_bytes)
        assert ds.fields["r"].shape == (None, *tail)
        assert_same_rows(ds["r"][:], made)
        ds.close()


# -- resume and interruptions ------------------------------------------------------------------


def test_interrupted_conversion_resumes_with_workers(tmp_path: Path) -> None:
    table = sample_table(1000)
    path = write_parquet(tmp_path / "t.parquet", table, 64)
    dst = tmp_path / "out"
    shard_bytes = 100 * ROW_BYTES
    with pytest.raises(KeyboardInterrupt):
        convert(
            with_stop(ms_arrow.plan_parquet(path), 450, "interrupt"), dst, shard_bytes=shard_bytes
        )
    staged = ms.open(staging_of(dst))
    assert len(staged) == 400
    assert_matches(staged, table.slice(0, 400))
    staged.close()
    with pytest.raises(ConversionStateError, match="pass resume=True"):
        ms.from_parquet(path, dst, shard_bytes=shard_bytes)
    ds = ms.from_parquet(path, dst, resume=True, workers=2)
    assert_matches(ds, table)
    assert not os.path.lexists(str(dst) + STAGING_SUFFIX)
    assert ms.from_parquet(path, dst, resume=True).path == ds.path  # finished: returned as it is


def test_worker_error_keeps_a_prefix_then_resume(tmp_path: Path) -> None:
    table = sample_table(1000)
    path = write_parquet(tmp_path / "t.parquet", table, 64)
    dst = tmp_path / "out"
    plan = with_stop(ms_arrow.plan_parquet(path), 550, "error")
    with pytest.raises(OSError, match="test read error at row 550"):
        convert(plan, dst, shard_bytes=100 * ROW_BYTES, workers=2)
    assert len(ms.open(staging_of(dst))) <= 500
    assert_matches(ms.from_parquet(path, dst, resume=True, workers=2), table)


def test_resume_refuses_a_changed_directory(tmp_path: Path) -> None:
    table = sample_table(400)
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "a.parquet", table.slice(0, 200), 50)
    write_parquet(folder / "b.parquet", table.slice(200), 50)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(with_stop(ms_arrow.plan_parquet(folder), 300, "interrupt"), dst,
                shard_bytes=100 * ROW_BYTES)  # fmt: skip
    write_parquet(folder / "c.parquet", table.slice(0, 0), 50)  # no rows: the same count
    with pytest.raises(ConversionStateError, match="another source identity"):
        ms.from_parquet(folder, dst, resume=True)
    os.unlink(folder / "c.parquet")
    assert_matches(ms.from_parquet(folder, dst, resume=True), table)


def test_an_interrupted_table_conversion_resumes(tmp_path: Path) -> None:
    table = sample_table(500)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(with_stop(ms_arrow.plan_table(table), 230, "interrupt"), dst,
                shard_bytes=50 * ROW_BYTES)  # fmt: skip
    assert len(ms.open(staging_of(dst))) == 200
    assert_matches(ms.from_arrow(table, dst, resume=True, workers=2), table)


# -- the command line --------------------------------------------------------------------------


def test_memshard_convert_takes_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = pa.table({"label": pa.array([0, 1, 2, 1], pa.int8()), "text": ["a", "b", "c", "d"],
                      "x": nested_list(np.arange(8, dtype=np.float32).reshape(4, 2))})  # fmt: skip
    path = write_parquet(tmp_path / "t.parquet", table, 3)
    assert cli.detect_format(str(path)) == "parquet"
    assert cli.main(["convert", str(path), str(tmp_path / "all"), "-q"]) == 0
    assert list(ms.open(tmp_path / "all").fields) == ["label", "x"]
    assert cli.main(["convert", str(path), str(tmp_path / "some"), "--field", "y=label",
                     "--labels", "y=a,b,c", "-q"]) == 0  # fmt: skip
    ds = ms.open(tmp_path / "some")
    assert_matches(ds, table, {"y": "label"})
    assert list(ds["y"].labels) == ["a", "b", "c"]
    assert cli.detect_format(str(tmp_path / "all")) != "parquet"


def test_memshard_convert_takes_a_directory_of_parquet_files(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    table = sample_table(90)
    write_parquet(folder / "0.parquet", table.slice(0, 40), 16)
    write_parquet(folder / "1.parquet", table.slice(40), 16)
    assert cli.detect_format(str(folder)) == "parquet"
    assert cli.main(["convert", str(folder), str(tmp_path / "out"), "-q"]) == 0
    assert_matches(ms.open(tmp_path / "out"), table)
    np.save(folder / "stray.npy", np.zeros(3))
    with pytest.raises(SourceError, match=r"both \.npy and \.parquet files; pass --format"):
        cli.detect_format(str(folder))
