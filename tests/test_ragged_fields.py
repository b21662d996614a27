"""Ragged (variable-length) fields on disk: declaring, writing, reading, verifying (format 2.1)."""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import errors, npyheader, shardtable
from memshard import manifest as manifest_io
from memshard.layout import MANIFEST_NAME
from memshard.manifest import offsets_path
from memshard.ragged import Ragged
from memshard.shardtable import TABLE_NAME, chain_of, chain_seed, format_chain

FIELDS = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "label": ("int64", ())}


def sample_rows(count: int, seed: int = 0, longest: int = 40) -> dict[str, list[np.ndarray]]:
    """Rows whose content names them: token ``j`` of row ``i`` is ``1000 * i + j``."""
    rng = np.random.default_rng(seed)
    tokens = [
        (1000 * i + np.arange(rng.integers(0, longest))).astype(np.int32) for i in range(count)
    ]
    strokes = [
        np.full((int(rng.integers(0, 6)), 3), i % 30000, dtype=np.int16) for i in range(count)
    ]
    return {"tokens": tokens, "strokes": strokes}


def write(path: Path, rows: dict[str, list[np.ndarray]], shard_bytes: int = 2048) -> ms.Dataset:
    count = len(rows["tokens"])
    with ms.create(path, FIELDS, shard_bytes=shard_bytes) as writer:
        writer.extend({**rows, "label": np.arange(count)})
    return ms.open(path)


def assert_rows(batch: Ragged, expected: list[np.ndarray]) -> None:
    assert len(batch) == len(expected)
    assert batch.offsets[0] == 0
    assert batch.offsets[-1] == len(batch.values)
    for got, want in zip(batch, expected, strict=True):
        np.testing.assert_array_equal(got, want)


