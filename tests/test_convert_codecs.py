"""Conversions that compress: ``codecs=`` of every ``from_*`` function (its fields compressed
by the worker processes that write them), resumes that must ask for the same codecs, and
``recompress`` (a memshard dataset as a conversion source)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import memshard as ms
from memshard import datasetsource
from memshard.convert import SOURCE_ATTR, convert
from memshard.errors import (
    ConversionStateError,
    DatasetExistsError,
    SchemaError,
    SmallShardWarning,
    SourceError,
)
from memshard.manifest import Codec
from memshard.schema import chosen_codecs
from tests.convert_helpers import staging_of, with_stop

pytestmark = pytest.mark.filterwarnings(f"ignore::{SmallShardWarning.__module__}.SmallShardWarning")

ROWS = 600


def sketches(rows: int = ROWS) -> np.ndarray:
    """uint8 (16, 16) drawings: mostly empty, a stroke each (compresses well)."""
    images = np.zeros((rows, 16, 16), np.uint8)
    for row in range(rows):
        images[row, row % 16, : 1 + row % 15] = 200 + row % 50
    return images


def strokes(rows: int = ROWS) -> list[np.ndarray]:
    """Ragged int16 rows of shape (n, 3), n from 0 to 12."""
    return [np.full((row % 13, 3), row, np.int16) for row in range(rows)]


def embeddings(rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, 8)).astype(np.float32)


def codec(text: str, block_bytes: int = 65536) -> Codec:
    return chosen_codecs({"x": {"codec": text, "block_bytes": block_bytes}}, ["x"])["x"]  # type: ignore[return-value]


def assert_compressed(ds: ms.Dataset, expected: dict[str, Codec | None]) -> None:
    """The fields have the codecs ``expected`` and their shard files hold frames."""
    for name, wanted in expected.items():
        assert ds.manifest.fields[name].codec == wanted, name
        column = ds[name]
        assert column.codec == wanted
        if wanted is None:
            assert column.stored_bytes == column.nbytes
    report = ds.verify()
    assert report.ok, report.problems


def write_h5(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=sketches(), chunks=(50, 16, 16))
        handle["emb"] = embeddings()
        handle["label"] = np.arange(ROWS) % 5
        rows = handle.create_dataset("tokens", (ROWS,), dtype=h5py.vlen_dtype(np.int32))
        for row in range(ROWS):
            rows[row] = np.arange(row % 9, dtype=np.int32)


# -- codecs= of the conversions --------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_from_hdf5_compresses_every_field_in_the_worker_processes(
    tmp_path: Path, workers: int
) -> None:
    src = tmp_path / "src.h5"
    write_h5(src)
    ds = ms.from_hdf5(src, tmp_path / "out", codecs="zstd:5", workers=workers,
                      shard_bytes=64 << 10)  # fmt: skip
    zstd = codec("zstd:5")
    assert_compressed(ds, dict.fromkeys(["images", "emb", "label", "tokens"], zstd))
    assert len(ds.shards) > 2  # several parts, written by the workers
    np.testing.assert_array_equal(ds["images"][:], sketches())
    np.testing.assert_array_equal(ds["emb"][:], embeddings())
    np.testing.assert_array_equal(ds["tokens"][8], np.arange(8, dtype=np.int32))
    assert ds["images"].nbytes / ds["images"].stored_bytes > 10


def test_from_hdf5_compresses_the_fields_named_only(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    write_h5(src)
    chosen = {
        "images": {"codec": "zstd", "level": 9, "block_bytes": 4096},
        "emb": "blosc:lz4:5:bit",
        "tokens": "lz4",
        "label": None,
    }
    ds = ms.from_hdf5(src, tmp_path / "out", codecs=chosen, workers=2, shard_bytes=64 << 10)
    assert_compressed(
        ds,
        {"images": codec("zstd:9", 4096), "emb": codec("blosc:lz4:5:bit"), "tokens": codec("lz4"),
         "label": None},
    )  # fmt: skip
    np.testing.assert_array_equal(ds["images"][[599, 3, 250]], sketches()[[599, 3, 250]])
    assert [len(row) for row in ds["tokens"][:20]] == [row % 9 for row in range(20)]


def test_from_zarr_v3_compresses_in_worker_processes(tmp_path: Path) -> None:
    store = tmp_path / "src.zarr"
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.create_array("images", data=sketches(), chunks=(64, 16, 16))
    group.create_array("emb", data=embeddings(), chunks=(100, 8))
    ds = ms.from_zarr(store, tmp_path / "out", codecs={"images": "zstd:3"}, workers=2,
                      shard_bytes=32 << 10)  # fmt: skip
    assert_compressed(ds, {"images": codec("zstd:3"), "emb": None})
    assert len(ds.shards) > 2
    np.testing.assert_array_equal(ds["images"][:], sketches())
    np.testing.assert_array_equal(ds["emb"][:], embeddings())


@pytest.mark.parametrize("workers", [1, 2])
def test_from_numpy_files_and_lists(tmp_path: Path, workers: int) -> None:
    np.save(tmp_path / "images.npy", sketches())
    files = ms.from_numpy({"images": tmp_path / "images.npy"}, tmp_path / "files",
                          codecs="lz4", workers=workers, shard_bytes=32 << 10)  # fmt: skip
    assert_compressed(files, {"images": codec("lz4")})
    np.testing.assert_array_equal(files["images"][:], sketches())
    memory = ms.from_numpy({"strokes": strokes(), "images": sketches()}, tmp_path / "memory",
                           codecs={"strokes": "zstd"}, workers=workers)  # fmt: skip
    assert_compressed(memory, {"strokes": codec("zstd"), "images": None})
    for row in (0, 12, 599):
        np.testing.assert_array_equal(memory["strokes"][row], strokes()[row])


def test_from_arrow_and_from_parquet(tmp_path: Path) -> None:
    table = pa.table({
        "label": np.arange(ROWS) % 3,
        "tokens": pa.array([list(range(row % 7)) for row in range(ROWS)], pa.list_(pa.int32())),
    })  # fmt: skip
    ds = ms.from_arrow(table, tmp_path / "arrow", codecs="zstd:2")
    assert_compressed(ds, {"label": codec("zstd:2"), "tokens": codec("zstd:2")})
    assert ds["tokens"][6].tolist() == list(range(6))
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=100)
    ds = ms.from_parquet(tmp_path / "t.parquet", tmp_path / "parquet", workers=2,
                         codecs={"tokens": "blosc"}, shard_bytes=4096)  # fmt: skip
    assert_compressed(ds, {"label": None, "tokens": codec("blosc")})
    np.testing.assert_array_equal(ds["label"][:], np.arange(ROWS) % 3)


@pytest.mark.parametrize(
    ("codecs", "message"),
    [
        ({"nope": "zstd"}, "codecs: no field 'nope'; the fields are x, y"),
        ("zip", "codec 'zip' is not one memshard knows"),
        ("zstd:99", "level must be an integer from 1 to 22"),
        ({"x": "lz4:0"}, "field 'x': codec 'lz4': acceleration"),
        ({"x": {"codec": "zstd", "level": 3, "speed": 1}}, "has no parameter 'speed'"),
        ({"x": {"codec": "zstd", "block_bytes": 10}}, "block_bytes must be an integer"),
        ({"x": 3}, "field 'x': a codec is its text"),
        ({"codec": "zstd", "x": "lz4"}, "codec 'zstd' has no parameter 'x'"),
    ],
)
def test_bad_codecs_are_refused_before_anything_is_written(
    tmp_path: Path, codecs: Any, message: str
) -> None:
    with pytest.raises(SchemaError, match=message.replace("(", r"\(")):
        ms.from_numpy({"x": sketches(10), "y": np.arange(10)}, tmp_path / "out", codecs=codecs)
    assert os.listdir(tmp_path) == []


def test_one_options_mapping_is_for_every_field() -> None:
    chosen = chosen_codecs({"codec": "zstd", "level": 4, "block_bytes": 2048}, ["a", "b"])
    assert chosen == dict.fromkeys(["a", "b"], codec("zstd:4", 2048))
    assert chosen_codecs("none", ["a"]) == {"a": None}
    assert chosen_codecs(None, ["a"]) == {}


# -- resuming ------------------------------------------------------------------------------------


def interrupted(tmp_path: Path, codecs: Any) -> tuple[Any, Path, int]:
    """A conversion of 600 rows (shards of about 50) interrupted at row 300, with ``codecs``;
    the plan, the destination and the rows staged."""
    from memshard import npysource

    np.save(tmp_path / "images.npy", sketches())
    plan = npysource.plan({"images": tmp_path / "images.npy"})
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(with_stop(plan, 300, "interrupt"), dst, shard_bytes=50 * 256, codecs=codecs)
    staged = len(ms.open(staging_of(dst)))
    assert 0 < staged <= 300
    return plan, dst, staged


@pytest.mark.parametrize(
    ("first", "then", "there", "now"),
    [
        ("zstd:3", "zstd:4", "zstd level=3, 64.0 KiB blocks", "zstd level=4, 64.0 KiB blocks"),
        ("zstd:3", None, "zstd level=3", "none"),
        (None, "lz4", "none", "lz4 acceleration=1"),
        (
            "zstd:3",
            {"images": {"codec": "zstd", "block_bytes": 4096}},
            "zstd level=3, 64.0 KiB",
            "zstd level=3, 4.0 KiB",
        ),
    ],
)
def test_a_resume_must_ask_for_the_codecs_of_the_first_run(
    tmp_path: Path, first: Any, then: Any, there: str, now: str
) -> None:
    plan, dst, staged = interrupted(tmp_path, first)
    with pytest.raises(ConversionStateError) as refused:
        convert(plan, dst, codecs=then, resume=True)
    message = str(refused.value)
    assert "stores field 'images' with codec " + there in message
    assert "asks for " + now in message
    assert "pass the codecs of the first run" in message
    assert len(ms.open(staging_of(dst))) == staged  # untouched
    ds = convert(plan, dst, codecs=first, resume=True)
    np.testing.assert_array_equal(ds["images"][:], sketches())
    assert ds.manifest.fields["images"].codec == chosen_codecs(first, ["images"]).get("images")


def test_a_finished_conversion_is_not_this_one_with_other_codecs(tmp_path: Path) -> None:
    np.save(tmp_path / "images.npy", sketches())
    src = {"images": tmp_path / "images.npy"}
    dst = tmp_path / "out"
    ms.from_numpy(src, dst, codecs="zstd")
    assert ms.from_numpy(src, dst, codecs="zstd", resume=True).path == str(dst)
    with pytest.raises(DatasetExistsError, match="stores field 'images' with codec zstd"):
        ms.from_numpy(src, dst, codecs="lz4", resume=True)
    ds = ms.from_numpy(src, dst, codecs="lz4", resume=True, overwrite=True)
    assert ds.manifest.fields["images"].codec == codec("lz4")


# -- recompress ----------------------------------------------------------------------------------


@pytest.fixture
def converted(tmp_path: Path) -> ms.Dataset:
    """An HDF5 conversion (its record kept as ``upstream``), with labels and attributes."""
    src = tmp_path / "src.h5"
    write_h5(src)
    return ms.from_hdf5(src, tmp_path / "raw", labels={"label": list("abcde")},
                        attrs={"project": "sketches"}, shard_bytes=64 << 10)  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_recompress_changes_the_codecs_and_keeps_labels_and_attrs(
    converted: ms.Dataset, tmp_path: Path, workers: int
) -> None:
    small = ms.recompress(converted.path, tmp_path / "small", workers=workers,
                          codecs={"images": "zstd:9", "tokens": "lz4"},
                          shard_bytes=32 << 10)  # fmt: skip
    assert_compressed(
        small, {"images": codec("zstd:9"), "tokens": codec("lz4"), "emb": None, "label": None}
    )
    assert len(small.shards) > len(converted.shards)
    for name in ("images", "emb", "label"):
        np.testing.assert_array_equal(small[name][:], converted[name][:])
    for row in range(ROWS):
        np.testing.assert_array_equal(small["tokens"][row], converted["tokens"][row])
    assert small.labels == converted.labels == {"label": tuple("abcde")}
    assert small.attrs["project"] == "sketches"
    record = small.attrs[SOURCE_ATTR]
    assert record["format"] == "memshard"
    assert record["location"] == converted.path
    assert record["identity"] == {"uuid": converted.uuid}
    assert record["upstream"] == converted.attrs[SOURCE_ATTR]
    assert record["upstream"]["format"] == "hdf5"

    # Fields not named keep their codec; "none" decompresses; upstream stays the HDF5 one.
    again = ms.recompress(small, tmp_path / "again", codecs={"emb": "blosc"}, workers=workers)
    assert_compressed(
        again,
        {"images": codec("zstd:9"), "tokens": codec("lz4"), "emb": codec("blosc"), "label": None},
    )
    plain = ms.recompress(again, tmp_path / "plain", codecs="none")
    assert_compressed(plain, dict.fromkeys(["images", "emb", "label", "tokens"], None))
    np.testing.assert_array_equal(plain["images"][:], sketches())
    assert plain.attrs[SOURCE_ATTR]["upstream"]["format"] == "hdf5"
    assert plain.attrs[SOURCE_ATTR]["location"] == again.path


def test_recompress_reads_the_rows_an_open_dataset_shows(tmp_path: Path) -> None:
    writer = ms.create(tmp_path / "ds", {"x": ("int64", ())})
    writer.extend({"x": np.arange(100)})
    writer.commit()
    snapshot = ms.open(tmp_path / "ds")
    writer.extend({"x": np.arange(100, 150)})
    writer.close()
    ds = ms.recompress(snapshot, tmp_path / "copy", codecs="zstd")
    np.testing.assert_array_equal(ds["x"][:], np.arange(100))


def interrupt_recompress(
    source: ms.Dataset, dst: Path, codecs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recompress ``source`` to ``dst``, interrupted (Ctrl-C) when row 300 is asked for."""
    original = datasetsource.DatasetReader.read

    def read(self: Any, name: str, start: int, stop: int, out: np.ndarray) -> None:
        if stop > 300:
            raise KeyboardInterrupt
        original(self, name, start, stop, out)

    monkeypatch.setattr(datasetsource.DatasetReader, "read", read)
    with pytest.raises(KeyboardInterrupt):
        ms.recompress(source, dst, codecs=codecs, shard_bytes=16 << 10)
    monkeypatch.undo()
    assert 0 < len(ms.open(staging_of(dst))) <= 300


