"""Bad input to the writer: ``create`` arguments and ``append``/``extend`` batches.

Every bad argument raises a typed error naming what is wrong, *before anything is written*:
a refused ``create`` leaves no directory behind, and a refused batch leaves the dataset's files
byte for byte as they were, with the appender still holding exactly the rows appended before.
Then: the casts that are allowed, the write lock, closed and forked appenders, ``with`` blocks
that end in an exception, and readers that never write.
"""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard
from memshard.errors import (
    AppenderClosedError,
    ArrayConversionError,
    BatchError,
    CastError,
    DatasetExistsError,
    DatasetLockedError,
    LabelError,
    MemshardError,
    SchemaError,
    UnsupportedDtypeError,
)
from memshard.layout import LOCK_NAME, MANIFEST_NAME
from memshard.manifest import MAX_COUNT, MAX_SAMPLE_NDIM

FIELDS = {"x": ("float32", (2,)), "y": ("int64", ()), "z": ("uint8", ()), "b": ("bool", ())}
LABELS = {"y": ["cat", "dog", "eel"]}
ROW_BYTES = 4 * 2 + 8 + 1 + 1
SHARD_ROWS = 2
COMMITTED, UNCOMMITTED = 3, 2


def _batch(start: int, count: int) -> dict[str, np.ndarray]:
    rows = np.arange(start, start + count)
    return {
        "x": np.stack([rows + 0.5, rows * 2.0], axis=1).astype(np.float32),
        "y": rows % 3,
        "z": (rows % 256).astype(np.uint8),
        "b": rows % 2 == 0,
    }


def _assert_holds(root: Path, rows: int) -> None:
    dataset = memshard.open(root)
    assert len(dataset) == rows
    expected = _batch(0, rows)
    for name, values in expected.items():
        np.testing.assert_array_equal(dataset[name][:], values, err_msg=name)
        assert dataset[name][:].dtype == np.dtype(FIELDS[name][0])


# -- snapshots of a directory tree -------------------------------------------------------------
Entry = tuple[str, int, int, int, bytes | str | None]