# -- declaring ---------------------------------------------------------------------------------
def test_a_first_axis_of_none_declares_a_ragged_field(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", sample_rows(5))
    assert ds.fields["tokens"] == (np.dtype("int32"), (None,))
    assert ds.fields["strokes"] == (np.dtype("int16"), (None, 3))
    assert ds.fields["label"] == (np.dtype("int64"), ())
    manifest = json.loads((tmp_path / "ds" / MANIFEST_NAME).read_text())
    assert manifest["version"] == "2.2"
    assert manifest["fields"]["tokens"] == {"dtype": "<i4", "shape": [], "kind": "ragged"}
    assert manifest["fields"]["label"] == {"dtype": "<i8", "shape": []}
    assert manifest["shard_bytes"] == 2048
    # the fields a dataset reports are accepted back by create
    ms.create(tmp_path / "again", ds.fields).close()
    assert ms.open(tmp_path / "again").fields == ds.fields


def test_a_dataset_without_ragged_fields_states_no_shard_bytes(tmp_path: Path) -> None:
    ms.create(tmp_path / "ds", {"x": ("float32", (2,))}).close()
    manifest = json.loads((tmp_path / "ds" / MANIFEST_NAME).read_text())
    assert "shard_bytes" not in manifest


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"t": ("U4", (None,))}, errors.UnsupportedDtypeError, "not a dtype|not supported"),
        ({"t": ("datetime64[s]", (None,))}, errors.UnsupportedDtypeError, "not supported"),
        ({"t": ("int32", (3, None))}, errors.SchemaError, "only the first axis may vary"),
        ({"t": ("int32", (None, None))}, errors.SchemaError, "only the first axis may vary"),
        ({"t": ("int32", (None, 0))}, errors.SchemaError, "from 1 to"),
    ],
)
def test_bad_ragged_declarations_are_refused(
    tmp_path: Path, fields: dict[str, Any], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        ms.create(tmp_path / "ds", fields)
    assert not (tmp_path / "ds").exists()


def test_labels_need_a_fixed_field(tmp_path: Path) -> None:
    with pytest.raises(errors.SchemaError, match="field 't' is ragged"):
        ms.create(tmp_path / "ds", {"t": ("int32", (None,))}, labels={"t": ["a"]})


# -- writing -----------------------------------------------------------------------------------
def test_every_form_of_rows_is_accepted(tmp_path: Path) -> None:
    rows = [np.array([1, 2, 3]), np.array([], np.int32), np.array([4])]
    forms: list[Any] = [
        rows,
        {"values": np.array([1, 2, 3, 4]), "offsets": np.array([0, 3, 3, 4])},
        {"values": np.array([1, 2, 3, 4]), "lengths": [3, 0, 1]},
        Ragged(np.array([1, 2, 3, 4]), [0, 3, 3, 4]),
    ]
    with ms.create(tmp_path / "ds", {"t": ("int32", (None,))}) as writer:
        for form in forms:
            writer.extend({"t": form})
        writer.append({"t": np.array([7, 8])})
        writer.append({"t": [9]})
        writer.append({"t": []})
    column = ms.open(tmp_path / "ds")["t"]
    expected = [[1, 2, 3], [], [4]] * 4 + [[7, 8], [9], []]
    assert [row.tolist() for row in column] == expected
    assert column[:].values.dtype == np.int32


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        ([np.zeros((2, 2))], errors.BatchError, r"row 0 has shape \(2, 2\)"),
        ({"values": np.arange(4), "offsets": [0, 3, 2, 4]}, errors.BatchError, "decreas"),
        ({"values": np.arange(4), "offsets": [0, -1, 4]}, errors.BatchError, "negative|decreas"),
        ({"values": np.arange(4), "offsets": [1, 4]}, errors.BatchError, "start at 0|from 0"),
        ({"values": np.arange(4), "offsets": [0, 5]}, errors.BatchError, "4"),
        ({"values": np.arange(4), "lengths": [1, -1, 4]}, errors.BatchError, "negative|lengths"),
        ([np.array([1.5])], errors.CastError, "cannot store float64 values in a int32"),
        ({"values": np.arange(4), "sizes": [4]}, errors.BatchError, "keys"),
    ],
)
def test_bad_rows_get_typed_errors_and_write_nothing(
    tmp_path: Path, value: Any, error: type[Exception], says: str
) -> None:
    with ms.create(tmp_path / "ds", {"t": ("int32", (None,)), "y": ("int8", ())}) as writer:
        writer.extend({"t": [np.array([5])], "y": [1]})
        with pytest.raises(error, match=says) as raised:
            writer.extend({"t": value, "y": np.zeros(len(value) if isinstance(value, list) else 1)})
        assert "field 't'" in str(raised.value)
    ds = ms.open(tmp_path / "ds")
    assert len(ds) == 1
    assert ds["t"][0].tolist() == [5]


def test_one_row_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with (
        ms.create(tmp_path / "ds", {"s": ("int16", (None, 3))}) as writer,
        pytest.raises(errors.BatchError, match=r"field 's'.*\(n, 3\)"),
    ):
        writer.append({"s": np.zeros((2, 4))})


def test_fields_of_different_row_counts_are_refused(tmp_path: Path) -> None:
    with (
        ms.create(tmp_path / "ds", FIELDS) as writer,
        pytest.raises(errors.BatchError, match="different row counts"),
    ):
        writer.extend(
            {"tokens": [[1], [2]], "strokes": [np.zeros((1, 3), np.int16)], "label": [0, 1]}
        )


