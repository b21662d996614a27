"""Reading: zero-copy views, gathers, take(out=), refresh, pickling, bounded mappings."""

from __future__ import annotations

import errno
import gc
import mmap
import os
import pickle
import shutil
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import manifest as manifest_io
from memshard import mappings, pagecache
from memshard.errors import (
    DatasetChangedError,
    DatasetNotFoundError,
    FieldNotFoundError,
    FieldTooLargeError,
    InvalidIndexError,
    OutArrayError,
    ReadFailedError,
)
from memshard.layout import MANIFEST_NAME
from memshard.manifest import FieldSpec
from tests.strategies import index_keys


@pytest.fixture
def images(make_dataset: Any) -> tuple[ms.Dataset, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 3, 4, 5)).astype(np.float32)
    y = rng.integers(0, 3, 23)
    return make_dataset({"x": x, "y": y}, [10, 13], labels={"y": ["a", "b", "c"]}), x, y


def test_describes_itself(images: Any) -> None:
    ds, x, y = images
    assert len(ds) == 23
    assert ds.fields == {"x": (np.dtype("<f4"), (3, 4, 5)), "y": (np.dtype("<i8"), ())}
    assert ds.labels == {"y": ("a", "b", "c")}
    assert ds["y"].labels == ("a", "b", "c")
    assert ds["x"].labels is None
    assert ds.nbytes == x.nbytes + y.nbytes
    assert [shard.rows for shard in ds.shards] == [4, 4, 2, 4, 4, 4, 1]
    column = ds["x"]
    assert (column.shape, column.dtype, column.ndim, len(column)) == (x.shape, x.dtype, 4, 23)
    assert column.nbytes == x.nbytes
    assert "rows=23" in repr(ds)
    assert "shape=(23, 3, 4, 5)" in repr(column)
    assert ds.keys() == ["x", "y"]


def test_single_rows_and_slices_in_one_shard_are_read_only_views(images: Any) -> None:
    ds, x, _ = images
    column = ds["x"]
    for view in (column[5], column[4:8], column[7:3:-2], column[5, ..., 0], column[-1]):
        assert not view.flags.writeable
        assert not view.flags.owndata
    assert np.shares_memory(column[5], column[4:8])
    np.testing.assert_array_equal(column[5], x[5])
    with pytest.raises(ValueError, match="read-only"):
        column[5][0, 0, 0] = 1


def test_gathers_and_cross_shard_slices_are_new_arrays(images: Any) -> None:
    ds, x, _ = images
    column = ds["x"]
    for key in ([3, 1, 3, 22], np.array([-1, 0]), slice(2, 20), x[:, 0, 0, 0] > 0):
        got = column[key]
        np.testing.assert_array_equal(got, x[key])
        got[...] = 0  # a private copy: writeable, and writing leaves the dataset alone
        np.testing.assert_array_equal(column[key], x[key])


def test_row_by_row_gather_of_large_rows(make_dataset: Any) -> None:
    x = np.arange(12 * 8192, dtype=np.float32).reshape(12, 8192)  # 32 KiB rows
    ds = make_dataset({"x": x}, [5, 7], shard_rows=3)
    indices = np.array([11, 0, 5, 5, 3, 7])
    np.testing.assert_array_equal(ds["x"][indices], x[indices])


def test_dataset_keys_give_every_field(images: Any) -> None:
    ds, x, y = images
    row = ds[7]
    assert set(row) == {"x", "y"}
    assert row["y"] == y[7]
    np.testing.assert_array_equal(row["x"], x[7])
    batch = ds[[4, 0, 22]]
    np.testing.assert_array_equal(batch["x"], x[[4, 0, 22]])
    np.testing.assert_array_equal(batch["y"], y[[4, 0, 22]])
    sliced = ds[3:9]
    np.testing.assert_array_equal(sliced["y"], y[3:9])
    np.testing.assert_array_equal(np.asarray(ds["x"]), x)
    np.testing.assert_array_equal(np.asarray(ds["y"], dtype=np.float64), y.astype(np.float64))
    assert [int(row["y"]) for row in ds] == y.tolist()


