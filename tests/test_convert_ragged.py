"""Variable-length data into and out of memshard: HDF5 variable-length datasets and lists of
arrays become ragged fields, ``to_hdf5`` writes them back as variable-length datasets, zarr
refuses them by name; conversion parts are sized by bytes and a resume reads no committed row
again. Every value is compared with what h5py reads, or with the rows given."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numcodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memshard as ms
import memshard.cli as ms_cli
import memshard.hdf5 as ms_hdf5
import memshard.npysource as ms_npysource
import memshard.sources as ms_sources
from memshard.convert import SOURCE_ATTR, convert
from memshard.convertjob import RAGGED_PART_FILL, ShardJob, part_rows_for
from memshard.errors import (
    ConversionStateError,
    SchemaError,
    SourceError,
    UnsupportedSourceError,
)
from memshard.manifest import FieldSpec
from memshard.parts import PartTarget
from memshard.ragged import Ragged
from memshard.sources import SourceField
from memshard.vlenrows import TAIL_ATTRIBUTE, VlenLayout, packed_rows
from tests.convert_helpers import assert_same_values, staging_of, with_stop
from tests.helpers import run_from_repo
from tests.strategies import ragged_rows

# -- helpers -----------------------------------------------------------------------------------


def random_rows(
    count: int, dtype: Any, *, seed: int = 0, longest: int = 60, tail: tuple[int, ...] = ()
) -> list[np.ndarray]:
    """``count`` rows of ``dtype`` and random lengths from 0 to ``longest`` (every tenth row
    empty), of shape ``(n, *tail)``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    lengths = rng.integers(0, longest + 1, count)
    lengths[::10] = 0
    rows = []
    for length in lengths.tolist():
        shape = (length, *tail)
        row: np.ndarray
        if dtype.kind == "b":
            row = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            row = rng.integers(
                info.min, info.max, shape, endpoint=True, dtype=dtype.newbyteorder("=")
            )
        elif dtype.kind == "c":
            row = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        else:
            row = rng.standard_normal(shape) * 1000
        rows.append(np.asarray(row).astype(dtype))
    return rows


def object_rows(rows: list[np.ndarray]) -> np.ndarray:
    """The rows as the object array h5py writes to a variable-length dataset."""
    objects = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        objects[index] = row
    return objects


def write_vlen(
    path: Path,
    ragged: dict[str, list[np.ndarray]],
    fixed: dict[str, np.ndarray] | None = None,
    chunks: int | None = 64,
) -> None:
    """An HDF5 file holding a variable-length dataset per entry of ``ragged`` (of the first
    row's dtype) and a fixed one per entry of ``fixed``."""
    with h5py.File(path, "w") as handle:
        for name, rows in ragged.items():
            dataset = handle.create_dataset(
                name,
                shape=(len(rows),),
                dtype=h5py.vlen_dtype(rows[0].dtype),
                chunks=(min(chunks, len(rows)),) if chunks and rows else None,
            )
            if rows:  # not dataset[...] =: h5py refuses rows that all have one length
                dataset.write_direct(object_rows(rows))
        for name, values in (fixed or {}).items():
            handle[name] = values


def h5_rows(path: Path, name: str) -> list[np.ndarray]:
    """The rows h5py reads from the variable-length dataset ``name``."""
    with h5py.File(path, "r") as handle:
        return list(handle[name][()])


def assert_rows(got: Any, rows: list[np.ndarray]) -> None:
    """A ragged column (or batch) holds exactly ``rows``, dtype, shape and bits."""
    assert len(got) == len(rows)
    batch = got if isinstance(got, Ragged) else got[:]
    for row, expected in zip(batch, rows, strict=True):
        assert_same_values(row, expected)


def shard_data_bytes(ds: ms.Dataset, index: int) -> int:
    """Bytes of data of shard ``index`` as a ragged dataset counts them against shard_bytes."""
    shard = ds.shards[index]
    total = 0
    for name, spec in ds.manifest.fields.items():
        if spec.ragged:
            total += shard.files[name].nbytes + (shard.rows + 1) * 8
        else:
            total += shard.rows * spec.row_bytes
    return total