def test_shards_roll_on_the_size_of_their_values(tmp_path: Path) -> None:
    rows = [np.full(100, i, np.int32) for i in range(20)]  # 400 bytes of values a row
    with ms.create(tmp_path / "ds", {"t": ("int32", (None,))}, shard_bytes=1000) as writer:
        writer.extend({"t": rows[:3]})
        writer.append({"t": np.arange(1000, dtype=np.int32)})  # larger than a shard: alone
        writer.extend({"t": rows[3:]})
    ds = ms.open(tmp_path / "ds")
    sizes = [shard.rows for shard in ds.shards]
    # 2 rows of 400 bytes and their 24 bytes of offsets fit in 1000 bytes, 3 do not
    assert sizes == [2, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    for shard in ds.shards[:-1]:
        values = shard.files["t"]
        assert values.nbytes + (shard.rows + 1) * 8 <= 1000 or shard.rows == 1
    assert ds["t"][3].tolist() == list(range(1000))


def test_files_are_plain_npy_a_numpy_user_can_load(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", sample_rows(50))
    expected = sample_rows(50)["strokes"]
    rows = []
    for path in ds.shard_files("strokes"):
        values = np.load(path, mmap_mode="r")
        offsets = np.load(offsets_path(path))
        assert offsets.dtype == np.int64
        assert offsets[0] == 0
        assert offsets[-1] == len(values)
        assert values.shape[1:] == (3,)
        rows += [values[a:b] for a, b in itertools.pairwise(offsets)]
    for got, want in zip(rows, expected, strict=True):
        np.testing.assert_array_equal(got, want)


# -- reading -----------------------------------------------------------------------------------
def test_a_row_is_a_read_only_view_of_the_mapped_values(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", sample_rows(30))
    row = ds["tokens"][7]
    assert row.tolist() == sample_rows(30)["tokens"][7].tolist()
    assert not row.flags.writeable
    assert not row.flags.owndata  # a view of the mapping, not a copy
    with pytest.raises(ValueError, match="read-only"):
        row[:] = 0


def test_slices_arrays_and_masks_give_ragged_batches(tmp_path: Path) -> None:
    rows = sample_rows(200)["tokens"]
    ds = write(tmp_path / "ds", sample_rows(200))
    column = ds["tokens"]
    assert len(ds.shards) > 5
    shard = ds.shards[2]
    inside = column[shard.row_offset : shard.row_offset + shard.rows]
    assert inside.values.base is not None
    assert not inside.values.flags.owndata
    assert_rows(inside, rows[shard.row_offset : shard.row_offset + shard.rows])
    assert_rows(column[5:190], rows[5:190])
    assert_rows(column[190:5:-7], rows[190:5:-7])
    picks = [17, 3, 3, 199, -1, 0]
    assert_rows(column[picks], [rows[i] for i in picks])
    assert_rows(column[np.array(picks)], [rows[i] for i in picks])
    mask = np.arange(200) % 3 == 0
    assert_rows(column[mask], [rows[i] for i in np.flatnonzero(mask)])
    assert_rows(column[[]], [])
    np.testing.assert_array_equal(column[-1], rows[-1])
    np.testing.assert_array_equal(column[(4,)], rows[4])


def test_take_packs_each_ragged_field_into_one_buffer(tmp_path: Path) -> None:
    rows = sample_rows(300)
    ds = write(tmp_path / "ds", rows)
    picks = np.random.default_rng(1).integers(-300, 300, 500)
    batch = ds.take(picks)
    assert_rows(batch["tokens"], [rows["tokens"][i] for i in picks])
    assert_rows(batch["strokes"], [rows["strokes"][i] for i in picks])
    np.testing.assert_array_equal(batch["label"], np.arange(300)[picks])
    assert batch["tokens"].values.flags.c_contiguous
    assert batch["tokens"].values.ctypes.data % 4096 == 0
    assert ds.take(picks, fields=["strokes"]).keys() == {"strokes"}
    with pytest.raises(errors.OutArrayError, match="ragged"):
        ds.take(picks, out={"tokens": np.empty(500)})


def test_take_gathers_ragged_values_into_the_callers_memory(tmp_path: Path) -> None:
    rows = sample_rows(120)
    ds = write(tmp_path / "ds", rows)
    picks = [7, -1, 7, 30, 0]
    asked: list[tuple[tuple[int, ...], np.dtype[Any]]] = []
    buffers: list[np.ndarray] = []

    def empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        asked.append((shape, dtype))
        buffers.append(np.zeros(shape, dtype))
        return buffers[-1]

    label = np.empty(5, np.int64)
    batch = ds.take(picks, out={"strokes": empty, "label": label}, fields=["strokes", "label"])
    wanted = [rows["strokes"][i] for i in picks]
    assert asked == [((sum(len(row) for row in wanted), 3), np.dtype("int16"))]
    assert batch["strokes"].values.ctypes.data == buffers[0].ctypes.data
    assert_rows(batch["strokes"], wanted)
    assert batch["label"] is label
    with pytest.raises(errors.OutArrayError, match=r"field 'tokens': the allocator returned shape"):
        ds.take(picks, out={"tokens": lambda shape, dtype: np.empty((1, *shape), dtype)})
    with pytest.raises(errors.OutArrayError, match="field 'label': out must be a numpy array for"):
        ds.take(picks, out={"label": empty})


def test_lengths_sizes_and_the_refused_array(tmp_path: Path) -> None:
    rows = sample_rows(100)
    ds = write(tmp_path / "ds", rows)
    column = ds["tokens"]
    assert column.lengths.tolist() == [len(row) for row in rows["tokens"]]
    assert column.nbytes == sum(row.nbytes for row in rows["tokens"])
    assert column.shape == (100, None)
    assert ds["strokes"].shape == (100, None, 3)
    assert ds.nbytes == column.nbytes + ds["strokes"].nbytes + 100 * 8
    with pytest.raises(errors.RaggedArrayError, match="to_padded"):
        np.asarray(column)
    padded, _lengths = column[:3].to_padded(pad_value=-1)
    assert padded.shape == (3, max(len(r) for r in rows["tokens"][:3]))


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (100, errors.InvalidIndexError),
        (-101, errors.InvalidIndexError),
        ((0, 1), errors.InvalidIndexError),
        ([[0, 1]], errors.InvalidIndexError),
        (1.5, errors.InvalidIndexError),
        ("x", errors.InvalidIndexError),
    ],
)
def test_bad_keys_are_typed_errors_naming_the_field(tmp_path: Path, key: Any, error: type) -> None:
    ds = write(tmp_path / "ds", sample_rows(100))
    with pytest.raises(error, match="field 'tokens'"):
        ds["tokens"][key]


def test_columns_and_datasets_pickle_by_path(tmp_path: Path) -> None:
    rows = sample_rows(40)
    ds = write(tmp_path / "ds", rows)
    column = pickle.loads(pickle.dumps(ds["tokens"]))
    assert type(column).__name__ == "RaggedColumn"
    np.testing.assert_array_equal(column[9], rows["tokens"][9])
    again = pickle.loads(pickle.dumps(ds))
    assert_rows(again.take([3, 1])["strokes"], [rows["strokes"][3], rows["strokes"][1]])


def test_a_forked_child_reads_the_rows(tmp_path: Path) -> None:
    rows = sample_rows(60)
    ds = write(tmp_path / "ds", rows)
    ds["tokens"][0]  # mapped in the parent first
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = all(
            np.array_equal(ds["tokens"][i], rows["tokens"][i]) for i in range(60)
        ) and np.array_equal(ds.take([59])["strokes"][0], rows["strokes"][59])
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)


