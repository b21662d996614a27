"""Compressed fields (format 2.2): declared per field, stored in blocks, read back exactly as
the uncompressed array would be, whatever the key, the codec, the block size and the shard and
commit boundaries."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard.blockcodec import BlockCodec
from memshard.blockindex import blocks_of
from memshard.codecs import codec_parameters
from memshard.errors import BlockError, InvalidIndexError, ManifestError, SchemaError
from tests.helpers import write_dataset
from tests.strategies import dtypes, index_keys, sample_shapes, values_of

CODECS = [
    {"codec": "zstd"},
    {"codec": "zstd", "level": 1},
    {"codec": "lz4"},
    {"codec": "blosc"},
    {"codec": "blosc", "cname": "lz4", "shuffle": "bit"},
    {"codec": "blosc", "cname": "zlib", "clevel": 1, "shuffle": "none"},
]
codec_options = st.builds(
    lambda options, block: {**options, "block_bytes": block},
    st.sampled_from(CODECS),
    st.sampled_from([1024, 2048, 65536]),
)


def _numpy_result(array: np.ndarray, key: Any) -> np.ndarray | None:
    try:
        return np.asarray(array[key])
    except (IndexError, TypeError, ValueError, OverflowError):
        return None


def _sessions(rows: int) -> st.SearchStrategy[list[int]]:
    return (
        st.lists(st.integers(0, rows), max_size=3)
        .map(lambda cuts: np.diff([0, *sorted(cuts), rows]).tolist())
        .map(lambda sizes: [size for size in sizes if size] or [rows])
    )


@settings(max_examples=60, deadline=None)
@given(dtype=dtypes, shape=sample_shapes, options=codec_options, data=st.data())
def test_indexing_a_compressed_column_matches_numpy(
    dtype: np.dtype[Any], shape: tuple[int, ...], options: dict[str, Any], data: Any
) -> None:
    rows = data.draw(st.integers(1, 60), label="rows")
    array = data.draw(values_of(dtype, (rows, *shape)), label="array")
    sessions = data.draw(_sessions(rows), label="sessions")
    shard_rows = data.draw(st.integers(1, 25), label="shard_rows")
    keys = data.draw(st.lists(index_keys(array.shape), min_size=1, max_size=8), label="keys")
    with tempfile.TemporaryDirectory() as directory:
        ds = write_dataset(
            f"{directory}/ds", {"x": array}, sessions, shard_rows=shard_rows,
            codecs={"x": options},
        )  # fmt: skip
        column = ds["x"]
        assert (column.shape, column.dtype) == (array.shape, array.dtype)
        for key in keys:
            expected = _numpy_result(array, key)
            if expected is None:
                with pytest.raises(InvalidIndexError):
                    column[key]
                continue
            got = np.asarray(column[key])
            assert (got.shape, got.dtype) == (expected.shape, expected.dtype), key
            np.testing.assert_array_equal(got, expected)
        indices = data.draw(st.lists(st.integers(-rows, rows - 1), max_size=40), label="take")
        for threads in (1, 3):
            taken = ds.take(indices, threads=threads)["x"]
            np.testing.assert_array_equal(taken, array[np.array(indices, dtype=np.int64)])
        assert ds.verify().ok


@st.composite
def ragged_rows(draw: st.DrawFn) -> tuple[list[np.ndarray], np.dtype[Any], tuple[int, ...]]:
    dtype: np.dtype[Any] = np.dtype(draw(st.sampled_from(["int32", "float64", "uint8"])))
    tail = draw(st.sampled_from([(), (3,)]))
    lengths = draw(st.lists(st.integers(0, 400), min_size=1, max_size=40))
    rows = [draw(values_of(dtype, (length, *tail))) for length in lengths]
    return rows, dtype, tail


@settings(max_examples=40, deadline=None)
@given(case=ragged_rows(), options=codec_options, data=st.data())
def test_a_compressed_ragged_field_reads_back_every_row(
    case: tuple[list[np.ndarray], np.dtype[Any], tuple[int, ...]],
    options: dict[str, Any],
    data: Any,
) -> None:
    rows, dtype, tail = case
    count = len(rows)
    commits = set(data.draw(st.lists(st.integers(1, count), max_size=4), label="commits"))
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/ds"
        fields = {"r": (dtype, (None, *tail), options)}
        with ms.create(path, fields=fields, shard_bytes=4096) as writer:
            for position, row in enumerate(rows):
                writer.append({"r": row})
                if position + 1 in commits:
                    writer.commit()
        ds = ms.open(path)
        column = ds["r"]
        for position in data.draw(st.lists(st.integers(-count, count - 1), max_size=10)):
            np.testing.assert_array_equal(column[position], rows[position])
        indices = data.draw(st.lists(st.integers(0, count - 1), max_size=30), label="gather")
        for threads in (1, 2):
            batch = ds.take(indices, threads=threads)["r"]
            assert len(batch) == len(indices)
            for got, index in zip(batch, indices, strict=True):
                np.testing.assert_array_equal(got, rows[index])
        everything = column[:]
        assert [len(row) for row in everything] == [len(row) for row in rows]
        np.testing.assert_array_equal(column.lengths, [len(row) for row in rows])
        assert column.nbytes == sum(row.nbytes for row in rows)
        assert ds.verify().ok


def test_the_manifest_records_the_codec_and_the_version(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with ms.create(path, fields={"x": ("float32", (8,), {"codec": "blosc:lz4:3"})}) as writer:
        writer.extend({"x": np.ones((10, 8), np.float32)})
    document = json.loads((path / "manifest.json").read_text())
    assert document["version"] == "2.2"
    assert document["fields"]["x"]["codec"] == {
        "name": "blosc",
        "params": {"cname": "lz4", "clevel": 3, "shuffle": "byte"},
        "block_bytes": 65536,
    }
    stems = sorted(os.listdir(path / "shards"))
    assert [name.split(".", 1)[1] for name in stems] == ["x.npy", "x.offsets.npy"]
    frames = np.load(path / "shards" / stems[0])
    ends = np.load(path / "shards" / stems[1])
    assert frames.dtype == np.uint8
    assert ends.dtype == np.int64
    assert ends.shape == (11,)
    assert ends[0] == 0
    assert ends[-1] == frames.size


def _blocks(path: Path, field: str, element_bytes: int) -> list[tuple[int, int]]:
    """``(length in the values file, uncompressed bytes)`` of each block of ``field``, in row
    order, from its offsets files alone."""
    found = []
    for offsets_file in sorted((path / "shards").glob(f"*.{field}.offsets.npy")):
        offsets = np.load(offsets_file)
        ragged = offsets.ndim == 2
        elements = offsets[:, 0] if ragged else np.arange(len(offsets))
        blocks = blocks_of(offsets[:, 1] if ragged else offsets)
        raw = (elements[blocks.stop_rows] - elements[blocks.first_rows]) * element_bytes
        lengths = blocks.byte_ends - blocks.byte_starts
        found += list(zip(lengths.tolist(), raw.tolist(), strict=True))
    return found


@pytest.mark.parametrize("codec", ["zstd", "lz4", "blosc"])
def test_blocks_that_barely_compress_are_stored_as_they_are(tmp_path: Path, codec: str) -> None:
    """Random bytes do not compress: every block is stored (its bytes as they are, not a
    frame), so the values files hold the rows themselves, and every read, gather (in threads
    too), the ratio and verify are those of the rows."""
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 256, (50, 3000), dtype=np.uint8)
    path = tmp_path / "ds"
    fields = {"x": ("uint8", (3000,), {"codec": codec, "block_bytes": 8192})}  # 2 rows a block
    with ms.create(path, fields=fields, shard_bytes=64 << 10) as writer:
        writer.extend({"x": rows[:21]})
        writer.commit()  # 21 rows: the commit writes a block of one
        writer.extend({"x": rows[21:]})
    values = sorted((path / "shards").glob("*.x.npy"))
    assert len(values) > 1
    assert b"".join(np.load(file).tobytes() for file in values) == rows.tobytes()
    blocks = _blocks(path, "x", 3000)
    assert all(stored == raw for stored, raw in blocks)
    assert {raw for _, raw in blocks} == {3000, 6000}
    ds = ms.open(path)
    column = ds["x"]
    assert column.stored_bytes == column.nbytes
    np.testing.assert_array_equal(column[:], rows)
    np.testing.assert_array_equal(column[7], rows[7])
    np.testing.assert_array_equal(column[::-3, 5], rows[::-3, 5])
    picked = rng.integers(-50, 50, 300)
    for threads in (1, 2):
        np.testing.assert_array_equal(ds.take(picked, threads=threads)["x"], rows[picked])
    assert ds.verify().ok


def test_stored_and_compressed_blocks_share_a_shard(tmp_path: Path) -> None:
    """In one shard, blocks of zeros are frames and blocks of random bytes are stored; a block
    half random still saves more than 1/8 and is a frame. Rows of each, one at a time, in
    slices and in gathers with repeats, read back exactly."""
    rng = np.random.default_rng(6)
    rows = np.zeros((40, 2048), np.uint8)
    rows[4:8] = rng.integers(0, 256, (4, 2048))  # blocks 2 and 3
    rows[13] = rng.integers(0, 256, 2048)  # half of block 6
    path = tmp_path / "ds"
    fields = {"x": ("uint8", (2048,), {"codec": "zstd", "block_bytes": 4096})}
    with ms.create(path, fields=fields) as writer:
        writer.extend({"x": rows})
    blocks = _blocks(path, "x", 2048)
    assert len(blocks) == 20
    assert [number for number, (stored, raw) in enumerate(blocks) if stored == raw] == [2, 3]
    assert all(stored * 8 <= raw * 7 for stored, raw in blocks[:2] + blocks[4:])
    ds = ms.open(path)
    np.testing.assert_array_equal(ds["x"][:], rows)
    for row in (3, 4, 5, 13, 39):
        np.testing.assert_array_equal(ds["x"][row], rows[row])
    picked = np.array([5, 4, 4, 13, 0, 7, 6, 39, 5, 12])
    for threads in (1, 2):
        np.testing.assert_array_equal(ds.take(picked, threads=threads)["x"], rows[picked])
    assert ds.verify().ok


def test_a_ragged_field_of_random_elements_is_stored_and_reads_back(tmp_path: Path) -> None:
    """Ragged rows of random bytes are stored blocks, except the blocks of rows without
    elements, which are frames (a block of no bytes is never stored)."""
    rng = np.random.default_rng(7)
    lengths = [0, 5000, 0, 300, 7000, 1, 0]
    rows = [rng.integers(0, 256, length, dtype=np.uint8) for length in lengths]
    path = tmp_path / "ds"
    fields = {"r": ("uint8", (None,), {"codec": "lz4", "block_bytes": 4096})}
    with ms.create(path, fields=fields) as writer:
        for row in rows:
            writer.append({"r": row})
        writer.commit()
        writer.append({"r": rows[0]})  # a block of one row without elements
    blocks = _blocks(path, "r", 1)
    assert all(stored == raw if raw else stored > 0 for stored, raw in blocks)
    assert sum(1 for stored, raw in blocks if stored == raw) >= 3
    assert blocks[-1][1] == 0  # the last block: one row without elements, a frame
    ds = ms.open(path)
    expected = [*rows, rows[0]]
    for number, row in enumerate(expected):
        np.testing.assert_array_equal(ds["r"][number], row)
    picked = [7, 4, 1, 1, 0, 3]
    for threads in (1, 2):
        batch = ds.take(picked, threads=threads)["r"]
        for got, number in zip(batch, picked, strict=True):
            np.testing.assert_array_equal(got, expected[number])
    assert ds.verify().ok


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": "gzip"}, "codec 'gzip' is not one memshard knows"),
        ({"codec": "zstd", "level": 40}, "level must be an integer from 1 to 22"),
        ({"codec": "zstd", "speed": 1}, "has no parameter 'speed'"),
        ({"codec": "blosc", "shuffle": "yes"}, "shuffle must be one of"),
        ({"codec": "lz4", "block_bytes": 10}, "block_bytes must be an integer from 1024"),
        ({"level": 3}, "the third member must be a mapping naming a codec"),
        ({"codec": "zstd:3:4"}, "takes at most 1 arguments"),
    ],
)
def test_bad_codec_options_are_schema_errors_naming_the_field(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(SchemaError, match=message) as caught:
        ms.create(tmp_path / "ds", fields={"img": ("uint8", (4,), options)})
    assert "field 'img'" in str(caught.value)
    assert not (tmp_path / "ds").exists()


def test_a_codec_this_reader_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with ms.create(path, fields={"x": ("uint8", (4,), {"codec": "zstd"})}) as writer:
        writer.extend({"x": np.zeros((3, 4), np.uint8)})
    manifest = path / "manifest.json"
    document = json.loads(manifest.read_text())
    document.pop("checksum")
    document["fields"]["x"]["codec"]["name"] = "brotli"
    manifest.write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="codec 'brotli' is not one this reader knows"):
        ms.open(path)


def _frames(path: Path) -> tuple[Path, int]:
    """The values file of the dataset's only shard, made writable, and where its frames start."""
    values = next((path / "shards").glob("*.x.npy"))
    os.chmod(values, 0o644)
    return values, values.stat().st_size - np.load(values).size


