"""Exports that compress: ``to_hdf5`` and ``to_zarr`` mirror each field's codec by default,
or write the compression named (``memshard.exportcodec``), and read back the same values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import memshard as ms
from memshard.errors import SchemaError
from memshard.exportcodec import Compression, chosen_compressions, parse_compression
from memshard.manifest import Codec

ROWS = 300
#: HDF5 filter ids of hdf5plugin's filters.
BLOSC, LZ4, ZSTD = "32001", "32004", "32015"


@pytest.fixture
def dataset(tmp_path: Path) -> ms.Dataset:
    """A field per codec, one uncompressed, a compressed ragged field."""
    rng = np.random.default_rng(0)
    images = np.zeros((ROWS, 16, 16), np.uint8)
    images[:, 4:8, 3] = 255
    return ms.from_numpy(
        {
            "zstd": images,
            "lz4": images[:, :4],
            "blosc": rng.standard_normal((ROWS, 8)).astype(np.float32),
            "plain": np.arange(ROWS, dtype=np.int64),
            "tokens": [np.arange(row % 11, dtype=np.int32) for row in range(ROWS)],
        },
        tmp_path / "ds",
        codecs={"zstd": "zstd:7", "lz4": "lz4", "blosc": "blosc:lz4:4:bit", "tokens": "zstd"},
        labels={"plain": [str(n) for n in range(ROWS)]},
    )


def compressors(group: zarr.Group, name: str) -> tuple[Any, ...]:
    array = group[name]
    assert isinstance(array, zarr.Array)
    return tuple(array.compressors)


def assert_same_rows(back: ms.Dataset, ds: ms.Dataset, names: list[str]) -> None:
    for name in names:
        if ds.manifest.fields[name].ragged:
            for row in range(len(ds)):
                np.testing.assert_array_equal(back[name][row], ds[name][row])
        else:
            np.testing.assert_array_equal(back[name][:], ds[name][:])


# -- HDF5 ----------------------------------------------------------------------------------------


def test_to_hdf5_mirrors_each_fields_codec(dataset: ms.Dataset, tmp_path: Path) -> None:
    ms.to_hdf5(dataset, tmp_path / "out.h5")
    with h5py.File(tmp_path / "out.h5") as handle:
        filters = {name: handle[name]._filters for name in handle}
    assert filters["zstd"] == {ZSTD: (7,)}
    assert list(filters["lz4"]) == [LZ4]
    blosc = filters["blosc"][BLOSC]
    assert blosc[4:] == (4, 2, 1)  # clevel 4, bit shuffle, lz4 (blosc's compressor code 1)
    assert filters["plain"] == {}
    assert filters["tokens"] == {}  # a ragged field's rows are not in its chunks: not mirrored
    back = ms.from_hdf5(tmp_path / "out.h5", tmp_path / "back")
    assert_same_rows(back, dataset, list(dataset.fields))
    assert back.labels == dataset.labels


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        ("gzip", {"gzip": 4}),
        ("gzip:9", {"gzip": 9}),
        ("lzf", {"lzf": None}),
        ("zstd:2", {ZSTD: (2,)}),
        ("none", {}),
    ],
)
def test_to_hdf5_writes_the_compression_named_for_every_field(
    dataset: ms.Dataset, tmp_path: Path, compression: str, expected: dict[str, Any]
) -> None:
    ms.to_hdf5(dataset, tmp_path / "out.h5", compression=compression)
    with h5py.File(tmp_path / "out.h5") as handle:
        for name in handle:
            assert handle[name]._filters == expected, name
    back = ms.from_hdf5(tmp_path / "out.h5", tmp_path / "back")
    assert_same_rows(back, dataset, list(dataset.fields))


def test_to_hdf5_per_field_compression_over_the_mirrors(
    dataset: ms.Dataset, tmp_path: Path
) -> None:
    ms.to_hdf5(dataset, tmp_path / "out.h5", compression={"plain": "gzip:1", "zstd": None})
    with h5py.File(tmp_path / "out.h5") as handle:
        assert handle["plain"]._filters == {"gzip": 1}
        assert handle["zstd"]._filters == {}
        assert list(handle["lz4"]._filters) == [LZ4]  # not named: mirrored


@pytest.mark.parametrize(
    ("compression", "message"),
    [
        ("brotli", "codec 'brotli' is not one memshard knows"),
        ("gzip:10", "gzip's level is an integer from 0 to 9"),
        ("lzf:3", "lzf takes no parameter"),
        ({"nope": "gzip"}, "compression: no field 'nope' is exported"),
        (3, "compression must be text"),
    ],
)
def test_to_hdf5_refuses_a_bad_compression(
    dataset: ms.Dataset, tmp_path: Path, compression: Any, message: str
) -> None:
    with pytest.raises(SchemaError, match=message):
        ms.to_hdf5(dataset, tmp_path / "out.h5", compression=compression)
    assert not (tmp_path / "out.h5").exists()


# -- zarr ----------------------------------------------------------------------------------------


def test_to_zarr_v3_mirrors_each_fields_codec(dataset: ms.Dataset, tmp_path: Path) -> None:
    names = ["zstd", "lz4", "blosc", "plain"]  # zarr writes no ragged field
    ms.to_zarr(dataset, tmp_path / "out.zarr", fields=names)
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert compressors(group, "zstd") == (ZstdCodec(level=7),)
    (lz4,) = compressors(group, "lz4")
    assert isinstance(lz4, BloscCodec)
    assert (lz4.cname.value, lz4.shuffle.value) == ("lz4", "noshuffle")
    (blosc,) = compressors(group, "blosc")
    assert (blosc.cname.value, blosc.clevel, blosc.shuffle.value) == ("lz4", 4, "bitshuffle")
    assert compressors(group, "plain") == ()
    back = ms.from_zarr(tmp_path / "out.zarr", tmp_path / "back")
    assert_same_rows(back, dataset, names)


def test_to_zarr_v3_writes_the_compression_named(dataset: ms.Dataset, tmp_path: Path) -> None:
    ms.to_zarr(dataset, tmp_path / "out.zarr", fields=["zstd", "plain"],
               compression={"zstd": "gzip:3", "plain": "zstd"})  # fmt: skip
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert compressors(group, "zstd") == (GzipCodec(level=3),)
    assert compressors(group, "plain") == (ZstdCodec(level=3),)
    assert_same_rows(ms.from_zarr(tmp_path / "out.zarr", tmp_path / "back"), dataset, ["zstd"])


def test_to_zarr_v2_uses_numcodecs(dataset: ms.Dataset, tmp_path: Path) -> None:
    names = ["zstd", "lz4", "blosc", "plain"]
    ms.to_zarr(dataset, tmp_path / "out.zarr", fields=names, zarr_format=2,
               compression={"plain": "gzip"})  # fmt: skip
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert compressors(group, "zstd") == (numcodecs.Zstd(level=7),)
    assert compressors(group, "lz4") == (numcodecs.LZ4(acceleration=1),)
    assert compressors(group, "blosc") == (numcodecs.Blosc("lz4", 4, numcodecs.Blosc.BITSHUFFLE),)
    assert compressors(group, "plain") == (numcodecs.GZip(level=4),)
    assert_same_rows(ms.from_zarr(tmp_path / "out.zarr", tmp_path / "back"), dataset, names)


def test_to_zarr_refuses_lzf(dataset: ms.Dataset, tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="field 'plain': lzf is no zarr codec"):
        ms.to_zarr(dataset, tmp_path / "out.zarr", fields=["plain"], compression="lzf")
    assert not (tmp_path / "out.zarr").exists()


# -- choosing (no I/O) -----------------------------------------------------------------------------


ZSTD3 = Codec(name="zstd", params={"level": 3}, block_bytes=65536)


def test_a_refused_mirror_leaves_the_field_uncompressed_and_a_refused_name_is_an_error() -> None:
    def no_zstd(name: str, compression: Compression) -> str | None:
        return "no zstd here" if compression.name == "zstd" else None

    assert chosen_compressions(None, {"x": ZSTD3}, refusal=no_zstd) == {"x": None}
    with pytest.raises(SchemaError, match="compression of field 'x': no zstd here"):
        chosen_compressions("zstd", {"x": None}, refusal=no_zstd)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", None),
        ("gzip", Compression("gzip", {"level": 4})),
        ("gzip:0", Compression("gzip", {"level": 0})),
        ("lzf", Compression("lzf")),
        ("zstd", Compression("zstd", {"level": 3})),
        ("lz4", Compression("lz4", {"acceleration": 1})),
        ("blosc:zlib:9:none", Compression("blosc", {"cname": "zlib", "clevel": 9,
                                                    "shuffle": "none"})),
    ],
)  # fmt: skip
def test_parse_compression(text: str, expected: Compression | None) -> None:
    assert parse_compression(text, where="compression") == expected


@pytest.mark.parametrize("text", ["", "gzip:", "gzip:x", "gzip:-1", "lzf:1", "zstd:0", "snappy"])
def test_parse_compression_refuses(text: str) -> None:
    with pytest.raises(SchemaError, match=r"^compression: "):
        parse_compression(text, where="compression")