def assert_no_stray_files(ds: ms.Dataset) -> None:
    """Every file in ``shards/`` is named by the manifest (values and offsets); no part is
    left."""
    named = set()
    for shard in ds.shards:
        for name, file in shard.files.items():
            named.add(os.path.basename(file.path))
            if ds.manifest.fields[name].ragged:
                named.add(os.path.basename(file.offsets_path))
    assert set(os.listdir(os.path.join(ds.path, "shards"))) == named
    assert os.listdir(os.path.join(ds.path, "parts")) == []


@dataclasses.dataclass(frozen=True)
class Recording:
    """An opener whose readers note every block asked for in ``calls`` (in this process)."""

    inner: Any
    calls: list[tuple[str, int, int]]

    def __call__(self) -> RecordingReader:
        return RecordingReader(self.inner(), self.calls)


class RecordingReader:
    def __init__(self, inner: Any, calls: list[tuple[str, int, int]]) -> None:
        self._inner = inner
        self._calls = calls

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        self._calls.append((name, start, stop))
        self._inner.read(name, start, stop, out)

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        self._calls.append((name, start, stop))
        packed: tuple[np.ndarray, np.ndarray] = self._inner.read_ragged(name, start, stop)
        return packed

    def close(self) -> None:
        self._inner.close()


# -- HDF5 variable-length datasets -------------------------------------------------------------

