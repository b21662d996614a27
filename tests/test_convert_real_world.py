"""Conversion of files other tools wrote (``tests/corpus.py``): a bad array never blocks a
good one, and every failure is a memshard error naming the file, the array and the rows.

Good arrays must convert bit-exactly beside bad siblings; a bad array is left out and listed
by an automatic selection and refused (before anything is written, when it can be known) when
requested; nothing openable is left at the destination. "Without a package" means really
without it: the conversion runs in a child process (and workers) that cannot import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.core.common import ZarrFormat

import memshard as ms
import memshard.hdf5 as ms_hdf5
import memshard.zarr as ms_zarr
from memshard import zarrstore
from memshard.convert import convert
from memshard.errors import (
    DatasetNotFoundError,
    SourceError,
    UnsupportedSourceError,
)
from tests import corpus
from tests.convert_helpers import assert_same_values, staging_of
from tests.helpers import REPO_ROOT


def assert_converted(dst: Path, expected: dict[str, Any], kind: str = "hdf5") -> None:
    """``dst`` holds exactly the arrays ``expected`` (by origin), bit for bit; an expected
    list of arrays is a ragged field's rows."""
    ds = ms.open(dst)
    origins = {name: info["origin"] for name, info in ds.attrs["memshard.source"]["fields"].items()}
    assert sorted(origins.values()) == sorted(expected), (origins, list(expected))
    assert ds.attrs["memshard.source"]["format"] == kind
    for name, origin in origins.items():
        if isinstance(expected[origin], list):
            rows = ds[name][:]
            assert len(rows) == len(expected[origin])
            for got, row in zip(rows, expected[origin], strict=True):
                assert_same_values(got, row)
        else:
            assert_same_values(ds[name][:], expected[origin])
    assert ds.verify().ok


def assert_nothing_left(dst: Path) -> None:
    """No dataset, staging directory or temporary directory for ``dst``."""
    assert [entry for entry in os.listdir(dst.parent) if entry.startswith(dst.name)] == []


def assert_nothing_openable(dst: Path) -> None:
    """Nothing at ``dst`` (an interrupted conversion's staging directory may remain)."""
    assert not os.path.lexists(dst)
    with pytest.raises(DatasetNotFoundError):
        ms.open(dst)


# -- HDF5: types NumPy has no dtype for --------------------------------------------------------


def test_quad_precision_and_time_types_are_left_out_beside_good_datasets(tmp_path: Path) -> None:
    src = tmp_path / "odd.h5"
    expected = corpus.write_odd_types(src)
    dst = tmp_path / "out"
    ms.from_hdf5(src, dst)
    assert_converted(dst, expected)
    skipped = ms_hdf5.plan(src, None).skipped
    assert set(skipped) == {"/quad", "/time"}
    assert "floating-point type of 16 bytes" in skipped["/quad"]
    assert "time type of 8 bytes" in skipped["/time"]


def test_a_requested_good_dataset_is_never_blocked_by_a_bad_sibling(tmp_path: Path) -> None:
    src = tmp_path / "odd.h5"
    expected = corpus.write_odd_types(src)
    ds = ms.from_hdf5(src, tmp_path / "out", fields={"x": "/good"})
    assert_same_values(ds["x"][:], expected["/good"])


@pytest.mark.parametrize(("origin", "words"), [("/quad", "16 bytes"), ("time", "time type")])
def test_a_requested_dataset_of_such_a_type_is_refused_naming_it(
    tmp_path: Path, origin: str, words: str
) -> None:
    src = tmp_path / "odd.h5"
    corpus.write_odd_types(src)
    dst = tmp_path / "out"
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_hdf5(src, dst, fields={"x": "/good", "bad": origin})
    message = str(info.value)
    assert str(src) in message
    assert f"'bad' (/{origin.strip('/')})" in message
    assert words in message
    assert_nothing_left(dst)


# -- HDF5: filters from hdf5plugin -------------------------------------------------------------


def test_datasets_compressed_with_hdf5plugin_filters_convert(tmp_path: Path) -> None:
    src = tmp_path / "filtered.h5"
    expected = corpus.write_plugin_filtered(src)
    dst = tmp_path / "out"
    ms.from_hdf5(src, dst, shard_bytes=4096, workers=2)
    assert_converted(dst, expected)