def _tree(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (not following links): kind, size, mtime, inode, content."""
    entries: dict[str, Entry] = {}
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            path = Path(directory) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content: bytes | str | None = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes()
            else:
                content = None
            entries[str(path.relative_to(root))] = (
                stat.filemode(info.st_mode),
                info.st_size,
                info.st_mtime_ns,
                info.st_ino,
                content,
            )
    return entries


# -- create(): a table of bad arguments --------------------------------------------------------
def _nested_list(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


@dataclass(frozen=True)
class BadCreate:
    id: str
    arguments: dict[str, Any]
    error: type[MemshardError]
    says: str

    def call(self, path: Path) -> Any:
        arguments = {"fields": FIELDS, **self.arguments}
        return memshard.create(path, **arguments)


def defined(definition: Any, error: type[MemshardError] = SchemaError, says: str = "") -> BadCreate:
    return BadCreate(f"x={definition!r:.50}", {"fields": {"x": definition}}, error, says)


def with_dtype(spec: Any, says: str = "field 'x'") -> BadCreate:
    return defined((spec, ()), UnsupportedDtypeError, says)


def with_shape(spec: Any) -> BadCreate:
    return defined(("float32", spec), SchemaError, "field 'x': sample shape")


def named(name: Any) -> BadCreate:
    return BadCreate(f"name {name!r:.40}", {"fields": {name: ("f4", ())}}, SchemaError, "name")


def with_labels(value: Any, says: str) -> BadCreate:
    return BadCreate(f"labels={value!r:.50}", {"labels": value}, SchemaError, says)


def with_attrs(value: Any, says: str = "attrs", *, name: str = "") -> BadCreate:
    return BadCreate(name or f"attrs={value!r:.50}", {"attrs": value}, SchemaError, says)


def with_shard_bytes(value: Any) -> BadCreate:
    return BadCreate(f"shard_bytes={value!r}", {"shard_bytes": value}, SchemaError, "shard_bytes")


BAD_CREATE: list[BadCreate] = [
    BadCreate("no fields", {"fields": {}}, SchemaError, "fields must be a non-empty mapping"),
    BadCreate("fields None", {"fields": None}, SchemaError, "fields must be"),
    BadCreate("fields a list", {"fields": [("x", ("f4", ()))]}, SchemaError, "fields must be"),
    named(""),
    named("1x"),
    named("a b"),
    named("a/b"),
    named("a.b"),
    named("../x"),
    named("é"),
    named("x" * 65),
    named(1),
    named(None),
    defined("float32", says="expected (dtype, sample_shape)"),
    defined(("float32",), says="expected (dtype, sample_shape)"),
    defined(("float32", (), "C"), says="the third member must be a mapping naming a codec"),
    defined(None, says="expected (dtype, sample_shape)"),
    with_dtype(object),
    with_dtype("O"),
    with_dtype("<U4"),
    with_dtype("S4"),
    with_dtype("V8"),
    with_dtype(">f4", says="big-endian"),
    with_dtype(">i8", says="big-endian"),
    with_dtype(np.longdouble),
    with_dtype("<M8[s]"),
    with_dtype("<m8[s]"),
    with_dtype([("a", "<f4")]),
    with_dtype(("<f4", (2,))),
    with_dtype("nope", says="is not a dtype"),
    with_dtype(3.5, says="is not a dtype"),
    with_shape(0),
    with_shape((0,)),
    with_shape((-1,)),
    with_shape((3, 0)),
    with_shape((2.0,)),
    with_shape(("3",)),
    with_shape((3, None)),
    with_shape((None, None)),
    with_shape((None, 0)),
    with_shape("3"),
    with_shape((1,) * (MAX_SAMPLE_NDIM + 1)),
    with_shape((MAX_COUNT + 1,)),
    with_shape((2**63,)),
    with_labels({"w": ["a"]}, "labels: no field named 'w'"),
    with_labels({"x": ["a"]}, "labels: field 'x'"),
    with_labels({"b": ["a"]}, "labels: field 'b'"),
    with_labels({"y": ["a", "b", "a"]}, "labels: 'y'"),
    with_labels({"y": ["a", 1]}, "labels: 'y'"),
    with_labels({"y": "abc"}, "labels: 'y'"),
    with_labels({"y": 5}, "labels: 'y'"),
    with_labels({"y": None}, "labels: 'y'"),
    with_labels(["y"], "labels"),
    with_labels({"y": ["a", "\ud800"]}, "labels: 'y'"),
    with_attrs(1, "attrs must be a mapping"),
    with_attrs([("a", 1)], "attrs must be a mapping"),
    with_attrs({"a": math.nan}),
    with_attrs({"a": math.inf}),
    with_attrs({"a": [1, -math.inf]}),
    with_attrs({"a": {"b": math.nan}}),
    with_attrs({"a": object()}, name="attrs={'a': <object>}"),
    with_attrs({"a": {1, 2}}),
    with_attrs({"a": b"bytes"}),
    with_attrs({"a": np.int64(1)}),
    with_attrs({"a": 10**5000}, name="attrs=10**5000"),
    with_attrs({"a": _circular()}),
    with_attrs({"a": _nested_list(100_000)}, name="attrs nested 100000 deep"),
    with_attrs({1: "one"}),
    with_attrs({1: "one", "1": "uno"}),
    with_attrs({None: "null"}),
    with_attrs({"a": "\udcff"}),
    with_attrs({"\ud800": 1}),
    with_shard_bytes(0),
    with_shard_bytes(-1),
    with_shard_bytes(True),
    with_shard_bytes(1.5),
    with_shard_bytes(100.0),
    with_shard_bytes("100"),
    with_shard_bytes(None),
    with_shard_bytes(MAX_COUNT + 1),
    with_shard_bytes(2**70),
]


def test_create_table_is_large_enough() -> None:
    assert len({case.id for case in BAD_CREATE}) == len(BAD_CREATE)


@pytest.mark.parametrize("case", BAD_CREATE, ids=[case.id for case in BAD_CREATE])
def test_create_refuses(tmp_path: Path, case: BadCreate) -> None:
    before = _tree(tmp_path)
    with pytest.raises(MemshardError) as caught:
        case.call(tmp_path / "ds")
    assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"
    assert case.says in str(caught.value)
    assert _tree(tmp_path) == before  # no dataset, no staging directory


def test_shard_bytes_past_the_limit_is_a_schema_error_and_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=f"shard_bytes must be an integer from 1 to {MAX_COUNT}"):
        memshard.create(tmp_path / "ds", fields=FIELDS, shard_bytes=2**70)
    with pytest.raises(ValueError, match="got 1180591620717411303424"):
        memshard.create(tmp_path / "ds", fields=FIELDS, shard_bytes=2**70)
    with memshard.create(tmp_path / "ds", fields=FIELDS, shard_bytes=MAX_COUNT) as writer:
        assert 1 <= writer.manifest.shard_rows <= MAX_COUNT // ROW_BYTES


def test_labels_from_an_iterator_are_not_lost(tmp_path: Path) -> None:
    """An iterator is not a Sequence: refuse it, or store every label, never store none."""
    try:
        vocabulary = iter(["cat", "dog"])
        memshard.create(tmp_path / "ds", fields=FIELDS, labels={"y": vocabulary}).close()
    except SchemaError:
        assert not (tmp_path / "ds").exists()
        return
    assert memshard.open(tmp_path / "ds").labels == {"y": ("cat", "dog")}


# -- create() where something exists -----------------------------------------------------------
def _dataset(path: Path) -> None:
    with memshard.create(path, fields=FIELDS, labels=LABELS, shard_bytes=40) as writer:
        writer.extend(_batch(0, 3))


def _empty_directory(path: Path) -> None:
    path.mkdir()


def _directory_with_files(path: Path) -> None:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "todo.txt").write_text("keep me")
    (path / "data.npy").write_bytes(b"\x93NUMPY")


def _foreign_manifest(path: Path) -> None:
    """Another tool's project: it has a manifest.json, but it is no memshard dataset."""
    path.mkdir()
    (path / MANIFEST_NAME).write_text('{"name": "my-extension", "version": "1.0"}')
    (path / "shards").mkdir()
    (path / "shards" / "precious.npy").write_bytes(b"not memshard")


def _manifest_directory(path: Path) -> None:
    (path / MANIFEST_NAME).mkdir(parents=True)


def _regular_file(path: Path) -> None:
    path.write_text("a file")


def _symlink_to_dataset(path: Path) -> None:
    _dataset(path.parent / "real")
    path.symlink_to(path.parent / "real", target_is_directory=True)


def _symlink_to_directory(path: Path) -> None:
    _directory_with_files(path.parent / "real")
    path.symlink_to(path.parent / "real", target_is_directory=True)


def _dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


EXISTING: list[tuple[str, Callable[[Path], None], bool]] = [
    ("dataset", _dataset, False),
    ("empty directory", _empty_directory, False),
    ("regular file", _regular_file, False),
    ("dangling symlink", _dangling_symlink, False),
    ("empty directory, overwrite", _empty_directory, True),
    ("directory with files, overwrite", _directory_with_files, True),
    ("directory with a foreign manifest.json, overwrite", _foreign_manifest, True),
    ("manifest.json is a directory, overwrite", _manifest_directory, True),
    ("regular file, overwrite", _regular_file, True),
    ("symlink to a dataset, overwrite", _symlink_to_dataset, True),
    ("symlink to a directory, overwrite", _symlink_to_directory, True),
    ("dangling symlink, overwrite", _dangling_symlink, True),
]


@pytest.mark.parametrize(
    ("name", "make", "overwrite"), EXISTING, ids=[name for name, _, _ in EXISTING]
)
def test_create_never_replaces_what_is_not_a_dataset(
    tmp_path: Path, name: str, make: Callable[[Path], None], overwrite: bool
) -> None:
    path = tmp_path / "ds"
    make(path)
    before = _tree(tmp_path)
    with pytest.raises(DatasetExistsError) as caught:
        memshard.create(path, fields={"v": ("int8", ())}, overwrite=overwrite)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, FileExistsError)
    assert _tree(tmp_path) == before