# -- sessions, parts, refresh ------------------------------------------------------------------
def test_rows_survive_commits_appenders_and_refresh(tmp_path: Path) -> None:
    rows = sample_rows(120)
    path = tmp_path / "ds"
    reader = None
    with ms.create(path, FIELDS, shard_bytes=1500) as writer:
        for start in range(0, 60, 7):
            stop = min(start + 7, 60)
            batch = {name: values[start:stop] for name, values in rows.items()}
            writer.extend({**batch, "label": np.arange(start, stop)})
            writer.commit()
            if reader is None:
                reader = ms.open(path)
    assert reader is not None
    assert len(reader) == 7
    for start in range(60, 120, 13):
        with ms.append(path) as writer:
            stop = min(start + 13, 120)
            for i in range(start, stop):
                writer.append({"tokens": rows["tokens"][i], "strokes": rows["strokes"][i],
                               "label": i})  # fmt: skip
    assert reader.refresh()
    assert len(reader) == 120
    assert_rows(reader["tokens"][:], rows["tokens"])
    assert_rows(reader["strokes"][:], rows["strokes"])
    assert reader.verify().ok


def test_parts_write_ragged_fields_and_commit_in_order(tmp_path: Path) -> None:
    rows = sample_rows(90)
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=1024).close()
    parts = []
    for key, start in enumerate((60, 0, 30)):
        with ms.write_part(path, key=key) as part:
            batch = {name: values[start : start + 30] for name, values in rows.items()}
            part.extend({**batch, "label": np.arange(start, start + 30)})
        parts.append((start, part.close()))
    ms.commit_parts(path, [p for _, p in sorted(parts, key=lambda item: item[0])], order="given")
    ds = ms.open(path)
    assert_rows(ds["tokens"][:], rows["tokens"])
    assert ds["label"][:].tolist() == list(range(90))
    assert ds.verify().ok


