"""from_zarr and to_zarr on real zarr stores (formats 2 and 3): every value is compared with
what zarr reads."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.common import ZarrFormat

import memshard as ms
import memshard.sources as ms_sources
import memshard.zarr as ms_zarr
from memshard.convert import SOURCE_ATTR, convert
from memshard.errors import (
    ConversionStateError,
    DatasetExistsError,
    FieldNotFoundError,
    SourceError,
    UnsupportedSourceError,
)
from memshard.sources import SUPPORTED_KINDS
from tests.convert_helpers import assert_same_values, staging_of, with_stop

FORMATS: list[ZarrFormat] = [2, 3]


def zarr_read(store: Path, path: str | None = None) -> np.ndarray:
    node = zarr.open(store=str(store), mode="r")
    if path is not None:
        assert isinstance(node, zarr.Group)
        node = node[path]
    assert isinstance(node, zarr.Array)
    return np.asarray(node[...])


def assert_matches(ds: ms.Dataset, store: Path, fields: dict[str, str | None]) -> None:
    assert set(ds.fields) == set(fields)
    for name, path in fields.items():
        assert_same_values(ds[name][:], zarr_read(store, path))


def assert_nothing_left(dst: Path) -> None:
    assert [entry for entry in os.listdir(dst.parent) if entry.startswith(dst.name)] == []


def assert_contiguous_shards(ds: ms.Dataset) -> None:
    offset = 0
    for shard in ds.shards:
        assert shard.row_offset == offset
        assert shard.sealed
        offset += shard.rows
    assert offset == len(ds)


def values(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind in "iu":
        info = np.iinfo(np.dtype(dtype).newbyteorder("="))
        data = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=info.dtype)
        return data.astype(dtype)
    data = (rng.standard_normal(shape) * 50).astype(np.dtype(dtype).newbyteorder("="))
    data.reshape(-1)[:3] = [np.nan, np.inf, -0.0]
    return data.astype(dtype)


def write_group(store: Path, zarr_format: ZarrFormat, compressors: Any = "auto") -> dict[str, str]:
    """A group of arrays in nested groups; returns ``{field name: array path}``."""
    group = zarr.open_group(str(store), mode="w", zarr_format=zarr_format)
    group.attrs.update({"title": "zarr source", "version": 3, "scale": 0.5, "tags": ["a", "b"]})
    options: dict[str, Any] = {} if compressors == "auto" else {"compressors": compressors}
    arrays = {
        "images": ("grp/images", ">f4", (90, 3, 4), (7, 2, 4)),
        "grp_labels": ("grp/labels", "<i8", (90,), (16,)),
        "deep_a_b": ("deep/a/b", "<f2", (90, 2), (90, 2)),
        "flags": ("flags", "|b1", (90,), (13,)),
        "cplx": ("cplx", "<c8", (90,), (30,)),
        "ubig": ("ubig", ">u8", (90, 2), (11, 1)),
    }
    for name, (path, dtype, shape, chunks) in arrays.items():
        array = group.create_array(path, shape=shape, dtype=dtype, chunks=chunks, **options)
        array[...] = values(dtype, shape, seed=len(name))
    group["grp/images"].attrs["units"] = "pixels"
    # a different length, left out by automatic selection
    group.create_array("other", shape=(12,), dtype="<i4", **options)[...] = np.arange(12)
    fields = {name: path for name, (path, *_) in arrays.items()}
    fields["grp_images"] = fields.pop("images")
    return fields


@pytest.mark.parametrize("compressors", ["auto", None])
@pytest.mark.parametrize("zarr_format", FORMATS)
def test_group_of_nested_arrays(tmp_path: Path, zarr_format: ZarrFormat, compressors: Any) -> None:
    store = tmp_path / "src"
    fields = write_group(store, zarr_format, compressors)
    ds = ms.from_zarr(store, tmp_path / "out", shard_bytes=20 * (48 + 8 + 4 + 1 + 8 + 16))
    assert_matches(ds, store, dict(fields))
    assert ds["grp_images"].dtype == np.dtype("<f4")
    assert ds["ubig"].dtype == np.dtype("<u8")
    expected_shards = [(k * 20, 20) for k in range(4)] + [(80, 10)]
    assert [(shard.row_offset, shard.rows) for shard in ds.shards] == expected_shards
    record = ds.attrs[SOURCE_ATTR]
    assert record["format"] == "zarr"
    assert record["location"] == str(store)
    assert record["rows"] == 90
    assert {name: info["origin"].strip("/") for name, info in record["fields"].items()} == fields
    assert record["fields"]["grp_images"]["attrs"] == {"units": "pixels"}
    assert {k: v for k, v in ds.attrs.items() if k != SOURCE_ATTR} == {
        "title": "zarr source",
        "version": 3,
        "scale": 0.5,
        "tags": ["a", "b"],
    }
    assert "other" in {origin.strip("/") for origin in ms_zarr.plan(store, None).skipped}


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_explicit_fields(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    store = tmp_path / "src"
    write_group(store, zarr_format)
    ds = ms.from_zarr(
        store, tmp_path / "out", fields={"x": "grp/images", "y": "/grp/labels", "o": "flags"}
    )
    assert_matches(ds, store, {"x": "grp/images", "y": "grp/labels", "o": "flags"})


def test_sharded_v3_array_is_read_by_whole_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    array = group.create_array("x", shape=(100, 4), dtype=">i4", chunks=(5, 2), shards=(20, 4))
    array[...] = values(">i4", (100, 4))
    assert array.shards == (20, 4)
    calls: list[tuple[int, int]] = []
    read = ms_zarr.ZarrReader.read

    def recording(self: Any, name: str, start: int, stop: int, out: np.ndarray) -> None:
        calls.append((start, stop))
        read(self, name, start, stop, out)

    monkeypatch.setattr(ms_zarr.ZarrReader, "read", recording)
    monkeypatch.setattr(ms_sources, "READ_BLOCK_BYTES", 16)  # one source block per read
    ds = ms.from_zarr(store, tmp_path / "out", shard_bytes=30 * 16)
    assert_matches(ds, store, {"x": "x"})
    assert ds.attrs[SOURCE_ATTR]["fields"]["x"]["dtype"] == "<i4"
    # shards of 30 rows, reads of at most one 20-row zarr shard, aligned to zarr shards
    assert calls == [(0, 20), (20, 30), (30, 40), (40, 60), (60, 80), (80, 90), (90, 100)]


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_store_that_is_a_single_array(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    store = tmp_path / "images"
    array = zarr.create_array(
        store=str(store), shape=(33, 2, 2), dtype=">f2", chunks=(4, 2, 1), zarr_format=zarr_format
    )
    array[...] = values(">f2", (33, 2, 2))
    array.attrs["note"] = "single"
    ds = ms.from_zarr(store, tmp_path / "out", shard_bytes=8 * 8)
    assert_matches(ds, store, {"images": None})
    assert ds["images"].dtype == np.dtype("<f2")
    assert ds.attrs[SOURCE_ATTR]["fields"]["images"]["attrs"] == {"note": "single"}
    assert len(ds.shards) == 5
    named = ms.from_zarr(store, tmp_path / "named", fields={"x": "images"})
    assert_matches(named, store, {"x": None})


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_unwritten_chunks_read_as_the_fill_value(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=zarr_format)
    array = group.create_array("x", shape=(50, 3), dtype="<i2", chunks=(8, 3), fill_value=-7)
    array[10:20] = 1
    ds = ms.from_zarr(store, tmp_path / "out", shard_bytes=6 * 12)
    assert_matches(ds, store, {"x": "x"})
    assert int(ds["x"][0, 0]) == -7


STRINGS = {
    "unicode": np.array(["ab", "cd"] * 10),
    "bytes": np.array([b"ab", b"cd"] * 10),
    "variable": np.array(["ab", "cde"] * 10, dtype=np.dtypes.StringDType()),
}


@pytest.mark.parametrize("kind", list(STRINGS))
@pytest.mark.parametrize("zarr_format", FORMATS)
def test_string_arrays_are_refused(tmp_path: Path, zarr_format: ZarrFormat, kind: str) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=zarr_format)
    data = STRINGS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that v3 has no spec for fixed strings
        group.create_array("text", shape=data.shape, dtype=data.dtype)[...] = data
    group.create_array("x", shape=(20,), dtype="<i4")[...] = np.arange(20)
    dst = tmp_path / "out"
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_zarr(store, dst, fields={"x": "x", "t": "text"})
    assert "text" in str(info.value)
    assert SUPPORTED_KINDS in str(info.value)
    assert_nothing_left(dst)
    ds = ms.from_zarr(store, dst)
    assert_matches(ds, store, {"x": "x"})


def test_zero_size_samples_and_scalar_arrays_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("x", shape=(20,), dtype="<i4")[...] = np.arange(20)
    group.create_array("empty", shape=(20, 0), dtype="<f4")
    group.create_array("scalar", shape=(), dtype="<f4")
    for bad in ("empty", "scalar"):
        with pytest.raises(UnsupportedSourceError, match=bad):
            ms.from_zarr(store, tmp_path / "out", fields={"v": bad})
        assert_nothing_left(tmp_path / "out")
    assert_matches(ms.from_zarr(store, tmp_path / "out"), store, {"x": "x"})


def test_unreadable_stores(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SourceError, match="no such zarr store"):
        ms.from_zarr(missing, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError) as info:
        ms.from_zarr(empty, tmp_path / "out")
    assert str(empty) in str(info.value)
    text = tmp_path / "text"
    text.write_text("not zarr")
    with pytest.raises(SourceError) as info:
        ms.from_zarr(text, tmp_path / "out")
    assert str(text) in str(info.value)
    store = tmp_path / "src"
    write_group(store, 3)
    with pytest.raises(SourceError, match="missing/array"):
        ms.from_zarr(store, tmp_path / "out", fields={"x": "missing/array"})
    with pytest.raises(SourceError, match="different row counts"):
        ms.from_zarr(store, tmp_path / "out", fields={"x": "flags", "y": "other"})
    assert_nothing_left(tmp_path / "out")


def test_attributes_left_out_when_not_json(tmp_path: Path) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.attrs.update({"kept": "yes", "nan": float("nan"), "inf": float("inf")})
    group.create_array("x", shape=(5,), dtype="<i4")[...] = np.arange(5)
    ds = ms.from_zarr(store, tmp_path / "out", attrs={"extra": [1, 2]})
    assert {k: v for k, v in ds.attrs.items() if k != SOURCE_ATTR} == {
        "kept": "yes",
        "extra": [1, 2],
    }


JSON_ATTRS = {
    "nested-object": {"model": {"name": "resnet", "layers": [1, 2, 3]}},
    "mixed-list": {"mixed": [1, "two", 3.5]},
    "list-with-null": {"maybe": [1, None, 2.5]},
    "ragged-list": {"ragged": [[1, 2], [3]]},
}


@pytest.mark.parametrize("attrs", list(JSON_ATTRS.values()), ids=list(JSON_ATTRS))
def test_json_attributes_of_a_group_are_copied_unchanged(
    tmp_path: Path, attrs: dict[str, Any]
) -> None:
    """zarr attributes are JSON already: every one of them can go into the manifest as is."""
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    group.create_array("x", shape=(5,), dtype="<i4")[...] = np.arange(5)
    ds = ms.from_zarr(store, tmp_path / "out")
    assert {k: v for k, v in ds.attrs.items() if k != SOURCE_ATTR} == attrs
    assert_matches(ds, store, {"x": "x"})


def test_ragged_list_attribute_of_an_array_does_not_stop_the_conversion(tmp_path: Path) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.create_array("x", shape=(5,), dtype="<i4")[...] = np.arange(5)
    other = group.create_array("y", shape=(5,), dtype="<i4")
    other[...] = np.arange(5)
    other.attrs["boxes"] = [[0, 0, 4, 4], [1, 1]]
    ds = ms.from_zarr(store, tmp_path / "out", fields={"x": "x"})
    assert_matches(ds, store, {"x": "x"})


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_labels_from_attribute_and_option(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    store = tmp_path / "src"
    group = zarr.open_group(str(store), mode="w", zarr_format=zarr_format)
    y = group.create_array("y", shape=(30,), dtype="<u1", chunks=(7,))
    y[...] = np.arange(30) % 3
    y.attrs["labels"] = ["cat", "dog", "bird"]
    group.create_array("z", shape=(30,), dtype="<i2")[...] = np.arange(30) % 2
    ds = ms.from_zarr(store, tmp_path / "a", labels={"z": ["even", "odd"]})
    assert ds.labels == {"y": ("cat", "dog", "bird"), "z": ("even", "odd")}
    assert_matches(ds, store, {"y": "y", "z": "z"})
    assert ms.from_zarr(store, tmp_path / "b", label_attr=None).labels == {}


def test_workers_one_and_two_give_identical_datasets(tmp_path: Path) -> None:
    store = tmp_path / "src"
    fields = write_group(store, 2)
    shard_bytes = 10 * (48 + 8 + 4 + 1 + 8 + 16)
    one = ms.from_zarr(store, tmp_path / "one", shard_bytes=shard_bytes)
    two = ms.from_zarr(store, tmp_path / "two", shard_bytes=shard_bytes, workers=2)
    for ds in (one, two):
        assert_matches(ds, store, dict(fields))
        assert_contiguous_shards(ds)
        assert len(ds.shards) == 9
    assert [shard.files[name].checksum for shard in one.shards for name in fields] == [
        shard.files[name].checksum for shard in two.shards for name in fields
    ]


@pytest.mark.parametrize("resume_workers", [1, 2])
def test_interrupted_conversion_resumes(tmp_path: Path, resume_workers: int) -> None:
    store = tmp_path / "src"
    fields = write_group(store, 3)
    dst = tmp_path / "out"
    shard_bytes = 10 * (48 + 8 + 4 + 1 + 8 + 16)
    plan = with_stop(ms_zarr.plan(store, None), 35, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=shard_bytes)
    assert not os.path.lexists(dst)
    staged = ms.open(staging_of(dst))
    assert len(staged) == 30
    for name, path in fields.items():
        assert_same_values(staged[name][:], zarr_read(store, path)[:30])
    with pytest.raises(ConversionStateError, match="resume=True"):
        ms.from_zarr(store, dst, shard_bytes=shard_bytes)
    ds = ms.from_zarr(store, dst, shard_bytes=shard_bytes, resume=True, workers=resume_workers)
    assert_matches(ds, store, dict(fields))
    assert_contiguous_shards(ds)
    assert not os.path.lexists(staging_of(dst))


def test_resume_refuses_a_rewritten_store(tmp_path: Path) -> None:
    store = tmp_path / "src"
    write_group(store, 2)
    dst = tmp_path / "out"
    plan = with_stop(ms_zarr.plan(store, None), 35, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=10 * 85)
    zarr.open_group(str(store), mode="r+")["grp/images"].attrs["rewritten"] = True
    with pytest.raises(ConversionStateError, match="identity"):
        ms.from_zarr(store, dst, resume=True)
    assert len(ms.open(staging_of(dst))) == 30


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_round_trip_through_zarr(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    rng = np.random.default_rng(9)
    columns = {
        "x": values(">f4", (41, 2, 3)).astype("<f4"),
        "h": values("<f2", (41,)),
        "y": rng.integers(0, 3, 41).astype("<i2"),
        "b": rng.random(41) < 0.5,
        "c": values("<f8", (41, 2)) + 1j,
    }
    path = tmp_path / "orig"
    writer = ms.create(
        path,
        fields={name: (array.dtype, array.shape[1:]) for name, array in columns.items()},
        shard_bytes=300,
        labels={"y": ["r", "g", "b"]},
        attrs={"title": "round trip", "sizes": [1, 2, 3], "flag": False},
    )
    writer.extend(columns)
    writer.close()
    original = ms.open(path)
    exported = tmp_path / "export"
    ms.to_zarr(original, exported, zarr_format=zarr_format)
    group = zarr.open_group(str(exported), mode="r")
    assert group.metadata.zarr_format == zarr_format
    labels = group["y"].attrs["labels"]
    assert isinstance(labels, list)
    assert list(labels) == ["r", "g", "b"]
    for name, array in columns.items():
        stored = group[name]
        assert isinstance(stored, zarr.Array)
        np.testing.assert_array_equal(stored[...], array)
    back = ms.from_zarr(exported, tmp_path / "back")
    assert back.labels == {"y": ("r", "g", "b")}
    for name, array in columns.items():
        assert_same_values(back[name][:], array)
    assert {k: v for k, v in back.attrs.items() if k != SOURCE_ATTR} == {
        "title": "round trip",
        "sizes": [1, 2, 3],
        "flag": False,
    }


def test_round_trip_keeps_nested_attributes(tmp_path: Path) -> None:
    path = tmp_path / "orig"
    writer = ms.create(path, fields={"x": ("<i4", ())}, attrs={"meta": {"split": "train"}})
    writer.extend({"x": np.arange(10)})
    writer.close()
    ms.to_zarr(path, tmp_path / "export")
    back = ms.from_zarr(tmp_path / "export", tmp_path / "back")
    assert back.attrs["meta"] == {"split": "train"}


def test_to_zarr_refuses_existing_stores_and_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "orig"
    writer = ms.create(path, fields={"x": ("<i4", (2,)), "y": ("<u1", ())})
    writer.extend({"x": np.arange(20).reshape(10, 2), "y": np.arange(10)})
    writer.close()
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(DatasetExistsError, match="overwrite"):
        ms.to_zarr(path, target)
    with pytest.raises(FieldNotFoundError, match="nope"):
        ms.to_zarr(path, target, fields=["nope"], overwrite=True)
    assert (target / "keep.txt").read_text() == "keep"
    ms.to_zarr(path, target, fields=["y"], overwrite=True, zarr_format=2)
    assert sorted(zarr.open_group(str(target), mode="r").array_keys()) == ["y"]
    np.testing.assert_array_equal(zarr_read(target, "y"), np.arange(10))
    assert sorted(os.listdir(tmp_path)) == ["export", "orig"]