@pytest.mark.parametrize("codec", ["lz4", "blosc"])
def test_a_frame_header_that_claims_more_than_its_block_is_a_block_error(
    tmp_path: Path, codec: str
) -> None:
    """A frame whose header claims 1 GiB (a decompression bomb) is refused before anything is
    decompressed or allocated; the read names the file and the block; verify finds it."""
    path = tmp_path / "ds"
    with ms.create(path, fields={"x": ("uint8", (4096,), {"codec": codec})}) as writer:
        writer.extend({"x": np.zeros((2, 4096), np.uint8)})
    values, start = _frames(path)
    data = bytearray(values.read_bytes())
    at = start if codec == "lz4" else start + 4  # lz4: its size prefix; blosc: header nbytes
    data[at : at + 4] = (1 << 30).to_bytes(4, "little")
    values.write_bytes(bytes(data))
    ds = ms.open(path)
    with pytest.raises(BlockError, match=r"claims 1073741824 bytes") as caught:
        ds["x"][0]
    assert values.name in str(caught.value)
    assert "block 0" in str(caught.value)
    with pytest.raises(BlockError):
        ds.take([1, 0])
    assert not ds.verify().ok


def test_a_damaged_zstd_frame_is_a_block_error(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 4, (3, 4096), dtype=np.uint8)
    options = {"codec": "zstd", "block_bytes": 4096}  # a block per row
    with ms.create(path, fields={"x": ("uint8", (4096,), options)}) as writer:
        writer.extend({"x": rows})
    values, start = _frames(path)
    data = bytearray(values.read_bytes())
    data[start + 20 : start + 60] = bytes(range(40))
    values.write_bytes(bytes(data))
    ds = ms.open(path)
    with pytest.raises(BlockError, match="block 0"):
        ds["x"][0]
    np.testing.assert_array_equal(ds["x"][1:], rows[1:])  # the other blocks still read