def test_discarding_a_part_removes_its_offsets_files(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=1024).close()
    with ms.write_part(path) as part:
        part.extend({**sample_rows(30), "label": np.arange(30)})
    assert any(name.endswith(".offsets.npy") for name in os.listdir(path / "shards"))
    assert ms.discard_parts(path) == [part.id]
    assert os.listdir(path / "shards") == []


def test_a_commit_that_verifies_parts_checks_their_offsets_files(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=1 << 20).close()
    with ms.write_part(path) as part:
        part.extend({**sample_rows(30), "label": np.arange(30)})
    (offsets,) = (path / "shards").glob("*.tokens.offsets.npy")
    os.chmod(offsets, 0o644)
    with open(offsets, "r+b") as handle:  # a valid offset, of a row one element shorter
        handle.seek(4096 + 8)
        ends = np.frombuffer(handle.read(16), dtype="<i8")
        handle.seek(4096 + 8)
        handle.write(np.int64(ends[0] - (ends[0] > 0)).tobytes())
    with pytest.raises(errors.ChecksumError, match=r"tokens\.offsets\.npy: data"):
        ms.commit_parts(path, [part.close()], verify=True)
    assert len(ms.open(path)) == 0


def test_discard_parts_removes_the_offsets_files_of_a_ragged_part(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=1024).close()
    rows = sample_rows(30)
    with ms.write_part(path) as part:
        part.extend({**rows, "label": np.arange(30)})
    shards = path / "shards"
    assert any(name.endswith(".offsets.npy") for name in os.listdir(shards))
    assert ms.discard_parts(path) == [part.id]
    assert os.listdir(shards) == []
    assert os.listdir(path / "parts") == []


# -- damaged files -----------------------------------------------------------------------------
def _unsealed_dataset(path: Path) -> ms.Dataset:
    rows = sample_rows(10)
    writer = ms.create(path, FIELDS, shard_bytes=1 << 20)
    writer.extend({**rows, "label": np.arange(10)})
    writer.commit()
    writer.abort()  # the shard stays unsealed
    ds = ms.open(path)
    assert not ds.shards[-1].sealed
    return ds


