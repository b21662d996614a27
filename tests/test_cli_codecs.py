"""The command line and compressed fields: ``convert --codec``, ``recompress``, ``info``'s
codecs and ratios, and ``verify`` finding a damaged compressed block."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import memshard as ms
from memshard import cli
from memshard.blockcodec import BlockCodec
from memshard.manifest import Codec
from memshard.schema import chosen_codecs
from tests.helpers import REPO_ROOT

ROWS = 400


def codec(text: str) -> Codec | None:
    return chosen_codecs(text, ["x"])["x"]


def main(*args: Any, capsys: pytest.CaptureFixture[str], status: int = cli.OK) -> str:
    """``memshard ARGS`` in this process: its stdout, or (a failure) its stderr."""
    result = cli.main([os.fspath(arg) for arg in args])
    out, err = capsys.readouterr()
    assert result == status, (out, err)
    return out if status == cli.OK else err


def run(*args: Any) -> subprocess.CompletedProcess[str]:
    """``memshard ARGS`` as a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "memshard", *(os.fspath(arg) for arg in args)],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "error"}, check=False,
    )  # fmt: skip


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """An HDF5 file: images that compress well, embeddings that do not, labels, tokens."""
    images = np.zeros((ROWS, 32, 32), np.uint8)
    images[:, 8:24, 16] = 255
    path = tmp_path / "src.h5"
    with h5py.File(path, "w") as handle:
        handle["img"] = images
        handle["emb"] = np.random.default_rng(0).standard_normal((ROWS, 16)).astype(np.float32)
        handle["y"] = np.arange(ROWS) % 4
        tokens = handle.create_dataset("tok", (ROWS,), dtype=h5py.vlen_dtype(np.int32))
        for row in range(ROWS):
            tokens[row] = np.zeros(row % 50, np.int32)
    return path


def codecs_of(path: Path) -> dict[str, Codec | None]:
    return {name: spec.codec for name, spec in ms.open(path).manifest.fields.items()}


# -- convert --codec -----------------------------------------------------------------------------