DTYPES = ["<i4", "<f4", "<i2", "|b1", "<c8", "<u8", "<f2", "|i1", ">f4", ">i8"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_vlen_dataset_becomes_a_ragged_field(tmp_path: Path, dtype: str) -> None:
    src = tmp_path / "src.h5"
    rows = random_rows(200, dtype, seed=1)
    write_vlen(src, {"tokens": rows}, {"label": np.arange(200)})
    ds = ms.from_hdf5(src, tmp_path / "out")
    spec = ds.manifest.fields["tokens"]
    assert spec.ragged
    assert spec.shape == ()
    assert spec.numpy_dtype == np.dtype(dtype).newbyteorder("<")
    assert ds["tokens"].shape == (200, None)
    assert_rows(ds["tokens"], rows)
    np.testing.assert_array_equal(ds["label"][:], np.arange(200))
    assert ds.attrs[SOURCE_ATTR]["fields"]["tokens"] == {
        "origin": "/tokens",
        "dtype": np.dtype(dtype).newbyteorder("<").str,
        "shape": [],
        "attrs": {},
        "kind": "ragged",
    }
    assert ds.verify().ok


def test_h5py_reads_big_endian_vlen_elements_in_a_way_memshard_knows() -> None:
    """h5py 3.16 returns the stored bytes of big-endian variable-length elements labelled
    native (PyTables' big-endian VLArray reads as garbage); memshard finds out which."""
    assert ms_hdf5.vlen_byte_order() in ("raw", "converted")
    if h5py.__version__ == "3.16.0":
        assert ms_hdf5.vlen_byte_order() == "raw"


def test_all_rows_empty(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = [np.zeros(0, "<f4")] * 30
    write_vlen(src, {"points": rows})
    ds = ms.from_hdf5(src, tmp_path / "out")
    assert ds["points"].lengths.tolist() == [0] * 30
    assert ds["points"][:].values.shape == (0,)
    assert ds.verify().ok


def test_many_rows_fill_shards_of_shard_bytes_read_in_bounded_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 rows (about 1 MiB of int32) in shards of 32 KiB, read in blocks of about
    4 KiB: every shard holds at most shard_bytes, parts rarely spill into a second shard,
    every row is read once, in blocks of whole chunks."""
    src = tmp_path / "src.h5"
    rows = random_rows(5000, "<i4", seed=3, longest=100)
    write_vlen(src, {"tokens": rows}, {"label": np.arange(5000)}, chunks=50)
    monkeypatch.setattr(ms_sources, "READ_BLOCK_BYTES", 4096)
    calls: list[tuple[str, int, int]] = []
    plan = ms_hdf5.plan(src, None)
    plan = dataclasses.replace(plan, opener=Recording(plan.opener, calls))
    shard_bytes = 32 << 10
    ds = convert(plan, tmp_path / "out", shard_bytes=shard_bytes)
    assert_rows(ds["tokens"], rows)
    np.testing.assert_array_equal(ds["label"][:], np.arange(5000))
    data = [shard_data_bytes(ds, index) for index in range(len(ds.shards))]
    assert max(data) <= shard_bytes
    total = sum(data)
    assert total / shard_bytes < len(ds.shards) <= 1.3 * total / (RAGGED_PART_FILL * shard_bytes)
    for name in ("tokens", "label"):
        blocks = sorted((start, stop) for field, start, stop in calls if field == name)
        assert blocks[0][0] == 0
        assert blocks[-1][1] == 5000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
        # Whole chunks, but where a part starts or ends.
        assert sum(stop % 50 != 0 for _, stop in blocks) <= len(ds.shards)
        assert max(stop - start for start, stop in blocks) <= 100
    assert_no_stray_files(ds)
    assert ds.verify().ok


def test_workers_write_the_same_shards(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = random_rows(3000, "<f4", seed=4, longest=80)
    write_vlen(src, {"x": rows}, {"y": np.arange(3000, dtype="<i2")})
    one = ms.from_hdf5(src, tmp_path / "one", shard_bytes=48 << 10)
    two = ms.from_hdf5(src, tmp_path / "two", shard_bytes=48 << 10, workers=2)
    assert [shard.rows for shard in one.shards] == [shard.rows for shard in two.shards]
    assert len(one.shards) > 4
    assert_rows(two["x"], rows)
    for first, second in zip(one.shards, two.shards, strict=True):
        assert first.files["x"].checksum == second.files["x"].checksum
        assert first.files["x"].offsets_checksum == second.files["x"].offsets_checksum
    assert_no_stray_files(two)


# -- parts sized by bytes ----------------------------------------------------------------------


def _target(fields: dict[str, FieldSpec], shard_rows: int, shard_bytes: int | None) -> PartTarget:
    return PartTarget(
        root="/nowhere", uuid="u", fields=fields, labels={}, shard_rows=shard_rows,
        shard_bytes=shard_bytes,
    )  # fmt: skip


def test_a_part_is_a_shard_without_ragged_fields() -> None:
    fields = {"x": FieldSpec(dtype="<f4", shape=(4,))}
    sources = {"x": SourceField("/x", np.dtype("<f4"), (4,), 10, {})}
    assert part_rows_for(_target(fields, 1000, None), sources) == 1000


def test_a_part_of_ragged_fields_holds_the_rows_estimated_to_fill_most_of_a_shard() -> None:
    fields = {
        "tokens": FieldSpec(dtype="<i4", shape=(), kind="ragged"),
        "label": FieldSpec(dtype="<i8", shape=()),
    }
    sources = {
        "tokens": SourceField("/t", np.dtype("<i4"), (), 64, {}, True, 300.0),
        "label": SourceField("/l", np.dtype("<i8"), (), 64, {}),
    }
    assert sources["tokens"].row_bytes == 300 * 4 + 8
    rows = part_rows_for(_target(fields, 1 << 20, 1 << 20), sources)
    assert rows == int((1 << 20) * RAGGED_PART_FILL) // (1208 + 8)
    assert part_rows_for(_target(fields, 100, 1 << 20), sources) == 100  # at most shard_rows
    assert part_rows_for(_target(fields, 1 << 20, 10), sources) == 1  # at least one row


def test_parts_start_where_the_committed_rows_end() -> None:
    job = ShardJob(target=_target({}, 10, None), sources={}, vocabulary_sizes={}, part_rows=7)
    assert job.parts(0, 15) == [(0, 0, 7), (1, 7, 14), (2, 14, 15)]
    assert job.parts(9, 23) == [(1, 9, 16), (2, 16, 23)]
    assert job.parts(23, 23) == []


def test_discarding_a_part_removes_the_offsets_files_of_its_ragged_fields(tmp_path: Path) -> None:
    """What a conversion's resume relies on to leave no file of an uncommitted part."""
    path = tmp_path / "ds"
    ms.create(path, {"x": ("int32", (None,)), "y": ("int64", ())}, shard_bytes=64).close()
    committed = ms.write_part(path, key=0)
    committed.extend({"x": [np.arange(5)] * 8, "y": np.arange(8)})
    ms.commit_parts(path, [committed.close()])
    finished = ms.write_part(path, key=1)
    finished.extend({"x": [np.arange(5)] * 8, "y": np.arange(8)})
    part = finished.close()
    assert any(name.endswith(".offsets.npy") and name.startswith(part.id)
               for name in os.listdir(path / "shards"))  # fmt: skip
    assert ms.discard_parts(path) == [part.id]
    assert_no_stray_files(ms.open(path))
    assert len(ms.open(path)) == 8


class FixedOnly:
    """A reader of a source module that knows no ragged fields."""

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        raise AssertionError("read is never called for a ragged field")

    def close(self) -> None:
        pass


class Packed(FixedOnly):
    """A reader that gives the same packed rows, whatever is asked."""

    def __init__(self, values: Any, offsets: Any) -> None:
        self.packed = (np.asarray(values), np.asarray(offsets))

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.packed


@pytest.mark.parametrize(
    ("reader", "message"),
    [
        (FixedOnly(), "field 'x' is ragged, and this source reads no ragged rows"),
        (Packed(np.arange(3), [0, 3]), "field 'x': the source gave 1 rows for rows 0:2"),
        (Packed(np.arange(3), [0, 4, 3]), "field 'x', rows 0:2: the source's packed rows are"),
    ],
    ids=["no-read-ragged", "row-count", "offsets"],
)
def test_a_source_that_gives_no_valid_packed_rows_is_a_source_error(
    tmp_path: Path, reader: Any, message: str
) -> None:
    """What a source module (Arrow, say) gets wrong is said, never written."""
    plan = dataclasses.replace(
        ms_npysource.plan({"x": [np.arange(3), np.arange(0)]}), opener=lambda: reader
    )
    with pytest.raises(SourceError) as info:
        convert(plan, tmp_path / "out")
    assert message in str(info.value)
    assert len(ms.open(staging_of(tmp_path / "out"))) == 0


# -- interruption and resume -------------------------------------------------------------------

RESUME_ROWS = 2000
RESUME_SHARD_BYTES = 24 << 10


def write_resumable(src: Path) -> list[np.ndarray]:
    rows = random_rows(RESUME_ROWS, "<i2", seed=5, longest=70)
    write_vlen(src, {"tokens": rows}, {"label": np.arange(RESUME_ROWS, dtype="<i4")})
    return rows


def assert_complete(ds: ms.Dataset, rows: list[np.ndarray]) -> None:
    assert_rows(ds["tokens"], rows)
    np.testing.assert_array_equal(ds["label"][:], np.arange(RESUME_ROWS))
    assert not os.path.lexists(staging_of(Path(ds.path)))
    assert_no_stray_files(ds)
    assert ds.verify().ok


def staged_rows(dst: Path, rows: list[np.ndarray]) -> int:
    """The staging dataset holds a prefix of the rows, in sealed shards; its length."""
    assert not os.path.lexists(dst)
    staged = ms.open(staging_of(dst))
    count = len(staged)
    assert count < RESUME_ROWS
    assert all(shard.sealed for shard in staged.shards)
    assert_rows(staged["tokens"], rows[:count])
    np.testing.assert_array_equal(staged["label"][:], np.arange(count))
    return count


def test_an_interrupted_conversion_resumes_without_reading_committed_rows(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = write_resumable(src)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(with_stop(ms_hdf5.plan(src, None), 1300, "interrupt"), dst,
                shard_bytes=RESUME_SHARD_BYTES)  # fmt: skip
    committed = staged_rows(dst, rows)
    assert committed > 0
    with pytest.raises(ConversionStateError, match="resume=True"):
        ms.from_hdf5(src, dst)
    calls: list[tuple[str, int, int]] = []
    plan = ms_hdf5.plan(src, None)
    ds = convert(dataclasses.replace(plan, opener=Recording(plan.opener, calls)), dst,
                 resume=True)  # fmt: skip
    assert min(start for _, start, _ in calls) == committed
    assert sum(stop - start for name, start, stop in calls if name == "tokens") == (
        RESUME_ROWS - committed
    )
    assert_complete(ds, rows)
    assert ms.from_hdf5(src, dst, resume=True).path == ds.path  # finished: returned as it is


def test_a_resume_with_another_shard_size_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = write_resumable(src)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(with_stop(ms_hdf5.plan(src, None), 900, "interrupt"), dst,
                shard_bytes=RESUME_SHARD_BYTES)  # fmt: skip
    staged_rows(dst, rows)
    with pytest.raises(ConversionStateError) as info:
        ms.from_hdf5(src, dst, resume=True, shard_bytes=RESUME_SHARD_BYTES * 2)
    assert f"shard_bytes={RESUME_SHARD_BYTES}" in str(info.value)
    assert f"shard_bytes={RESUME_SHARD_BYTES * 2}" in str(info.value)
    ds = ms.from_hdf5(src, dst, resume=True, shard_bytes=RESUME_SHARD_BYTES)
    assert_complete(ds, rows)


def test_a_failed_read_in_a_worker_keeps_a_prefix_that_a_resume_completes(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = write_resumable(src)
    dst = tmp_path / "out"
    plan = with_stop(ms_hdf5.plan(src, None), 1100, "error")
    with pytest.raises(OSError, match="test read error at row 1100"):
        convert(plan, dst, shard_bytes=RESUME_SHARD_BYTES, workers=2)
    assert staged_rows(dst, rows) < 1100
    ds = ms.from_hdf5(src, dst, resume=True, workers=2)
    assert_complete(ds, rows)


def test_a_killed_conversion_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = write_resumable(src)
    dst = tmp_path / "out"
    code = (
        "from tests.convert_helpers import main; "
        f"main({str(src)!r}, {str(dst)!r}, 1500, {RESUME_SHARD_BYTES}, 1)"
    )
    child = run_from_repo([sys.executable, "-c", code])
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert staged_rows(dst, rows) < 1500
    ds = ms.from_hdf5(src, dst, resume=True)
    assert_complete(ds, rows)


# -- refusals ----------------------------------------------------------------------------------


def test_a_tail_attribute_that_is_no_shape_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_vlen(src, {"bad": random_rows(10, "<i4")}, {"ok": np.arange(10)})
    with h5py.File(src, "r+") as handle:
        handle["bad"].attrs[TAIL_ATTRIBUTE] = np.array([3, 0])
    with pytest.raises(UnsupportedSourceError, match=r"/bad.*memshard_tail") as info:
        ms.from_hdf5(src, tmp_path / "out", fields={"x": "/bad"})
    assert str(src) in str(info.value)
    assert "/bad" in ms_hdf5.plan(src, None).skipped


def test_a_row_that_does_not_fill_its_tail_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    rows = [np.arange(6, dtype="<i4"), np.arange(4, dtype="<i4"), np.arange(3, dtype="<i4")]
    write_vlen(src, {"strokes": rows})
    with h5py.File(src, "r+") as handle:
        handle["strokes"].attrs[TAIL_ATTRIBUTE] = np.array([3])
    with pytest.raises(SourceError) as info:
        ms.from_hdf5(src, tmp_path / "out")
    message = str(info.value)
    assert f"{src}: dataset '/strokes', block of rows 0:3: row 1" in message
    assert "4 elements" in message
    assert "(3,)" in message


# -- to_hdf5 and back --------------------------------------------------------------------------


def ragged_dataset(path: Path) -> tuple[ms.Dataset, dict[str, list[np.ndarray]]]:
    rows = {
        "tokens": random_rows(300, "<i4", seed=6, longest=50),
        "strokes": random_rows(300, "<i2", seed=7, longest=12, tail=(3,)),
        "mask": random_rows(300, "|b1", seed=8, longest=20),
    }
    with ms.create(
        path,
        {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)),
         "mask": ("bool", (None,)), "label": ("int64", ())},
        labels={"label": ["cat", "dog"]},
        attrs={"source": "test"},
        shard_bytes=8 << 10,
    ) as writer:  # fmt: skip
        writer.extend({**rows, "label": np.arange(300) % 2})
    return ms.open(path), rows


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_to_hdf5_writes_vlen_datasets_that_from_hdf5_reads_back(
    tmp_path: Path, compression: str | None
) -> None:
    original, rows = ragged_dataset(tmp_path / "orig")
    assert len(original.shards) > 3
    exported = tmp_path / "export.h5"
    ms.to_hdf5(original, exported, compression=compression)
    with h5py.File(exported, "r") as handle:
        assert h5py.check_vlen_dtype(handle["tokens"].dtype) == np.dtype("<i4")
        assert h5py.check_vlen_dtype(handle["strokes"].dtype) == np.dtype("<i2")
        assert handle["strokes"].attrs[TAIL_ATTRIBUTE].tolist() == [3]
        assert TAIL_ATTRIBUTE not in handle["tokens"].attrs
    for index in (0, 7, 299):  # what another reader of the file sees
        np.testing.assert_array_equal(h5_rows(exported, "tokens")[index], rows["tokens"][index])
        np.testing.assert_array_equal(
            h5_rows(exported, "strokes")[index], rows["strokes"][index].reshape(-1)
        )
    back = ms.from_hdf5(exported, tmp_path / "back")
    assert back.manifest.fields["strokes"] == original.manifest.fields["strokes"]
    for name, expected in rows.items():
        assert_rows(back[name], expected)
    np.testing.assert_array_equal(back["label"][:], original["label"][:])
    assert back["label"].labels == ("cat", "dog")
    assert back.attrs["source"] == "test"


def test_to_hdf5_of_a_field_subset_and_of_no_rows(tmp_path: Path) -> None:
    original, rows = ragged_dataset(tmp_path / "orig")
    ms.to_hdf5(original, tmp_path / "tokens.h5", fields=["tokens"])
    back = ms.from_hdf5(tmp_path / "tokens.h5", tmp_path / "back")
    assert list(back.fields) == ["tokens"]
    assert_rows(back["tokens"], rows["tokens"])
    empty = ms.create(tmp_path / "empty", {"tokens": ("int32", (None,))})
    empty.close()
    ms.to_hdf5(tmp_path / "empty", tmp_path / "empty.h5")
    with h5py.File(tmp_path / "empty.h5", "r") as handle:
        assert handle["tokens"].shape == (0,)


# -- zarr --------------------------------------------------------------------------------------


def write_zarr2_vlen(store: Path, rows: list[np.ndarray], chunk: int = 4) -> None:
    """A zarr format 2 group as zarr-python 2 writes it: ``tokens``, an object array of
    variable-length int32 rows (numcodecs ``vlen-array``, zlib), and ``label``, int64."""
    store.mkdir()
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / "tokens").mkdir()
    metadata = {
        "zarr_format": 2, "shape": [len(rows)], "chunks": [chunk], "dtype": "|O",
        "compressor": {"id": "zlib", "level": 1}, "fill_value": 0, "order": "C",
        "filters": [{"id": "vlen-array", "dtype": "<i4"}], "dimension_separator": ".",
    }  # fmt: skip
    (store / "tokens" / ".zarray").write_text(json.dumps(metadata))
    codec, zlib = numcodecs.VLenArray("<i4"), numcodecs.Zlib(1)
    for index, start in enumerate(range(0, len(rows), chunk)):
        block = object_rows(rows[start : start + chunk])
        (store / "tokens" / str(index)).write_bytes(zlib.encode(codec.encode(block)))
    import zarr

    zarr.open_group(store, mode="a").create_array("label", data=np.arange(len(rows)))


def test_zarr_vlen_arrays_are_refused_by_name(tmp_path: Path) -> None:
    """zarr-python 3 has no data type for zarr-python 2's object arrays: such an array is
    refused when requested and left out, with the reason, otherwise."""
    store = tmp_path / "store.zarr"
    write_zarr2_vlen(store, random_rows(10, "<i4", seed=9))
    dst = tmp_path / "out"
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_zarr(store, dst, fields={"t": "tokens"})
    message = str(info.value)
    assert message.startswith(f"{store}: field 't' (tokens): variable-length rows of <i4")
    assert "'vlen-array'" in message
    assert "from_numpy" in message
    assert not os.path.lexists(dst)
    assert not os.path.lexists(staging_of(dst))
    ds = ms.from_zarr(store, dst)
    assert list(ds.fields) == ["label"]
    import memshard.zarr as ms_zarr

    assert "vlen-array" in ms_zarr.plan(store, None).skipped["tokens"]


def test_to_zarr_refuses_a_ragged_field_and_writes_nothing(tmp_path: Path) -> None:
    original, _ = ragged_dataset(tmp_path / "orig")
    target = tmp_path / "export.zarr"
    with pytest.raises(SchemaError) as info:
        ms.to_zarr(original, target)
    assert "field 'tokens' is ragged" in str(info.value)
    assert "fields=['label']" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["orig"]
    ms.to_zarr(original, target, fields=["label"])
    assert (
        ms.from_zarr(target, tmp_path / "back")["label"][:].tolist()
        == original["label"][:].tolist()
    )


# -- from_numpy: lists of arrays ---------------------------------------------------------------


def test_a_list_of_arrays_becomes_a_ragged_field(tmp_path: Path) -> None:
    tokens = random_rows(500, "<i4", seed=10)
    strokes = random_rows(500, ">i2", seed=11, longest=9, tail=(3,))
    strokes[3] = np.zeros((0,), "<f8")  # [] as numpy makes it: an empty row of any dtype
    ds = ms.from_numpy(
        {"tokens": tokens, "strokes": tuple(strokes), "y": np.arange(500)},
        tmp_path / "out",
        shard_bytes=16 << 10,
    )
    assert ds.manifest.fields["strokes"] == FieldSpec(dtype="<i2", shape=(3,), kind="ragged")
    assert len(ds.shards) > 2
    assert_rows(ds["tokens"], tokens)
    strokes[3] = np.zeros((0, 3), "<i2")
    assert_rows(ds["strokes"], strokes)
    assert ds.attrs[SOURCE_ATTR]["fields"]["tokens"]["kind"] == "ragged"


def test_an_object_array_and_a_lone_list_of_arrays(tmp_path: Path) -> None:
    rows = random_rows(40, "<f8", seed=12)
    ds = ms.from_numpy(object_rows(rows), tmp_path / "objects")
    assert list(ds.fields) == ["x"]
    assert_rows(ds["x"], rows)
    ds = ms.from_numpy(rows, tmp_path / "list", workers=2)
    assert_rows(ds["x"], rows)


def test_lists_are_read_by_threads(tmp_path: Path) -> None:
    rows = random_rows(2000, "<u2", seed=13, longest=200)
    ds = ms.from_numpy({"x": rows, "y": np.arange(2000)}, tmp_path / "out",
                       shard_bytes=32 << 10, workers=3)  # fmt: skip
    assert len(ds.shards) > 6
    assert_rows(ds["x"], rows)
    assert_no_stray_files(ds)


BAD_LISTS: list[tuple[Any, type[Exception], str]] = [
    ([np.arange(3), np.zeros((2, 2))], SourceError, "row 1 has shape (2, 2) and row 0 (3,)"),
    ([np.zeros((2, 3)), np.zeros((1, 4))], SourceError, "row 1 has shape (1, 4) and row 0 (2, 3)"),
    ([np.arange(3, dtype="<i4"), np.arange(2.0)], SourceError,
     "row 1 has dtype float64 and row 0 int32"),
    ([np.array(["a", "b"])], UnsupportedSourceError, "row 0 holds string dtype <U1"),
    ([np.arange(2), np.array(["ab"])], SourceError, "row 1 has dtype <U2 and row 0 int64"),
    ([np.arange(2), 7], SourceError, "row 1 is a scalar (7)"),
    ([np.arange(2), [1, [2, 3]]], SourceError, "row 1 is no array of numbers"),
    ([np.arange(2), np.array([None])], UnsupportedSourceError, "row 1 holds object data"),
    ([np.zeros((2, 0))], UnsupportedSourceError, "hold no elements"),
    ([np.zeros(2, dtype="<M8[s]")], UnsupportedSourceError, "row 0 holds dtype datetime64[s]"),
    ([], SourceError, "an empty list of rows"),
    (np.array([np.arange(2), None], dtype=object), UnsupportedSourceError,
     "an object array whose row 1 holds NoneType"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "error", "message"), BAD_LISTS)
def test_rows_of_a_list_are_checked(
    tmp_path: Path, rows: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        ms.from_numpy({"y": np.arange(len(rows)), "tokens": rows}, tmp_path / "out")
    assert type(info.value) is error
    assert str(info.value).startswith("field 'tokens': ")
    assert message in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_list_of_another_length_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="different row counts"):
        ms.from_numpy({"x": [np.arange(2)] * 3, "y": np.arange(4)}, tmp_path / "out")


def test_labels_are_never_taken_for_a_ragged_field(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="ragged"):
        ms.from_numpy({"x": [np.arange(2)]}, tmp_path / "out", labels={"x": ["a", "b", "c"]})


# -- the command line --------------------------------------------------------------------------


def test_memshard_convert_takes_a_vlen_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "tokens.h5"
    rows = random_rows(400, "<i4", seed=14)
    write_vlen(src, {"tokens": rows}, {"label": np.arange(400)})
    dst = tmp_path / "out"
    assert ms_cli.main(["convert", str(src), str(dst), "--shard-size", "8k", "-q"]) == ms_cli.OK
    assert_rows(ms.open(dst)["tokens"], rows)
    assert ms_cli.main(["convert", str(src), str(dst), "--resume"]) == ms_cli.OK
    assert f"{dst}: 400 rows" in capsys.readouterr().out


# -- properties --------------------------------------------------------------------------------

HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(
    drawn=ragged_rows(max_rows=40).filter(lambda drawn: drawn[0] and 0 not in drawn[2]),
    shard_bytes=st.integers(16, 2048),
)
def test_any_list_of_rows_converts_exactly(
    tmp_path: Path, drawn: tuple[list[np.ndarray], np.dtype[Any], tuple[int, ...]],
    shard_bytes: int,
) -> None:  # fmt: skip
    rows, _, _ = drawn
    dst = Path(tempfile.mkdtemp(dir=tmp_path)) / "out"
    ds = ms.from_numpy({"x": rows}, dst, shard_bytes=shard_bytes)
    assert_rows(ds["x"], rows)
    for index, shard in enumerate(ds.shards):
        assert shard.rows == 1 or shard_data_bytes(ds, index) <= shard_bytes


@HYPOTHESIS
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=300),
    dtype=st.sampled_from(["<i4", "<f4", "<i2"]),
    shard_bytes=st.integers(64, 4096),
    block_bytes=st.integers(1, 2048),
    chunk=st.integers(1, 64),
)
def test_any_vlen_dataset_converts_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lengths: list[int], dtype: str,
    shard_bytes: int, block_bytes: int, chunk: int,
) -> None:  # fmt: skip
    monkeypatch.setattr(ms_sources, "READ_BLOCK_BYTES", block_bytes)
    rows = [np.arange(length).astype(dtype) + index for index, length in enumerate(lengths)]
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    write_vlen(directory / "src.h5", {"x": rows}, chunks=chunk)
    ds = ms.from_hdf5(directory / "src.h5", directory / "out", shard_bytes=shard_bytes)
    assert_rows(ds["x"], rows)
    assert ds["x"].lengths.tolist() == lengths
    for index, shard in enumerate(ds.shards):
        assert shard.rows == 1 or shard_data_bytes(ds, index) <= shard_bytes