def test_an_interrupted_recompress_resumes_with_the_same_codecs_only(
    converted: ms.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dst = tmp_path / "small"
    interrupt_recompress(converted, dst, "zstd", monkeypatch)
    with pytest.raises(ConversionStateError, match="codec"):
        ms.recompress(converted, dst, codecs="lz4", resume=True)
    ds = ms.recompress(converted.path, dst, codecs="zstd", resume=True, workers=2)
    assert_compressed(ds, dict.fromkeys(["images", "emb", "label", "tokens"], codec("zstd")))
    np.testing.assert_array_equal(ds["images"][:], sketches())
    assert ds.attrs[SOURCE_ATTR]["upstream"]["format"] == "hdf5"


def test_another_dataset_at_the_source_path_is_refused(
    converted: ms.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same rows and fields, another dataset (uuid): no worker reads it for the planned one,
    and a resume refuses it."""
    plan = datasetsource.plan(converted)
    dst = tmp_path / "small"
    interrupt_recompress(converted, dst, "zstd", monkeypatch)
    twin = ms.recompress(converted, tmp_path / "twin")
    shutil.rmtree(converted.path)
    os.rename(twin.path, converted.path)
    with pytest.raises(SourceError, match="no longer the source dataset planned"):
        plan.opener()
    with pytest.raises(ConversionStateError, match="another source identity"):
        ms.recompress(converted.path, dst, codecs="zstd", resume=True)