@pytest.mark.parametrize("sealed", [True, False])
def test_damaged_offsets_are_a_typed_error_and_verify_names_the_file(
    tmp_path: Path, sealed: bool
) -> None:
    ds = write(tmp_path / "ds", sample_rows(100)) if sealed else _unsealed_dataset(tmp_path / "ds")
    values = ds.shard_files("tokens")[0]
    offsets = offsets_path(values)
    os.chmod(offsets, 0o644)
    data = np.load(offsets)
    with open(offsets, "r+b") as handle:  # row 2 ends before it starts: decreasing offsets
        handle.seek(os.path.getsize(offsets) - data.nbytes + 2 * 8)
        handle.write(np.int64(10**6).tobytes())
    fresh = ms.open(tmp_path / "ds")
    with pytest.raises(errors.ShardDataError, match=r"offsets of field 'tokens'.*damaged"):
        fresh["tokens"][1]
    with pytest.raises(errors.ShardDataError):
        fresh.take([0])
    report = fresh.verify()
    assert not report.ok
    assert [problem.path for problem in report.problems] == [offsets]
    assert report.problems[0].error is errors.ChecksumError


@pytest.mark.parametrize("sealed", [True, False])
def test_offsets_damaged_in_order_are_a_checksum_error(tmp_path: Path, sealed: bool) -> None:
    """A row boundary moved by one element keeps the offsets in order and ending at the
    values' end; the offsets' checksum finds it, before any row is sliced with them."""
    ds = write(tmp_path / "ds", sample_rows(100)) if sealed else _unsealed_dataset(tmp_path / "ds")
    offsets = offsets_path(ds.shard_files("tokens")[0])
    data = np.load(offsets)
    row = int(np.flatnonzero(np.diff(data) > 0)[0]) + 1  # after the first non-empty row
    os.chmod(offsets, 0o644)
    with open(offsets, "r+b") as handle:
        handle.seek(os.path.getsize(offsets) - data.nbytes + row * 8)
        handle.write(np.int64(data[row] - 1).tobytes())
    fresh = ms.open(tmp_path / "ds")
    for read in (lambda: fresh["tokens"][row], lambda: fresh["tokens"][:3],
                 lambda: fresh.take([0]), lambda: fresh["tokens"].lengths):  # fmt: skip
        with pytest.raises(errors.ChecksumError, match=r"offsets of field 'tokens' are .*damaged"):
            read()
    assert fresh["strokes"][row].shape[1] == 3  # the other field reads on
    report = fresh.verify()
    assert [(problem.path, problem.error) for problem in report.problems] == [
        (offsets, errors.ChecksumError)
    ]


@pytest.mark.parametrize("lie", [-1, 1, -3])
def test_a_table_record_lying_about_its_elements_is_a_size_error(tmp_path: Path, lie: int) -> None:
    """A record whose ``elements`` disagree with its values file, with consistent chains (a
    hostile or buggy writer): every read of the shard refuses the values file by its size,
    before the offsets slice anything; verify names the values file."""
    ds = write(tmp_path / "ds", sample_rows(100))
    path = tmp_path / "ds"
    manifest = manifest_io.load(str(path / MANIFEST_NAME))
    assert manifest.table is not None
    shards = list(ds.shards[: manifest.table.records])
    shard = shards[1]
    file = shard.files["tokens"]
    lying = file.model_copy(update={"nbytes": file.nbytes + 4 * lie})
    shards[1] = shard.model_copy(update={"files": {**shard.files, "tokens": lying}})
    records = shardtable.encode(shards, manifest.fields, shardtable.chain_seed(manifest.uuid),
                                where="test")  # fmt: skip
    table = path / shardtable.TABLE_NAME
    os.chmod(table, 0o644)
    table.write_bytes(npyheader.header_bytes(records.dtype, (), len(records)) + records.tobytes())
    chain = shardtable.format_chain(int(records[-1]["chain"]))
    agreed = manifest.model_copy(
        update={"table": manifest.table.model_copy(update={"chain": chain})}
    )
    (path / MANIFEST_NAME).write_bytes(manifest_io.dumps(agreed))
    values = str(path / file.path)
    fresh = ms.open(path)
    row = shard.row_offset
    for read in (lambda: fresh["tokens"][row], lambda: fresh["tokens"][row : row + 2],
                 lambda: fresh.take([row]), lambda: fresh["tokens"].lengths):  # fmt: skip
        with pytest.raises(errors.ShardSizeError, match=f"^{values}: "):
            read()
    assert fresh["tokens"][0].tolist() == sample_rows(1)["tokens"][0].tolist()
    problems = fresh.verify().problems
    assert (values, errors.ShardSizeError) in [(p.path, p.error) for p in problems]