def test_without_hdf5plugin_filtered_datasets_are_left_out_and_listed(tmp_path: Path) -> None:
    src = tmp_path / "filtered.h5"
    expected = corpus.write_plugin_filtered(src)
    dst = tmp_path / "out"
    report = corpus.convert_in(corpus.environment_without(tmp_path, "hdf5plugin"), "hdf5", src, dst)
    assert sorted(report["fields"].values()) == ["/gzip", "/plain"]
    assert set(report["skipped"]) == set(corpus.PLUGIN_FILTERED)
    for origin, why in report["skipped"].items():
        assert f"{origin.strip('/')} (HDF5 filter 320" in why
        assert "pip install hdf5plugin (or pip install 'memshard[hdf5]')" in why
    assert_converted(dst, {origin: expected[origin] for origin in ("/plain", "/gzip")})


@pytest.mark.parametrize("origin", list(corpus.PLUGIN_FILTERED))
def test_without_hdf5plugin_a_requested_filtered_dataset_is_refused_before_writing(
    tmp_path: Path, origin: str
) -> None:
    src = tmp_path / "filtered.h5"
    corpus.write_plugin_filtered(src)
    dst = tmp_path / "out"
    environment = corpus.environment_without(tmp_path, "hdf5plugin")
    report = corpus.convert_in(environment, "hdf5", src, dst, {"p": "/plain", "f": origin})
    assert report["error"] == "UnsupportedSourceError"
    assert not report["planned"]  # found by planning, before anything was written
    assert report["message"].startswith(f"{src}: field 'f' ({origin}): it is compressed with ")
    assert "pip install hdf5plugin" in report["message"]
    assert_nothing_left(dst)


def test_workers_without_the_plugin_fail_in_the_parent_naming_file_dataset_and_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converting process has hdf5plugin, its workers (another environment) do not: the
    read fails in a worker, and the parent raises the worker's typed error."""
    src = tmp_path / "filtered.h5"
    corpus.write_plugin_filtered(src)
    dst = tmp_path / "out"
    environment = corpus.environment_without(tmp_path, "hdf5plugin")
    for key in ("PYTHONPATH", "HDF5_PLUGIN_PATH"):
        monkeypatch.setenv(key, environment[key])
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_hdf5(src, dst, fields={"x": "/lz4"}, workers=2, shard_bytes=2048)
    message = str(info.value)
    assert re.match(rf"{re.escape(str(src))}: dataset '/lz4', block of rows \d+:\d+: ", message)
    assert "lz4 (HDF5 filter 32004)" in message
    assert "pip install hdf5plugin" in message
    assert_nothing_openable(dst)


def test_a_pytables_file(tmp_path: Path) -> None:
    src = tmp_path / "pytables.h5"
    expected = corpus.write_pytables(src)
    dst = tmp_path / "out"
    ms.from_hdf5(src, dst)
    assert_converted(dst, expected)
    assert ms.open(dst).attrs["TITLE"] == "written by PyTables"
    skipped = ms_hdf5.plan(src, None).skipped
    assert list(skipped) == ["/data/table"]
    assert skipped["/data/table"].startswith("compound dtype")
    assert ms.open(dst)["data_strokes"].shape == (len(expected["/data/plain"]), None, 3)


def test_a_pytables_file_without_hdf5plugin(tmp_path: Path) -> None:
    src = tmp_path / "pytables.h5"
    expected = corpus.write_pytables(src)
    dst = tmp_path / "out"
    report = corpus.convert_in(corpus.environment_without(tmp_path, "hdf5plugin"), "hdf5", src, dst)
    assert "blosc (HDF5 filter 32001)" in report["skipped"]["/data/blosc"]
    assert "blosc2 (HDF5 filter 32026)" in report["skipped"]["/data/blosc2"]
    kept = ("/data/zlib", "/data/plain", "/data/ragged", "/data/strokes", "/data/big_endian")
    assert_converted(dst, {path: expected[path] for path in kept})


def test_a_netcdf4_style_file(tmp_path: Path) -> None:
    src = tmp_path / "climate.nc"
    expected = corpus.write_netcdf4_style(src)
    dst = tmp_path / "out"
    ms.from_hdf5(src, dst)
    assert_converted(dst, expected)
    ds = ms.open(dst)
    assert ds.attrs["Conventions"] == "CF-1.8"
    temperature = ds.attrs["memshard.source"]["fields"]["temperature"]["attrs"]
    assert temperature["units"] == "K"
    assert "DIMENSION_LIST" not in temperature  # object references: not JSON
    skipped = ms_hdf5.plan(src, None).skipped
    assert skipped["/station"] == "object, variable-length or reference data"