@HYPOTHESIS
@given(
    lengths=st.lists(st.integers(0, 6), max_size=30),
    tail=st.sampled_from([(), (3,), (2, 2)]),
    dtype=st.sampled_from([">i4", "<f8", ">c8", "|b1", "<u2", ">f2"]),
    flattened=st.booleans(),
    converted=st.booleans(),
)
def test_packed_rows_are_the_rows_h5py_hands_over(
    lengths: list[int], tail: tuple[int, ...], dtype: str, flattened: bool, converted: bool
) -> None:
    """Whether h5py converts a foreign byte order or hands over the stored bytes labelled
    native (``raw``), rows of array elements or flattened ones: packed, they are the rows."""
    element = np.dtype(dtype)
    expected = [
        (np.arange(n * int(np.prod(tail))) % 7).astype(element).reshape((n, *tail)) for n in lengths
    ]
    raw = element.byteorder == ">" and not converted
    handed = np.empty(len(expected), dtype=object)
    native = element.newbyteorder("=")
    for index, row in enumerate(expected):
        stored = row.reshape(-1) if flattened else row
        handed[index] = stored.view(native) if raw else stored.astype(native)
    layout = VlenLayout(element, tail, flattened=flattened, raw=raw)
    values, offsets = packed_rows(handed, layout, where="test", first_row=0)
    assert values.dtype == element.newbyteorder("<")
    assert_rows(
        Ragged(values, offsets), [row.astype(element.newbyteorder("<")) for row in expected]
    )