def test_truncated_values_are_refused_before_mapping(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", sample_rows(100))
    values = ds.shard_files("tokens")[1]
    os.chmod(values, 0o644)
    os.truncate(values, os.path.getsize(values) - 4)
    fresh = ms.open(tmp_path / "ds")
    row = fresh.shards[1].row_offset
    with pytest.raises(errors.ShardSizeError, match="truncated"):
        fresh["tokens"][row]
    assert [problem.path for problem in fresh.verify().problems] == [values]


@pytest.mark.parametrize("elements", [-1, 2**61])
def test_a_table_record_of_impossible_elements_is_a_typed_error(
    tmp_path: Path, elements: int
) -> None:
    write(tmp_path / "ds", sample_rows(100))
    table = tmp_path / "ds" / TABLE_NAME
    data = table.read_bytes()
    records = np.load(io.BytesIO(data)).copy()
    records[0]["elements"][0] = elements  # 2**61 int32 elements are 2**63 bytes
    previous = chain_seed(ms.open(tmp_path / "ds").uuid)  # chained again: the record is valid
    body = records.dtype.itemsize - 8
    for record in records:
        record["chain"] = previous = chain_of(record.tobytes()[:body], previous)
    os.chmod(table, 0o644)
    table.write_bytes(data[: len(data) - records.nbytes] + records.tobytes())
    manifest = manifest_io.load(str(tmp_path / "ds" / MANIFEST_NAME))
    assert manifest.table is not None
    ref = manifest.table.model_copy(update={"chain": format_chain(previous)})
    (tmp_path / "ds" / MANIFEST_NAME).write_bytes(
        manifest_io.dumps(manifest.model_copy(update={"table": ref}))
    )
    ds = ms.open(tmp_path / "ds")
    with pytest.raises(errors.ShardTableError, match=rf"record 0: field 'tokens': {elements} el"):
        ds["tokens"][0]
    assert [problem.error for problem in ds.verify().problems] == [errors.ShardTableError]


def test_an_appender_refuses_an_unsealed_shard_whose_offsets_changed(tmp_path: Path) -> None:
    ds = _unsealed_dataset(tmp_path / "ds")
    offsets = offsets_path(ds.shard_files("tokens")[0])
    with open(offsets, "r+b") as handle:
        handle.seek(4096 + 8)
        handle.write(np.int64(0).tobytes())
    with (
        pytest.raises(errors.ChecksumError, match=r"tokens \(offsets\)"),
        ms.append(tmp_path / "ds") as writer,
    ):
        writer.append({"tokens": [1], "strokes": np.zeros((1, 3), np.int16), "label": 1})


# -- the manifest's rules ----------------------------------------------------------------------
def _document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((path / MANIFEST_NAME).read_text())
    del document["checksum"]
    return document


def _rewritten(path: Path, document: dict[str, Any]) -> None:
    (path / MANIFEST_NAME).write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d.update(version="2.0"), "'ragged' came in format version 2.1"),
        (lambda d: d.pop("shard_bytes"), "shard_bytes: required when a field is ragged"),
        (lambda d: d["shards"][0]["files"]["tokens"].pop("offsets_prefix_checksum"),
         "offsets_prefix_checksum is missing"),
        (lambda d: d["shards"][0]["files"]["label"].update(
            offsets_prefix_checksum="xxh3_64:0000000000000000"), "not a key of an uncompressed"),
        (lambda d: d["shards"][0]["files"]["tokens"].update(nbytes=6),
         "not a whole number of elements"),
        (lambda d: d.update(labels={"tokens": ["a", "b"]}), "labels need a fixed field"),
        (lambda d: d["shards"][0]["files"]["label"].update(
            path=offsets_path(d["shards"][0]["files"]["tokens"]["path"])),
         r"label\.path .*tokens\.offsets\.npy' is used twice"),
        (lambda d: d["shards"][0]["files"]["tokens"].update(path=f"shards/{'a' * 251}.npy"),
         "the path of its offsets file.*is not a valid shard path"),
    ],
)  # fmt: skip
def test_manifests_breaking_the_ragged_rules_are_refused(
    tmp_path: Path, change: Any, says: str
) -> None:
    _unsealed_dataset(tmp_path / "ds")
    document = _document(tmp_path / "ds")
    change(document)
    _rewritten(tmp_path / "ds", document)
    with pytest.raises(errors.ManifestError, match=says):
        ms.open(tmp_path / "ds")


