"""from_hdf5 and to_hdf5 on real HDF5 files: every value is compared with what h5py reads."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import memshard as ms
import memshard.appender as ms_appender
import memshard.hdf5 as ms_hdf5
import memshard.ordercommit as ms_ordercommit
import memshard.sources as ms_sources
import memshard.workers as ms_workers
from memshard.convert import SOURCE_ATTR, convert
from memshard.errors import (
    ConversionFailedError,
    ConversionStateError,
    DatasetExistsError,
    FieldNotFoundError,
    LabelError,
    PartIncompleteError,
    SourceError,
    UnsupportedSourceError,
)
from memshard.sources import SUPPORTED_KINDS
from tests.convert_helpers import (
    PAUSED_CLI,
    FailingOpener,
    assert_same_values,
    staging_of,
    with_stop,
)
from tests.helpers import REPO_ROOT, run_from_repo

# -- helpers -----------------------------------------------------------------------------------


def h5_read(src: Path, path: str) -> np.ndarray:
    """What h5py reads from dataset ``path`` of ``src``."""
    with h5py.File(src, "r") as handle:
        return np.asarray(handle[path][()])


def manifest_of(root: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return manifest


def assert_matches(ds: ms.Dataset, src: Path, fields: dict[str, str]) -> None:
    """Every field of ``ds`` equals the HDF5 dataset it came from (and nothing else is there)."""
    assert set(ds.fields) == set(fields)
    for name, path in fields.items():
        assert_same_values(ds[name][:], h5_read(src, path))


def assert_nothing_left(dst: Path) -> None:
    """Neither ``dst``, its staging directory nor a temporary directory exists."""
    assert not os.path.lexists(dst)
    assert not os.path.lexists(staging_of(dst))
    leftovers = [entry for entry in os.listdir(dst.parent) if entry.startswith(dst.name)]
    assert leftovers == []


def assert_contiguous_shards(ds: ms.Dataset) -> None:
    offset = 0
    for shard in ds.shards:
        assert shard.row_offset == offset
        assert shard.sealed
        offset += shard.rows
    assert offset == len(ds)


def shard_records(ds: ms.Dataset) -> list[tuple[int, int, dict[str, str | None]]]:
    return [
        (shard.row_offset, shard.rows, {name: f.checksum for name, f in shard.files.items()})
        for shard in ds.shards
    ]


def sample_values(dtype: Any, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values of ``dtype`` covering its extremes (NaN, infinities, -0.0, subnormals)."""
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=")
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        values = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(native)
        values = rng.integers(info.min, info.max, size=shape, dtype=native, endpoint=True)
        values.reshape(-1)[:2] = [info.min, info.max]
    else:
        real = native.type(0).real.dtype
        info = np.finfo(real)
        special = np.array([np.nan, np.inf, -np.inf, -0.0, info.smallest_subnormal, info.max])
        parts = [(rng.standard_normal(shape) * 100).astype(real) for _ in range(2)]
        for part in parts:
            part.reshape(-1)[: len(special)] = special.astype(real)
        if dtype.kind == "f":
            values = parts[0]
        else:
            values = np.empty(shape, dtype=native)
            values.real, values.imag = parts[0], parts[1][::-1]
    return np.asarray(values).astype(dtype)


def make_compact(handle: Any, name: str, data: np.ndarray) -> None:
    """A dataset with the compact layout (data stored in the object header)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create_simple(data.shape)
    h5py.h5d.create(handle.id, name.encode(), h5py.h5t.py_create(data.dtype), space, dcpl=dcpl)
    handle[name][...] = data


def shard_bytes_for(rows: int, row_bytes: int) -> int:
    """``shard_bytes`` giving exactly ``rows`` rows per shard (small shards are not aligned)."""
    return rows * row_bytes


@pytest.fixture
def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every ``(field, start, stop)`` block the in-process HDF5 reader is asked for."""
    calls: list[tuple[str, int, int]] = []
    original = ms_hdf5.Hdf5Reader.read

    def read(self: Any, name: str, start: int, stop: int, out: np.ndarray) -> None:
        calls.append((name, start, stop))
        original(self, name, start, stop, out)

    monkeypatch.setattr(ms_hdf5.Hdf5Reader, "read", read)
    return calls


# -- layouts and filters -------------------------------------------------------------------------

ROWS = 100
SAMPLE = (4, 6)
ROW_BYTES = 4 * 4 * 6


def _chunked(chunks: tuple[int, ...]) -> Callable[[Any, np.ndarray], None]:
    def build(handle: Any, data: np.ndarray) -> None:
        handle.create_dataset("x", data=data, chunks=chunks)

    return build


LAYOUTS: dict[str, Callable[[Any, np.ndarray], None]] = {
    "contiguous": lambda handle, data: handle.create_dataset("x", data=data),
    "chunk-divides-rows-and-shard": _chunked((5, 4, 6)),
    "chunk-divides-nothing": _chunked((7, 4, 6)),
    "chunk-splits-inner-axes": _chunked((3, 3, 5)),
    "chunk-larger-than-shard": _chunked((60, 4, 6)),
    "chunk-one-row": _chunked((1, 4, 6)),
    "compact": lambda handle, data: make_compact(handle, "x", data),
}


@pytest.mark.parametrize("small_blocks", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts(
    tmp_path: Path,
    layout: str,
    small_blocks: bool,
    monkeypatch: pytest.MonkeyPatch,
    record_reads: list[tuple[str, int, int]],
) -> None:
    src = tmp_path / "src.h5"
    data = sample_values("<f4", (ROWS, *SAMPLE))
    with h5py.File(src, "w") as handle:
        LAYOUTS[layout](handle, data)
        chunks = handle["x"].chunks
        if layout == "compact":
            assert handle["x"].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
    if small_blocks:  # several read blocks per shard
        monkeypatch.setattr(ms_sources, "READ_BLOCK_BYTES", 3 * ROW_BYTES)
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes_for(20, ROW_BYTES))
    assert_matches(ds, src, {"x": "/x"})
    assert [(s.row_offset, s.rows) for s in ds.shards] == [(k * 20, 20) for k in range(5)]
    # Reads cover every row once and, inside a shard, start and end on chunk boundaries.
    chunk_rows = chunks[0] if chunks else 1
    block_rows = ms_sources.block_rows_for(chunk_rows, ROW_BYTES)
    covered = np.zeros(ROWS, dtype=int)
    for _, start, stop in record_reads:
        assert 0 < stop - start <= block_rows
        assert start % 20 == 0 or start % chunk_rows == 0
        assert stop % 20 == 0 or stop == ROWS or stop % chunk_rows == 0
        covered[start:stop] += 1
    assert covered.tolist() == [1] * ROWS
    if small_blocks and chunk_rows < 20:
        assert len(record_reads) > len(ds.shards)