def test_overwrite_replaces_a_dataset(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    _dataset(path)
    with memshard.create(path, fields={"v": ("int8", ())}, overwrite=True) as writer:
        writer.extend({"v": [1, 2]})
    assert memshard.open(path).keys() == ["v"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# -- append() / extend(): a table of bad batches ------------------------------------------------
ROW = {"x": [0.5, 1.5], "y": 1, "z": 7, "b": True}


def _two_rows() -> dict[str, Any]:
    return {name: values.copy() for name, values in _batch(100, 2).items()}


@dataclass(frozen=True)
class BadBatch:
    id: str
    change: dict[str, Any]  # field -> new value; a value of DROP removes the field
    error: type[BatchError]
    says: str
    whole: Any = field(default=None)  # replaces the whole batch when not None


DROP = object()


def _apply(base: dict[str, Any], case: BadBatch) -> Any:
    if case.whole is not None:
        return case.whole
    batch = dict(base)
    for name, value in case.change.items():
        if value is DROP:
            del batch[name]
        else:
            batch[name] = value
    return batch


def _ragged() -> list[list[float]]:
    return [[1.0], [2.0, 3.0]]


BAD_ROWS: list[BadBatch] = [
    BadBatch("missing field", {"b": DROP}, BatchError, "missing ['b']"),
    BadBatch("extra field", {"w": 1}, BatchError, "unexpected ['w']"),
    BadBatch("not a mapping", {}, BatchError, "expected a mapping", whole=[0.5, 1.5, 1, 7, True]),
    BadBatch("x too long", {"x": [0.5, 1.5, 2.5]}, BatchError, "field 'x': got shape"),
    BadBatch("x a scalar", {"x": 0.5}, BatchError, "field 'x': got shape"),
    BadBatch("x a batch", {"x": [[0.5, 1.5]]}, BatchError, "field 'x': got shape"),
    BadBatch("y a vector", {"y": [1, 2]}, BatchError, "field 'y': got shape"),
    BadBatch("x ragged", {"x": _ragged()}, BatchError, "field 'x'"),
    BadBatch("x a dict", {"x": {"a": 1}}, BatchError, "field 'x'"),
    BadBatch("float into int", {"y": 1.5}, CastError, "field 'y'"),
    BadBatch("integral float into int", {"y": 1.0}, CastError, "field 'y'"),
    BadBatch("complex into float", {"x": [1j, 0]}, CastError, "field 'x'"),
    BadBatch("int into bool", {"b": 1}, CastError, "field 'b'"),
    BadBatch("float into bool", {"b": 0.0}, CastError, "field 'b'"),
    BadBatch("300 into uint8", {"z": 300}, CastError, "field 'z': values in [300, 300]"),
    BadBatch("-1 into uint8", {"z": -1}, CastError, "field 'z': values in [-1, -1]"),
    BadBatch("2**63 into int64", {"y": 2**63}, CastError, "field 'y'"),
    BadBatch("2**64 into int64", {"y": 2**64}, CastError, "field 'y'"),
    BadBatch("strings into float", {"x": ["0.5", "1.5"]}, CastError, "field 'x'"),
    BadBatch("None into float", {"x": [None, 1.5]}, CastError, "field 'x'"),
    BadBatch("label past the vocabulary", {"y": 3}, LabelError, "field 'y': label values"),
    BadBatch("negative label", {"y": -1}, LabelError, "field 'y': label values"),
]

BAD_BATCHES: list[BadBatch] = [
    BadBatch("missing field", {"b": DROP}, BatchError, "missing ['b']"),
    BadBatch("extra field", {"w": [1, 2]}, BatchError, "unexpected ['w']"),
    BadBatch("missing and extra", {"b": DROP, "B": [True]}, BatchError, "unexpected ['B']"),
    BadBatch("not a mapping", {}, BatchError, "expected a mapping", whole=[("x", [])]),
    BadBatch("x sample shape", {"x": np.zeros((2, 3), "f4")}, BatchError, "field 'x': got shape"),
    BadBatch("x no sample dims", {"x": np.zeros(2, "f4")}, BatchError, "field 'x': got shape"),
    BadBatch("x extra dim", {"x": np.zeros((2, 2, 1), "f4")}, BatchError, "field 'x'"),
    BadBatch("y 0-d", {"y": np.int64(1)}, BatchError, "field 'y': got shape"),
    BadBatch("y a matrix", {"y": np.zeros((2, 1), "i8")}, BatchError, "field 'y': got shape"),
    BadBatch("y 3 rows", {"y": np.array([0, 1, 2])}, BatchError, "different row counts"),
    BadBatch("b 0 rows", {"b": np.zeros(0, bool)}, BatchError, "different row counts"),
    BadBatch("x ragged", {"x": [[1.0, 2.0], [3.0]]}, BatchError, "field 'x'"),
    BadBatch("float into int", {"y": np.array([0.0, 1.0])}, CastError, "field 'y'"),
    BadBatch("NaN into int", {"y": np.array([np.nan, 1.0])}, CastError, "field 'y'"),
    BadBatch("complex into float", {"x": np.ones((2, 2), "c8")}, CastError, "field 'x'"),
    BadBatch("int into bool", {"b": np.array([1, 0])}, CastError, "field 'b'"),
    BadBatch("uint8 into bool", {"b": np.array([1, 0], "u1")}, CastError, "field 'b'"),
    BadBatch("300 into uint8", {"z": [300, 1]}, CastError, "values in [1, 300]"),
    BadBatch("256 into uint8", {"z": np.array([255, 256], "i2")}, CastError, "values in"),
    BadBatch("-1 into uint8", {"z": np.array([-1, 0], "i8")}, CastError, "values in [-1, 0]"),
    BadBatch("-1 as int8 into uint8", {"z": np.array([-1, 0], "i1")}, CastError, "values in"),
    BadBatch("2**63 into int64", {"y": np.array([2**63, 0], "u8")}, CastError, "field 'y'"),
    BadBatch("datetimes into float", {"x": np.zeros((2, 2), "M8[s]")}, CastError, "field 'x'"),
    BadBatch("strings into float", {"x": np.full((2, 2), "1")}, CastError, "field 'x'"),
    BadBatch("objects into float", {"x": np.ones((2, 2), object)}, CastError, "field 'x'"),
    BadBatch("label past the vocabulary", {"y": [1, 3]}, LabelError, "label values in [1, 3]"),
    BadBatch("negative label", {"y": [-1, 0]}, LabelError, "label values in [-1, 0]"),
]


@pytest.fixture
def writing(tmp_path: Path) -> Iterator[tuple[Path, memshard.Appender]]:
    """A dataset with 3 committed and 2 uncommitted rows, over 3 shards of 2 rows."""
    root = tmp_path / "ds"
    writer = memshard.create(root, fields=FIELDS, labels=LABELS, shard_bytes=ROW_BYTES * 2)
    writer.extend(_batch(0, COMMITTED))
    writer.commit()
    writer.extend(_batch(COMMITTED, UNCOMMITTED))
    yield root, writer
    writer.abort()


def _check_refused(
    root: Path, writer: memshard.Appender, call: Callable[[Any], None], batch: Any, case: BadBatch
) -> None:
    before = _tree(root)
    with pytest.raises(MemshardError) as caught:
        call(batch)
    assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"
    assert str(caught.value).startswith(f"{root}: ")
    assert case.says in str(caught.value)
    assert _tree(root) == before
    assert (writer.rows, writer.committed_rows) == (COMMITTED + UNCOMMITTED, COMMITTED)
    writer.close()
    _assert_holds(root, COMMITTED + UNCOMMITTED)


@pytest.mark.parametrize("case", BAD_ROWS, ids=[case.id for case in BAD_ROWS])
def test_append_refuses(writing: tuple[Path, memshard.Appender], case: BadBatch) -> None:
    root, writer = writing
    _check_refused(root, writer, writer.append, _apply(ROW, case), case)


@pytest.mark.parametrize("case", BAD_BATCHES, ids=[case.id for case in BAD_BATCHES])
def test_extend_refuses(writing: tuple[Path, memshard.Appender], case: BadBatch) -> None:
    root, writer = writing
    _check_refused(root, writer, writer.extend, _apply(_two_rows(), case), case)


@pytest.mark.parametrize("single_row", [False, True])
def test_a_tensor_that_requires_grad_is_refused_with_a_typed_runtime_error(
    writing: tuple[Path, memshard.Appender], single_row: bool
) -> None:
    import torch

    root, writer = writing
    values = _batch(5, 1) if single_row else _two_rows()
    x = torch.tensor(np.asarray(values["x"]), requires_grad=True)
    batch = {**values, "x": x[0] if single_row else x}
    before = _tree(root)
    with pytest.raises(ArrayConversionError) as caught:
        (writer.append if single_row else writer.extend)(batch)
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value, BatchError)
    assert str(caught.value).startswith(f"{root}: field 'x': a Tensor cannot be converted")
    assert "requires grad" in str(caught.value)
    assert _tree(root) == before
    rows = _two_rows()
    writer.extend({**rows, "x": torch.tensor(rows["x"], requires_grad=True).detach()})
    writer.close()
    assert len(memshard.open(root)) == COMMITTED + UNCOMMITTED + 2


def test_batch_tables_are_large_enough() -> None:
    assert len({case.id for case in BAD_ROWS}) == len(BAD_ROWS) >= 15
    assert len({case.id for case in BAD_BATCHES}) == len(BAD_BATCHES) >= 15


def test_appender_stays_usable_after_a_refused_batch(
    writing: tuple[Path, memshard.Appender],
) -> None:
    root, writer = writing
    with pytest.raises(CastError):
        writer.extend({**_batch(5, 2), "z": [1, 300]})
    with pytest.raises(LabelError):
        writer.append({**ROW, "y": 7})
    writer.extend(_batch(5, 2))
    writer.append({name: values[0] for name, values in _batch(7, 1).items()})
    writer.close()
    _assert_holds(root, 8)


# -- bools are stored as 00 and 01 ----------------------------------------------------------------


def _data_bytes(root: Path, field: str) -> bytes:
    """The committed data bytes of ``field``, all shards in row order, read from the files."""
    dataset = memshard.open(root)
    data = b""
    for shard in dataset.shards:
        file = shard.files[field]
        with open(root / file.path, "rb") as handle:
            handle.seek(file.data_offset)
            data += handle.read(file.nbytes)
    return data


def _bools_from(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A bool array holding ``raw`` verbatim, as numpy makes it from a buffer."""
    return np.frombuffer(raw, dtype=bool).reshape(shape)


RAW_FLAGS = bytes([0x00, 0x02, 0xFF, 0x01, 0x80, 0x00, 0x10, 0x01, 0x00])


@pytest.mark.parametrize("how", ["extend", "append", "part"])
def test_bool_bytes_other_than_0_and_1_are_stored_as_1(tmp_path: Path, how: str) -> None:
    root = tmp_path / "ds"
    flags = _bools_from(RAW_FLAGS, (3, 3))
    given = flags.copy()
    numbers = np.arange(3, dtype=np.int16)
    fields = {"flag": ("bool", (3,)), "n": ("int16", ())}
    with memshard.create(root, fields=fields, shard_bytes=8) as writer:
        if how == "extend":
            writer.extend({"flag": flags, "n": numbers})
        elif how == "append":
            for row in range(3):
                writer.append({"flag": flags[row], "n": numbers[row]})
    if how == "part":
        with memshard.write_part(root) as part:
            part.extend({"flag": flags, "n": numbers})
        memshard.commit_parts(root, [part.close()], order="given")  # close() is idempotent
    assert _data_bytes(root, "flag") == bytes(byte != 0 for byte in RAW_FLAGS)
    dataset = memshard.open(root)
    np.testing.assert_array_equal(dataset["flag"][:].view(np.uint8), flags.view(np.uint8) != 0)
    assert dataset.verify().ok
    assert flags.tobytes() == given.tobytes() == RAW_FLAGS  # the caller's array is untouched


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(min_size=1, max_size=64))
def test_any_bytes_of_a_bool_array_are_stored_as_0_or_1(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "ds"
        with memshard.create(root, fields={"flag": ("bool", ())}, shard_bytes=16) as writer:
            writer.extend({"flag": _bools_from(raw, (len(raw),))})
        assert _data_bytes(root, "flag") == bytes(byte != 0 for byte in raw)


# -- casts that are allowed ---------------------------------------------------------------------
ALLOWED: list[tuple[str, str, tuple[int, ...], Any]] = [
    ("float64 into float32", "float32", (), np.array([0.1, -2.5, 1e30])),
    ("float64 into float16", "float16", (), np.array([0.1, 1000.0])),
    ("float32 into float64", "float64", (), np.array([0.1, 3.0], "f4")),
    ("int64 into float32", "float32", (), np.array([1, -7])),
    ("int64 fitting int16", "int16", (), np.array([-32768, 0, 32767])),
    ("uint64 fitting int16", "int16", (), np.array([0, 32767], "u8")),
    ("int64 fitting uint8", "uint8", (), np.array([0, 255])),
    ("int8 fitting uint64", "uint64", (), np.array([0, 127], "i1")),
    ("uint64 into uint64", "uint64", (), np.array([2**64 - 1], "u8")),
    ("bool into int64", "int64", (), np.array([True, False])),
    ("bool into uint8", "uint8", (), np.array([True, False])),
    ("bool into float32", "float32", (), np.array([True, False])),
    ("complex128 into complex64", "complex64", (), np.array([1 + 2j, -0.5j])),
    ("float32 into complex128", "complex128", (), np.array([1.5, 2.0], "f4")),
    ("python ints into int16", "int16", (), [1, -2, 3]),
    ("python ints into float32", "float32", (), [1, 2]),
    ("python bools into bool", "bool", (), [True, False]),
    ("python floats into float64", "float64", (), [0.1, 0.2]),
    ("nested lists into float32 (2, 2)", "float32", (2, 2), [[[1, 2], [3, 4]]]),
    ("big python int into uint64", "uint64", (), [2**64 - 1]),
    ("empty batch", "int16", (3,), np.zeros((0, 3), "i8")),
]


@pytest.mark.parametrize(
    ("name", "dtype_name", "sample", "values"), ALLOWED, ids=[case[0] for case in ALLOWED]
)
def test_allowed_casts(
    tmp_path: Path, name: str, dtype_name: str, sample: tuple[int, ...], values: Any
) -> None:
    root = tmp_path / "ds"
    with memshard.create(root, fields={"v": (dtype_name, sample)}, shard_bytes=16) as writer:
        writer.extend({"v": values})
    stored = memshard.open(root)["v"][:]
    expected = np.asarray(values).astype(dtype_name)
    assert stored.dtype == np.dtype(dtype_name)
    np.testing.assert_array_equal(stored, expected)


def test_append_takes_python_scalars_and_lists(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with memshard.create(root, fields=FIELDS, labels=LABELS, shard_bytes=ROW_BYTES) as writer:
        writer.append({"x": [0.5, 0.0], "y": 0, "z": 0, "b": True})
        writer.append({"x": (1.5, 2), "y": np.int8(1), "z": True, "b": np.bool_(False)})
    dataset = memshard.open(root)
    np.testing.assert_array_equal(dataset["x"][:], [[0.5, 0.0], [1.5, 2.0]])
    np.testing.assert_array_equal(dataset["y"][:], [0, 1])
    np.testing.assert_array_equal(dataset["z"][:], [0, 1])
    np.testing.assert_array_equal(dataset["b"][:], [True, False])


# -- the write lock ----------------------------------------------------------------------------
def test_second_appender_in_the_same_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = memshard.create(root, fields=FIELDS, labels=LABELS)
    writer.extend(_batch(0, 2))
    writer.commit()
    before = _tree(tmp_path)

    with pytest.raises(DatasetLockedError) as caught:
        memshard.append(root)
    assert isinstance(caught.value, BlockingIOError)
    assert str(root) in str(caught.value)
    with pytest.raises(DatasetLockedError):
        memshard.create(root, fields={"v": ("int8", ())}, overwrite=True)
    assert _tree(tmp_path) == before

    writer.extend(_batch(2, 1))
    writer.close()
    with memshard.append(root) as again:  # the lock is free once the first one closed
        again.extend(_batch(3, 1))
    _assert_holds(root, 4)


def _append_in_child(root: str, conn: Connection) -> None:
    try:
        writer = memshard.append(root)
    except Exception as exc:
        conn.send((type(exc).__name__, str(exc)))
    else:
        writer.extend(_batch(1, 1))
        writer.close()
        conn.send(("appended", ""))
    conn.close()


def _in_spawned_child(root: Path) -> tuple[str, str]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_append_in_child, args=(str(root), sender))
    child.start()
    sender.close()
    try:
        report: tuple[str, str] = receiver.recv()
    finally:
        receiver.close()
        child.join()
    assert child.exitcode == 0
    return report


def test_second_appender_in_another_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = memshard.create(root, fields=FIELDS, labels=LABELS)
    writer.extend(_batch(0, 1))
    writer.commit()

    kind, message = _in_spawned_child(root)
    assert kind == "DatasetLockedError"
    assert str(root) in message

    writer.close()
    assert _in_spawned_child(root) == ("appended", "")
    _assert_holds(root, 2)


# -- closed and forked appenders ---------------------------------------------------------------
OPERATIONS: dict[str, Callable[[memshard.Appender], None]] = {
    "append": lambda writer: writer.append({name: v[0] for name, v in _batch(9, 1).items()}),
    "extend": lambda writer: writer.extend(_batch(9, 2)),
    "commit": lambda writer: writer.commit(),
}


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_closed_appender_refuses(tmp_path: Path, how: str, operation: str) -> None:
    root = tmp_path / "ds"
    writer = memshard.create(root, fields=FIELDS, labels=LABELS)
    writer.extend(_batch(0, 2))
    writer.commit()
    getattr(writer, how)()
    before = _tree(tmp_path)
    with pytest.raises(AppenderClosedError) as caught:
        OPERATIONS[operation](writer)
    assert str(root) in str(caught.value)
    writer.close()  # idempotent
    writer.abort()
    assert _tree(tmp_path) == before
    _assert_holds(root, 2)


def _fork(child: Callable[[], int]) -> int:
    """Run ``child`` in a forked process; return its exit status (never returns in the child)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_appender_in_a_forked_child_refuses(writing: tuple[Path, memshard.Appender]) -> None:
    root, writer = writing
    before = _tree(root)

    def child() -> int:
        refused = 0
        for bit, operation in enumerate(OPERATIONS.values()):
            try:
                operation(writer)
            except AppenderClosedError:
                refused |= 1 << bit
        return refused

    assert _fork(child) == 0b111
    assert _tree(root) == before
    writer.close()
    _assert_holds(root, COMMITTED + UNCOMMITTED)


def test_closing_in_a_forked_child_leaves_the_dataset_alone(
    writing: tuple[Path, memshard.Appender],
) -> None:
    """The child shares the parent's open shard files: close() there must write nothing."""
    root, writer = writing
    before = _tree(root)

    def child() -> int:
        writer.close()
        return 0

    assert _fork(child) == 0
    assert _tree(root) == before
    writer.close()
    _assert_holds(root, COMMITTED + UNCOMMITTED)


FORKED_CHILD_EXITS = """
import os, sys
import numpy as np
import memshard

root = sys.argv[1]
writer = memshard.create(root, fields={"x": ("int64", ())}, shard_bytes=800)
writer.extend({"x": np.arange(5)})
writer.commit()
writer.extend({"x": np.arange(5, 8)})
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a child that never touches the appender, and exits normally
os.waitpid(pid, 0)
writer.close()
print(memshard.open(root)["x"][:].tolist())
"""


def test_forked_child_exiting_normally_leaves_the_dataset_alone(tmp_path: Path) -> None:
    """At exit a child finalises the buffered shard files it inherited: that must not write."""
    script = textwrap.dedent(FORKED_CHILD_EXITS)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script, str(tmp_path / "ds")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(list(range(8)))


# -- with blocks ---------------------------------------------------------------------------------
class Boom(Exception):
    pass


def _write_then_fail(
    root: Path, committed: int, uncommitted: int, writers: list[memshard.Appender]
) -> None:
    with memshard.create(root, fields=FIELDS, labels=LABELS, shard_bytes=ROW_BYTES * 2) as w:
        writers.append(w)
        w.extend(_batch(0, committed))
        if committed:
            w.commit()
        w.extend(_batch(committed, uncommitted))
        raise Boom


def _fail_inside_with(root: Path, committed: int, uncommitted: int) -> memshard.Appender:
    """Write in a ``with`` block that ends in :class:`Boom`; return the appender."""
    writers: list[memshard.Appender] = []
    with pytest.raises(Boom):
        _write_then_fail(root, committed, uncommitted, writers)
    return writers[0]


def test_exception_in_with_block_keeps_the_last_commit(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = _fail_inside_with(root, COMMITTED, 4)  # the 4 rows seal a shard, start another
    _assert_holds(root, COMMITTED)
    with pytest.raises(AppenderClosedError):
        writer.append(ROW)

    with memshard.append(root) as again:  # the lock was released
        again.extend(_batch(COMMITTED, 4))
    _assert_holds(root, COMMITTED + 4)


def test_exception_before_any_commit_leaves_nothing(tmp_path: Path) -> None:
    """The block committed nothing, so it leaves nothing (create()'s docstring; more in
    tests/test_create_exception.py): running it again does not meet DatasetExistsError."""
    root = tmp_path / "ds"
    _fail_inside_with(root, 0, 5)
    assert os.listdir(tmp_path) == []
    _fail_inside_with(root, 0, 5)
    assert os.listdir(tmp_path) == []


# -- reading never writes -----------------------------------------------------------------------
def _read_everything(root: Path) -> None:
    dataset = memshard.open(root)
    for name in list(dataset.fields):
        column = dataset[name]
        column[:]
        column[::-1]
        column[np.array([4, 0, 2])]
        for row in range(len(column)):
            column[row]
    dataset.take([4, 1, 1, 0])
    list(dataset)
    dataset.refresh()
    assert dataset.attrs == {"source": "test"}


def _closed_dataset(root: Path) -> None:
    with memshard.create(
        root, fields=FIELDS, labels=LABELS, attrs={"source": "test"}, shard_bytes=ROW_BYTES * 2
    ) as writer:
        writer.extend(_batch(0, 5))


def test_reading_creates_and_modifies_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _closed_dataset(root)
    (root / LOCK_NAME).unlink()  # readers never need the appender's lock file
    before = _tree(tmp_path)
    _read_everything(root)
    assert _tree(tmp_path) == before
    assert not (root / LOCK_NAME).exists()


def _read_as_unprivileged_user(root: Path, connection: Any) -> None:
    """Child process: drop root (uid/gid 65534, "nobody") if needed, prove writes are refused,
    then read everything."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    try:
        (root / "probe").touch()
        connection.send("a write was allowed")
        return
    except PermissionError:
        pass
    try:
        _read_everything(root)
        connection.send("ok")
    except BaseException as exc:  # report any failure to the parent
        connection.send(f"{type(exc).__name__}: {exc}")


def test_reading_needs_no_write_permission() -> None:
    # Not tmp_path: pytest's base directory is private to the user, and the reader may run
    # as "nobody" here. /tmp itself is world-traversable.
    base = Path(tempfile.mkdtemp(prefix="memshard-readonly-"))
    try:
        _check_read_only_dataset(base)
    finally:
        shutil.rmtree(base)


def _check_read_only_dataset(base: Path) -> None:
    root = base / "ds"
    _closed_dataset(root)
    paths = [base, root, *root.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:  # read and traverse for everyone, write for nobody
        path.chmod((stat.S_IMODE(modes[path]) | 0o555) & ~0o222)
    try:
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_read_as_unprivileged_user, args=(root, sender))
        child.start()
        outcome = receiver.recv()
        child.join()
    finally:
        for path in paths:
            path.chmod(stat.S_IMODE(modes[path]))
    assert outcome == "ok"
    assert child.exitcode == 0


def test_create_removes_what_an_interrupted_create_left(tmp_path: Path) -> None:
    """A create killed before its rename leaves ``path.memshard-tmp-*``; the next create of the
    same path deletes it if it holds a manifest and nobody holds its lock. A running create
    (lock held) and one that has not written its manifest yet are left alone."""
    path = tmp_path / "ds"
    abandoned = tmp_path / "ds.memshard-tmp-0123456789ab"
    (abandoned / "shards").mkdir(parents=True)
    (abandoned / ".memshard.lock").touch()
    (abandoned / "manifest.json").write_text("{}")
    running = tmp_path / "ds.memshard-tmp-ba9876543210"
    (running / "shards").mkdir(parents=True)
    (running / "manifest.json").write_text("{}")
    lock = os.open(running / ".memshard.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    starting = tmp_path / "ds.memshard-tmp-aaaaaaaaaaaa"  # made its directory, not locked yet
    (starting / "shards").mkdir(parents=True)
    other = tmp_path / "other.memshard-tmp-0123456789ab"  # another path's: not touched
    other.mkdir()
    try:
        memshard.create(path, fields={"x": ("int8", ())}).close()
    finally:
        os.close(lock)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted(
        ["ds", running.name, starting.name, other.name]
    )
    assert not (starting / ".memshard.lock").exists()  # the cleanup created nothing in it