def test_take_fills_caller_arrays(images: Any) -> None:
    ds, x, y = images
    indices = [21, 2, 2, -3]
    out = {"x": np.empty((4, 3, 4, 5), np.float32), "y": np.empty(4, np.int64)}
    result = ds.take(indices, out=out)
    assert result["x"] is out["x"]
    assert result["y"] is out["y"]
    np.testing.assert_array_equal(out["x"], x[indices])
    np.testing.assert_array_equal(out["y"], y[indices])
    only_y = ds.take(np.array([1, 2]), fields=["y"])
    assert list(only_y) == ["y"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ({"x": np.empty((3, 3, 4, 5), np.float32)}, r"expected shape \(4, 3, 4, 5\)"),
        ({"x": np.empty((4, 3, 4, 5), np.float64)}, "dtype float64"),
        ({"x": np.empty((4, 3, 4, 10), np.float32)[..., ::2]}, "C-contiguous"),
        ({"x": [[0.0]]}, "must be a numpy array"),
    ],
)
def test_take_refuses_bad_out_arrays(images: Any, out: dict[str, Any], message: str) -> None:
    ds, _, _ = images
    with pytest.raises(OutArrayError, match=message):
        ds.take([0, 1, 2, 3], out=out)


def test_an_io_error_reading_a_shard_is_a_read_failed_error(
    images: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO cannot be asked of the kernel: ``os.pread`` (the header check before a shard is
    mapped) raises it instead. Every read names the dataset and the field, keeps the errno,
    and is still an ``OSError``."""
    ds, _, _ = images

    def failing(fd: int, length: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", failing)
    reads = [
        lambda: ds["x"][3],
        lambda: ds["x"][2:5],
        lambda: ds["x"][[4, 0]],
        lambda: ds["x"][..., 0],
        lambda: ds.take([1, 2]),
        lambda: ds.prefetch([1, 2]),
    ]
    for read in reads:
        with pytest.raises(ReadFailedError, match=r"field 'x': reading rows failed") as caught:
            read()
        assert caught.value.errno == errno.EIO
        assert ds.path in str(caught.value)
        assert isinstance(caught.value.__cause__, OSError)


def test_bad_keys_name_the_dataset_and_field(images: Any) -> None:
    ds, _, _ = images
    with pytest.raises(InvalidIndexError, match=r"field 'x'.*index 23 is out of bounds"):
        ds["x"][23]
    with pytest.raises(IndexError, match="index -24 is out of bounds"):
        ds["x"][-24]
    with pytest.raises(InvalidIndexError, match="out of bounds"):
        ds["x"][np.array([0, 99])]
    with pytest.raises(InvalidIndexError, match="1-d array of integers"):
        ds.take([[0, 1]])
    with pytest.raises(FieldNotFoundError, match=r"no field 'z'; fields are \['x', 'y'\]"):
        ds["z"]
    with pytest.raises(KeyError):
        ds.take([0], fields=["z"])


def test_open_missing_dataset(tmp_path: Any) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ms.open(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a memshard dataset"):
        ms.open(tmp_path)


def test_empty_dataset(tmp_path: Any) -> None:
    ms.create(tmp_path / "e", fields={"x": ("float32", (2,))}).close()
    ds = ms.open(tmp_path / "e")
    assert len(ds) == 0
    assert ds["x"].shape == (0, 2)
    assert len(ds.shards) == 0
    assert ds["x"][:].shape == (0, 2)
    assert ds["x"][[]].shape == (0, 2)
    with pytest.raises(InvalidIndexError):
        ds["x"][0]


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("<f4", (2**62, 2**62)), ("|u1", (2**62, 2)), ("<i2", (2**61, 2)), ("<c16", (2**60,))],
)
def test_a_field_too_large_for_numpy_is_refused_at_open(
    tmp_path: Any, dtype: str, shape: tuple[int, ...]
) -> None:
    """A valid manifest of 0 rows may state a sample shape no numpy array can hold."""
    root = tmp_path / "huge"
    ms.create(root, fields={"x": ("float32", (2,)), "ok": ("int8", ())}).close()
    manifest = manifest_io.load(str(root / MANIFEST_NAME))
    fields = {**manifest.fields, "x": FieldSpec(dtype=dtype, shape=shape)}
    (root / MANIFEST_NAME).write_bytes(
        manifest_io.dumps(manifest.model_copy(update={"fields": fields}))
    )
    with pytest.raises(FieldTooLargeError) as caught:
        ms.open(root)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ms.errors.MemshardError)
    message = str(caught.value)
    assert f"{root}: field 'x': a sample of shape {list(shape)} and dtype {dtype!r}" in message
    assert str(2**63 - 1) in message


def test_the_largest_field_numpy_can_hold_opens(tmp_path: Any) -> None:
    root = tmp_path / "large"
    ms.create(root, fields={"x": ("float32", (2,))}).close()
    manifest = manifest_io.load(str(root / MANIFEST_NAME))
    fields = {"x": FieldSpec(dtype="|u1", shape=(2**62, 1))}
    (root / MANIFEST_NAME).write_bytes(
        manifest_io.dumps(manifest.model_copy(update={"fields": fields}))
    )
    assert ms.open(root)["x"][:].shape == (0, 2**62, 1)


def test_refresh_shows_new_commits_and_keeps_old_views(tmp_path: Any) -> None:
    path = tmp_path / "d"
    writer = ms.create(path, fields={"x": ("int64", ())}, shard_bytes=8 * 4)
    writer.extend({"x": np.arange(6)})
    writer.commit()
    ds = ms.open(path)
    first = ds["x"][4:6]
    writer.extend({"x": np.arange(6, 11)})
    assert len(ds) == 6
    assert ds.refresh() is False
    writer.commit()
    assert len(ds) == 6
    assert ds.refresh() is True
    assert ds.refresh() is False
    assert len(ds) == 11
    np.testing.assert_array_equal(ds["x"][:], np.arange(11))
    np.testing.assert_array_equal(first, [4, 5])
    writer.close()
    assert ds.refresh() is True
    assert all(shard.sealed for shard in ds.shards)


def test_a_column_is_a_snapshot_of_its_rows(tmp_path: Any) -> None:
    """A column taken before refresh() keeps its length and rows (take it again for the new
    ones), also through pickling; the dataset itself moves on."""
    path = tmp_path / "d"
    writer = ms.create(path, fields={"x": ("int64", ())}, shard_bytes=8 * 4)
    writer.extend({"x": np.arange(6)})
    writer.commit()
    ds = ms.open(path)
    column = ds["x"]
    writer.extend({"x": np.arange(6, 11)})
    writer.close()
    assert ds.refresh()
    assert len(ds) == 11
    assert ds["x"].shape == (11,)
    assert len(column) == 6
    assert column.shape == (6,)
    assert column.nbytes == 6 * 8
    np.testing.assert_array_equal(column[:], np.arange(6))
    np.testing.assert_array_equal(list(column), np.arange(6))
    with pytest.raises(InvalidIndexError, match="index 6 is out of bounds for axis 0 with size 6"):
        column[6]
    np.testing.assert_array_equal(column[[5, -1, 0]], [5, 5, 0])
    restored = pickle.loads(pickle.dumps(column))
    assert restored.shape == (6,)
    np.testing.assert_array_equal(restored[:], np.arange(6))


def test_refresh_detects_a_replaced_dataset(tmp_path: Any) -> None:
    path = tmp_path / "d"
    with ms.create(path, fields={"x": ("int64", ())}) as writer:
        writer.extend({"x": np.arange(3)})
    ds = ms.open(path)
    ms.create(path, fields={"x": ("int64", ())}, overwrite=True).close()
    with pytest.raises(DatasetChangedError, match="replaced"):
        ds.refresh()


def test_pickle_carries_identity_not_data(tmp_path: Any) -> None:
    path = tmp_path / "d"
    writer = ms.create(path, fields={"x": ("float32", (256,))})
    writer.extend({"x": np.ones((4000, 256))})
    writer.commit()
    ds = ms.open(path)
    payload = pickle.dumps(ds)
    assert len(payload) < 1024
    writer.extend({"x": np.zeros((10, 256))})
    writer.close()
    restored = pickle.loads(payload)
    assert len(restored) == 4000
    assert restored.generation == ds.generation
    np.testing.assert_array_equal(restored["x"][-1], np.ones(256))
    column = pickle.loads(pickle.dumps(ds["x"]))
    assert column.shape == (4000, 256)
    ms.create(path, fields={"x": ("float32", (256,))}, overwrite=True).close()
    with pytest.raises(DatasetChangedError):
        pickle.loads(payload)


def test_no_per_row_python_objects(tmp_path: Any) -> None:
    path = tmp_path / "d"
    with ms.create(path, fields={"x": ("uint8", ())}, shard_bytes=100_000) as writer:
        writer.extend({"x": np.zeros(1_000_000, np.uint8)})
    ds = ms.open(path)
    ds["x"][np.arange(0, 1_000_000, 997)]
    assert _objects_reachable(ds) < 1000


def _objects_reachable(root: object) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        stack.extend(gc.get_referents(item))
    return len(seen)


def _maps_of(path: Any) -> int:
    """Memory areas mapping shard files of the dataset at ``path`` (the shard table's mapping,
    one per open dataset, is not a shard's)."""
    with open("/proc/self/maps") as maps:
        return sum(f"{path}/shards/" in line for line in maps)


def test_mappings_stay_bounded_and_hold_no_file_descriptors(
    tmp_path: Any, monkeypatch: Any
) -> None:
    _count_mappings(monkeypatch, capacity=8)
    path = tmp_path / "d"
    with ms.create(path, fields={"x": ("int32", ())}, shard_bytes=4 * 10) as writer:
        writer.extend({"x": np.arange(600, dtype=np.int32)})
    ds = ms.open(path)
    assert len(ds.shards) == 60
    before = len(os.listdir("/proc/self/fd"))
    total = sum(int(ds["x"][row]) for row in range(600))
    gathered = ds["x"][np.random.default_rng(1).permutation(600)]
    assert len(os.listdir("/proc/self/fd")) == before
    assert total == sum(range(600))
    assert sorted(gathered.tolist()) == list(range(600))
    # Shards of 40 bytes, each its own segment of 3 areas: 2 fit in 8.
    assert mappings.CACHE.memory_areas == 2 * mappings.segment_areas(1)
    del gathered
    gc.collect()
    assert _maps_of(path) <= 2


def _page_values(shards: int) -> np.ndarray:
    """The first field of :func:`_page_rows`: rows of 1,024 int32 (one page), row ``i`` holding
    ``2i`` in its first half and ``2i + 1`` in its second."""
    rows = 2 * shards
    values = np.arange(rows, dtype=np.int32)[:, None] * 2 + np.arange(2, dtype=np.int32)
    return np.repeat(values, 512, axis=1)


def _page_rows(path: Any, shards: int, fields: tuple[str, ...] = ("x", "y")) -> ms.Dataset:
    """A dataset of ``shards`` full shards of 2 rows of one page (4 KiB) per field: field
    number ``k`` holds :func:`_page_values` plus ``10_000 * k``."""
    columns = {
        name: _page_values(shards) + np.int32(10_000 * position)
        for position, name in enumerate(fields)
    }
    spec = {name: ("int32", (1024,)) for name in fields}
    with ms.create(path, fields=spec, shard_bytes=2 * 4096 * len(fields)) as writer:
        writer.extend(columns)
    ds = ms.open(path)
    assert [shard.rows for shard in ds.shards] == [2] * shards
    return ds


def _count_mappings(monkeypatch: Any, capacity: int) -> list[int]:
    """Give the reader a fresh cache of ``capacity``; the returned list grows by the number of
    shard files each ``map_segment`` call maps."""
    cache = mappings.MappingCache(capacity)
    monkeypatch.setattr(mappings, "CACHE", cache)
    monkeypatch.setattr(ms.reader, "CACHE", cache)
    mapped: list[int] = []
    map_segment = mappings.map_segment

    def counting(root: str, spec: Any, parts: Any, on_unmap: Any = None) -> np.ndarray:
        mapped.append(len(parts))
        return map_segment(root, spec, parts, on_unmap)

    monkeypatch.setattr(mappings, "map_segment", counting)
    return mapped


def test_a_dataset_that_fits_the_cache_is_mapped_once(tmp_path: Any, monkeypatch: Any) -> None:
    """2 fields of 7 shards (14 files, 18 memory areas) with room for 28 areas: the first
    gather maps every file, later ones none."""
    mapped = _count_mappings(monkeypatch, capacity=28)
    ds = _page_rows(tmp_path / "d", shards=7)
    order = np.random.default_rng(3).permutation(len(ds))
    first = ds.take(order)
    assert sum(mapped) == 14
    if mappings.BACK_TO_BACK:
        assert mapped == [7, 7]  # one run of shards per field
    for _ in range(3):
        again = ds.take(order[::-1])
        np.testing.assert_array_equal(again["x"], first["x"][::-1])
    assert sum(mapped) == 14
    np.testing.assert_array_equal(first["y"][:, 0], order * 2 + 10_000)


def test_a_slice_across_hundreds_of_shards_is_a_view(tmp_path: Any) -> None:
    """While a dataset's segments fit in the mapping cache, a run of full shards is one
    segment however long it is, so slicing across all of them copies nothing."""
    ds = _page_rows(tmp_path / "d", shards=300, fields=("x",))
    whole = ds["x"][:]
    np.testing.assert_array_equal(whole[:, ::512], np.arange(1200).reshape(600, 2))
    if mappings.BACK_TO_BACK:
        assert [len(parts) for parts in ds._snapshot.layouts["x"].parts] == [300]
        assert not whole.flags.owndata
        assert not whole.flags.writeable


@settings(max_examples=60, deadline=None)
@given(shards=st.integers(1, 9), capacity=st.sampled_from([4, 1000]), data=st.data())
def test_indexing_matches_numpy_in_runs_and_one_shard_per_segment(
    shards: int, capacity: int, data: Any
) -> None:
    """With room for 4 memory areas every shard is its own segment; with 1000, one run."""
    expected = _page_values(shards)
    keys = data.draw(st.lists(index_keys(expected.shape), min_size=1, max_size=6), label="keys")
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as directory:
        _count_mappings(patch, capacity)
        column = _page_rows(os.path.join(directory, "d"), shards, fields=("x",))["x"]
        layout = column._dataset._snapshot.layouts["x"]
        per_shard = capacity == 4 and mappings.segment_areas(shards) > 4
        assert len(layout.parts) == (shards if per_shard or not mappings.BACK_TO_BACK else 1)
        held = []  # every result stays alive: views fill the room, later reads copy
        for key in keys:
            try:
                wanted = np.asarray(expected[key])
            except IndexError:
                with pytest.raises(InvalidIndexError):
                    column[key]
                continue
            got = np.asarray(column[key])
            assert got.shape == wanted.shape, key
            np.testing.assert_array_equal(got, wanted)
            assert mappings.CACHE.memory_areas <= capacity
            held.append((got, wanted))
        for got, wanted in held:
            np.testing.assert_array_equal(got, wanted)


def test_a_dataset_too_large_for_the_cache_maps_only_what_it_reads(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """2 fields of 12 shards (24 files) with room for 8 memory areas: every shard is its own
    segment, so reading a row maps its shard in each field, not the run of 12 around it."""
    mapped = _count_mappings(monkeypatch, capacity=8)
    ds = _page_rows(tmp_path / "d", shards=12)
    assert [len(parts) for parts in ds._snapshot.layouts["x"].parts] == [1] * 12
    row = ds[13]
    assert mapped == [1, 1]
    assert int(row["x"][0]) == 26
    assert int(row["y"][-1]) == 10_027
    ds.take([12, 13])  # the same shard: mapped already
    assert mapped == [1, 1]
    rng = np.random.default_rng(4)
    for _ in range(20):
        rows = rng.integers(0, len(ds), size=3)
        batch = ds.take(rows)
        np.testing.assert_array_equal(batch["x"][:, 0], rows * 2)
        np.testing.assert_array_equal(batch["y"][:, 1], rows * 2 + 10_000)
        assert mappings.CACHE.memory_areas <= 8
    assert set(mapped) == {1}


def _is_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a shard mapping (not a copy)."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


def test_views_past_the_mapping_bound_are_copies_and_every_view_stays_valid(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Room for 8 memory areas, 12 shards of 2 rows, each its own segment of 3 areas: holding
    every row of ``list(column)`` pins the first 2 shards' mappings; the rows after them are
    read-only copies, so the process never maps more than the bound."""
    mapped = _count_mappings(monkeypatch, capacity=8)
    path = tmp_path / "d"
    ds = _page_rows(path, shards=12, fields=("x",))
    expected = _page_values(12)
    rows = list(ds["x"])
    assert mappings.CACHE.memory_areas <= 8
    assert _maps_of(path) == 2
    assert [_is_mapped(row) for row in rows] == [True] * 4 + [False] * 20
    assert not any(row.flags.writeable for row in rows)
    assert mapped == [1, 1]
    # Slices and gathers past the bound: copies too, and right.
    for key in (slice(4, 6), slice(3, 9), slice(None, None, -5), slice(23, 20, -1)):
        np.testing.assert_array_equal(ds["x"][key], expected[key])
    order = np.random.default_rng(5).permutation(24)
    np.testing.assert_array_equal(ds["x"][order], expected[order])
    np.testing.assert_array_equal(ds.take(order)["x"], expected[order])
    ds.prefetch(order)
    assert _is_mapped(ds["x"][1])  # a mapped segment still gives views
    assert _maps_of(path) == 2
    np.testing.assert_array_equal(np.stack(rows), expected)  # every view is still valid
    del rows
    gc.collect()
    assert _maps_of(path) <= 2
    assert _is_mapped(ds["x"][22])  # with the views gone, there is room again


def test_an_evicted_segment_a_view_holds_is_found_again(tmp_path: Any, monkeypatch: Any) -> None:
    """A view keeps its segment mapped after eviction; reading that segment again gives views
    of the same mapping rather than a second mapping."""
    mapped = _count_mappings(monkeypatch, capacity=6)  # room for 2 one-shard segments
    ds = _page_rows(tmp_path / "d", shards=12, fields=("x",))
    first = ds["x"][0]
    for row in (2, 4, 6):  # shards 1-3; shard 0 is evicted, held by ``first``
        assert _is_mapped(ds["x"][row])
    assert mapped == [1] * 4
    again = ds["x"][1]
    assert mapped == [1] * 4
    assert _is_mapped(again)
    assert again.base is first.base
    np.testing.assert_array_equal(np.stack([first, again]), _page_values(1))


def test_a_column_of_one_segment_past_the_bound_is_copied(tmp_path: Any, monkeypatch: Any) -> None:
    """Two datasets each mapped as one segment, with room for one: while a view holds the
    first, the second's rows and slices are copies."""
    _count_mappings(monkeypatch, capacity=mappings.segment_areas(4) + 1)
    first = _page_rows(tmp_path / "a", shards=4, fields=("x",))
    second = _page_rows(tmp_path / "b", shards=4, fields=("x",))
    held = first["x"][3]
    assert _is_mapped(held)
    expected = _page_values(4)
    for key in (0, -1, slice(1, 7, 2), slice(None)):
        got = second["x"][key]
        assert not _is_mapped(got)
        np.testing.assert_array_equal(got, expected[key])
    with pytest.raises(InvalidIndexError, match="out of bounds"):
        second["x"][8]
    np.testing.assert_array_equal(held, expected[3])


def test_the_cache_takes_half_the_kernels_mapping_limit(tmp_path: Any) -> None:
    limit = tmp_path / "max_map_count"
    limit.write_text("65530\n")
    assert mappings.read_max_map_count(str(limit)) == 65530
    assert mappings.mapping_capacity(65530) == 32765
    limit.write_text("not a number\n")
    assert mappings.read_max_map_count(str(limit)) is None
    assert mappings.read_max_map_count(str(tmp_path / "missing")) is None
    assert mappings.mapping_capacity(None) == mappings.DEFAULT_MAPPED_AREAS
    assert mappings.mapping_capacity(10) == mappings.MIN_MAPPED_AREAS
    if os.path.exists(mappings.MAX_MAP_COUNT_PATH):
        with open(mappings.MAX_MAP_COUNT_PATH) as file:
            kernel_limit = int(file.read())
        capacity = mappings.MAX_MAPPED_AREAS
        assert capacity == max(64, kernel_limit // 2)
    assert mappings.MappingCache().capacity == mappings.MAX_MAPPED_AREAS


def _memory_areas() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def test_segment_areas_bounds_the_memory_areas_a_segment_takes(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """What the cache counts for a segment is at least what mapping it adds to the process."""
    _count_mappings(monkeypatch, capacity=1000)
    ds = _page_rows(tmp_path / "d", shards=5, fields=("x",))
    gc.collect()
    before = _memory_areas()
    row = ds["x"][0]
    added = _memory_areas() - before
    assert 5 <= added <= mappings.segment_areas(5)
    assert mappings.CACHE.memory_areas == mappings.segment_areas(5)
    assert int(row[0]) == 0


def test_page_aligned_shards_map_back_to_back(tmp_path: Any) -> None:
    x = np.arange(1000 * 128, dtype=np.float32).reshape(1000, 128)
    with ms.create(tmp_path / "d", fields={"x": ("float32", (128,))}, shard_bytes=64 << 10) as w:
        w.extend({"x": x})
    ds = ms.open(tmp_path / "d")
    assert [shard.rows for shard in ds.shards] == [128] * 7 + [104]
    across = ds["x"][100:900:3]
    np.testing.assert_array_equal(across, x[100:900:3])
    layout = ds._snapshot.layouts["x"]
    if mappings.BACK_TO_BACK:  # 4 KiB pages and MAP_FIXED: one segment, slices stay views
        assert len(layout.parts) == 1
        assert not across.flags.owndata
        assert not across.flags.writeable
        assert mappings.CACHE.get(layout.keys[0]) is not None
    else:  # elsewhere every shard is its own segment, and a slice across them is a copy
        assert len(layout.parts) == len(ds.shards)
        assert across.flags.writeable


def test_sealed_shards_load_with_plain_numpy(images: Any) -> None:
    ds, x, y = images
    for shard in ds.shards:
        assert shard.sealed
        start, stop = shard.row_offset, shard.row_offset + shard.rows
        for name, expected in (("x", x), ("y", y)):
            loaded = np.load(os.path.join(ds.path, shard.files[name].path), mmap_mode="r")
            np.testing.assert_array_equal(loaded, expected[start:stop])
            eager = np.load(os.path.join(ds.path, shard.files[name].path))
            np.testing.assert_array_equal(eager, expected[start:stop])


def test_prefetch_advises_runs_of_adjacent_rows(tmp_path: Any) -> None:
    x = np.arange(64 * 1024, dtype=np.float32).reshape(64, 1024)  # 4 KiB rows
    with ms.create(tmp_path / "d", fields={"x": ("float32", (1024,))}) as writer:
        writer.extend({"x": x})
    ds = ms.open(tmp_path / "d")
    segment = ds["x"]._mapped(ds._snapshot, ds._snapshot.layouts["x"], 0)
    assert segment is not None
    assert pagecache.advise_will_need(segment, np.array([5, 3, 4, 4])) == 1
    assert pagecache.advise_will_need(segment, np.array([0, 10, 20])) == 3
    assert pagecache.advise_will_need(segment, np.array([], dtype=np.int64)) == 0
    ds.prefetch([63, 0, -1, 7])
    ds.prefetch(np.array([1, 2]), fields=["x"])
    np.testing.assert_array_equal(ds.take([63, 0, 7])["x"], x[[63, 0, 7]])
    with pytest.raises(InvalidIndexError, match="out of bounds"):
        ds.prefetch([64])
    with pytest.raises(FieldNotFoundError):
        ds.prefetch([0], fields=["nope"])


def test_refresh_sees_a_commit_whose_manifest_has_the_same_inode_time_and_size(
    tmp_path: Any,
) -> None:
    """On a file system with coarse timestamps that reuses inode numbers, a new manifest can
    look like the old one to stat(); refresh compares the manifest's own checksum instead."""
    path = tmp_path / "ds"
    writer = ms.create(path, fields={"x": ("int64", ())})
    writer.extend({"x": np.arange(3)})
    writer.commit()
    writer.abort()
    ds = ms.open(path)
    assert not ds.refresh()
    manifest = path / "manifest.json"
    before = os.stat(manifest)
    # The next commit, made in a copy of the dataset, then written over the original files in
    # place: same inode, and the old modification time put back.
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    with ms.append(copy) as again:
        again.extend({"x": np.arange(3, 4)})
        again.commit()
        new_manifest = (copy / "manifest.json").read_bytes()
        for shard in (copy / "shards").iterdir():
            (path / "shards" / shard.name).write_bytes(shard.read_bytes())
    assert len(new_manifest) == before.st_size
    with open(manifest, "r+b") as handle:
        handle.write(new_manifest)
    os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(manifest)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size,
    )  # fmt: skip
    assert ds.refresh()
    np.testing.assert_array_equal(ds["x"][:], np.arange(4))
