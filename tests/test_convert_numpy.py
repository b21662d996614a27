"""from_numpy with arrays and .npy files, and properties of the block arithmetic."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memshard as ms
import memshard.convert as ms_convert
import memshard.workers as ms_workers
from memshard import npysource
from memshard.convert import SOURCE_ATTR, STAGING_SUFFIX, convert
from memshard.errors import (
    ConversionStateError,
    LabelError,
    SourceError,
    UnsupportedSourceError,
)
from memshard.sources import (
    MAX_BLOCK_BYTES,
    READ_BLOCK_BYTES,
    SUPPORTED_KINDS,
    block_ranges,
    block_rows_for,
)
from tests.convert_helpers import assert_same_values, with_stop


def assert_nothing_left(dst: Path) -> None:
    assert [entry for entry in os.listdir(dst.parent) if entry.startswith(dst.name)] == []


def checksums(ds: ms.Dataset) -> list[tuple[int, int, dict[str, str | None]]]:
    return [
        (shard.row_offset, shard.rows, {name: f.checksum for name, f in shard.files.items()})
        for shard in ds.shards
    ]


def columns(rows: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    return {
        "x": rng.standard_normal((rows, 3, 4)).astype(">f4"),
        "y": rng.integers(0, 10, rows).astype("<i8"),
        "m": rng.random((rows, 2)) < 0.5,
    }


ROW_BYTES = 48 + 8 + 2


@pytest.fixture
def start_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the worker processes conversions start."""
    started: list[int] = []
    start = ms_workers._start_worker

    def counting() -> Any:
        process, connection = start()
        started.append(process.pid)
        return process, connection

    monkeypatch.setattr(ms_workers, "_start_worker", counting)
    return started


# -- in-memory arrays --------------------------------------------------------------------------


def test_a_lone_array_is_field_x(tmp_path: Path) -> None:
    data = columns()["x"]
    ds = ms.from_numpy(data, tmp_path / "out", shard_bytes=30 * 48)
    assert list(ds.fields) == ["x"]
    assert_same_values(ds["x"][:], data)
    assert [shard.rows for shard in ds.shards] == [30] * 6 + [20]
    record = ds.attrs[SOURCE_ATTR]
    assert record["format"] == "numpy"
    assert record["location"] == "<memory>"
    assert record["fields"]["x"]["dtype"] == "<f4"


def test_a_dict_of_arrays(tmp_path: Path) -> None:
    data = columns()
    data["view"] = np.arange(800, dtype="<u2").reshape(4, 200).T  # not contiguous
    data["fortran"] = np.asfortranarray(np.arange(1200, dtype=">i4").reshape(200, 6))
    ds = ms.from_numpy(data, tmp_path / "out", shard_bytes=64 * ROW_BYTES, attrs={"a": 1})
    assert set(ds.fields) == set(data)
    for name, array in data.items():
        assert_same_values(ds[name][:], array)
    assert ds.attrs["a"] == 1


def test_labels(tmp_path: Path) -> None:
    data = columns()
    ds = ms.from_numpy(data, tmp_path / "out", labels={"y": [str(i) for i in range(10)]})
    assert ds["y"].labels == tuple(str(i) for i in range(10))
    data["y"][150] = 10
    with pytest.raises(LabelError, match="row 150 holds label 10"):
        ms.from_numpy(data, tmp_path / "bad", labels={"y": [str(i) for i in range(10)]})
    assert_nothing_left(tmp_path / "bad")


def test_workers_two_with_arrays_uses_threads(tmp_path: Path, start_counter: list[int]) -> None:
    data = columns(1000)
    one = ms.from_numpy(data, tmp_path / "one", shard_bytes=50 * ROW_BYTES)
    two = ms.from_numpy(data, tmp_path / "two", shard_bytes=50 * ROW_BYTES, workers=2)
    assert start_counter == []
    for ds in (one, two):
        for name, array in data.items():
            assert_same_values(ds[name][:], array)
    assert checksums(one) == checksums(two)
    assert len(one.shards) == 20


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.float64(3.0), "scalar"),
        (np.array(3.0), "scalar"),
        (np.array(["a", "b"]), "string"),
        (np.zeros(3, dtype=[("a", "<i4")]), "compound"),
        (np.array([1, None], dtype=object), "object"),
        (np.zeros((4, 0)), "no elements"),
        (np.zeros(3, dtype="<M8[s]"), "datetime64"),
    ],
    ids=["numpy-scalar", "0-d", "strings", "structured", "object", "zero-size", "datetime"],
)
def test_unsupported_arrays(tmp_path: Path, value: Any, problem: str) -> None:
    if isinstance(value, np.generic):
        with pytest.raises(SourceError, match="expected a numpy array"):
            ms.from_numpy(value, tmp_path / "out")
    else:
        with pytest.raises(UnsupportedSourceError, match=problem) as info:
            ms.from_numpy({"v": value}, tmp_path / "out")
        assert SUPPORTED_KINDS in str(info.value)
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize(
    "src",
    [{}, [1, 2, 3], {"x": [1, 2, 3]}, {"x": 5}],
    ids=["empty-dict", "list", "dict-of-list", "dict-of-int"],
)
def test_what_is_not_an_array(tmp_path: Path, src: Any) -> None:
    with pytest.raises(SourceError):
        ms.from_numpy(src, tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="different row counts") as info:
        ms.from_numpy({"a": np.arange(5), "b": np.arange(6)}, tmp_path / "out")
    assert "a: 5" in str(info.value)
    assert "b: 6" in str(info.value)
    assert_nothing_left(tmp_path / "out")