FILTERS: dict[str, dict[str, Any]] = {
    "gzip-1": {"compression": "gzip", "compression_opts": 1},
    "gzip-4": {"compression": "gzip", "compression_opts": 4},
    "gzip-9": {"compression": "gzip", "compression_opts": 9},
    "lzf": {"compression": "lzf"},
    "shuffle-gzip": {"compression": "gzip", "shuffle": True},
    "shuffle-lzf": {"compression": "lzf", "shuffle": True},
    "fletcher32": {"fletcher32": True},
    "shuffle-gzip-fletcher32": {"compression": "gzip", "shuffle": True, "fletcher32": True},
    "scaleoffset-int": {"scaleoffset": 0},
}


@pytest.mark.parametrize("options", list(FILTERS.values()), ids=list(FILTERS))
@pytest.mark.parametrize("dtype", ["<i4", ">f8"])
def test_filters(tmp_path: Path, options: dict[str, Any], dtype: str) -> None:
    if "scaleoffset" in options and dtype != "<i4":
        options = {**options, "scaleoffset": None}  # lossless scale-offset is for integers
    src = tmp_path / "src.h5"
    data = sample_values(dtype, (ROWS, 3, 5), seed=1)
    if np.dtype(dtype).kind == "i":
        data = (data % 1000).astype(dtype)  # compressible, and in scale-offset range
    with h5py.File(src, "w") as handle:
        handle.create_dataset("grp/x", data=data, chunks=(9, 3, 5), **options)
        handle.create_dataset("grp/y", data=np.arange(ROWS, dtype="<u2"), chunks=(16,), **options)
    row_bytes = 15 * np.dtype(dtype).itemsize + 2
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes_for(30, row_bytes))
    assert_matches(ds, src, {"grp_x": "/grp/x", "grp_y": "/grp/y"})
    assert len(ds.shards) == 4


# -- dtypes and ranks --------------------------------------------------------------------------

SINGLE_BYTE = ["?", "i1", "u1"]
MULTI_BYTE = ["i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"]
DTYPES = SINGLE_BYTE + [order + code for code in MULTI_BYTE for order in "<>"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(tmp_path: Path, dtype: str) -> None:
    src = tmp_path / "src.h5"
    data = sample_values(dtype, (37, 3))
    with h5py.File(src, "w") as handle:
        handle.create_dataset("chunked", data=data, chunks=(4, 2))
        handle.create_dataset("plain", data=data[:, 0].copy())
        assert handle["chunked"].dtype == np.dtype(dtype)
    row_bytes = np.dtype(dtype).itemsize * 4
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes_for(10, row_bytes))
    assert_matches(ds, src, {"chunked": "/chunked", "plain": "/plain"})
    assert ds["chunked"].dtype == np.dtype(dtype).newbyteorder("<")
    assert len(ds.shards) == 4
    recorded = ds.attrs[SOURCE_ATTR]["fields"]["chunked"]
    assert recorded["dtype"] == np.dtype(dtype).newbyteorder("<").str


@pytest.mark.parametrize("ndim", [1, 2, 3, 4, 5])
def test_field_ranks(tmp_path: Path, ndim: int) -> None:
    shape = (23, 2, 3, 2, 3)[:ndim]
    src = tmp_path / "src.h5"
    data = sample_values(">i2", shape)
    with h5py.File(src, "w") as handle:
        handle.create_dataset("a/b", data=data, chunks=(5, *(max(1, d - 1) for d in shape[1:])))
        handle.create_dataset("c", data=data.astype("<f8"))
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes_for(6, 10 * data[0].size))
    assert_matches(ds, src, {"a_b": "/a/b", "c": "/c"})
    assert ds["a_b"].shape == shape
    assert ds.fields["c"].shape == shape[1:]
    assert len(ds.shards) == 4