def test_shard_bytes_without_a_ragged_field_is_refused(tmp_path: Path) -> None:
    ms.create(tmp_path / "ds", {"x": ("int8", ())}).close()
    document = _document(tmp_path / "ds")
    document["shard_bytes"] = 100
    _rewritten(tmp_path / "ds", document)
    with pytest.raises(errors.ManifestError, match="only a dataset with a ragged field"):
        ms.open(tmp_path / "ds")


# -- against a list of arrays ------------------------------------------------------------------
ROW_LISTS = st.lists(
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12).map(
        lambda row: np.array(row, dtype=np.int32)
    ),
    max_size=60,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=ROW_LISTS,
    shard_bytes=st.integers(8, 200),
    cuts=st.lists(st.integers(0, 60), max_size=4),
    keys=st.lists(
        st.one_of(
            st.integers(-70, 70),
            st.builds(
                slice,
                st.none() | st.integers(-70, 70),
                st.none() | st.integers(-70, 70),
                st.none() | st.integers(-5, 5).filter(bool),
            ),
            st.lists(st.integers(-70, 70), max_size=20),
        ),
        max_size=6,
    ),
)
def test_indexing_matches_a_list_of_arrays(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[np.ndarray],
    shard_bytes: int,
    cuts: list[int],
    keys: list[Any],
) -> None:
    """Rows written in several sessions (commits at ``cuts``) across shards of any size read
    back as the Python list does, for integers, slices and index lists."""
    path = tmp_path_factory.mktemp("h") / "ds"
    ms.create(path, {"t": ("int32", (None,))}, shard_bytes=shard_bytes).close()
    bounds = sorted({0, len(rows), *(cut for cut in cuts if cut <= len(rows))})
    for start, stop in itertools.pairwise(bounds):
        with ms.append(path) as writer:
            writer.extend({"t": rows[start:stop]})
    dataset = ms.open(path)
    column = dataset["t"]
    assert len(column) == len(rows)
    for key in keys:
        if isinstance(key, int):
            if -len(rows) <= key < len(rows):
                np.testing.assert_array_equal(column[key], rows[key])
            else:
                with pytest.raises(errors.InvalidIndexError):
                    column[key]
        elif isinstance(key, slice):
            assert_rows(column[key], rows[key])
        elif all(-len(rows) <= i < len(rows) for i in key):
            assert_rows(column[key], [rows[i] for i in key])
            assert_rows(dataset.take(key)["t"], [rows[i] for i in key])
        else:
            with pytest.raises(errors.InvalidIndexError):
                column[key]


def test_closing_the_dataset_unmaps_the_shard_its_last_row_came_from(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", sample_rows(40))
    shards = str(tmp_path / "ds" / "shards")

    def mapped() -> int:
        with open("/proc/self/maps") as maps:
            return sum(shards in line for line in maps)

    assert ds["tokens"][3].size >= 0  # the row's view is dropped at once
    assert mapped() == 2  # the values and offsets of its shard, kept for the next row
    ds.close()
    assert mapped() == 0
