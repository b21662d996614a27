"""The ``memshard`` command line, run as a child process with stdin closed and no terminal.

Covers ``convert`` (HDF5, zarr, a ``.npy`` file, a directory of them; fields, labels, shard
sizes, workers, quiet), the user errors (exit 2, one ``memshard: error:`` line, no
traceback, nothing written), a conversion interrupted by a real SIGINT and resumed, ``info``,
``verify`` (exit 1 on each kind of damage, and a property: any flipped data byte is found),
``head``, and the helpers :func:`memshard.cli.parse_size` and :func:`memshard.cli.detect_format`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import cli
from memshard.convert import SOURCE_ATTR, STAGING_SUFFIX
from memshard.errors import (
    ChecksumError,
    DatasetNotFoundError,
    ShardHeaderError,
    ShardMissingError,
    ShardSizeError,
    SourceError,
)
from tests.helpers import REPO_ROOT, write_dataset
from tests.strategies import dtypes, sample_shapes

#: ``memshard`` through the interpreter running the tests, and the installed console script.
MEMSHARD = [sys.executable, "-m", "memshard"]
SCRIPT = os.path.join(os.path.dirname(sys.executable), "memshard")
ROWS = 300
SUMMARY = re.compile(
    r"(?P<path>.+): (?P<rows>[\d,]+) rows, (?P<shards>[\d,]+) shards, [\d.]+ (B|KiB|MiB) "
    r"in [\d.]+ s \([\d.]+ (B|KiB|MiB|GiB)/s\)"
)
#: The note ``convert`` prints for shards below 1 MiB, which most tests here ask for (small
#: sources in several shards).
SMALL_SHARDS = re.compile(
    r"memshard: warning: .+: --shard-size gives shards of [\d,]+ rows \(.+ of data\), "
    r"[\d,]+ shards and [\d,]+ files; shards smaller than 1.0 MiB cost more in files, "
    r"headers and commits than they hold. The default --shard-size is 256.0 MiB"
)


def run_cli(*args: Any, script: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``memshard ARGS`` from the repository root with stdin closed (not a terminal) and
    stdout/stderr captured (not terminals either); warnings are errors in the child."""
    command = [SCRIPT] if script else list(MEMSHARD)
    return subprocess.run(
        [*command, *(os.fspath(arg) for arg in args)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "error", **env},
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0; on stderr no progress bar without a terminal: only the arrays left out, and the
    warning about the small shards a test asked for."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    others = [line for line in result.stderr.splitlines() if not SMALL_SHARDS.fullmatch(line)]
    for line in others:
        assert re.fullmatch(r"memshard: .+: not taken \(.+\)", line), result.stderr


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``memshard: error:`` line on stderr, which
    contains every fragment; return that line."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memshard: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """argparse's own error: exit 2, the usage, then ``memshard CMD: error: ...``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("usage: memshard")
    last = result.stderr.splitlines()[-1]
    assert re.match(r"memshard( \w+)?: error: ", last), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def assert_summary(result: subprocess.CompletedProcess[str], dst: Path, rows: int) -> int:
    """The one summary line of ``convert``; return the shard count it states."""
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    match = SUMMARY.fullmatch(lines[0])
    assert match is not None, lines[0]
    assert match["path"] == str(dst)
    assert int(match["rows"].replace(",", "")) == rows
    return int(match["shards"].replace(",", ""))


def assert_columns(ds: ms.Dataset, columns: dict[str, np.ndarray]) -> None:
    """``ds`` holds exactly ``columns``, value by value, in the stored (native) byte order."""
    assert sorted(ds.fields) == sorted(columns)
    for name, expected in columns.items():
        column = ds[name]
        assert column.dtype == expected.dtype.newbyteorder("=")
        assert column.shape == expected.shape
        np.testing.assert_array_equal(column[:], expected, err_msg=name)
        np.testing.assert_array_equal(ds.take(np.arange(len(ds))[::-1])[name], expected[::-1])


def assert_shards_cover(ds: ms.Dataset, shard_bytes: int) -> None:
    """Every shard is sealed and full but the last, of at most ``shard_bytes`` bytes."""
    row_bytes = sum(spec.row_bytes for spec in ds.manifest.fields.values())
    shard_rows = ds.manifest.shard_rows
    assert 1 <= shard_rows <= max(1, shard_bytes // row_bytes)
    assert len(ds.shards) == math.ceil(len(ds) / shard_rows)
    for shard in ds.shards:
        assert shard.sealed
    assert [shard.rows for shard in ds.shards[:-1]] == [shard_rows] * (len(ds.shards) - 1)


def no_output_at(dst: Path) -> None:
    assert not os.path.lexists(dst)
    assert not os.path.lexists(str(dst) + STAGING_SUFFIX)


# -- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    h5: Path
    h5_columns: dict[str, np.ndarray]
    zarr: Path
    zarr_columns: dict[str, np.ndarray]
    npy: Path
    npy_dir: Path
    npy_columns: dict[str, np.ndarray]
    text: Path


def _h5_columns() -> dict[str, np.ndarray]:
    rows = np.arange(ROWS)
    rng = np.random.default_rng(7)
    return {
        "x": (rows[:, None] * 4 + np.arange(4)).astype(np.float32) / 8,
        "y": (rows % 3).astype(np.int64),
        "z": (rows % 2).astype(np.uint8),
        "img": rng.standard_normal((ROWS, 2, 5)).astype(">f2"),  # big-endian in the file
    }


def write_h5(path: Path, columns: dict[str, np.ndarray]) -> None:
    rows = len(columns["x"])
    with h5py.File(path, "w") as handle:
        handle.attrs["note"] = "cli test"
        handle.attrs["version"] = 3
        train = handle.create_group("train")
        train.create_dataset("x", data=columns["x"], chunks=(32, 4))
        train.create_dataset("y", data=columns["y"]).attrs["labels"] = ["a", "b", "c"]
        train.create_dataset("z", data=columns["z"]).attrs["classes"] = ["even", "odd"]
        train.create_dataset("img", data=columns["img"], chunks=(50, 2, 5), compression="gzip")
        handle.create_dataset("other", data=np.arange(7))  # another length: left out
        bad = handle.create_group("bad")
        bad.create_dataset("strings", data=np.array([b"abc"] * rows))
        compound = np.zeros(rows, dtype=[("a", "<i4"), ("b", "<f8")])
        bad.create_dataset("compound", data=compound)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    base = tmp_path_factory.mktemp("sources")
    h5_columns = _h5_columns()
    write_h5(base / "data.h5", h5_columns)

    images = np.arange(120 * 6, dtype=np.float32).reshape(120, 2, 3) - 100
    classes = (np.arange(120) % 4).astype(np.int16)
    group = zarr.open_group(base / "store.zarr", mode="w", zarr_format=3)
    group.attrs["origin"] = "zarr test"
    array = group.create_array("images", shape=images.shape, dtype=images.dtype, chunks=(16, 2, 3))
    array[:] = images
    cls = group.create_group("meta").create_array("cls", shape=(120,), dtype="int16", chunks=(50,))
    cls[:] = classes
    cls.attrs["labels"] = ["w", "x", "y", "z"]

    npy_columns = {
        "vec": np.linspace(-1, 1, 50 * 3).reshape(50, 3),
        "a": (np.arange(40) % 3).astype(np.int32),
        "b": np.arange(160, dtype=np.float32).reshape(40, 2, 2),
        "c_d": np.arange(40) % 2 == 0,
    }
    np.save(base / "vec.npy", npy_columns["vec"])
    (base / "npys").mkdir()
    np.save(base / "npys" / "a.npy", npy_columns["a"])
    np.save(base / "npys" / "b.npy", npy_columns["b"])
    np.save(base / "npys" / "c d.npy", npy_columns["c_d"])
    (base / "npys" / "README.txt").write_text("not an array\n")
    (base / "notes.txt").write_text("hello, I am not an array\n")
    return Sources(
        h5=base / "data.h5",
        h5_columns=h5_columns,
        zarr=base / "store.zarr",
        zarr_columns={"images": images, "meta_cls": classes},
        npy=base / "vec.npy",
        npy_dir=base / "npys",
        npy_columns=npy_columns,
        text=base / "notes.txt",
    )


# -- convert -----------------------------------------------------------------------------------


def test_convert_hdf5_auto_fields_with_the_console_script(sources: Sources, tmp_path: Path) -> None:
    assert os.access(SCRIPT, os.X_OK), SCRIPT
    dst = tmp_path / "out"
    result = run_cli("convert", sources.h5, dst, "--shard-size", "2KB", script=True)
    shards = assert_summary(result, dst, ROWS)
    notes = [line for line in result.stderr.splitlines() if not SMALL_SHARDS.fullmatch(line)]
    assert notes == [
        "memshard: /bad/compound: not taken (compound dtype [('a', '<i4'), ('b', '<f8')])",
        "memshard: /bad/strings: not taken (string dtype |S3)",
        "memshard: /other: not taken (first axis has 7 rows, not 300)",
    ]
    ds = ms.open(dst)
    columns = sources.h5_columns
    assert_columns(ds, {f"train_{name}": array for name, array in columns.items()})
    assert len(ds) == ROWS
    assert len(ds.shards) == shards > 1
    assert_shards_cover(ds, 2048)
    assert ds.labels == {"train_y": ("a", "b", "c")}  # from the default "labels" attribute
    assert ds.attrs["note"] == "cli test"
    assert ds.attrs["version"] == 3
    record = ds.attrs[SOURCE_ATTR]
    assert record["format"] == "hdf5"
    assert record["location"] == str(sources.h5)
    assert record["rows"] == ROWS
    assert record["fields"]["train_x"]["origin"] == "/train/x"
    assert ds.verify().ok
    assert not os.path.lexists(str(dst) + STAGING_SUFFIX)


def test_convert_hdf5_named_fields_labels_and_worker_processes(
    sources: Sources, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    result = run_cli(
        "convert", sources.h5, dst,
        "--field", "x=/train/x", "--field", "y=train/y", "--field", "img=/train/img",
        "--labels", "y=no,yes,maybe", "--shard-size", "1KiB", "--workers", "2",
    )  # fmt: skip
    shards = assert_summary(result, dst, ROWS)
    ds = ms.open(dst)
    columns = sources.h5_columns
    assert_columns(ds, {"x": columns["x"], "y": columns["y"], "img": columns["img"]})
    assert list(ds.fields) == ["x", "y", "img"]
    assert ds.labels == {"y": ("no", "yes", "maybe")}  # --labels wins over the attribute
    assert len(ds.shards) == shards > 4  # several shards per worker
    assert_shards_cover(ds, 1024)
    assert ds.verify().ok


def test_convert_label_attr_names_the_vocabulary_attribute(
    sources: Sources, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    result = run_cli(
        "convert", sources.h5, dst, "--field", "z=/train/z", "--field", "y=/train/y",
        "--label-attr", "classes", "--shard-size", "64KB",
    )  # fmt: skip
    assert assert_summary(result, dst, ROWS) == 1
    ds = ms.open(dst)
    assert_columns(ds, {"z": sources.h5_columns["z"], "y": sources.h5_columns["y"]})
    assert ds.labels == {"z": ("even", "odd")}  # y's "labels" attribute is not looked at
    assert ds["z"].labels == ("even", "odd")
    assert ds["y"].labels is None


def test_convert_zarr_v3_store(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    result = run_cli("convert", sources.zarr, dst, "--shard-size", "1KiB", "--workers", "2")
    assert assert_summary(result, dst, 120) > 2
    ds = ms.open(dst)
    assert_columns(ds, sources.zarr_columns)
    assert ds.labels == {"meta_cls": ("w", "x", "y", "z")}
    assert ds.attrs["origin"] == "zarr test"
    assert ds.attrs[SOURCE_ATTR]["format"] == "zarr"
    assert_shards_cover(ds, 1024)


def test_convert_a_single_npy_file(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    # --resume with nothing to resume starts a new conversion (spec/CONVERSION.md section 6).
    result = run_cli("convert", sources.npy, dst, "--shard-size", "480", "--resume")
    assert assert_summary(result, dst, 50) == 3
    ds = ms.open(dst)
    assert_columns(ds, {"vec": sources.npy_columns["vec"]})
    assert ds.manifest.shard_rows == 20
    assert ds.attrs[SOURCE_ATTR]["location"] == str(sources.npy)


def test_convert_a_directory_of_npy_files(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    result = run_cli(
        "convert", sources.npy_dir, dst, "--workers", "2", "--shard-size", "0.25k",
        "--labels", "a=zero,one,two",
    )  # fmt: skip
    assert assert_summary(result, dst, 40) > 2
    ds = ms.open(dst)
    columns = sources.npy_columns
    assert_columns(ds, {"a": columns["a"], "b": columns["b"], "c_d": columns["c_d"]})
    assert ds.labels == {"a": ("zero", "one", "two")}
    assert_shards_cover(ds, 256)


def test_convert_npy_directory_with_named_fields(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    result = run_cli(
        "convert", sources.npy_dir, dst, "--field", "first=b.npy", "--field", "second=a.npy"
    )
    assert_summary(result, dst, 40)
    ds = ms.open(dst)
    assert list(ds.fields) == ["first", "second"]
    assert_columns(ds, {"first": sources.npy_columns["b"], "second": sources.npy_columns["a"]})


def test_quiet_convert_prints_nothing(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    result = run_cli("convert", sources.h5, dst, "--quiet", "--field", "x=/train/x")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert_columns(ms.open(dst), {"x": sources.h5_columns["x"]})
    # ... but still reports an error.
    result = run_cli("convert", sources.h5, dst, "-q")
    assert_user_error(result, str(dst), "already exists")


# -- user errors -------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    assert_user_error(run_cli("convert", tmp_path / "nope.h5", dst), "nope.h5", "no such file")
    no_output_at(dst)


def test_source_of_no_known_format(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    assert_user_error(run_cli("convert", sources.text, dst), str(sources.text), "not an HDF5 file")
    assert_user_error(run_cli("convert", tmp_path, dst), "neither a zarr store nor")
    no_output_at(dst)


@pytest.mark.parametrize("source_format", ["hdf5", "npy"])
def test_forced_format_on_a_text_file(sources: Sources, tmp_path: Path, source_format: str) -> None:
    dst = tmp_path / "out"
    line = assert_user_error(
        run_cli("convert", sources.text, dst, "--format", source_format), str(sources.text)
    )
    # A text file holds no "object data": the error must say what the file is not.
    assert "object" not in line
    assert "not" in line
    no_output_at(dst)


def test_field_naming_a_missing_dataset(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    result = run_cli("convert", sources.h5, dst, "--field", "x=/train/x", "--field", "q=/no/such")
    assert_user_error(result, "'/no/such'", "/train/x")  # names the arrays that exist
    no_output_at(dst)


@pytest.mark.parametrize(
    ("path", "kind"), [("/bad/strings", "string dtype"), ("/bad/compound", "compound dtype")]
)
def test_unsupported_dtype_is_refused_before_writing(
    sources: Sources, tmp_path: Path, path: str, kind: str
) -> None:
    dst = tmp_path / "out"
    result = run_cli("convert", sources.h5, dst, "--field", f"bad={path}")
    assert_user_error(result, path, kind, "memshard takes")
    no_output_at(dst)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("existing", ["dataset", "file"])
def test_destination_exists(sources: Sources, tmp_path: Path, existing: str) -> None:
    dst = tmp_path / "out"
    if existing == "dataset":
        write_dataset(dst, {"v": np.arange(3)})
    else:
        dst.write_text("precious")
    before = sorted(os.listdir(tmp_path))
    assert_user_error(run_cli("convert", sources.npy, dst), str(dst), "already exists")
    assert sorted(os.listdir(tmp_path)) == before
    if existing == "dataset":
        np.testing.assert_array_equal(ms.open(dst)["v"][:], np.arange(3))


def test_overwrite_replaces_a_dataset(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    write_dataset(dst, {"v": np.arange(3)})
    assert_summary(run_cli("convert", sources.npy, dst, "--overwrite"), dst, 50)
    assert_columns(ms.open(dst), {"vec": sources.npy_columns["vec"]})
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_overwrite_refuses_a_non_dataset_before_writing(sources: Sources, tmp_path: Path) -> None:
    """spec/CONVERSION.md section 1: DST existing is refused before anything is written, and
    section 5: --overwrite never replaces something that is not a memshard dataset."""
    dst = tmp_path / "out"
    dst.write_text("precious")
    result = run_cli("convert", sources.npy, dst, "--overwrite")
    assert_user_error(result, str(dst), "not a memshard dataset")
    assert dst.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["out"], "no staging dataset is left behind"


@pytest.mark.parametrize(
    "option",
    [("--shard-size", "12XB"), ("--shard-size", "0"), ("--workers", "0"), ("--field", "x")],
)
def test_bad_option_values_are_usage_errors(
    sources: Sources, tmp_path: Path, option: tuple[str, str]
) -> None:
    dst = tmp_path / "out"
    assert_usage_error(run_cli("convert", sources.h5, dst, *option), f"argument {option[0]}")
    no_output_at(dst)


def test_not_a_dataset_from_the_shell(sources: Sources, tmp_path: Path) -> None:
    assert_user_error(run_cli("info", tmp_path), str(tmp_path), "not a memshard dataset")
    assert_user_error(run_cli("verify", tmp_path / "nope"), "nope", "does not exist")
    assert_user_error(run_cli("head", sources.h5, "-n", "2"), str(sources.h5))


@pytest.mark.parametrize("command", [["info"], ["info", "--json"], ["verify"], ["head"]])
@pytest.mark.parametrize("target", ["missing", "empty directory", "file"])
def test_not_a_dataset(
    sources: Sources,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    target: str,
) -> None:
    path = {"missing": tmp_path / "nope", "empty directory": tmp_path, "file": sources.h5}[target]
    assert cli.main([command[0], str(path), *command[1:]]) == cli.USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("memshard: error: ")
    assert str(path) in err


def test_open_of_a_regular_file_is_dataset_not_found(sources: Sources) -> None:
    """``memshard.open`` documents DatasetNotFoundError for a path with no manifest.json; a
    regular file has none (the CLI otherwise prints ``[Errno 20] Not a directory``)."""
    with pytest.raises(DatasetNotFoundError, match=r"data\.h5"):
        ms.open(sources.h5)


def test_head_with_a_negative_count(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", {"v": np.arange(3)})
    assert_user_error(run_cli("head", tmp_path / "ds", "-n", "-1"), "-n", "-1")


def test_no_command_is_a_usage_error() -> None:
    assert_usage_error(run_cli(), "COMMAND")


# -- interrupted conversion ----------------------------------------------------------------------


def test_interrupted_conversion_resumes(tmp_path: Path) -> None:
    rows, stop_row = 1000, 500
    columns: dict[str, np.ndarray] = {
        "x": np.arange(rows * 4, dtype=np.float32).reshape(rows, 4),
        "y": (np.arange(rows) % 3).astype(np.int64),
        "z": np.zeros(rows, np.uint8),
        "img": np.ones((rows, 2, 5), ">f2"),
    }
    src, dst = tmp_path / "src.h5", tmp_path / "out"
    staging = Path(str(dst) + STAGING_SUFFIX)
    write_h5(src, columns)
    expected = {f"train_{name}": array for name, array in columns.items()}
    convert_args = ["convert", str(src), str(dst), "--shard-size", "2KB"]
    code = (
        "import sys, cli_sigint; cli_sigint.install(int(sys.argv[1])); "
        "from memshard.cli import main; raise SystemExit(main(sys.argv[2:]))"
    )
    python_path = os.pathsep.join(
        filter(None, [str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")])
    )
    interrupted = subprocess.run(
        [sys.executable, "-c", code, str(stop_row), *convert_args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "error", "PYTHONPATH": python_path},
        check=False,
    )
    assert interrupted.returncode == 130, (interrupted.stdout, interrupted.stderr)
    assert interrupted.stdout == ""
    assert "Traceback" not in interrupted.stderr
    lines = [line for line in interrupted.stderr.splitlines() if not SMALL_SHARDS.fullmatch(line)]
    assert len(lines) == 1, interrupted.stderr
    assert lines[0].startswith("memshard: interrupted")
    assert "--resume" in lines[0]
    assert str(staging) in lines[0]
    assert not os.path.lexists(dst)

    # The staging dataset holds whole shards of a prefix of the rows.
    partial = ms.open(staging)
    shard_rows = partial.manifest.shard_rows
    assert 0 < len(partial) <= stop_row
    assert len(partial) % shard_rows == 0
    assert all(shard.sealed and shard.rows == shard_rows for shard in partial.shards)
    assert_columns(partial, {name: array[: len(partial)] for name, array in expected.items()})
    assert partial.verify().ok
    partial_rows = range(len(partial))
    del partial

    # Without --resume the staging dataset is in the way; it is left as it is.
    assert_user_error(run_cli(*convert_args), str(staging), "--resume")
    assert not os.path.lexists(dst)
    assert staging.is_dir()

    # Another shard size on --resume is an error that says so; nothing changes.
    assert_user_error(
        run_cli(*convert_args[:3], "--resume", "--shard-size", "64KB"),
        str(staging), "shards of 45 rows", "--shard-size 65536 asks for 1,456 rows",
        "leave --shard-size out", "--overwrite",
    )  # fmt: skip
    assert len(ms.open(staging)) == len(partial_rows)

    # --resume completes it, with the shard size of the first run (given again, or not).
    result = run_cli(*convert_args[:3], "--resume", script=True)
    assert_summary(result, dst, rows)
    assert not os.path.lexists(staging)
    ds = ms.open(dst)
    assert_columns(ds, expected)
    assert ds.manifest.shard_rows == shard_rows
    assert_shards_cover(ds, 2048)
    assert ds.labels == {"train_y": ("a", "b", "c")}
    assert ds.verify().ok


# -- info ----------------------------------------------------------------------------------------

LABELS_10 = [f"class{index}" for index in range(10)]


@pytest.fixture
def described(tmp_path: Path) -> tuple[ms.Dataset, dict[str, np.ndarray]]:
    """10 rows in 4 sealed shards (3, 3, 3, 1): label fields, a large field, attributes."""
    rows = 10
    columns = {
        "img": np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3) / 4,
        "label": (np.arange(rows) % 3).astype(np.int64),
        "digit": (np.arange(rows) % 10).astype(np.uint8),
        "flag": np.arange(rows) % 2 == 1,
        "wave": np.arange(rows * 20, dtype=np.float64).reshape(rows, 20),
    }
    writer = ms.create(
        tmp_path / "ds",
        fields={name: (array.dtype, array.shape[1:]) for name, array in columns.items()},
        shard_bytes=3 * sum(array[0].nbytes for array in columns.values()),
        labels={"label": ["cat", "dog", "eel"], "digit": LABELS_10},
        attrs={"author": "tests", "scale": 0.25, "tags": ["a", "b"]},
    )
    with writer:
        writer.extend(columns)
    return ms.open(tmp_path / "ds"), columns


def test_info_text(described: tuple[ms.Dataset, dict[str, np.ndarray]]) -> None:
    ds, _ = described
    result = run_cli("info", ds.path)
    assert_ok(result)
    text = result.stdout
    lines = text.splitlines()
    assert lines[0] == ds.path
    assert re.search(r"rows\s+10 in 4 shards \(4 sealed, up to 3 rows each\)", text), text
    assert ds.uuid in text
    field_lines = {line.split()[0]: line for line in lines if line.startswith("    ")}
    expected = {
        "img": ("float32", "(2, 3)"),
        "label": ("int64", "()"),
        "digit": ("uint8", "()"),
        "flag": ("bool", "()"),
        "wave": ("float64", "(20"),
    }
    for name, (dtype, shape) in expected.items():
        assert name in field_lines, text
        assert dtype in field_lines[name]
        assert shape in field_lines[name]
    assert "labels (3): cat, dog, eel" in field_lines["label"]
    assert "labels (10): " + ", ".join(LABELS_10[:8]) + ", ..." in field_lines["digit"]
    assert "labels" not in field_lines["img"]
    assert '    author: "tests"' in lines
    assert "    scale: 0.25" in lines
    assert '    tags: ["a", "b"]' in lines


def test_info_json(described: tuple[ms.Dataset, dict[str, np.ndarray]]) -> None:
    ds, columns = described
    result = run_cli("info", "--json", ds.path)
    assert_ok(result)
    info = json.loads(result.stdout)
    manifest = ds.manifest
    assert set(info) == {
        "path", "format_version", "uuid", "generation", "rows", "shards", "sealed_shards",
        "shard_rows", "bytes", "stored_bytes", "fields", "attrs",
    }  # fmt: skip
    assert info["path"] == ds.path
    assert info["format_version"] == manifest.version == ms.FORMAT_VERSION
    assert info["uuid"] == manifest.uuid
    assert info["generation"] == manifest.generation
    assert info["rows"] == manifest.rows == 10
    assert info["shards"] == len(ds.shards) == 4
    assert info["sealed_shards"] == sum(shard.sealed for shard in ds.shards) == 4
    assert info["shard_rows"] == manifest.shard_rows == 3
    assert info["bytes"] == ds.nbytes == sum(array.nbytes for array in columns.values())
    assert info["stored_bytes"] == info["bytes"]  # nothing compressed
    assert list(info["fields"]) == list(manifest.fields)
    for name, field in info["fields"].items():
        assert set(field) == {"dtype", "shape", "row_bytes", "labels", "codec", "stored_bytes",
                              "ratio"}  # fmt: skip
        assert field["codec"] is None
        assert field["stored_bytes"] == columns[name].nbytes
        assert field["ratio"] == 1.0
        assert np.dtype(field["dtype"]) == columns[name].dtype
        assert field["shape"] == list(columns[name].shape[1:])
        assert field["row_bytes"] == manifest.fields[name].row_bytes == columns[name][0].nbytes
        assert field["labels"] == (list(ds.labels[name]) if name in ds.labels else None)
    assert info["fields"]["label"]["labels"] == ["cat", "dog", "eel"]
    assert info["attrs"] == ds.attrs == {"author": "tests", "scale": 0.25, "tags": ["a", "b"]}


# -- verify --------------------------------------------------------------------------------------


def _flip_byte(path: str, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ mask]))


def _damage(kind: str, path: str, data_offset: int) -> None:
    if kind == "data byte":
        _flip_byte(path, os.path.getsize(path) - 1)
    elif kind == "header byte":
        _flip_byte(path, 20, 0x01)
    elif kind == "truncated":
        os.truncate(path, os.path.getsize(path) - 1)
    elif kind == "trailing bytes":
        with open(path, "ab") as handle:
            handle.write(b"\0")
    elif kind == "deleted":
        os.unlink(path)
    else:
        raise AssertionError(kind)


@pytest.fixture
def sealed(tmp_path: Path) -> ms.Dataset:
    """12 rows in sealed shards of 4, 4, 1 (first session) and 3 (second session)."""
    columns: dict[str, np.ndarray] = {
        "x": np.arange(12 * 4, dtype=np.float32).reshape(12, 4),
        "y": np.arange(12, dtype=np.int16),
    }
    ds = write_dataset(tmp_path / "ds", columns, [9, 3], shard_rows=4)
    assert [shard.rows for shard in ds.shards] == [4, 4, 1, 3]
    assert all(shard.sealed for shard in ds.shards)
    return ds


def test_verify_a_good_dataset(sealed: ms.Dataset) -> None:
    result = run_cli("verify", sealed.path)
    assert_ok(result)
    assert re.fullmatch(
        rf"{re.escape(sealed.path)}: ok \(8 files, 216 B hashed in [\d.]+ s, .+/s\)\n",
        result.stdout,
    ), result.stdout
    report = sealed.verify()
    assert report.ok
    assert report.problems == []
    assert report.files == 8
    assert report.bytes_hashed == 12 * (16 + 2)
    report.raise_first()  # nothing to raise


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("data byte", ChecksumError, "checksum"),
        ("header byte", ShardHeaderError, "header"),
        ("truncated", ShardSizeError, "truncated"),
        ("trailing bytes", ShardSizeError, "trailing"),
        ("deleted", ShardMissingError, ""),
    ],
)
def test_verify_finds_damage(
    sealed: ms.Dataset, kind: str, error: type[Exception], words: str
) -> None:
    shard = sealed.shards[1]
    file = shard.files["x"]
    path = os.path.join(sealed.path, file.path)
    _damage(kind, path, file.data_offset)

    result = run_cli("verify", "--quiet", sealed.path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"{path}: ")
    assert words in lines[0]
    assert lines[1].startswith(f"{sealed.path}: DAMAGED: 1 bad files (8 files")

    report = ms.open(sealed.path).verify()
    assert not report.ok
    assert [problem.path for problem in report.problems] == [path]
    assert report.problems[0].error is error
    with pytest.raises(error, match=re.escape(path)) as caught:
        report.raise_first()
    assert type(caught.value) is error
    assert isinstance(caught.value, ms.errors.InvalidDatasetError)


def test_verify_reports_every_bad_file(sealed: ms.Dataset) -> None:
    damaged = []
    for index, kind in [(0, "data byte"), (2, "deleted"), (3, "truncated")]:
        file = sealed.shards[index].files["y"]
        damaged.append(os.path.join(sealed.path, file.path))
        _damage(kind, damaged[-1], file.data_offset)
    result = run_cli("verify", sealed.path)
    assert result.returncode == 1
    assert [line.split(": ")[0] for line in result.stdout.splitlines()[:-1]] == damaged
    assert "DAMAGED: 3 bad files" in result.stdout.splitlines()[-1]
    report = ms.open(sealed.path).verify()
    assert [problem.error for problem in report.problems] == [
        ChecksumError,
        ShardMissingError,
        ShardSizeError,
    ]


_dataset_names = itertools.count()


@st.composite
def small_datasets(draw: st.DrawFn) -> dict[str, Any]:
    """Columns of 1-3 fields, 1-30 rows, split into 1-3 appender sessions, small shards."""
    rows = draw(st.integers(1, 30))
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    columns = {}
    for name in names:
        dtype, shape = draw(dtypes), draw(sample_shapes.filter(lambda s: math.prod(s) <= 8))
        values = np.arange(rows * math.prod(shape)) % 7 + 1
        columns[name] = values.astype(dtype).reshape(rows, *shape)
    cuts = sorted({0, rows, *draw(st.lists(st.integers(1, rows), max_size=2))})
    sessions = [stop - start for start, stop in itertools.pairwise(cuts)]
    return {"columns": columns, "sessions": sessions, "shard_rows": draw(st.integers(1, 8))}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flips")


@settings(max_examples=50, deadline=None)
@given(spec=small_datasets(), data=st.data())
def test_any_flipped_data_byte_of_a_sealed_shard_is_found(
    scratch: Path, spec: dict[str, Any], data: st.DataObject
) -> None:
    ds = write_dataset(scratch / f"ds{next(_dataset_names)}", **spec)
    files = [file for shard in ds.shards if shard.sealed for file in shard.files.values()]
    assert files
    file = data.draw(st.sampled_from(files), label="file")
    offset = data.draw(st.integers(0, file.nbytes - 1), label="data byte")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    path = os.path.join(ds.path, file.path)
    _flip_byte(path, file.data_offset + offset, mask)
    report = ds.verify()
    assert not report.ok
    assert [(problem.path, problem.error) for problem in report.problems] == [(path, ChecksumError)]
    with pytest.raises(ChecksumError):
        report.raise_first()


@settings(max_examples=30, deadline=None)
@given(spec=small_datasets(), data=st.data())
def test_any_flipped_header_byte_of_a_shard_is_found(
    scratch: Path, spec: dict[str, Any], data: st.DataObject
) -> None:
    ds = write_dataset(scratch / f"ds{next(_dataset_names)}", **spec)
    files = [file for shard in ds.shards for file in shard.files.values()]
    file = data.draw(st.sampled_from(files), label="file")
    offset = data.draw(st.integers(0, file.data_offset - 1), label="header byte")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    path = os.path.join(ds.path, file.path)
    _flip_byte(path, offset, mask)
    report = ds.verify()
    assert [(problem.path, problem.error) for problem in report.problems] == [
        (path, ShardHeaderError)
    ]


# -- head ----------------------------------------------------------------------------------------


def _row_blocks(stdout: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in stdout.splitlines()[:-1]:
        if re.fullmatch(r"\[\d+\]", line):
            assert line == f"[{len(blocks)}]"
            blocks.append([])
        else:
            assert line.startswith("  "), line
            blocks[-1].append(line.strip())
    return blocks


def test_head_three_rows(described: tuple[ms.Dataset, dict[str, np.ndarray]]) -> None:
    ds, _ = described
    result = run_cli("head", ds.path, "-n", "3")
    assert_ok(result)
    assert result.stdout.splitlines()[-1] == "(3 of 10 rows)"
    blocks = _row_blocks(result.stdout)
    assert len(blocks) == 3
    assert blocks[0][0] == "img: [[0.   0.25 0.5 ]  [0.75 1.   1.25]]"
    assert [block[1] for block in blocks] == ["label: 0 (cat)", "label: 1 (dog)", "label: 2 (eel)"]
    assert [block[2] for block in blocks] == [
        "digit: 0 (class0)",
        "digit: 1 (class1)",
        "digit: 2 (class2)",
    ]
    assert [block[3] for block in blocks] == ["flag: False", "flag: True", "flag: False"]
    wave = blocks[1][4]  # 20 values: summarised
    assert wave.startswith("wave: float64[20] [20., 21., 22., 23., 24., 25., ...]"), wave
    assert "mean 29.5" in wave


def test_head_default_zero_and_more_than_there_are(
    described: tuple[ms.Dataset, dict[str, np.ndarray]],
) -> None:
    ds, _ = described
    default = run_cli("head", ds.path)
    assert_ok(default)
    assert len(_row_blocks(default.stdout)) == 5
    assert default.stdout.endswith("(5 of 10 rows)\n")

    zero = run_cli("head", "-n", "0", ds.path)
    assert_ok(zero)
    assert zero.stdout == "(0 of 10 rows)\n"

    everything = run_cli("head", "-n", "1000", ds.path)
    assert_ok(everything)
    assert len(_row_blocks(everything.stdout)) == 10
    assert everything.stdout.endswith("(10 of 10 rows)\n")


def test_head_of_an_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ms.create(tmp_path / "empty", fields={"x": ("float32", (2,))}).close()
    assert cli.main(["head", str(tmp_path / "empty")]) == cli.OK
    assert capsys.readouterr().out == "(0 of 0 rows)\n"


# -- parse_size and detect_format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("1", 1),
        ("64k", 64 << 10),
        ("64KB", 64 << 10),
        ("64kib", 64 << 10),
        ("64KiB", 64 << 10),
        ("256MB", 256 << 20),
        ("256 MB", 256 << 20),
        (" 2m ", 2 << 20),
        ("1GiB", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("0.5k", 512),
        ("2T", 2 << 40),
        ("10B", 10),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert cli.parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "  ", "abc", "MB", "-1", "-1MB", "0", "0k", "0.0001k", "1e3", "1.5.2", "12XB", "1 M B",
     "1KBB", "1PB", "0x10"],
)  # fmt: skip
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        cli.parse_size(text)


def test_detect_format(sources: Sources, tmp_path: Path) -> None:
    assert cli.detect_format(str(sources.h5)) == "hdf5"
    assert cli.detect_format(str(sources.zarr)) == "zarr"
    assert cli.detect_format(str(sources.npy)) == "npy"
    assert cli.detect_format(str(sources.npy_dir)) == "npy"

    with h5py.File(tmp_path / "user_block.bin", "w", userblock_size=512) as handle:
        handle["v"] = np.arange(5)
    with open(tmp_path / "user_block.bin", "rb") as handle:
        assert handle.read(8) != b"\x89HDF\r\n\x1a\n"  # the signature is at 512
    assert cli.detect_format(str(tmp_path / "user_block.bin")) == "hdf5"
    with h5py.File(tmp_path / "big_block.h5", "w", userblock_size=4096) as handle:
        handle["v"] = np.arange(5)
    assert cli.detect_format(str(tmp_path / "big_block.h5")) == "hdf5"

    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    v2.create_array("a", shape=(4,), dtype="i4")
    assert cli.detect_format(str(tmp_path / "v2.zarr")) == "zarr"
    v2_array = zarr.create_array(tmp_path / "v2a.zarr", shape=(4,), dtype="i4", zarr_format=2)
    assert v2_array.shape == (4,)
    assert os.path.exists(tmp_path / "v2a.zarr" / ".zarray")
    assert cli.detect_format(str(tmp_path / "v2a.zarr")) == "zarr"
    v3_array = zarr.create_array(tmp_path / "v3a.zarr", shape=(4,), dtype="i4", zarr_format=3)
    assert v3_array.shape == (4,)
    assert cli.detect_format(str(tmp_path / "v3a.zarr")) == "zarr"

    # Judged by content, not by name.
    os.link(sources.h5, tmp_path / "data.npy")
    assert cli.detect_format(str(tmp_path / "data.npy")) == "hdf5"
    np.save(tmp_path / "array.h5.npy", np.arange(3))
    os.rename(tmp_path / "array.h5.npy", tmp_path / "array.h5")
    assert cli.detect_format(str(tmp_path / "array.h5")) == "npy"


def test_detect_format_refuses(sources: Sources, tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "other_dir").mkdir()
    (tmp_path / "other_dir" / "a.txt").write_text("x")
    (tmp_path / "short").write_bytes(b"\x89HD")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "late.bin").write_bytes(b"\0" * 300 + b"\x89HDF\r\n\x1a\n" + b"\0" * 800)
    for name in ["nope", "empty_dir", "other_dir", "short", "empty", "late.bin"]:
        with pytest.raises(SourceError, match=re.escape(str(tmp_path / name))):
            cli.detect_format(str(tmp_path / name))
    with pytest.raises(
        SourceError, match=r"not an HDF5 file, a zarr store, a \.npy or a Parquet file"
    ):
        cli.detect_format(str(sources.text))


# -- first contact: the command speaks the command line -------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"memshard {ms.__version__}\n"


def test_every_option_has_help_and_every_command_examples() -> None:
    parser = cli._parser()
    (commands,) = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    assert set(commands.choices) == {
        "convert", "recompress", "info", "verify", "upgrade", "head", "ls", "attrs", "labels",
        "demo",
    }  # fmt: skip
    for name, command in commands.choices.items():
        assert command.epilog is not None, name
        assert command.epilog.startswith("examples:\n"), name
        examples = command.epilog.splitlines()[1:]
        assert examples, name
        assert all(line.startswith(f"  memshard {name}") for line in examples), examples
        for action in command._actions:
            assert action.help, (name, action.option_strings or action.dest)


@pytest.mark.parametrize("command", ["info", "verify", "head", "ls", "attrs", "labels"])
def test_the_dataset_argument_is_named_dataset(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    usage = result.stdout.split("\n\n")[0]
    assert "DATASET" in usage, usage
    assert "DST" not in usage, usage


def test_messages_name_flags_not_python_parameters(sources: Sources, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    write_dataset(dst, {"v": np.arange(3)})
    line = assert_user_error(run_cli("convert", sources.npy, dst), "pass --overwrite")
    assert "=True" not in line
    staging = Path(f"{tmp_path / 'other'}{STAGING_SUFFIX}")
    write_dataset(staging, {"v": np.arange(3)})
    line = assert_user_error(
        run_cli("convert", sources.npy, tmp_path / "other"),
        str(staging), "pass --resume to complete it, or --overwrite to delete it",
    )  # fmt: skip
    assert "=True" not in line
    assert "resume=" not in line


def test_for_command_line_translates_each_parameter() -> None:
    message = "pass overwrite=True or resume=True; shard_bytes=4096 vs workers=2; no shard_bytes"
    assert cli.for_command_line(message) == (
        "pass --overwrite or --resume; --shard-size 4096 vs --workers 2; no --shard-size"
    )


@pytest.mark.parametrize("command", ["info", "verify", "head", "ls"])
def test_a_command_on_an_interrupted_conversion_points_to_the_partial(
    tmp_path: Path, command: str
) -> None:
    dst = tmp_path / "frames"
    staging = Path(f"{dst}{STAGING_SUFFIX}")
    write_dataset(staging, {"v": np.arange(3)})
    assert_user_error(
        run_cli(command, dst),
        f"{dst}: does not exist; an interrupted conversion to it is kept in {staging}",
        f"memshard convert SRC {dst} --resume", f"memshard info {staging}",
    )  # fmt: skip


def test_tiny_shards_warn_once_naming_the_flag(sources: Sources, tmp_path: Path) -> None:
    result = run_cli("convert", sources.npy, tmp_path / "out", "--shard-size", "1k")
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert SMALL_SHARDS.fullmatch(line), line
    assert "--shard-size gives shards of" in line
    big = run_cli("convert", sources.npy, tmp_path / "big", "--shard-size", "1MiB")
    assert big.returncode == 0, big.stderr
    assert big.stderr == ""


def test_summaries_use_binary_units_and_thousands_separators(tmp_path: Path) -> None:
    src = tmp_path / "big.npy"
    np.save(src, np.zeros((12_345, 64), np.float32))
    result = run_cli("convert", src, tmp_path / "out", "--shard-size", "1MiB")
    assert_ok(result)
    assert re.fullmatch(
        rf"{tmp_path / 'out'}: 12,345 rows, 4 shards, 3.0 MiB in [\d.]+ s "
        r"\([\d.]+ (KiB|MiB|GiB)/s\)\n",
        result.stdout,
    ), result.stdout
    verified = run_cli("verify", tmp_path / "out")
    assert re.search(r": ok \(4 files, 3.0 MiB hashed in [\d.]+ s, [\d.]+ (MiB|GiB)/s\)",
                     verified.stdout), verified.stdout  # fmt: skip


def test_progress_bars_use_binary_units(capsys: pytest.CaptureFixture[str]) -> None:
    from memshard.progress import progress_bar

    with progress_bar(3 << 20, desc="bytes", enabled=True) as bar:
        bar.update(3 << 20)
    with progress_bar(20_000, desc="rows", enabled=True, unit="rows") as bar:
        bar.update(20_000)
    drawn = capsys.readouterr().err.replace("\r", "\n")
    assert re.search(r"bytes: 100%\|.*\| 3.0 MiB/3.0 MiB \[.*, [\d.]+ (B|KiB|MiB|GiB)/s\]", drawn)
    assert re.search(r"rows: 100%\|.*\| 20,000/20,000 rows \[.*, [\d,]+ rows/s\]", drawn)
    assert "MB/s" not in drawn
    assert "kB" not in drawn