def test_convert_with_one_codec_for_every_field(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = main("convert", source, tmp_path / "ds", "--codec", "zstd:3", "--workers", "2",
               "--shard-size", "64k", capsys=capsys)  # fmt: skip
    assert re.search(r"rows, \d+ shards, [\d.]+ KiB \([\d.]+ KiB stored\) in", out), out
    assert codecs_of(tmp_path / "ds") == dict.fromkeys(["img", "emb", "y", "tok"], codec("zstd:3"))
    ds = ms.open(tmp_path / "ds")
    assert len(ds.shards) > 2
    assert ds.verify().ok


def test_convert_with_a_codec_per_field(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main("convert", source, tmp_path / "ds", "--codec", "img=zstd:9", "--codec",
         "emb=blosc:lz4:5", "--codec", "tok=lz4", capsys=capsys)  # fmt: skip
    assert codecs_of(tmp_path / "ds") == {
        "img": codec("zstd:9"), "emb": codec("blosc:lz4:5"), "y": None, "tok": codec("lz4"),
    }  # fmt: skip
    # A bare codec for every field, and the field named otherwise, in any order.
    main("convert", source, tmp_path / "mixed", "--codec", "y=none", "--codec", "lz4",
         capsys=capsys)  # fmt: skip
    assert codecs_of(tmp_path / "mixed") == {
        "img": codec("lz4"), "emb": codec("lz4"), "y": None, "tok": codec("lz4"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--codec", "zstd", "--codec", "lz4"], "--codec zstd and --codec lz4: one codec for"),
        (["--codec", "nope=zstd"], "--codec nope=zstd: no field 'nope'; the fields are "),
        (["--codec", "img=zstd:0"], "field 'img': codec 'zstd': level must be an integer"),
        (["--codec", "brotli"], "codec 'brotli' is not one memshard knows"),
    ],
)
def test_bad_codec_flags_are_user_errors_and_write_nothing(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
    message: str,
) -> None:  # fmt: skip
    err = main("convert", source, tmp_path / "ds", *flags, capsys=capsys, status=cli.USAGE)
    assert err.startswith("memshard: error: ")
    assert message in err
    assert not (tmp_path / "ds").exists()
    assert not (tmp_path / "ds.memshard-partial").exists()


def test_a_finished_conversion_repeated_with_another_codec_is_refused(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main("convert", source, tmp_path / "ds", "--codec", "zstd", capsys=capsys)
    main("convert", source, tmp_path / "ds", "--codec", "zstd", "--resume", capsys=capsys)
    err = main("convert", source, tmp_path / "ds", "--codec", "lz4", "--resume",
               capsys=capsys, status=cli.USAGE)  # fmt: skip
    assert re.search(r"stores field '\w+' with codec zstd level=3", err), err
    assert "asks for lz4 acceleration=1" in err
    assert "--codec flags of the first run" in err
    assert "--overwrite" in err


# -- recompress ----------------------------------------------------------------------------------


def test_recompress(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main("convert", source, tmp_path / "raw", capsys=capsys)
    out = main("recompress", tmp_path / "raw", tmp_path / "small", "--codec", "img=zstd:9",
               "--codec", "tok=lz4", "--workers", "2", "--shard-size", "64k",
               capsys=capsys)  # fmt: skip
    assert out.startswith(f"{tmp_path / 'small'}: {ROWS} rows")
    assert "stored)" in out
    assert codecs_of(tmp_path / "small") == {
        "img": codec("zstd:9"), "emb": None, "y": None, "tok": codec("lz4"),
    }  # fmt: skip
    main("recompress", tmp_path / "small", tmp_path / "more", "--codec", "emb=blosc",
         capsys=capsys)  # fmt: skip
    assert codecs_of(tmp_path / "more") == {
        "img": codec("zstd:9"), "emb": codec("blosc"), "y": None, "tok": codec("lz4"),
    }  # fmt: skip
    main("recompress", tmp_path / "more", tmp_path / "plain", "--codec", "none", "-q",
         capsys=capsys)  # fmt: skip
    assert codecs_of(tmp_path / "plain") == dict.fromkeys(["img", "emb", "y", "tok"])
    raw, plain = ms.open(tmp_path / "raw"), ms.open(tmp_path / "plain")
    for name in ("img", "emb", "y"):
        np.testing.assert_array_equal(plain[name][:], raw[name][:])
    assert [len(row) for row in plain["tok"][:]] == [row % 50 for row in range(ROWS)]


def test_recompress_user_errors(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = main("recompress", source, tmp_path / "x", capsys=capsys, status=cli.USAGE)
    assert "no memshard dataset" in err or "not a memshard dataset" in err, err
    main("convert", source, tmp_path / "raw", capsys=capsys)
    err = main("recompress", tmp_path / "raw", tmp_path / "raw", "--codec", "zstd",
               capsys=capsys, status=cli.USAGE)  # fmt: skip
    assert "already exists (pass --overwrite to replace it)" in err
    err = main("convert", tmp_path / "raw", tmp_path / "copy", capsys=capsys, status=cli.USAGE)
    assert "memshard recompress copies a dataset with other codecs" in err


# -- info ----------------------------------------------------------------------------------------


def test_info_shows_each_fields_codec_and_ratio(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main("convert", source, tmp_path / "ds", "--codec", "img=zstd:9", "--codec",
         "tok=blosc:lz4:5:bit", capsys=capsys)  # fmt: skip
    ds = ms.open(tmp_path / "ds")
    img, tok = ds["img"], ds["tok"]
    assert img.stored_bytes < img.nbytes // 20
    assert 0 < tok.stored_bytes < tok.nbytes
    assert ds["emb"].stored_bytes == ds["emb"].nbytes

    lines = main("info", tmp_path / "ds", capsys=capsys).splitlines()
    stored = img.stored_bytes + tok.stored_bytes + ds["emb"].nbytes + ds["y"].nbytes
    assert lines[2].endswith(f"({ds.nbytes:,}), {ms.progress.format_bytes(stored)} stored")
    codec_lines = [line.strip() for line in lines if line.strip().startswith("codec ")]
    assert codec_lines == [
        f"codec zstd level=9, 64.0 KiB blocks: {ms.progress.format_bytes(img.stored_bytes)} "
        f"stored, {img.nbytes / img.stored_bytes:,.1f}x smaller",
        f"codec blosc cname=lz4 clevel=5 shuffle=bit, 64.0 KiB blocks: "
        f"{ms.progress.format_bytes(tok.stored_bytes)} stored, "
        f"{tok.nbytes / tok.stored_bytes:,.1f}x smaller",
    ]
    img_line = next(number for number, line in enumerate(lines) if line.startswith("    img "))
    assert lines[img_line + 1] == " " * 9 + codec_lines[0]  # under the field it describes

    info = json.loads(main("info", "--json", tmp_path / "ds", capsys=capsys))
    assert info["stored_bytes"] == stored
    assert info["fields"]["img"]["codec"] == {
        "name": "zstd", "params": {"level": 9}, "block_bytes": 65536,
    }  # fmt: skip
    assert info["fields"]["img"]["stored_bytes"] == img.stored_bytes
    assert info["fields"]["img"]["ratio"] == pytest.approx(img.nbytes / img.stored_bytes)
    assert info["fields"]["tok"]["codec"]["params"] == {"cname": "lz4", "clevel": 5,
                                                        "shuffle": "bit"}  # fmt: skip
    assert info["fields"]["tok"]["ratio"] == pytest.approx(tok.nbytes / tok.stored_bytes)
    assert info["fields"]["emb"]["codec"] is None
    assert info["fields"]["emb"]["ratio"] == 1.0


def test_info_of_a_compressed_field_without_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ms.create(tmp_path / "ds", {"x": ("uint8", (8,), {"codec": "lz4"})}).close()
    lines = main("info", tmp_path / "ds", capsys=capsys).splitlines()
    assert lines[-1] == "       codec lz4 acceleration=1, 64.0 KiB blocks: 0 B stored"
    field = json.loads(main("info", "--json", tmp_path / "ds", capsys=capsys))["fields"]["x"]
    assert (field["stored_bytes"], field["ratio"]) == (0, None)


# -- verify --------------------------------------------------------------------------------------


def compressed(path: Path, rows: np.ndarray) -> ms.Dataset:
    """A dataset of one zstd field, a block per row (4 KiB rows, 4 KiB blocks)."""
    options = {"codec": "zstd", "block_bytes": 4096}
    with ms.create(path, fields={"x": ("uint8", (4096,), options)}) as writer:
        writer.extend({"x": rows})
    return ms.open(path)


def test_verify_reports_a_compressed_block_that_does_not_decompress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block written wrong (a frame of half its rows, checksummed as written: a fault of
    the writer, not of the disk) is found by decompressing it: the file and the block are
    named."""
    compress = BlockCodec.compress
    calls: list[int] = []

    def half_of_block_1(self: BlockCodec, block: memoryview) -> bytes:
        calls.append(len(calls))
        return compress(self, block[: block.nbytes // 2] if len(calls) == 2 else block)

    monkeypatch.setattr(BlockCodec, "compress", half_of_block_1)
    # A writer without memshard's own check of its frames (which refuses this one).
    monkeypatch.setattr(BlockCodec, "claim_problem", lambda *_: None)
    rows = np.random.default_rng(0).integers(0, 4, (3, 4096), dtype=np.uint8)
    ds = compressed(tmp_path / "ds", rows)
    monkeypatch.undo()
    values = os.path.join(ds.path, ds.shards[0].files["x"].path)

    result = run("verify", "--quiet", ds.path)
    assert result.returncode == cli.DAMAGED, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{values}: block 1 (from row 1)")
    assert "2048" in lines[0]  # what the frame holds ...
    assert "4096" in lines[0]  # ... and what the block must
    assert lines[1].startswith(f"{ds.path}: DAMAGED: 1 bad files")


def test_verify_reports_a_damaged_frame(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 4, (3, 4096), dtype=np.uint8)
    ds = compressed(tmp_path / "ds", rows)
    values = os.path.join(ds.path, ds.shards[0].files["x"].path)
    os.chmod(values, 0o644)
    with open(values, "r+b") as handle:
        handle.seek(-10, os.SEEK_END)
        byte = handle.read(1)[0]
        handle.seek(-10, os.SEEK_END)
        handle.write(bytes([byte ^ 0xFF]))
    result = run("verify", ds.path)
    assert result.returncode == cli.DAMAGED, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[0].startswith(f"{values}: ")
    assert "checksum" in result.stdout.splitlines()[0]
