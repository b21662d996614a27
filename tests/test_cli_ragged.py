"""The ``memshard`` command on datasets with ragged (variable-length) fields: ``info`` shows
each one's elements, bytes and length statistics; ``head`` each row's length and first
elements; ``ls`` both files of each shard; ``verify`` names a damaged offsets file; ``labels``
refuses a ragged field; ``attrs`` and ``upgrade`` leave one as it was; ``convert`` refuses a
dataset as its source. The docs show what ``info`` and ``head`` print, as they print it."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard import cli
from memshard.manifest import offsets_path
from memshard.progress import format_bytes
from tests.helpers import REPO_ROOT
from tests.test_cli import MEMSHARD, assert_ok, assert_user_error, run_cli
from tests.test_docs_examples import blocks_of

FIELDS = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "label": ("int64", ())}
ROWS = 40
#: The uuid that the shard file names shown in docs/converting.md start with.
DOCS_UUID = "b1946ac92492"


def columns() -> dict[str, Any]:
    """Three rows whose ``head`` lines are known, then rows of random lengths."""
    rng = np.random.default_rng(7)
    tokens: list[np.ndarray] = [np.arange(312) * 3, np.zeros(0, int), np.array([7, -8])]
    strokes: list[np.ndarray] = [
        np.arange(6).reshape(2, 3),
        np.arange(21).reshape(7, 3),
        np.zeros((0, 3), int),
    ]
    for _ in range(ROWS - 3):
        tokens.append(rng.integers(0, 999, rng.integers(0, 90)))
        strokes.append(np.ones((int(rng.integers(0, 5)), 3), np.int16))
    return {"tokens": tokens, "strokes": strokes, "label": np.arange(ROWS) % 2}


def write(path: Path, *, seal: bool = True) -> ms.Dataset:
    writer = ms.create(path, FIELDS, shard_bytes=2048, labels={"label": ["cat", "dog"]})
    writer.extend(columns())
    if seal:
        writer.close()
    else:
        writer.commit()
        writer.abort()  # the last shard stays unsealed
    ds = ms.open(path)
    assert len(ds.shards) > 3
    assert ds.shards[-1].sealed is seal
    return ds


@pytest.fixture(params=[True, False], ids=["sealed", "unsealed"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> ms.Dataset:
    return write(tmp_path / "ds", seal=request.param)


def main(*args: Any, capsys: pytest.CaptureFixture[str]) -> str:
    """``memshard ARGS`` in this process; its stdout (it must succeed)."""
    status = cli.main([os.fspath(arg) for arg in args])
    out, err = capsys.readouterr()
    assert status == cli.OK, err
    assert err == ""
    return out


def lengths_of(name: str) -> np.ndarray:
    return np.array([len(row) for row in columns()[name]])


# -- info ----------------------------------------------------------------------------------------


def test_info_shows_elements_bytes_and_length_statistics(
    dataset: ms.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = main("info", dataset.path, capsys=capsys).splitlines()
    tokens, strokes = lengths_of("tokens"), lengths_of("strokes")
    assert f"  rows      {ROWS} in {len(dataset.shards)} shards" in lines[1]
    assert lines[1].endswith(f"up to {dataset.manifest.shard_rows:,} rows or 2.0 KiB each)")
    start = lines.index("  fields")
    assert lines[start + 1 : start + 6] == [
        f"    tokens   int32     (None,)          4 B/element, {tokens.sum():,} elements "
        f"({format_bytes(4 * int(tokens.sum()))})",
        f"             lengths min 0, median {np.median(tokens):g}, max 312, "
        f"mean {tokens.mean():.1f}",
        f"    strokes  int16     (None, 3)        6 B/element, {strokes.sum():,} elements "
        f"({format_bytes(6 * int(strokes.sum()))})",
        f"             lengths min 0, median {np.median(strokes):g}, max 7, "
        f"mean {strokes.mean():.1f}",
        "    label    int64     ()               8 B/row  labels (2): cat, dog",
    ]


def test_info_json_of_ragged_fields(
    dataset: ms.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    info = json.loads(main("info", "--json", dataset.path, capsys=capsys))
    assert info["shard_bytes"] == 2048
    assert info["bytes"] == dataset.nbytes
    for name, element_bytes in [("tokens", 4), ("strokes", 6)]:
        lengths = lengths_of(name)
        assert info["fields"][name] == {
            "dtype": FIELDS[name][0],
            "shape": list(FIELDS[name][1]),
            "row_bytes": None,
            "labels": None,
            "element_bytes": element_bytes,
            "elements": int(lengths.sum()),
            "bytes": element_bytes * int(lengths.sum()),
            "lengths": {
                "min": int(lengths.min()),
                "median": float(np.median(lengths)),
                "max": int(lengths.max()),
                "mean": pytest.approx(float(lengths.mean())),
            },
            "codec": None,
            "stored_bytes": element_bytes * int(lengths.sum()),
            "ratio": 1.0,
        }
        assert info["fields"][name]["bytes"] == dataset[name].nbytes
    # a fixed field is described as in a dataset without ragged fields
    assert info["fields"]["label"] == {
        "dtype": "int64", "shape": [], "row_bytes": 8, "labels": ["cat", "dog"], "codec": None,
        "stored_bytes": 8 * ROWS, "ratio": 1.0,
    }  # fmt: skip
    assert info["bytes"] == sum(info["fields"][name]["bytes"] for name in ("tokens", "strokes")) + (
        8 * ROWS
    )


def test_info_of_a_ragged_field_without_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ms.create(tmp_path / "ds", {"points": ("float32", (None, 2))}).close()
    lines = main("info", tmp_path / "ds", capsys=capsys).splitlines()
    assert lines[-2:] == [
        "    points  float32   (None, 2)        8 B/element, 0 elements (0 B)",
        "            lengths none (no rows)",
    ]
    field = json.loads(main("info", "--json", tmp_path / "ds", capsys=capsys))["fields"]["points"]
    assert (field["elements"], field["bytes"], field["lengths"]) == (0, 0, None)


# -- head ----------------------------------------------------------------------------------------


def test_head_prints_each_rows_length_and_first_elements(
    dataset: ms.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    out = main("head", dataset.path, "-n", "3", capsys=capsys)
    assert out.splitlines() == [
        "[0]",
        "  tokens: len=312 [0, 3, 6, 9, 12, 15, ...]",
        "  strokes: len=2 [[0, 1, 2], [3, 4, 5]]",
        "  label: 0 (cat)",
        "[1]",
        "  tokens: len=0 []",
        "  strokes: len=7 [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14], ...]",
        "  label: 1 (dog)",
        "[2]",
        "  tokens: len=2 [7, -8]",
        "  strokes: len=0 []",
        "  label: 0 (cat)",
        f"(3 of {ROWS} rows)",
    ]
    every = main("head", dataset.path, "-n", "1000", capsys=capsys)
    lengths = [int(match) for match in re.findall(r"tokens: len=([\d,]+) ", every)]
    assert lengths == lengths_of("tokens").tolist()


@pytest.mark.parametrize(
    ("row", "text"),
    [
        (np.arange(312, dtype=np.int32), "len=312 [0, 1, 2, 3, 4, 5, ...]"),
        (np.arange(6, dtype=np.int32), "len=6 [0, 1, 2, 3, 4, 5]"),
        (np.zeros(0, np.float32), "len=0 []"),
        (np.arange(4, dtype=np.float32) / 3, "len=4 [0, 0.3333, 0.6667, 1]"),
        (np.array([1e20, -0.5, np.nan, np.inf]), "len=4 [1e+20, -0.5, nan, inf]"),
        (np.array([True, False]), "len=2 [True, False]"),
        (np.array([1 + 2j, complex(0, -3)], np.complex64), "len=2 [1+2j, 0-3j]"),
        (np.zeros((1234, 3), np.int16), "len=1,234 [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], "
                                        "[0, 0, 0], ...]"),
        # an element of more than HEAD_NUMBERS numbers: one, summarised by numpy
        (np.arange(200).reshape(2, 100), "len=2 [[0, 1, 2, ..., 97, 98, 99], ...]"),
        (np.arange(8).reshape(2, 2, 2), "len=2 [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]"),
    ],
)  # fmt: skip
def test_format_ragged_row(row: np.ndarray, text: str) -> None:
    assert cli.format_ragged_row(row) == text


# -- ls ------------------------------------------------------------------------------------------


def test_ls_lists_the_values_and_offsets_file_of_each_shard(
    dataset: ms.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = main("ls", dataset.path, capsys=capsys).splitlines()
    shards = dataset.shards
    assert len(lines) == 1 + len(shards) * (1 + 5)
    for index, shard in enumerate(shards):
        block = lines[1 + index * 6 : 7 + index * 6]
        values = {name: os.path.join(dataset.path, shard.files[name].path) for name in FIELDS}
        assert block[1:] == [
            f"    tokens: {values['tokens']}",
            f"    tokens (offsets): {offsets_path(values['tokens'])}",
            f"    strokes: {values['strokes']}",
            f"    strokes (offsets): {offsets_path(values['strokes'])}",
            f"    label: {values['label']}",
        ]

    rows = main("ls", dataset.path, "--field", "strokes", capsys=capsys).splitlines()
    assert len(rows) == len(shards)
    pairs = [line.split("\t") for line in rows]
    assert [values for values, _ in pairs] == dataset.shard_files("strokes")
    # read without memshard: each shard's committed rows are values[offsets[i]:offsets[i + 1]]
    got = []
    for (values_file, offsets_file), shard in zip(pairs, shards, strict=True):
        values, offsets = np.load(values_file, mmap_mode="r"), np.load(offsets_file, mmap_mode="r")
        assert offsets.dtype == np.int64
        got += [values[a:b] for a, b in itertools.pairwise(offsets[: shard.rows + 1])]
    for row, want in zip(got, columns()["strokes"], strict=True):
        np.testing.assert_array_equal(row, want)

    fixed = main("ls", dataset.path, "--field", "label", capsys=capsys).splitlines()
    assert fixed == dataset.shard_files("label")


# -- verify, and a damaged offsets file ----------------------------------------------------------


def _writable(path: str) -> str:
    os.chmod(path, 0o644)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [("data byte", "corrupt data"), ("truncated", "truncated"), ("deleted", "missing")],
)
def test_verify_names_a_damaged_offsets_file(tmp_path: Path, kind: str, words: str) -> None:
    ds = write(tmp_path / "ds")
    offsets = _writable(offsets_path(ds.shard_files("tokens")[2]))
    if kind == "data byte":
        with open(offsets, "r+b") as handle:
            handle.seek(-3, os.SEEK_END)
            handle.write(b"\x40")
    elif kind == "truncated":
        os.truncate(offsets, os.path.getsize(offsets) - 8)
    else:
        os.unlink(offsets)
    result = run_cli("verify", "--quiet", ds.path)
    assert result.returncode == cli.DAMAGED, (result.stdout, result.stderr)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"{offsets}: ")
    assert words in lines[0]
    files = len(ds.shards) * 5  # two files per ragged field, one per fixed field
    assert lines[1].startswith(f"{ds.path}: DAMAGED: 1 bad files ({files} files")


def test_reading_commands_name_offsets_that_point_past_the_values(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds")
    offsets = _writable(offsets_path(ds.shard_files("tokens")[0]))
    with open(offsets, "r+b") as handle:
        handle.seek(-8, os.SEEK_END)
        handle.write(np.int64(10**9).tobytes())
    for command in ("info", "head"):
        assert_user_error(run_cli(command, ds.path), offsets, "offsets of field 'tokens'")


# -- labels, attrs, upgrade, convert -------------------------------------------------------------


def test_labels_refuse_a_ragged_field(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds")
    assert_user_error(
        run_cli("labels", ds.path, "tokens=a,b"), "field 'tokens' is ragged; labels need a fixed"
    )
    assert ms.open(ds.path).manifest.generation == ds.manifest.generation


def test_attrs_and_upgrade_leave_ragged_fields_as_they_were(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = write(tmp_path / "ds", seal=False)
    assert json.loads(main("attrs", ds.path, "source=test", "n=3", capsys=capsys)) == {
        "source": "test", "n": 3,
    }  # fmt: skip
    assert "already format" in main("upgrade", ds.path, capsys=capsys)
    again = ms.open(ds.path)
    assert again.attrs == {"source": "test", "n": 3}
    assert again.manifest.shard_bytes == 2048
    for name in ("tokens", "strokes"):
        assert again[name][:].tolist().__len__() == ROWS
        for got, want in zip(again[name][:], columns()[name], strict=True):
            np.testing.assert_array_equal(got, want)
    assert again.verify().ok


@pytest.mark.parametrize("source_format", ["auto", "npy"])
@pytest.mark.parametrize("ragged", [True, False])
def test_convert_refuses_a_memshard_dataset(
    tmp_path: Path, ragged: bool, source_format: str
) -> None:
    if ragged:
        ds = write(tmp_path / "ds")
    else:
        ms.create(tmp_path / "ds", {"x": ("float32", (2,))}).close()
        ds = ms.open(tmp_path / "ds")
    result = run_cli("convert", ds.path, tmp_path / "out", "--format", source_format)
    assert_user_error(result, f"{ds.path}: is a memshard dataset already", "reads an HDF5 file")
    assert not (tmp_path / "out").exists()


# -- repr ----------------------------------------------------------------------------------------


def test_reprs_say_which_axis_varies(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds")
    assert repr(ds) == (
        f"<memshard.Dataset {ds.path!r} rows={ROWS} shards={len(ds.shards)} "
        "fields={tokens: int32[None], strokes: int16[None, 3], label: int64[]}>"
    )
    assert repr(ds["strokes"]) == (
        f"<memshard.RaggedColumn 'strokes' shape=({ROWS}, None, 3) dtype=int16>"
    )
    assert repr(ds["tokens"][:2]) == "Ragged(rows=2, elements=312, dtype=int32, tail=())"


# -- the docs ------------------------------------------------------------------------------------


def test_the_docs_show_what_info_head_and_ls_print(tmp_path: Path) -> None:
    """docs/converting.md makes a dataset with ragged fields and shows lines that ``info``,
    ``head`` and ``ls`` print of it: each is printed, but for the directory and the uuid."""
    blocks = blocks_of(Path("docs/converting.md"))
    start = next(i for i, block in enumerate(blocks) if '"sequences"' in block.code)
    make, commands, shown = blocks[start : start + 3]
    assert (make.language, commands.language, shown.language) == ("python", "bash", "text")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "error"}
    subprocess.run([sys.executable, "-c", make.code], cwd=tmp_path, env=env, check=True)
    printed = []
    for line in commands.code.splitlines():
        args = line.split("#")[0].split()
        assert args[0] == "memshard", line
        result = subprocess.run(
            [*MEMSHARD, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        assert_ok(result)
        printed += result.stdout.splitlines()
    uuid = ms.open(tmp_path / "sequences").uuid
    as_shown = [
        line.replace(str(tmp_path), "/data").replace(uuid[:12], DOCS_UUID[:12]) for line in printed
    ]
    for line in shown.code.splitlines():
        assert line in as_shown, (line, as_shown)