# -- .npy files --------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_npy_files_are_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = columns()
    paths = {name: save(tmp_path / f"{name}.npy", array) for name, array in data.items()}
    loads: list[tuple[Any, Any]] = []
    load = np.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = load(*args, **kwargs)
        loads.append((kwargs, result))
        return result

    monkeypatch.setattr("memshard.npysource.np.load", spy)
    ds = ms.from_numpy(paths, tmp_path / "out", shard_bytes=40 * ROW_BYTES)
    monkeypatch.undo()
    assert len(loads) == 2 * len(paths)  # once to plan, once to read
    for kwargs, result in loads:
        assert kwargs == {"mmap_mode": "r", "allow_pickle": False}
        assert isinstance(result, np.memmap)
    for name, array in data.items():
        assert_same_values(ds[name][:], array)
    record = ds.attrs[SOURCE_ATTR]
    assert record["location"] == str(tmp_path)  # the directory holding the files
    assert {name: info["origin"] for name, info in record["fields"].items()} == {
        name: str(path) for name, path in paths.items()
    }
    assert set(record["identity"]) == set(paths)


def test_a_lone_file_is_named_after_its_stem(tmp_path: Path) -> None:
    data = np.arange(30, dtype="<i2").reshape(10, 3)
    path = save(tmp_path / "3d train.npy", data)
    ds = ms.from_numpy(str(path), tmp_path / "out")
    assert list(ds.fields) == ["_3d_train"]
    assert_same_values(ds["_3d_train"][:], data)
    assert ds.attrs[SOURCE_ATTR]["location"] == str(path)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(2 * 3 * 5 * 7, dtype="<f8").reshape(14, 3, 5)),
        np.arange(120, dtype=">i8").reshape(40, 3),
        np.arange(60, dtype=">c16").reshape(30, 2) * (1 + 2j),
        np.arange(50, dtype=">f2"),
        np.arange(50) % 3 == 0,
    ],
    ids=["fortran", "big-endian", "big-endian-complex", "big-endian-half", "bool"],
)
def test_npy_layouts_and_byte_orders(tmp_path: Path, array: np.ndarray) -> None:
    path = save(tmp_path / "a.npy", array)
    header_order = np.load(path, mmap_mode="r")
    assert header_order.dtype == array.dtype
    ds = ms.from_numpy({"a": path}, tmp_path / "out", shard_bytes=7 * array[0].nbytes)
    assert_same_values(ds["a"][:], array)
    assert len(ds.shards) > 1