# -- HDF5: a file truncated while it is converted ----------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("contiguous", [False, True], ids=["gzip-chunks", "contiguous"])
def test_a_file_truncated_mid_conversion_fails_naming_file_dataset_and_block(
    tmp_path: Path, contiguous: bool, workers: int
) -> None:
    """HDF5 reads zeros past the end of a truncated file (contiguous data converts without
    an error from h5py): the reader notices that the file shrank."""
    src = tmp_path / "src.h5"
    data, cut = corpus.write_truncatable(src, contiguous)
    dst = tmp_path / "out"
    plan = ms_hdf5.plan(src, None)
    plan = dataclasses.replace(plan, opener=corpus.TruncateAt(plan.opener, 1500, str(src), cut))
    with pytest.raises(SourceError) as info:
        convert(plan, dst, shard_bytes=64 << 10, workers=workers)
    message = str(info.value)
    if workers == 2 and "cannot open as HDF5" in message:  # a worker that started after the cut
        assert message.startswith(f"{src}: cannot open as HDF5 (")
        assert f"truncated file: eof = {cut}" in message
    else:
        assert re.match(rf"{re.escape(str(src))}: dataset '/x', block of rows \d+:\d+: ", message)
        assert f"the file was truncated while being converted (now {cut:,} bytes" in message
    assert_nothing_openable(dst)
    staged = ms.open(staging_of(dst))  # a prefix of correct rows, which no resume completes
    assert_same_values(staged["x"][:], data[: len(staged)])
    del staged
    with pytest.raises(SourceError, match="truncated file"):  # HDF5 refuses to open it now
        ms.from_hdf5(src, dst, resume=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_truncated_after_planning_fails_naming_the_file(
    tmp_path: Path, workers: int
) -> None:
    src = tmp_path / "src.h5"
    _, cut = corpus.write_truncatable(src, contiguous=False)
    dst = tmp_path / "out"
    plan = ms_hdf5.plan(src, None)
    os.truncate(src, cut)
    with pytest.raises(SourceError) as info:
        convert(plan, dst, shard_bytes=64 << 10, workers=workers)
    assert str(info.value).startswith(f"{src}: cannot open as HDF5 (")
    assert "truncated file" in str(info.value)
    assert_nothing_openable(dst)


#: ``python -c TRUNCATING_CHILD SRC DST ROW SIZE WORKERS``: convert the ``.npy`` file SRC,
#: truncating it to SIZE bytes once row ROW is read; print the memshard error as JSON. A child
#: process, because a memory-mapped file that is truncated kills its reader with SIGBUS.
TRUNCATING_CHILD = """
import dataclasses, json, sys, warnings
from memshard import npysource
from memshard.convert import convert
from memshard.errors import MemshardError, SmallShardWarning
from tests.corpus import TruncateAt

warnings.simplefilter("ignore", SmallShardWarning)  # tiny shards, on purpose

src, dst, row, size, workers = sys.argv[1:6]
plan = npysource.plan(src)
plan = dataclasses.replace(plan, opener=TruncateAt(plan.opener, int(row), src, int(size)))
try:
    convert(plan, dst, shard_bytes=64 << 10, workers=int(workers))
except MemshardError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_an_npy_file_truncated_mid_conversion_fails_naming_file_and_rows(
    tmp_path: Path, workers: int
) -> None:
    src = tmp_path / "x.npy"
    data = corpus.values(">f4", (4000, 64), seed=51)
    np.save(src, data)
    header = src.stat().st_size - data.nbytes
    cut = header + data[:2000].nbytes
    dst = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", TRUNCATING_CHILD, str(src), str(dst), "1500", str(cut),
         str(workers)],
        env=corpus.environment_without(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] == "SourceError"
    # Named with the rows being read; or, if a worker opens the file only once it was cut (a
    # slow start), when opening it.
    prefix = rf"{re.escape(str(src))}: (rows \d+:\d+: the file ends at byte |the file is )"
    assert re.match(prefix, report["message"]), report["message"]
    assert "truncated" in report["message"]
    assert_nothing_openable(dst)
    staged = ms.open(staging_of(dst))
    assert_same_values(staged["x"][:], data[: len(staged)])


# -- zarr --------------------------------------------------------------------------------------


def test_a_zarr_python_2_group_written_by_hand(tmp_path: Path) -> None:
    store = tmp_path / "v2.zarr"
    expected = corpus.write_zarr2_group(store)
    dst = tmp_path / "out"
    ms.from_zarr(store, dst, shard_bytes=4096, workers=2)
    assert_converted(dst, expected, "zarr")
    assert ms.open(dst).attrs["title"] == "written like zarr-python 2.18"
    skipped = ms_zarr.plan(store, None).skipped
    assert skipped == {
        "s1": "string dtype |S1",
        "u4": "string dtype <U4",
        "pickled": zarrstore.PICKLE_REFUSAL,
    }
    assert not corpus.unpickled_marker(store).exists()


@pytest.mark.parametrize(
    ("origin", "words"), [("s1", "string dtype |S1"), ("u4", "string dtype <U4")]
)
def test_a_requested_string_array_zarr_3_cannot_open_is_refused_naming_it(
    tmp_path: Path, origin: str, words: str
) -> None:
    store = tmp_path / "v2.zarr"
    expected = corpus.write_zarr2_group(store)
    dst = tmp_path / "out"
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_zarr(store, dst, fields={"x": "good", "s": origin})
    assert str(info.value).startswith(f"{store}: field 's' ({origin}): {words}")
    assert_nothing_left(dst)
    ds = ms.from_zarr(store, dst, fields={"x": "good"})  # only the arrays requested are opened
    assert_same_values(ds["x"][:], expected["good"])


def test_a_pickled_array_is_never_unpickled(tmp_path: Path) -> None:
    store = tmp_path / "v2.zarr"
    corpus.write_zarr2_group(store)
    dst = tmp_path / "out"
    with pytest.raises(UnsupportedSourceError, match="never unpickles"):
        ms.from_zarr(store, dst, fields={"p": "pickled"})
    assert not corpus.unpickled_marker(store).exists()
    assert_nothing_left(dst)


def test_a_zarr_3_group_with_codecs_and_types_zarr_python_does_not_know(tmp_path: Path) -> None:
    store = tmp_path / "v3.zarr"
    expected = corpus.write_zarr3_group(store)
    dst = tmp_path / "out"
    ms.from_zarr(store, dst, shard_bytes=4096)
    assert_converted(dst, expected, "zarr")
    skipped = ms_zarr.plan(store, None).skipped
    assert set(skipped) == {"rust_pcodec", "bf16"}
    assert "has no codec named 'pcodec'" in skipped["rust_pcodec"]
    assert "'numcodecs.pcodec'" in skipped["rust_pcodec"]
    assert skipped["bf16"] == "data type 'bfloat16'"
    with pytest.raises(UnsupportedSourceError) as info:
        ms.from_zarr(store, dst, fields={"x": "rust_pcodec"}, overwrite=True)
    assert str(info.value).startswith(f"{store}: field 'x' (rust_pcodec): zarr-python ")


def test_without_pcodec_zarr_arrays_compressed_with_it_are_left_out(tmp_path: Path) -> None:
    environment = corpus.environment_without(tmp_path, "pcodec")
    for name, write, bad in (
        ("v2", corpus.write_zarr2_group, "pcodec"),  # found opening the array
        ("v3", corpus.write_zarr3_group, "npcodec"),  # found reading its first chunk
    ):
        store = tmp_path / f"{name}.zarr"
        expected = write(store)
        dst = tmp_path / f"{name}-out"
        report = corpus.convert_in(environment, "zarr", store, dst)
        assert (
            "codec 'pcodec' is not installed: pip install 'numcodecs[pcodec]'"
            in (report["skipped"][bad])
        )
        del expected[bad]
        assert_converted(dst, expected, "zarr")
        requested = tmp_path / f"{name}-requested"
        report = corpus.convert_in(environment, "zarr", store, requested, {"x": bad})
        assert report["error"] == "UnsupportedSourceError"
        assert not report["planned"]
        assert report["message"].startswith(f"{store}: field 'x' ({bad}): codec 'pcodec' is")
        assert_nothing_left(requested)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_damaged_chunk_fails_the_conversion_naming_store_array_and_chunk(
    tmp_path: Path, zarr_format: ZarrFormat, workers: int
) -> None:
    """Run in a fresh interpreter: inside the long-lived test process, after other tests had
    decompressed damaged blosc data, blosc once failed on the intact chunk next to the damaged
    one too (not reproduced in a fresh process; see the closing note of that round)."""
    store = tmp_path / "src.zarr"
    _, key = corpus.write_damaged_zarr(store, zarr_format)
    dst = tmp_path / "out"
    report = corpus.convert_in(
        corpus.environment_without(tmp_path), "zarr", store, dst, None, workers=workers
    )
    assert report["error"] == "SourceError", report
    message = report["message"]
    assert re.match(rf"{re.escape(str(store))}: array 'x', block of rows \d+:\d+: ", message)
    named = re.search(
        rf"the chunk at row (\d+) \(key {re.escape(repr(key))}\) cannot be read", message
    )
    assert named is not None, message  # the damaged chunk (rows 700-749), from its first row read
    assert 700 <= int(named.group(1)) < 750
    assert_nothing_openable(dst)


# -- damaged files ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hdf5", "zarr-v2", "zarr-v3"])
def test_damaged_copies_end_in_success_or_a_memshard_error(tmp_path: Path, kind: str) -> None:
    """Random bytes overwritten in a file's metadata or chunks: h5py and zarr raise OSError,
    KeyError, RuntimeError, TypeError..., which must all become memshard errors."""
    if kind == "hdf5":
        source = tmp_path / "source.h5"
        corpus.write_plugin_filtered(source)
    else:
        source = tmp_path / "source.zarr"
        (corpus.write_zarr2_group if kind == "zarr-v2" else corpus.write_zarr3_group)(source)
    report = corpus.convert_damaged(kind.split("-")[0], source, trials=60, seed=7)
    assert report["escaped"] == {}
    assert report["converted"] + report["refused"] == 60


# -- the command line --------------------------------------------------------------------------


def run_memshard(
    environment: dict[str, str] | None, *args: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memshard", *(os.fspath(arg) for arg in args)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment or {**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )


def test_cli_converts_what_it_can_and_lists_what_it_left_out(tmp_path: Path) -> None:
    src = tmp_path / "odd.h5"
    expected = corpus.write_odd_types(src)
    result = run_memshard(None, "convert", src, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'out'}: {corpus.ROWS} rows")
    notes = result.stderr.splitlines()
    assert [note.split(" (")[0] for note in notes] == [
        "memshard: /quad: not taken",
        "memshard: /time: not taken",
    ]
    assert "floating-point type of 16 bytes" in notes[0]
    assert_converted(tmp_path / "out", expected)


def test_cli_without_hdf5plugin(tmp_path: Path) -> None:
    src = tmp_path / "filtered.h5"
    expected = corpus.write_plugin_filtered(src)
    environment = corpus.environment_without(tmp_path, "hdf5plugin")
    result = run_memshard(environment, "convert", src, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    notes = result.stderr.splitlines()
    assert len(notes) == len(corpus.PLUGIN_FILTERED)
    assert all("pip install hdf5plugin" in note for note in notes)
    assert_converted(tmp_path / "out", {path: expected[path] for path in ("/plain", "/gzip")})
    refused = run_memshard(environment, "convert", src, tmp_path / "lz4", "--field", "x=/lz4")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"memshard: error: {src}: field 'x' (/lz4): it is compressed")
    assert "pip install hdf5plugin" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert_nothing_left(tmp_path / "lz4")


def test_cli_on_a_zarr_python_2_group(tmp_path: Path) -> None:
    store = tmp_path / "v2.zarr"
    expected = corpus.write_zarr2_group(store)
    result = run_memshard(None, "convert", store, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"memshard: pickled: not taken ({zarrstore.PICKLE_REFUSAL})",
        "memshard: s1: not taken (string dtype |S1)",
        "memshard: u4: not taken (string dtype <U4)",
    ]
    assert_converted(tmp_path / "out", expected, "zarr")
    info = json.loads(run_memshard(None, "info", tmp_path / "out", "--json").stdout)
    assert info["rows"] == corpus.ROWS