@pytest.mark.parametrize("name", ["zstd", "lz4", "blosc"])
def test_decompression_is_held_to_the_block_size(name: str) -> None:
    """Frames that inflate past, or end before, the block they stand for are refused, and a
    bomb never writes past the buffer it is given."""
    codec = BlockCodec.of(name, codec_parameters(name, {}, where="t"), 1)
    big = codec.compress(memoryview(bytes(1 << 20)))
    out = np.full(1 << 16, 7, dtype=np.uint8)
    guard = np.full(1 << 17, 7, dtype=np.uint8)  # out is its first part
    out = guard[: 1 << 16]
    with pytest.raises(BlockError, match="where"):
        codec.decompress_into(memoryview(big), out.data, where="where")
    assert (guard[1 << 16 :] == 7).all()
    small = codec.compress(memoryview(bytes(100)))
    with pytest.raises(BlockError):
        codec.decompress_into(memoryview(small), np.empty(200, np.uint8).data, where="w")
    with pytest.raises(BlockError):
        codec.decompress_into(
            memoryview(small[: len(small) // 2]), np.empty(100, np.uint8).data, where="w"
        )
    with pytest.raises(BlockError):
        codec.decompress_into(memoryview(b""), np.empty(100, np.uint8).data, where="w")
    good = np.empty(100, np.uint8)
    codec.decompress_into(memoryview(small), good.data, where="w")
    assert not good.any()


def test_a_zstd_frame_without_its_size_is_refused() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1000))
    codec = BlockCodec.of("zstd", {"level": 3}, 1)
    with pytest.raises(BlockError, match="claims -1 bytes"):
        codec.decompress_into(memoryview(frame), np.empty(1000, np.uint8).data, where="w")