class _Trap:
    """Unpickling this calls ``os.mkdir(marker)``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def test_object_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "objects.npy"
    np.save(path, np.array([_Trap(str(marker)), 1], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedSourceError, match="object") as info:
        ms.from_numpy({"a": path}, tmp_path / "out")
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert_nothing_left(tmp_path / "out")


def test_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.arange(5))
    with pytest.raises(SourceError, match="npz") as info:
        ms.from_numpy(path, tmp_path / "out")
    assert not isinstance(info.value, UnsupportedSourceError)
    assert_nothing_left(tmp_path / "out")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such"):
        ms.from_numpy(tmp_path / "missing.npy", tmp_path / "out")
    directory = tmp_path / "dir.npy"
    directory.mkdir()
    with pytest.raises(SourceError, match="no such"):
        ms.from_numpy(directory, tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize(
    "content",
    [b"this is not an npy file\n" * 20, b"\x93NUMPY\x01\x00garbage"],
    ids=["text", "bad-header"],
)
def test_a_file_that_is_not_npy(tmp_path: Path, content: bytes) -> None:
    """Not an .npy file is a SourceError saying so, not a claim that it holds objects."""
    path = tmp_path / "junk.npy"
    path.write_bytes(content)
    with pytest.raises(SourceError) as info:
        ms.from_numpy({"a": path}, tmp_path / "out")
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsupportedSourceError)
    assert "object" not in str(info.value)
    assert_nothing_left(tmp_path / "out")


def test_files_and_lengths(tmp_path: Path) -> None:
    a = save(tmp_path / "a.npy", np.arange(5))
    b = save(tmp_path / "b.npy", np.arange(6))
    with pytest.raises(SourceError, match="different row counts"):
        ms.from_numpy({"a": a, "b": b}, tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_workers_two_with_files_uses_processes(
    tmp_path: Path, start_counter: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    data = columns(1000)
    paths = {name: save(tmp_path / f"{name}.npy", array) for name, array in data.items()}
    one = ms.from_numpy(paths, tmp_path / "one", shard_bytes=50 * ROW_BYTES)
    assert start_counter == []
    two = ms.from_numpy(
        paths, tmp_path / "two", shard_bytes=50 * ROW_BYTES, workers=2, progress=True
    )
    assert len(start_counter) == 2
    assert "100%" in capsys.readouterr().err  # workers report progress as they copy
    for ds in (one, two):
        for name, array in data.items():
            assert_same_values(ds[name][:], array)
    assert checksums(one) == checksums(two)


def test_files_mixed_with_arrays_use_threads(tmp_path: Path, start_counter: list[int]) -> None:
    data = columns(600)
    src: dict[str, Any] = dict(data)
    src["x"] = save(tmp_path / "x.npy", data["x"])
    ds = ms.from_numpy(src, tmp_path / "out", shard_bytes=50 * ROW_BYTES, workers=2)
    assert start_counter == []
    for name, array in data.items():
        assert_same_values(ds[name][:], array)


@pytest.mark.parametrize("in_memory", [False, True])
def test_interrupted_conversion_resumes(tmp_path: Path, in_memory: bool) -> None:
    data = columns(500)
    src: dict[str, Any] = (
        data if in_memory else {k: save(tmp_path / f"{k}.npy", v) for k, v in data.items()}
    )
    dst = tmp_path / "out"
    shard_bytes = 50 * ROW_BYTES
    plan = with_stop(npysource.plan(src), 230, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=shard_bytes)
    staged = ms.open(str(dst) + STAGING_SUFFIX)
    assert len(staged) == 200
    for name, array in data.items():
        assert_same_values(staged[name][:], array[:200])
    with pytest.raises(ConversionStateError):
        ms.from_numpy(src, dst, shard_bytes=shard_bytes)
    ds = ms.from_numpy(src, dst, shard_bytes=shard_bytes, resume=True, workers=2)
    for name, array in data.items():
        assert_same_values(ds[name][:], array)
    assert not os.path.lexists(str(dst) + STAGING_SUFFIX)


def test_resume_refuses_a_rewritten_file(tmp_path: Path) -> None:
    data = columns(500)
    paths = {k: save(tmp_path / f"{k}.npy", v) for k, v in data.items()}
    dst = tmp_path / "out"
    plan = with_stop(npysource.plan(paths), 230, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=50 * ROW_BYTES)
    before = os.stat(paths["y"])
    save(paths["y"], data["y"][::-1].copy())
    os.utime(paths["y"], ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConversionStateError, match="identity"):
        ms.from_numpy(paths, dst, resume=True)


def test_bad_worker_counts(tmp_path: Path) -> None:
    bad_counts: list[Any] = [0, -1, True, 1.0, ms_convert.MAX_WORKERS + 1]
    for workers in bad_counts:
        with pytest.raises(ms.errors.ArgumentError, match="workers"):
            ms.from_numpy(np.arange(4), tmp_path / "out", workers=workers)
    assert_nothing_left(tmp_path / "out")


# -- block arithmetic --------------------------------------------------------------------------


@given(
    start=st.integers(0, 10_000),
    length=st.integers(0, 10_000),
    block_rows=st.integers(1, 3_000),
)
def test_block_ranges_cover_the_rows_in_aligned_blocks(
    start: int, length: int, block_rows: int
) -> None:
    stop = start + length
    ranges = list(block_ranges(start, stop, block_rows))
    if length == 0:
        assert ranges == []
        return
    assert ranges[0][0] == start
    assert ranges[-1][1] == stop
    for (_, end), (begin, _) in itertools.pairwise(ranges):
        assert end == begin
        assert end % block_rows == 0
    for begin, end in ranges:
        assert 0 < end - begin <= block_rows
        assert begin // block_rows == (end - 1) // block_rows  # never crosses a block edge
    assert len(ranges) == (stop - 1) // block_rows - start // block_rows + 1


@given(chunk_rows=st.integers(1, 1 << 20), row_bytes=st.integers(1, 1 << 26))
def test_block_rows_are_whole_chunks_of_about_the_block_size(
    chunk_rows: int, row_bytes: int
) -> None:
    rows = block_rows_for(chunk_rows, row_bytes)
    assert rows > 0
    if chunk_rows * row_bytes > MAX_BLOCK_BYTES:  # a huge chunk is read in bounded parts
        assert rows == 1 or rows * row_bytes <= MAX_BLOCK_BYTES
        assert rows == 1 or (rows + 1) * row_bytes > MAX_BLOCK_BYTES
        return
    assert rows % chunk_rows == 0
    if chunk_rows * row_bytes >= READ_BLOCK_BYTES:
        assert rows == chunk_rows
    else:
        assert rows * row_bytes <= READ_BLOCK_BYTES
        assert (rows + chunk_rows) * row_bytes > READ_BLOCK_BYTES