def test_zero_rows(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle.create_dataset("x", shape=(0, 3), dtype="<f4", chunks=(4, 3), maxshape=(None, 3))
    ds = ms.from_hdf5(src, tmp_path / "out")
    assert len(ds) == 0
    assert ds["x"].shape == (0, 3)
    assert len(ds.shards) == 0


# -- field selection ---------------------------------------------------------------------------


def write_nested(src: Path) -> None:
    with h5py.File(src, "w") as handle:
        handle.create_dataset("train/images", data=sample_values("<f4", (50, 4, 4)), chunks=True)
        handle.create_dataset("train/labels", data=np.arange(50) % 10)
        handle.create_dataset("deep/a/b/c", data=sample_values(">u2", (50,)))
        handle.create_dataset("test/images", data=sample_values("<f4", (20, 4, 4)))
        handle.create_dataset("test/labels", data=np.arange(20) % 10)
        handle.create_dataset("meta/names", data=np.array([b"name"] * 50))
        handle.create_dataset("meta/count", data=50)
        handle["train/images"].attrs["units"] = "pixels"


NESTED_FIELDS = {
    "train_images": "/train/images",
    "train_labels": "/train/labels",
    "deep_a_b_c": "/deep/a/b/c",
}


def test_auto_selection_takes_the_majority_length_and_names_fields_by_path(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src.h5"
    write_nested(src)
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes_for(16, 64 + 8 + 2))
    assert_matches(ds, src, NESTED_FIELDS)
    record = ds.attrs[SOURCE_ATTR]
    assert record["format"] == "hdf5"
    assert record["location"] == str(src)
    assert record["rows"] == 50
    assert {name: info["origin"] for name, info in record["fields"].items()} == NESTED_FIELDS
    assert record["fields"]["train_images"]["attrs"] == {"units": "pixels"}
    assert record["fields"]["train_images"]["shape"] == [4, 4]
    assert record["fields"]["deep_a_b_c"]["dtype"] == "<u2"
    skipped = ms_hdf5.plan(src, None).skipped
    assert set(skipped) == {"/test/images", "/test/labels", "/meta/names", "/meta/count"}
    assert "20 rows" in skipped["/test/images"]


def test_auto_selection_prints_its_choice_when_progress_is_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src.h5"
    write_nested(src)
    ms.from_hdf5(src, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "/train/images -> field 'train_images'" in err
    assert "/meta/names: not taken" in err


def test_auto_selection_prefers_the_longer_length_on_a_tie(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        for name, rows in [("a", 10), ("b", 10), ("c", 12), ("d", 12)]:
            handle[name] = np.arange(rows)
    ds = ms.from_hdf5(src, tmp_path / "out")
    assert_matches(ds, src, {"c": "/c", "d": "/d"})


def test_auto_selection_refuses_two_arrays_with_one_name(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle["a_b"] = np.arange(5)
        handle["a/b"] = np.arange(5)
    with pytest.raises(SourceError, match="a_b") as info:
        ms.from_hdf5(src, tmp_path / "out")
    assert "/a/b" in str(info.value)
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("images", ["train/images", "/train/images", "train/images/"])
def test_explicit_fields_with_or_without_a_leading_slash(tmp_path: Path, images: str) -> None:
    src = tmp_path / "src.h5"
    write_nested(src)
    ds = ms.from_hdf5(src, tmp_path / "out", fields={"x": images, "y": "/train/labels"})
    assert_matches(ds, src, {"x": "/train/images", "y": "/train/labels"})
    assert ds.attrs[SOURCE_ATTR]["fields"]["x"]["origin"] == "/train/images"


@pytest.mark.parametrize(
    ("link", "requested"),
    [("soft", "/alias"), ("hard", "/alias"), ("hard", "/x")],
    ids=["soft-link", "hard-link", "hard-linked-original"],
)
def test_explicit_fields_may_name_any_path_of_a_dataset(
    tmp_path: Path, link: str, requested: str
) -> None:
    """Every path h5py opens as the dataset names it, links included."""
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle["x"] = np.arange(8)
        handle["alias"] = h5py.SoftLink("/x") if link == "soft" else handle["x"]
        assert isinstance(handle[requested], h5py.Dataset)
    ds = ms.from_hdf5(src, tmp_path / "out", fields={"v": requested})
    assert_matches(ds, src, {"v": "/x"})


def _compound(handle: Any) -> None:
    handle["bad"] = np.zeros(10, dtype=[("a", "<i4"), ("b", "<f8")])


def _fixed_string(handle: Any) -> None:
    handle["bad"] = np.array([b"abc"] * 10)


def _vlen_string(handle: Any) -> None:
    handle.create_dataset("bad", data=["text"] * 10, dtype=h5py.string_dtype())


def _vlen_int_2d(handle: Any) -> None:
    """Variable-length rows in two dimensions: a ragged field has one."""
    bad = handle.create_dataset("bad", shape=(10, 2), dtype=h5py.vlen_dtype(np.int32))
    bad[0, 0] = np.arange(3, dtype=np.int32)


def _vlen_compound(handle: Any) -> None:
    handle.create_dataset("bad", shape=(10,), dtype=h5py.vlen_dtype(np.dtype("i4,f8")))


def _object_refs(handle: Any) -> None:
    bad = handle.create_dataset("bad", shape=(10,), dtype=h5py.ref_dtype)
    bad[0] = handle["ok"].ref


def _region_refs(handle: Any) -> None:
    bad = handle.create_dataset("bad", shape=(10,), dtype=h5py.regionref_dtype)
    bad[0] = handle["ok"].regionref[2:4]


def _scalar(handle: Any) -> None:
    handle["bad"] = 5.0


def _empty(handle: Any) -> None:
    handle["bad"] = h5py.Empty("<f4")


def _zero_size_samples(handle: Any) -> None:
    handle.create_dataset("bad", shape=(10, 3, 0), dtype="<f4")


def _array_dtype(handle: Any) -> None:
    handle.create_dataset("bad", shape=(10,), dtype=np.dtype(("<f4", (3,))))


def _opaque(handle: Any) -> None:
    handle["bad"] = np.zeros(10, dtype="V4")


REFUSED: dict[str, Callable[[Any], None]] = {
    "compound": _compound,
    "fixed-length-string": _fixed_string,
    "variable-length-string": _vlen_string,
    "vlen-int-2d": _vlen_int_2d,
    "vlen-compound": _vlen_compound,
    "object-references": _object_refs,
    "region-references": _region_refs,
    "scalar": _scalar,
    "empty": _empty,
    "zero-size-samples": _zero_size_samples,
    "array-dtype": _array_dtype,
    "opaque": _opaque,
}


@pytest.fixture(params=list(REFUSED))
def refused_source(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A file holding ``/ok`` (10 int rows) and ``/bad``, of a kind memshard refuses."""
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle["ok"] = np.arange(10)
        REFUSED[request.param](handle)
    return src


@pytest.mark.parametrize("fields", [{"v": "/bad"}, {"ok": "/ok", "v": "bad"}])
def test_refused_when_requested(refused_source: Path, fields: dict[str, str]) -> None:
    dst = refused_source.parent / "out"
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_hdf5(refused_source, dst, fields=fields)
    message = str(info.value)
    assert "/bad" in message
    assert str(refused_source) in message
    assert SUPPORTED_KINDS in message
    assert_nothing_left(dst)


def test_refused_arrays_are_skipped_by_auto_selection(refused_source: Path) -> None:
    ds = ms.from_hdf5(refused_source, refused_source.parent / "out")
    assert_matches(ds, refused_source, {"ok": "/ok"})
    assert "/bad" in ms_hdf5.plan(refused_source, None).skipped


def test_nothing_numeric(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle["names"] = np.array([b"a", b"b"])
        handle["scalar"] = 3
        handle.attrs["note"] = "no data"
    with pytest.raises(SourceError, match="nothing to convert") as info:
        ms.from_hdf5(src, tmp_path / "out")
    assert "/names" in str(info.value)
    assert_nothing_left(tmp_path / "out")


def test_file_without_datasets(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle.create_group("empty/group")
    with pytest.raises(SourceError, match="nothing to convert"):
        ms.from_hdf5(src, tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def _not_hdf5(tmp_path: Path) -> Path:
    path = tmp_path / "text.h5"
    path.write_bytes(b"this is not an HDF5 file\n" * 100)
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.h5"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "make_src",
    [lambda tmp_path: tmp_path / "missing.h5", _not_hdf5, _directory],
    ids=["missing", "not-hdf5", "directory"],
)
def test_unreadable_source_names_the_path(tmp_path: Path, make_src: Callable[[Path], Path]) -> None:
    src = make_src(tmp_path)
    with pytest.raises(SourceError) as info:
        ms.from_hdf5(src, tmp_path / "out")
    assert str(src) in str(info.value)
    assert not isinstance(info.value, UnsupportedSourceError)
    assert_nothing_left(tmp_path / "out")


def test_missing_dataset_path(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_nested(src)
    with pytest.raises(SourceError, match="/train/missing") as info:
        ms.from_hdf5(src, tmp_path / "out", fields={"x": "/train/images", "y": "/train/missing"})
    assert str(src) in str(info.value)
    assert "'y'" in str(info.value)
    assert_nothing_left(tmp_path / "out")


def test_fields_with_different_lengths(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_nested(src)
    with pytest.raises(SourceError, match="different row counts"):
        ms.from_hdf5(src, tmp_path / "out", fields={"x": "/train/images", "y": "/test/labels"})
    assert_nothing_left(tmp_path / "out")


def test_empty_field_mapping(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_nested(src)
    with pytest.raises(SourceError, match="non-empty"):
        ms.from_hdf5(src, tmp_path / "out", fields={})
    assert_nothing_left(tmp_path / "out")


# -- attributes --------------------------------------------------------------------------------


def test_root_attributes_that_json_represents_are_copied(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle["x"] = np.arange(4)
        handle["x"].attrs["scale"] = 0.25
        handle["x"].attrs["bad"] = np.nan
        attrs = handle.attrs
        attrs["text"] = "héllo"
        attrs["raw"] = np.bytes_(b"bytes")
        attrs["int"] = np.int64(-(2**62))
        attrs["big"] = np.uint64(2**64 - 1)
        attrs["float"] = np.float32(0.5)
        attrs["flag"] = True
        attrs["ints"] = np.arange(3, dtype=">i2")
        attrs["matrix"] = np.arange(6, dtype="<f8").reshape(2, 3)
        attrs["strings"] = np.array(["a", "bc"], dtype=h5py.string_dtype())
        attrs["fixed"] = np.array([b"x", b"yz"])
        attrs["nan"] = np.nan
        attrs["inf"] = -np.inf
        attrs["nan_array"] = np.array([1.0, np.nan])
        attrs["complex"] = np.complex64(1 + 2j)
        attrs["empty"] = h5py.Empty("f4")
        attrs["not_utf8"] = np.bytes_(b"\xff\xfe")
        attrs["too_long"] = np.zeros(ms_sources.MAX_ATTR_ELEMENTS + 1)
    ds = ms.from_hdf5(src, tmp_path / "out", attrs={"user": {"k": [1, 2]}, "int": 7})
    expected = {
        "text": "héllo",
        "raw": "bytes",
        "int": 7,  # the caller's attrs win
        "big": 2**64 - 1,
        "float": 0.5,
        "flag": True,
        "ints": [0, 1, 2],
        "matrix": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
        "strings": ["a", "bc"],
        "fixed": ["x", "yz"],
        "user": {"k": [1, 2]},
    }
    assert {k: v for k, v in ds.attrs.items() if k != SOURCE_ATTR} == expected
    assert ds.attrs[SOURCE_ATTR]["fields"]["x"]["attrs"] == {"scale": 0.25}
    skipped = ms_hdf5.plan(src, None).skipped
    left_out = {"nan", "inf", "nan_array", "complex", "empty", "not_utf8", "too_long"}
    assert {key.rsplit(":", 1)[1] for key in skipped if ":" in key} == left_out


# -- labels ------------------------------------------------------------------------------------


def write_labelled(src: Path, labels: np.ndarray, attr: Any = None, name: str = "labels") -> None:
    with h5py.File(src, "w") as handle:
        handle["x"] = sample_values("<f4", (len(labels), 3))
        y = handle.create_dataset("y", data=labels, chunks=(7,))
        if attr is not None:
            y.attrs[name] = attr
        handle["score"] = labels.astype("<f8")
        handle["score"].attrs["labels"] = np.array(["not", "taken"], dtype=h5py.string_dtype())


def test_labels_option(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_labelled(src, np.arange(40) % 3)
    ds = ms.from_hdf5(src, tmp_path / "out", labels={"y": ["a", "b", "c"]})
    assert ds.labels == {"y": ("a", "b", "c")}
    assert ds["y"].labels == ("a", "b", "c")
    assert_matches(ds, src, {"x": "/x", "y": "/y", "score": "/score"})


@pytest.mark.parametrize(
    "attr",
    [
        np.array(["cat", "dog", "bird"], dtype=h5py.string_dtype()),
        np.array([b"cat", b"dog", b"bird"]),
        ["cat", "dog", "bird"],
    ],
    ids=["vlen-strings", "fixed-strings", "list"],
)
def test_labels_attribute_becomes_the_vocabulary(tmp_path: Path, attr: Any) -> None:
    src = tmp_path / "src.h5"
    write_labelled(src, (np.arange(40) % 3).astype(">i2"), attr)
    ds = ms.from_hdf5(src, tmp_path / "out")
    assert ds.labels == {"y": ("cat", "dog", "bird")}  # not the float field's attribute
    assert_matches(ds, src, {"x": "/x", "y": "/y", "score": "/score"})


def test_label_attr_name_and_turning_it_off(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_labelled(src, np.arange(40) % 2, ["no", "yes"], name="classes")
    assert ms.from_hdf5(src, tmp_path / "a").labels == {}
    assert ms.from_hdf5(src, tmp_path / "b", label_attr="classes").labels == {"y": ("no", "yes")}
    write_labelled(src, np.arange(40) % 2, ["no", "yes"])
    assert ms.from_hdf5(src, tmp_path / "c", label_attr=None).labels == {}
    explicit = ms.from_hdf5(src, tmp_path / "d", labels={"y": ["n", "y", "maybe"]})
    assert explicit.labels == {"y": ("n", "y", "maybe")}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bad", [3, -1])
def test_label_out_of_range(tmp_path: Path, workers: int, bad: int) -> None:
    src = tmp_path / "src.h5"
    labels = np.arange(60) % 3
    labels[45] = bad
    write_labelled(src, labels, ["a", "b", "c"])
    dst = tmp_path / "out"
    with pytest.raises(LabelError, match=f"row 45 holds label {bad}"):
        ms.from_hdf5(src, dst, workers=workers, shard_bytes=shard_bytes_for(10, 12 + 8 + 8))
    assert_nothing_left(dst)  # no resume could complete it: the staging dataset is deleted


def test_resume_with_other_labels_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src.h5"
    write_labelled(src, np.arange(60) % 3)
    dst = tmp_path / "out"
    shard_bytes = shard_bytes_for(10, 12 + 8 + 8)
    original = ms_hdf5.Hdf5Reader.read

    def read(self: Any, name: str, start: int, stop: int, out: np.ndarray) -> None:
        if stop > 30:
            raise KeyboardInterrupt
        original(self, name, start, stop, out)

    monkeypatch.setattr(ms_hdf5.Hdf5Reader, "read", read)
    with pytest.raises(KeyboardInterrupt):
        ms.from_hdf5(src, dst, labels={"y": ["a", "b", "c"]}, shard_bytes=shard_bytes)
    monkeypatch.undo()
    assert len(ms.open(staging_of(dst))) == 30
    with pytest.raises(ConversionStateError, match="label"):
        ms.from_hdf5(src, dst, labels={"y": ["a", "b", "c", "d"]}, resume=True)
    with pytest.raises(ConversionStateError, match="label"):
        ms.from_hdf5(src, dst, resume=True)
    ds = ms.from_hdf5(src, dst, labels={"y": ["a", "b", "c"]}, resume=True)
    assert ds.labels == {"y": ("a", "b", "c")}
    assert_matches(ds, src, {"x": "/x", "y": "/y", "score": "/score"})


# -- shards and workers ------------------------------------------------------------------------


def write_multi(src: Path, rows: int = 3000) -> dict[str, str]:
    with h5py.File(src, "w") as handle:
        handle.create_dataset(
            "img", data=sample_values(">f4", (rows, 5, 3)), chunks=(min(64, rows), 5, 3)
        )
        handle.create_dataset(
            "lbl", data=np.arange(rows) % 7, chunks=(min(500, rows),), compression="gzip"
        )
        handle.create_dataset("g/w", data=sample_values("<c8", (rows, 2)))
    return {"img": "/img", "lbl": "/lbl", "g_w": "/g/w"}


def test_multiple_shards_workers_one_and_two_are_identical(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields = write_multi(src)
    one = ms.from_hdf5(src, tmp_path / "one", shard_bytes=16 << 10, workers=1)
    two = ms.from_hdf5(src, tmp_path / "two", shard_bytes=16 << 10, workers=2)
    for ds in (one, two):
        assert_matches(ds, src, fields)
        assert_contiguous_shards(ds)
        assert len(ds.shards) >= 5
    assert shard_records(one) == shard_records(two)
    assert one.attrs == two.attrs
    assert not os.path.lexists(staging_of(tmp_path / "two"))


def test_more_workers_than_shards(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields = write_multi(src, rows=50)
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=1 << 20, workers=8)
    assert_matches(ds, src, fields)
    assert len(ds.shards) == 1


# -- existing destinations ---------------------------------------------------------------------


def test_existing_destination_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src.h5"
    fields = write_multi(src, rows=100)
    dst = tmp_path / "out"
    ms.from_numpy({"z": np.arange(5)}, dst)
    before = manifest_of(dst)

    def no_reading(*args: Any) -> None:
        raise AssertionError("the source was read")

    monkeypatch.setattr(ms_hdf5.Hdf5Reader, "read", no_reading)
    with pytest.raises(DatasetExistsError, match="overwrite"):
        ms.from_hdf5(src, dst)
    monkeypatch.undo()
    assert not os.path.lexists(staging_of(dst))
    assert manifest_of(dst) == before
    np.testing.assert_array_equal(ms.open(dst)["z"][:], np.arange(5))
    replaced = ms.from_hdf5(src, dst, overwrite=True)
    assert_matches(replaced, src, fields)
    assert sorted(os.listdir(tmp_path)) == ["out", "src.h5"]


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_overwrite_never_replaces_something_else(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src.h5"
    write_multi(src, rows=100)
    dst = tmp_path / "out"
    if kind == "file":
        dst.write_text("keep me")
    else:
        dst.mkdir()
        (dst / "data.txt").write_text("keep me")
    with pytest.raises(DatasetExistsError, match="not a memshard dataset"):
        ms.from_hdf5(src, dst, overwrite=True)
    assert (dst if kind == "file" else dst / "data.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["out", "src.h5"]  # no staging left to trip over


# -- export and round trip ---------------------------------------------------------------------


def labelled_dataset(path: Path) -> ms.Dataset:
    rng = np.random.default_rng(5)
    columns = {
        "x": sample_values("<f2", (57, 3, 2)),
        "y": rng.integers(0, 4, 57).astype("<u1"),
        "flag": rng.random(57) < 0.3,
        "z": sample_values("<c16", (57,)),
    }
    writer = ms.create(
        path,
        fields={name: (array.dtype, array.shape[1:]) for name, array in columns.items()},
        shard_bytes=500,
        labels={"y": ["zero", "one", "two", "three"]},
        attrs={"title": "test", "sizes": [1, 2], "nested": {"a": {"b": [True, None]}}},
    )
    writer.extend(columns)
    writer.close()
    return ms.open(path)


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_round_trip_through_hdf5(tmp_path: Path, compression: str | None) -> None:
    original = labelled_dataset(tmp_path / "orig")
    exported = tmp_path / "export.h5"
    ms.to_hdf5(original, exported, compression=compression)
    with h5py.File(exported, "r") as handle:
        assert sorted(handle) == sorted(original.fields)
        for name in original.fields:
            assert handle[name].compression == compression
            np.testing.assert_array_equal(handle[name][()], original[name][:])
        assert list(handle["y"].attrs["labels"]) == ["zero", "one", "two", "three"]
    back = ms.from_hdf5(exported, tmp_path / "back")
    assert back.labels == original.labels
    for name in original.fields:
        assert_same_values(back[name][:], original[name][:])
    user = {k: v for k, v in back.attrs.items() if k != SOURCE_ATTR}
    assert user == {k: v for k, v in original.attrs.items() if k != SOURCE_ATTR}
    assert back.attrs[SOURCE_ATTR]["location"] == str(exported)


def test_round_trip_of_a_conversion_and_a_field_subset(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields = write_multi(src, rows=300)
    converted = ms.from_hdf5(src, tmp_path / "ds", shard_bytes=4096)
    ms.to_hdf5(tmp_path / "ds", tmp_path / "sub.h5", fields=["img", "g_w"])
    back = ms.from_hdf5(tmp_path / "sub.h5", tmp_path / "back")
    assert set(back.fields) == {"img", "g_w"}
    for name in ("img", "g_w"):
        assert_same_values(back[name][:], h5_read(src, fields[name]))
    assert back.attrs[SOURCE_ATTR]["location"] == str(tmp_path / "sub.h5")
    assert converted.attrs[SOURCE_ATTR]["location"] == str(src)


def test_round_trip_of_an_empty_dataset(tmp_path: Path) -> None:
    ms.create(tmp_path / "empty", fields={"x": ("<i4", (2,))}).close()
    ms.to_hdf5(tmp_path / "empty", tmp_path / "empty.h5")
    back = ms.from_hdf5(tmp_path / "empty.h5", tmp_path / "back")
    assert len(back) == 0
    assert back["x"].shape == (0, 2)


def test_to_hdf5_refuses_an_existing_file_and_unknown_fields(tmp_path: Path) -> None:
    original = labelled_dataset(tmp_path / "orig")
    target = tmp_path / "export.h5"
    target.write_bytes(b"precious")
    with pytest.raises(DatasetExistsError, match="overwrite"):
        ms.to_hdf5(original, target)
    assert target.read_bytes() == b"precious"
    with pytest.raises(FieldNotFoundError, match="nope"):
        ms.to_hdf5(original, target, fields=["x", "nope"], overwrite=True)
    assert target.read_bytes() == b"precious"
    ms.to_hdf5(original, target, overwrite=True)
    np.testing.assert_array_equal(h5_read(target, "x"), original["x"][:])
    assert sorted(os.listdir(tmp_path)) == ["export.h5", "orig"]


# -- interruption and resume -------------------------------------------------------------------

RESUME_ROWS = 1000


def write_resumable(src: Path) -> tuple[dict[str, str], int]:
    """A source and the ``shard_bytes`` that gives it 100-row shards."""
    with h5py.File(src, "w") as handle:
        handle.create_dataset("x", data=sample_values(">f4", (RESUME_ROWS, 6)), chunks=(30, 6))
        handle.create_dataset("y", data=np.arange(RESUME_ROWS, dtype="<i8"), chunks=(100,))
    return {"x": "/x", "y": "/y"}, shard_bytes_for(100, 6 * 4 + 8)


def assert_staged_prefix(src: Path, dst: Path, fields: dict[str, str]) -> int:
    """The staging directory is a dataset holding whole shards of the source's first rows."""
    assert not os.path.lexists(dst)
    staged = ms.open(staging_of(dst))
    rows = len(staged)
    assert rows % 100 == 0
    assert rows < RESUME_ROWS
    assert_contiguous_shards(staged)
    assert all(shard.rows == 100 for shard in staged.shards)
    for name, path in fields.items():
        assert_same_values(staged[name][:], h5_read(src, path)[:rows])
    return rows


def resume_and_check(src: Path, dst: Path, fields: dict[str, str], **options: Any) -> None:
    with pytest.raises(ConversionStateError, match="resume=True"):
        ms.from_hdf5(src, dst, **options)
    ds = ms.from_hdf5(src, dst, resume=True, **options)
    assert_matches(ds, src, fields)
    assert_contiguous_shards(ds)
    assert not os.path.lexists(staging_of(dst))
    assert sorted(os.listdir(dst.parent)) == sorted([src.name, dst.name])
    assert_no_stray_parts(ds)


def assert_no_stray_parts(ds: ms.Dataset) -> None:
    """Every shard file is named by the manifest; no part record or lock is left."""
    named = {os.path.basename(file.path) for shard in ds.shards for file in shard.files.values()}
    assert set(os.listdir(os.path.join(ds.path, "shards"))) == named
    assert os.listdir(os.path.join(ds.path, "parts")) == []


def uncommitted_parts(staging: Path) -> set[str]:
    """Ids of the parts that left files in ``staging`` (shard files its manifest does not name,
    part records, part locks, and the ``.ID.lock.tmp`` or ``.ID.json.tmp`` of a writer killed
    while creating its lock or publishing its record)."""
    named = {
        os.path.basename(file.path)
        for shard in ms.open(staging).shards
        for file in shard.files.values()
    }
    files = set(os.listdir(staging / "shards")) - named
    entries = os.listdir(staging / "parts")
    parts = {name.lstrip(".").split(".")[0] for name in entries}
    return {name.rsplit("-", 1)[0] for name in files} | parts


def test_killed_conversion_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    code = (
        "from tests.convert_helpers import main; "
        f"main({str(src)!r}, {str(dst)!r}, 300, {shard_bytes}, 1)"
    )
    child = run_from_repo([sys.executable, "-c", code])
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "FINISHED" not in child.stdout
    assert assert_staged_prefix(src, dst, fields) == 300
    resume_and_check(src, dst, fields, shard_bytes=shard_bytes)


def test_ctrl_c_stops_a_conversion_with_workers_then_resume_completes(tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal sends it: the converter stops and
    kills its workers (which ignore SIGINT themselves), keeping a prefix of whole shards."""
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    code = (
        "from tests.convert_helpers import main; "
        f"main({str(src)!r}, {str(dst)!r}, 300, {shard_bytes}, 2, 'ctrl-c')"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own process group: the SIGINT stays there
        check=False,
    )
    assert child.returncode == 130, child.stderr
    assert "INTERRUPTED" in child.stdout
    assert "Traceback" not in child.stderr
    assert assert_staged_prefix(src, dst, fields) % 100 == 0
    resume_and_check(src, dst, fields, shard_bytes=shard_bytes, workers=2)


def test_a_ctrl_c_while_workers_start_does_not_reach_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT sent to each worker the moment it is started (its interpreter is still
    starting, long before it can ignore SIGINT itself) neither kills it nor makes it print a
    traceback: the conversion completes."""
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    start_worker = ms_workers._start_worker
    interrupted: list[int] = []

    def start_and_interrupt() -> Any:
        process, connection = start_worker()
        os.kill(process.pid, signal.SIGINT)
        interrupted.append(process.pid)
        return process, connection

    monkeypatch.setattr(ms_workers, "_start_worker", start_and_interrupt)
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes, workers=2)
    assert len(interrupted) == 2
    assert_matches(ds, src, fields)
    assert_no_stray_parts(ds)


@pytest.mark.parametrize("resume_workers", [1, 2])
def test_interrupted_conversion_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume_workers: int
) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    original = ms_hdf5.Hdf5Reader.read

    def read(self: Any, name: str, start: int, stop: int, out: np.ndarray) -> None:
        if name == "y" and stop > 450:
            raise KeyboardInterrupt
        original(self, name, start, stop, out)

    monkeypatch.setattr(ms_hdf5.Hdf5Reader, "read", read)
    with pytest.raises(KeyboardInterrupt):
        ms.from_hdf5(src, dst, shard_bytes=shard_bytes)
    monkeypatch.undo()
    assert assert_staged_prefix(src, dst, fields) == 400
    resume_and_check(src, dst, fields, shard_bytes=shard_bytes, workers=resume_workers)


def test_resume_without_anything_staged_converts_from_scratch(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=shard_bytes, resume=True)
    assert_matches(ds, src, fields)


def test_resume_after_the_last_shard_was_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted between the last commit and the rename: a resume only has to rename.

    Rows are not a multiple of the shard size, so the last committed shard is short."""
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as handle:
        handle["x"] = sample_values("<i4", (250, 3))
    dst = tmp_path / "out"

    def interrupted(appender: ms_appender.Appender, root: str, *, overwrite: bool) -> None:
        appender.close()  # committed and sealed, then interrupted before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(ms_appender.Appender, "close_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ms.from_hdf5(src, dst, shard_bytes=shard_bytes_for(100, 12))
    monkeypatch.undo()
    assert len(ms.open(staging_of(dst))) == 250
    ds = ms.from_hdf5(src, dst, shard_bytes=shard_bytes_for(100, 12), resume=True)
    assert_matches(ds, src, {"x": "/x"})
    assert not os.path.lexists(staging_of(dst))


#: ``memshard ARGS`` in a process that SIGKILLs itself right after the final rename.
KILLED_AFTER_RENAME = """
import os, signal, sys
import memshard.appender
from memshard.cli import main
close_into = memshard.appender.Appender.close_into
def rename_then_die(*args, **kwargs):
    close_into(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
memshard.appender.Appender.close_into = rename_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_resume_repeated_after_the_final_rename_returns_the_finished_dataset(
    tmp_path: Path,
) -> None:
    """Killed right after the rename: the same ``--resume`` command, repeated (CLI or API),
    finds the dataset finished, checks that it is this conversion and returns it as it is."""
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    command = ["convert", str(src), str(dst), "--shard-size", str(shard_bytes), "--workers", "2"]
    child = run_from_repo([sys.executable, "-c", KILLED_AFTER_RENAME, *command, "--resume"])
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not os.path.lexists(staging_of(dst))
    finished = (dst / "manifest.json").read_bytes()
    for _ in range(2):
        again = run_from_repo([sys.executable, "-m", "memshard", *command, "--resume", "-q"])
        assert again.returncode == 0, again.stderr
        assert again.stderr == ""
    ds = ms.from_hdf5(src, dst, shard_bytes=shard_bytes, resume=True)
    assert (dst / "manifest.json").read_bytes() == finished
    assert_matches(ds, src, fields)
    assert_contiguous_shards(ds)
    assert_no_stray_parts(ds)
    assert sorted(os.listdir(tmp_path)) == ["out", "src.h5"]
    refused = run_from_repo([sys.executable, "-m", "memshard", *command[:3], "-q"])
    assert refused.returncode == 2, "without --resume an existing DST is still refused"
    assert "already exists" in refused.stderr


def test_resume_refuses_a_finished_dataset_of_another_conversion(tmp_path: Path) -> None:
    src, other = tmp_path / "src.h5", tmp_path / "other.h5"
    fields, shard_bytes = write_resumable(src)
    write_resumable(other)
    dst = tmp_path / "out"
    ms.from_hdf5(src, dst, shard_bytes=shard_bytes)
    finished = (dst / "manifest.json").read_bytes()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"src": other}, "another source location"),
        ({"fields": {"x": "/x"}}, r"has the fields \['x', 'y'\], this conversion \['x'\]"),
        ({"fields": {"x": "/y", "y": "/x"}}, "took field 'x' with another origin"),
        ({"labels": {"y": ["a", "b"]}}, "another label vocabulary for field 'y'"),
    ]
    for options, says in cases:
        arguments = {"src": src, "dst": dst, "resume": True, **options}
        with pytest.raises(DatasetExistsError, match=f"not this conversion, finished: it .*{says}"):
            ms.from_hdf5(**arguments)
    assert (dst / "manifest.json").read_bytes() == finished
    rewrite_same_size(src)
    with pytest.raises(DatasetExistsError, match="another source identity"):
        ms.from_hdf5(src, dst, resume=True)
    ds = ms.from_hdf5(other, dst, shard_bytes=shard_bytes, resume=True, overwrite=True)
    assert_matches(ds, other, fields)
    with ms.append(dst) as appender:  # rows added after the conversion: not its result any more
        appender.append({"x": np.zeros(6, "<f4"), "y": 0})
    with pytest.raises(DatasetExistsError, match=f"holds {RESUME_ROWS + 1} rows, the source"):
        ms.from_hdf5(other, dst, resume=True)
    plain = tmp_path / "plain"
    ms.create(plain, fields={"x": ("<f4", (6,)), "y": ("<i8", ())}).close()
    with pytest.raises(DatasetExistsError, match=r"records no memshard\.source"):
        ms.from_hdf5(src, plain, resume=True)


def interrupt_at(src: Path, dst: Path, shard_bytes: int, row: int) -> None:
    plan = with_stop(ms_hdf5.plan(src, None), row, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=shard_bytes)


def rewrite_same_size(src: Path) -> None:
    """New values, same file size; the modification time is moved on explicitly so that a
    coarse file-system clock cannot hide the change."""
    before = os.stat(src)
    with h5py.File(src, "r+") as handle:
        handle["y"][0] = 12345
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert os.stat(src).st_size == before.st_size


def rewrite_bigger(src: Path) -> None:
    with h5py.File(src, "a") as handle:
        handle["extra"] = np.arange(RESUME_ROWS)


@pytest.mark.parametrize("rewrite", [rewrite_same_size, rewrite_bigger])
def test_resume_refuses_a_changed_source(tmp_path: Path, rewrite: Callable[[Path], None]) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    interrupt_at(src, dst, shard_bytes, 500)
    manifest_before = manifest_of(staging_of(dst))
    rewrite(src)
    with pytest.raises(ConversionStateError, match="identity"):
        ms.from_hdf5(src, dst, shard_bytes=shard_bytes, resume=True, fields=fields)
    assert manifest_of(staging_of(dst)) == manifest_before
    assert not os.path.lexists(dst)


def test_resume_refuses_another_source_or_other_fields(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    interrupt_at(src, dst, shard_bytes, 500)
    other = tmp_path / "other.h5"
    write_resumable(other)
    with pytest.raises(ConversionStateError, match="location"):
        ms.from_hdf5(other, dst, shard_bytes=shard_bytes, resume=True)
    with pytest.raises(ConversionStateError, match="fields"):
        ms.from_hdf5(src, dst, shard_bytes=shard_bytes, resume=True, fields={"x": "/x"})
    with pytest.raises(ConversionStateError, match="fields"):
        ms.from_hdf5(src, dst, resume=True, fields={"x": "/x", "z": "/y"})
    assert len(ms.open(staging_of(dst))) == 500
    ds = ms.from_hdf5(src, dst, shard_bytes=shard_bytes, resume=True)
    assert_matches(ds, src, fields)


def test_resume_refuses_a_staging_directory_that_is_no_conversion(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    _, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    ms.create(staging_of(dst), fields={"x": ("<f4", (6,)), "y": ("<i8", ())}).close()
    with pytest.raises(ConversionStateError, match="not a conversion"):
        ms.from_hdf5(src, dst, shard_bytes=shard_bytes, resume=True)
    assert not os.path.lexists(dst)


def test_resume_while_the_conversion_still_runs(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    interrupt_at(src, dst, shard_bytes, 500)
    running = ms.append(staging_of(dst))  # holds the write lock, as a running conversion does
    try:
        with pytest.raises(ms.errors.DatasetLockedError):
            ms.from_hdf5(src, dst, resume=True)
    finally:
        running.close()
    assert len(ms.open(staging_of(dst))) == 500
    assert_matches(ms.from_hdf5(src, dst, resume=True), src, fields)


def test_worker_error_keeps_a_prefix_then_resume_with_two_workers(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    plan = with_stop(ms_hdf5.plan(src, None), 550, "error")
    with pytest.raises(OSError, match="test read error at row 550"):
        convert(plan, dst, shard_bytes=shard_bytes, workers=2)
    assert assert_staged_prefix(src, dst, fields) <= 500
    resume_and_check(src, dst, fields, shard_bytes=shard_bytes, workers=2)


def test_killed_worker_fails_the_conversion_then_resume_completes(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    plan = with_stop(ms_hdf5.plan(src, None), 650, "kill")
    with pytest.raises(ConversionFailedError, match=f"signal {int(signal.SIGKILL)}"):
        convert(plan, dst, shard_bytes=shard_bytes, workers=2)
    assert assert_staged_prefix(src, dst, fields) <= 600
    # The killed worker's part has shard files but no record: it can never be committed. So
    # may the other worker's, if the parent killed it mid-shard when the conversion failed.
    uncommitted = uncommitted_parts(staging_of(dst))
    assert all(name.startswith("p-convert-") for name in uncommitted)
    killed = [
        part_id
        for part_id in uncommitted
        if not os.path.exists(os.path.join(staging_of(dst), "parts", f"{part_id}.json"))
    ]
    assert 1 <= len(killed) <= 2, killed
    for part_id in killed:
        with pytest.raises(PartIncompleteError, match="never finished"):
            ms.commit_parts(staging_of(dst), [part_id])
    resume_and_check(src, dst, fields, shard_bytes=shard_bytes, workers=2)


def wait_for_lines(fd: int, count: int, seconds: float) -> list[int]:
    """The integers written as lines to the FIFO open (non-blocking) at ``fd``, once ``count``
    have come; the test fails if they have not within ``seconds`` (a guard, not an order)."""
    deadline = time.monotonic() + seconds
    data = b""
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"only {data!r} came within {seconds} s")
        data += os.read(fd, 4096)
    return [int(line) for line in data.split()]


def children_of(pid: int) -> set[int]:
    """The child processes of process ``pid``."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            found.update(int(child) for child in handle.read().split())
    return found


def test_a_killed_conversion_takes_its_workers_along_and_resume_leaves_nothing(
    tmp_path: Path,
) -> None:
    """SIGKILL to ``memshard convert --workers 2`` while each worker is inside a part: the
    workers die with the converter (left running, they would write parts into the staging
    dataset under a resume), and ``--resume`` completes every row bit-exact, leaving no
    unnamed shard file and no part lock."""
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    report = tmp_path / "paused"
    os.mkfifo(report)
    # Our own write end keeps the FIFO from reading as ended between the workers' reports.
    reader = os.open(report, os.O_RDONLY | os.O_NONBLOCK)
    keeper = os.open(report, os.O_WRONLY)
    command = ["convert", str(src), str(dst), "--shard-size", str(shard_bytes), "--workers", "2"]
    pidfds: list[int] = []
    with open(tmp_path / "converter.log", "w") as log:
        converter = subprocess.Popen(
            [sys.executable, "-c", PAUSED_CLI, str(report), "100", *command, "-q"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
    try:
        workers = wait_for_lines(reader, 2, seconds=120)
        assert set(workers) <= children_of(converter.pid)
        pidfds = [os.pidfd_open(pid) for pid in workers]  # while they surely live
        converter.kill()
        assert converter.wait() == -signal.SIGKILL
        for pid, pidfd in zip(workers, pidfds, strict=True):
            ended, _, _ = select.select([pidfd], [], [], 10)
            assert ended, f"worker {pid} outlived its converter, killed 10 s ago"
    finally:
        for pidfd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        if converter.poll() is None:
            converter.kill()
            converter.wait()
        os.close(reader)
        os.close(keeper)
    assert not os.path.lexists(dst)
    assert len(ms.open(staging_of(dst))) <= 100  # shard 0 at most: shard 1 never finished
    assert len(uncommitted_parts(staging_of(dst))) >= 2  # the parts the workers were in
    resumed = run_from_repo([sys.executable, "-m", "memshard", *command, "--resume", "-q"])
    assert resumed.returncode == 0, resumed.stderr
    ds = ms.open(dst)
    assert_matches(ds, src, fields)
    assert_contiguous_shards(ds)
    assert_no_stray_parts(ds)
    assert sorted(os.listdir(tmp_path)) == sorted(["src.h5", "out", "paused", "converter.log"])


#: Writes 150 rows as a part of group ``convert`` of the dataset ``argv[1]``, says so, and
#: waits (holding the part's lock) until it is killed.
STRAY_WORKER = """
import sys
import numpy as np
from memshard.parts import write_part
part = write_part(sys.argv[1], key=9, group="convert")
part.extend({"x": np.zeros((150, 6), "<f4"), "y": np.zeros(150, "<i8")})
print("writing", flush=True)
sys.stdin.read()
"""


def test_a_worker_of_a_killed_run_dying_during_the_resume_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of the killed run still writes when the resume begins (it dies with its
    converter, but that takes a moment): its part's lock is held, so the resume cannot delete
    the part then. It dies while the resume commits; what it left is deleted before the
    rename."""
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    interrupt_at(src, dst, shard_bytes, 500)
    stray = subprocess.Popen(
        [sys.executable, "-c", STRAY_WORKER, str(staging_of(dst))],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stray.stdout is not None
        assert stray.stdout.readline() == "writing\n"
        finished = ms_ordercommit.OrderedCommit.finished

        def stray_dies_then_finished(self: Any, index: int, record: Any) -> None:
            if stray.poll() is None:
                stray.kill()
                stray.wait()
            finished(self, index, record)

        monkeypatch.setattr(ms_ordercommit.OrderedCommit, "finished", stray_dies_then_finished)
        ds = ms.from_hdf5(src, dst, shard_bytes=shard_bytes, resume=True)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
        for stream in (stray.stdin, stray.stdout):
            if stream is not None:
                stream.close()
    assert stray.returncode == -signal.SIGKILL
    assert_matches(ds, src, fields)
    assert_no_stray_parts(ds)


def test_plan_is_picklable_for_workers(tmp_path: Path) -> None:
    import pickle

    src = tmp_path / "src.h5"
    fields, _ = write_resumable(src)
    plan = ms_hdf5.plan(src, None)
    opener = pickle.loads(pickle.dumps(plan.opener))
    reader = opener()
    try:
        out = np.empty((10, 6), dtype="<f4")
        reader.read("x", 5, 15, out)
        assert_same_values(out, h5_read(src, "/x")[5:15])
    finally:
        reader.close()
    assert plan.fields.keys() == fields.keys()


@pytest.mark.parametrize("how", ["kill", "error"])
def test_worker_failing_after_reporting_a_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Worker 0 reports shard 0 done, then dies (or fails) on shard 1, its second shard in
    flight. The parent handles the reports only after that (a slow commit), so it gives the
    dead worker its next shard, and must still report the worker's failure."""
    src = tmp_path / "src.h5"
    fields, shard_bytes = write_resumable(src)
    dst = tmp_path / "out"
    processes: list[Any] = []
    start_worker = ms_workers._start_worker

    def start() -> Any:
        process, connection = start_worker()
        processes.append(process)
        return process, connection

    finished = ms_ordercommit.OrderedCommit.finished

    def slow_finished(self: Any, index: int, record: Any) -> None:
        processes[0].wait()  # worker 0 has reported shard 0, failed on shard 1 and exited
        finished(self, index, record)

    monkeypatch.setattr(ms_workers, "_start_worker", start)
    monkeypatch.setattr(ms_ordercommit.OrderedCommit, "finished", slow_finished)
    plan = with_stop(ms_hdf5.plan(src, None), 100, how, until=200)
    expected = ConversionFailedError if how == "kill" else OSError
    with pytest.raises(expected, match=r"signal 9|test read error"):
        convert(plan, dst, shard_bytes=shard_bytes, workers=2)
    monkeypatch.undo()
    assert assert_staged_prefix(src, dst, fields) == 100
    resume_and_check(src, dst, fields, shard_bytes=shard_bytes, workers=2)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_chunk_larger_than_a_read_block_is_read_in_bounded_parts(
    tmp_path: Path, compression: str | None
) -> None:
    """One 72 MiB chunk (above MAX_BLOCK_BYTES): read in parts, through a chunk cache."""
    src = tmp_path / "src.h5"
    rows, width = 1152, 16384  # 64 KiB rows
    values = np.arange(rows * width, dtype="<f4").reshape(rows, width)
    with h5py.File(src, "w") as handle:
        handle.create_dataset("x", data=values, chunks=(rows, width), compression=compression)
    plan = ms_hdf5.plan(src, None)
    assert plan.fields["x"].chunk_rows == rows
    assert isinstance(plan.opener, ms_hdf5.Hdf5Opener)
    assert plan.opener.cache_bytes == rows * width * 4
    ds = ms.from_hdf5(src, tmp_path / "out", shard_bytes=16 << 20)
    assert len(ds.shards) > 1
    assert_same_values(ds["x"][:], values)


def test_a_worker_that_cannot_open_the_source_reports_why(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    _, shard_bytes = write_resumable(src)
    plan = dataclasses.replace(ms_hdf5.plan(src, None), opener=FailingOpener("source gone"))
    with pytest.raises(OSError, match="source gone"):
        convert(plan, tmp_path / "out", shard_bytes=shard_bytes, workers=2)
    assert not (tmp_path / "out").exists()
