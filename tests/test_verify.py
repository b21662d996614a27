"""``verify``: what a report says, and which damage it finds in which files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import memshard as ms
from memshard import manifest as manifest_io
from memshard.checksum import checksum_of_file
from memshard.errors import ShardDataError
from memshard.layout import MANIFEST_NAME
from memshard.verify import VerifyReport
from tests.helpers import run_from_repo, write_dataset


def _flip_last_data_byte(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        value = handle.read(1)[0]
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([value ^ 0xFF]))


def _verify_cli(path: str) -> tuple[int, list[str]]:
    result = run_from_repo([sys.executable, "-m", "memshard", "verify", "--quiet", path])
    assert result.stderr == ""
    return result.returncode, result.stdout.splitlines()


# -- the report's truth value ------------------------------------------------------------------


def test_a_report_is_true_exactly_when_ok(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", {"x": np.arange(6, dtype=np.int32)}, shard_rows=4)
    intact = ds.verify()
    assert intact.ok
    assert bool(intact)

    _flip_last_data_byte(os.path.join(ds.path, ds.shards[0].files["x"].path))
    damaged = ds.verify()
    assert not damaged.ok
    assert not damaged
    assert bool(damaged) is False
    if damaged:  # what users write
        raise AssertionError("a report of a damaged dataset must be false")


def test_an_empty_report_is_true() -> None:
    assert VerifyReport(path="nowhere")


# -- bool bytes other than 00 and 01 -----------------------------------------------------------


def _store_verbatim(root: str, shard_index: int, field: str, data_byte: int, value: int) -> str:
    """Put ``value`` at ``data_byte`` of a shard file and record the checksum of what is there
    now, as a writer that stores bool bytes verbatim would have; return the file's path."""
    manifest = manifest_io.load(os.path.join(root, MANIFEST_NAME))
    shard = manifest.shards[shard_index]
    file = shard.files[field]
    path = os.path.join(root, file.path)
    with open(path, "r+b") as handle:
        handle.seek(file.data_offset + data_byte)
        handle.write(bytes([value]))
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = checksum_of_file(fd, file.data_offset, file.nbytes).digest()
    finally:
        os.close(fd)
    recorded = {key: getattr(file, key) for key in ("checksum",) if getattr(file, key)}
    changed = file.model_copy(update={key: digest for key in recorded})
    shards = list(manifest.shards)
    shards[shard_index] = shard.model_copy(update={"files": {**shard.files, field: changed}})
    updated = manifest.model_copy(update={"shards": tuple(shards)})
    with open(os.path.join(root, MANIFEST_NAME), "wb") as handle:
        handle.write(manifest_io.dumps(updated))
    return path


def _flags(rows: int) -> dict[str, np.ndarray]:
    return {
        "flag": (np.arange(rows * 3).reshape(rows, 3) % 2).astype(bool),
        "x": np.arange(rows, dtype=np.float32),
    }


@pytest.mark.parametrize("value", [0x02, 0x80, 0xFF])
def test_a_bool_byte_other_than_0_or_1_in_a_sealed_shard_is_damage(
    tmp_path: Path, value: int
) -> None:
    ds = write_dataset(tmp_path / "ds", _flags(10), shard_rows=4)
    # Row 5 is row 1 of shard 1; its elements are data bytes 3, 4 and 5 of the shard.
    path = _store_verbatim(ds.path, 1, "flag", 4, value)
    report = ms.open(ds.path).verify()
    assert not report
    assert [(problem.path, problem.error) for problem in report.problems] == [
        (path, ShardDataError)
    ]
    message = report.problems[0].message
    assert f"row 5 (row 1 of the shard, data byte 4) holds the byte {value:02x}" in message
    assert "must be 00 or 01" in message
    with pytest.raises(ShardDataError, match=f"{path}: row 5") as caught:
        report.raise_first()
    assert isinstance(caught.value, ms.errors.InvalidDatasetError)

    status, lines = _verify_cli(ds.path)
    assert status == 1
    assert lines[0] == f"{path}: {message}"
    assert lines[1].startswith(f"{ds.path}: DAMAGED: 1 bad files")


def test_a_bool_byte_other_than_0_or_1_in_the_unsealed_shard_is_damage(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = ms.create(root, fields={"flag": ("bool", (3,)), "x": ("float32", ())})
    writer.extend(_flags(7))
    writer.commit()
    writer.abort()
    ds = ms.open(root)
    assert [shard.sealed for shard in ds.shards] == [False]
    path = _store_verbatim(ds.path, 0, "flag", 3 * 6 + 2, 0x02)
    report = ds.verify()
    assert [(problem.path, problem.error) for problem in report.problems] == [
        (path, ShardDataError)
    ]
    assert "row 6 (row 6 of the shard, data byte 20) holds the byte 02" in str(
        report.problems[0].message
    )


def test_bool_fields_written_by_memshard_verify(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", _flags(10), [3, 7], shard_rows=4)
    report = ds.verify()
    assert report.ok
    assert report.bytes_hashed == 10 * (3 + 4)
