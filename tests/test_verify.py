"""``verify``: what a report says, and which damage it finds in which files."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import memshard as ms
from memshard import manifest as manifest_io
from memshard.checksum import checksum_of_file
from memshard.errors import (
    ChecksumError,
    ShardDataError,
    ShardSizeError,
    UnsupportedVersionError,
)
from memshard.layout import MANIFEST_NAME
from memshard.verify import VerifyReport
from tests.helpers import as_format_1, run_from_repo, write_dataset


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
    as_format_1(root)  # every shard in the manifest, where its checksum is easily replaced
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
    recorded = [key for key in ("checksum", "prefix_checksum") if getattr(file, key)]
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


# -- the unsealed shard: checked against its prefix_checksum (format 1.1) ----------------------

ROWS, SHARD_ROWS = 10, 4


def _columns(start: int, count: int) -> dict[str, np.ndarray]:
    rows = np.arange(start, start + count)
    return {"x": np.stack([rows, -rows], axis=1).astype(np.float32), "y": rows.astype(np.int64)}


def _committed_unsealed(root: Path) -> ms.Dataset:
    """10 rows committed in shards of 4, 4 and 2; the last is unsealed (the writer stopped
    without closing, as a crash would)."""
    writer = ms.create(root, fields={"x": ("float32", (2,)), "y": ("int64", ())}, shard_bytes=64)
    assert writer.manifest.shard_rows == SHARD_ROWS
    writer.extend(_columns(0, 7))
    writer.commit()
    writer.extend(_columns(7, 3))
    writer.commit()
    writer.abort()
    ds = ms.open(root)
    assert [(shard.rows, shard.sealed) for shard in ds.shards] == [(4, True), (4, True), (2, False)]
    return ds


def _xor_data_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x01]))


def test_each_commit_records_the_checksum_of_the_unsealed_shards_committed_bytes(
    tmp_path: Path,
) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    last = ds.shards[-1]
    for file in last.files.values():
        assert file.checksum is None
        fd = os.open(os.path.join(ds.path, file.path), os.O_RDONLY)
        try:
            digest = checksum_of_file(fd, file.data_offset, file.nbytes).digest()
        finally:
            os.close(fd)
        assert file.prefix_checksum == digest
    assert all(f.prefix_checksum is None for s in ds.shards[:-1] for f in s.files.values())
    report = ds.verify()
    assert report.ok
    assert report.unchecked == []
    assert report.bytes_hashed == ROWS * (8 + 8)


@pytest.mark.parametrize("field", ["x", "y"])
@pytest.mark.parametrize("row", [8, 9])
def test_damage_to_a_committed_row_of_the_unsealed_shard_is_found(
    tmp_path: Path, field: str, row: int
) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    file = ds.shards[-1].files[field]
    path = os.path.join(ds.path, file.path)
    _xor_data_byte(path, file.data_offset + (row - 8) * (file.nbytes // 2))

    report = ds.verify()
    assert not report
    assert [(problem.path, problem.error) for problem in report.problems] == [(path, ChecksumError)]
    assert f"the manifest records {file.prefix_checksum}" in report.problems[0].message
    status, lines = _verify_cli(ds.path)
    assert status == 1
    assert lines[0].startswith(f"{path}: data checksum is ")
    assert lines[-1].startswith(f"{ds.path}: DAMAGED: 1 bad files")


def test_bytes_past_the_committed_end_of_the_unsealed_shard_are_not_checked(
    tmp_path: Path,
) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    for file in ds.shards[-1].files.values():
        with open(os.path.join(ds.path, file.path), "ab") as handle:
            handle.write(b"\xff" * 100)  # what a writer that died mid-append leaves
    assert ds.verify().ok
    assert _verify_cli(ds.path)[0] == 0


def test_a_writer_does_not_resume_after_damaged_committed_rows(tmp_path: Path) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    file = ds.shards[-1].files["y"]
    _xor_data_byte(os.path.join(ds.path, file.path), file.data_offset)
    manifest_before = Path(ds.path, MANIFEST_NAME).read_bytes()

    with pytest.raises(ChecksumError, match=r"fields \['y'\] of the unsealed shard"):
        ms.append(ds.path)
    assert Path(ds.path, MANIFEST_NAME).read_bytes() == manifest_before
    assert [problem.error for problem in ds.verify().problems] == [ChecksumError]
    with pytest.raises(ChecksumError):  # the lock was released: refused again, not locked
        ms.append(ds.path)


@pytest.mark.parametrize("damage", ["data byte", "truncated"])
def test_a_refused_resume_closes_the_lock_once(tmp_path: Path, damage: str) -> None:
    """The half-built appender of a refused resume must not close the lock's descriptor
    again when it is collected (by then the number may belong to another file)."""
    ds = _committed_unsealed(tmp_path / "ds")
    file = ds.shards[-1].files["x"]
    path = os.path.join(ds.path, file.path)
    if damage == "data byte":
        _xor_data_byte(path, file.data_offset)
    else:
        os.truncate(path, file.data_offset + 1)
    with pytest.raises(ChecksumError if damage == "data byte" else ShardSizeError):
        ms.append(ds.path)
    gc.collect()  # an unraisable OSError from Appender.__del__ fails the test


# -- datasets of format 1.0 --------------------------------------------------------------------


def _as_written_by_version_1_0(root: str) -> None:
    """Rewrite the dataset as a writer of format 1.0 wrote it: that version, every shard in
    the manifest, and no ``prefix_checksum`` (the shard files are the same in every version)."""
    as_format_1(root, "1.0")
    data = Path(root, MANIFEST_NAME).read_bytes()
    assert b"prefix_checksum" not in data
    assert manifest_io.loads(data, where="1.0").version == "1.0"


def test_rows_of_a_version_1_0_unsealed_shard_are_reported_as_not_checked(
    tmp_path: Path,
) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    _as_written_by_version_1_0(ds.path)
    ds = ms.open(ds.path)
    np.testing.assert_array_equal(ds["y"][:], np.arange(ROWS))  # still readable

    report = ds.verify()
    assert report.problems == []
    assert not report.ok
    assert not report
    last = ds.shards[-1]
    paths = [os.path.join(ds.path, file.path) for file in last.files.values()]
    assert [(item.path, item.rows) for item in report.unchecked] == [
        (path, range(8, 10)) for path in paths
    ]
    assert report.bytes_hashed == 8 * (8 + 8)  # the sealed shards only
    report.raise_first()  # nothing is damaged

    status, lines = _verify_cli(ds.path)
    assert status == 3
    assert lines[:2] == [
        f"{path}: rows 8 to 9 (2 rows) not checked: the unsealed shard of a format 1.0 "
        "manifest has no checksum (memshard.append(path).close() seals it and records one of "
        "its data as it is now)"
        for path in paths
    ]
    assert lines[2].startswith(
        f"{ds.path}: NOT FULLY CHECKED: no damage found, but 2 rows have no checksum (6 files"
    )
    assert not any(" ok" in line for line in lines)


def test_damage_in_a_version_1_0_sealed_shard_is_still_damage(tmp_path: Path) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    _as_written_by_version_1_0(ds.path)
    file = ds.shards[0].files["x"]
    _xor_data_byte(os.path.join(ds.path, file.path), file.data_offset)
    report = ms.open(ds.path).verify()
    assert [problem.error for problem in report.problems] == [ChecksumError]
    assert len(report.unchecked) == 2
    assert _verify_cli(ds.path)[0] == 1


@pytest.mark.parametrize("how", ["append", "close", "part"])
def test_writing_to_a_version_1_0_dataset_upgrades_it(tmp_path: Path, how: str) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    _as_written_by_version_1_0(ds.path)
    if how == "append":
        writer = ms.append(ds.path)
        writer.extend(_columns(ROWS, 1))
        writer.commit()
        writer.abort()
        rows, sealed = ROWS + 1, False
    elif how == "close":
        ms.append(ds.path).close()
        rows, sealed = ROWS, True
    else:
        with ms.write_part(ds.path, key=0) as part:
            part.extend(_columns(ROWS, 2))
        ms.commit_parts(ds.path, [part.close()])
        rows, sealed = ROWS + 2, True
    upgraded = ms.open(ds.path)
    assert upgraded.manifest.version == manifest_io.FORMAT_VERSION == "2.2"
    assert len(upgraded) == rows
    assert upgraded.shards[-1].sealed is sealed
    np.testing.assert_array_equal(upgraded["y"][:], np.arange(rows))
    report = upgraded.verify()
    assert report.ok, (report.problems, report.unchecked)


def test_a_newer_minor_version_is_read_and_verified_but_never_written(tmp_path: Path) -> None:
    ds = _committed_unsealed(tmp_path / "ds")
    path = Path(ds.path, MANIFEST_NAME)
    newer = manifest_io.dumps(manifest_io.load(str(path)).model_copy(update={"version": "2.3"}))
    path.write_bytes(newer)

    reader = ms.open(ds.path)
    assert reader.manifest.version == "2.3"
    assert reader.verify().ok
    with pytest.raises(UnsupportedVersionError, match="must not rewrite a newer manifest"):
        ms.append(ds.path)
    with pytest.raises(UnsupportedVersionError, match="cannot add parts"):
        ms.write_part(ds.path)
    assert path.read_bytes() == newer
