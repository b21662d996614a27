"""The shard table of format 2 (spec section 6.6): what readers refuse, what writers append,
and how datasets of format 1 are read, appended to and upgraded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard import manifest as manifest_io
from memshard import npyheader, shardtable
from memshard.errors import (
    ManifestError,
    ShardTableError,
    UnsafePathError,
    UnsupportedVersionError,
    UpgradeError,
    WriteFailedError,
)
from memshard.layout import MANIFEST_NAME
from memshard.shardtable import TABLE_NAME, record_dtype
from memshard.verify import verify_dataset
from tests.helpers import as_format_1, run_from_repo

FIELDS = {"x": ("float32", (3,)), "y": ("int64", ())}
ROW_BYTES = 12 + 8
#: The last commit of the format 1 reader (before the shard table), for the refusal test.
FORMAT_1_COMMIT = "04fa6fd"


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    index = np.arange(start, start + count)
    return {"x": np.repeat(index, 3).reshape(-1, 3).astype(np.float32), "y": index}


def make(path: Path, commits: int = 4, per_commit: int = 10, shard_rows: int = 3) -> Path:
    """A dataset of ``commits * per_commit`` rows in shards of ``shard_rows`` rows, the last
    one unsealed."""
    writer = ms.create(path, fields=FIELDS, shard_bytes=shard_rows * ROW_BYTES)
    for commit in range(commits):
        writer.extend(rows(commit * per_commit, per_commit))
        writer.commit()
    writer.abort()
    return path


def assert_rows(path: Path, count: int) -> None:
    ds = ms.open(path)
    assert len(ds) == count
    expected = rows(0, count)
    np.testing.assert_array_equal(ds["x"][:], expected["x"])
    np.testing.assert_array_equal(ds["y"][:], expected["y"])


def table_bytes(path: Path) -> bytearray:
    return bytearray((path / TABLE_NAME).read_bytes())


def record_offset(path: Path, index: int) -> int:
    dtype = record_dtype(len(FIELDS))
    return npyheader.data_offset(dtype, ()) + index * dtype.itemsize


# -- what a commit writes --------------------------------------------------------------------
def test_sealed_shards_are_table_records_and_the_manifest_keeps_only_the_open_one(
    tmp_path: Path,
) -> None:
    path = make(tmp_path / "ds")
    document = json.loads((path / MANIFEST_NAME).read_text())
    assert document["version"] == ms.FORMAT_VERSION == "2.2"
    assert document["table"]["records"] == 13
    assert document["table"]["rows"] == 39
    assert [(shard["row_offset"], shard["sealed"]) for shard in document["shards"]] == [(39, False)]
    table = np.load(path / TABLE_NAME, mmap_mode="r")  # a plain .npy of records
    assert table.shape == (13,)
    assert table["rows"].tolist() == [3] * 13
    assert table["row_offset"].tolist() == list(range(0, 39, 3))
    ds = ms.open(path)
    for record, shard in zip(table, ds.shards[:13], strict=True):
        stem = record["stem"].decode()
        assert shard.files["x"].path == f"shards/{stem}.x.npy"
        assert shard.files["y"].checksum == f"xxh3_64:{int(record['checksums'][1]):016x}"
    assert ds.verify().ok


def test_a_commit_appends_only_the_new_records(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    before = table_bytes(path)
    with ms.append(path) as writer:
        writer.extend(rows(40, 9))
    after = table_bytes(path)
    dtype = record_dtype(len(FIELDS))
    committed = record_offset(path, 13)
    assert after[4096:committed] == before[4096:committed]  # committed records unchanged
    assert len(after) == record_offset(path, 17)  # 49 rows: 16 shards of 3, sealed 1 of 1
    assert len(after) == committed + 4 * dtype.itemsize
    assert_rows(path, 49)
    assert ms.open(path).verify().ok


def test_opening_decodes_no_record_and_a_read_decodes_only_its_segment(tmp_path: Path) -> None:
    path = make(tmp_path / "ds", commits=20, per_commit=50, shard_rows=3)
    ds = ms.open(path)
    table = ds.shards.table
    assert len(table) == 333
    assert table._checked == {}
    assert int(ds["y"][500]) == 500
    assert 0 < len(table._checked) <= 2  # x rows of 36 bytes: one shard per segment


def test_records_no_manifest_counts_are_ignored_then_overwritten(tmp_path: Path) -> None:
    """What a commit killed between writing the table and publishing the manifest leaves."""
    path = make(tmp_path / "ds")
    with open(path / TABLE_NAME, "ab") as table:
        table.write(os.urandom(3 * record_dtype(2).itemsize + 5))
    assert_rows(path, 40)
    assert ms.open(path).verify().ok
    with ms.append(path) as writer:
        writer.extend(rows(40, 8))
    assert len(table_bytes(path)) == record_offset(path, 16)
    assert_rows(path, 48)
    assert ms.open(path).verify().ok


def test_refresh_sees_new_records_and_a_no_op_refresh_reads_nothing_new(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    ds = ms.open(path)
    assert ds.refresh() is False
    with ms.append(path) as writer:
        writer.extend(rows(40, 20))
    assert ds.refresh() is True
    assert len(ds) == 60
    assert len(ds.shards) == 20
    assert int(ds["y"][59]) == 59
    assert ds.refresh() is False


# -- what a reader refuses --------------------------------------------------------------------
def _flip(path: Path, offset: int) -> None:
    data = table_bytes(path)
    data[offset] ^= 0x40
    (path / TABLE_NAME).write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    os.truncate(path / TABLE_NAME, size)


DAMAGE_AT_OPEN = {
    "missing": lambda path: (path / TABLE_NAME).unlink(),
    "truncated": lambda path: _truncate(path, record_offset(path, 12) + 7),
    "empty": lambda path: _truncate(path, 0),
    "last record's chain": lambda path: _flip(path, record_offset(path, 13) - 1),
    "last record's rows": lambda path: _flip(path, record_offset(path, 12) + 8),
    "header dtype": lambda path: _flip(path, 30),
    "header count below the records": lambda path: (path / TABLE_NAME).write_bytes(
        npyheader.header_bytes(record_dtype(2), (), 3) + table_bytes(path)[4096:]
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE_AT_OPEN))
def test_a_damaged_table_is_refused_at_open_naming_it(tmp_path: Path, damage: str) -> None:
    path = make(tmp_path / "ds")
    DAMAGE_AT_OPEN[damage](path)
    with pytest.raises(ShardTableError, match=str(path / TABLE_NAME)):
        ms.open(path)
    report = verify_dataset(str(path))
    assert not report.ok
    assert report.problems[0].error is ShardTableError


def test_a_symbolic_link_or_a_fifo_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    os.rename(path / TABLE_NAME, tmp_path / "elsewhere.npy")
    os.symlink(tmp_path / "elsewhere.npy", path / TABLE_NAME)
    with pytest.raises(UnsafePathError, match=TABLE_NAME):
        ms.open(path)
    (path / TABLE_NAME).unlink()
    os.mkfifo(path / TABLE_NAME)
    with pytest.raises(ShardTableError, match="FIFO"):
        ms.open(path)


@pytest.mark.parametrize(
    ("member", "offset"), [("row_offset", 0), ("rows", 8), ("stem", 20), ("checksums", 90)]
)
def test_a_damaged_middle_record_is_refused_when_used(
    tmp_path: Path, member: str, offset: int
) -> None:
    path = make(tmp_path / "ds")
    _flip(path, record_offset(path, 4) + offset)
    # Rows that do not follow on are found at open (with numpy, over all records); other
    # damage when the record is first used.
    with pytest.raises(ShardTableError, match=f"{TABLE_NAME}: record [45]"):
        ms.open(path)["y"][:]
    report = verify_dataset(str(path))
    assert not report.ok
    assert any("record 4" in problem.message for problem in report.problems)  # chain


def test_records_with_valid_chains_but_lying_rows_are_refused(tmp_path: Path) -> None:
    """A table rewritten with consistent chains but overlapping rows (a hostile or buggy
    writer) is refused before any row is looked up."""
    path = make(tmp_path / "ds")
    manifest = manifest_io.load(str(path / MANIFEST_NAME))
    shards = list(ms.open(path).shards[:13])
    lying = [shard.model_copy(update={"row_offset": 0}) if i == 2 else shard
             for i, shard in enumerate(shards)]  # fmt: skip
    seed = shardtable.chain_seed(manifest.uuid)
    records = shardtable.encode(lying, manifest.fields, seed, where="test")
    (path / TABLE_NAME).write_bytes(
        npyheader.header_bytes(records.dtype, (), len(records)) + records.tobytes()
    )
    assert manifest.table is not None
    # The last chain changed with record 2: the manifest is made to agree, as a writer that
    # lies would do.
    agreed = manifest.model_copy(
        update={
            "table": manifest.table.model_copy(
                update={"chain": shardtable.format_chain(int(records[-1]["chain"]))}
            )
        }
    )
    (path / MANIFEST_NAME).write_bytes(manifest_io.dumps(agreed))
    with pytest.raises(ShardTableError, match=r"record 2: .* do not follow"):
        ms.open(path)["y"][0]


def test_a_table_of_another_dataset_is_refused(tmp_path: Path) -> None:
    one, other = make(tmp_path / "one"), make(tmp_path / "other")
    (one / TABLE_NAME).write_bytes((other / TABLE_NAME).read_bytes())
    with pytest.raises(ShardTableError, match="not this dataset's"):
        ms.open(one)


def test_a_reader_of_format_1_refuses_format_2(tmp_path: Path) -> None:
    """The real format 1 reader (memshard as of the last commit before the shard table),
    run in its own interpreter, refuses a format 2 dataset by its major version."""
    path = make(tmp_path / "ds")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", FORMAT_1_COMMIT, "memshard"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "old.tar").write_bytes(archive)
    with tarfile.open(tmp_path / "old.tar") as tar:
        tar.extractall(old, filter="data")
    # Under its own name: the package's imports are relative, and "memshard" is this one.
    os.rename(old / "memshard", old / "memshard_v1")
    code = (
        "import sys\n"
        "import memshard_v1 as memshard\n"
        "assert memshard.FORMAT_VERSION == '1.1', memshard.FORMAT_VERSION\n"
        "try:\n"
        f"    memshard.open({str(path)!r})\n"
        "except memshard.errors.UnsupportedVersionError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(0)\n"
        "sys.exit('opened a format 2 dataset')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(old)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    refusal = f"format version {ms.FORMAT_VERSION} is not supported (this library reads 1.x)"
    assert refusal in done.stdout


# -- format 1 datasets ------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_format_1_dataset_reads_as_before(tmp_path: Path, version: str) -> None:
    path = make(tmp_path / "ds")
    as_format_1(path, version)
    assert not (path / TABLE_NAME).exists()
    ds = ms.open(path)
    assert ds.manifest.version == version
    assert ds.manifest.table is None
    assert len(ds.shards) == 14
    assert ds.shards.sealed == 13
    assert_rows(path, 40)
    report = ds.verify()
    assert not report.problems
    assert report.ok == (version == "1.1")  # 1.0 has no checksum for the unsealed shard


def test_appending_to_a_format_1_dataset_upgrades_it(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    as_format_1(path)
    with ms.append(path) as writer:
        writer.extend(rows(40, 5))
    ds = ms.open(path)
    assert ds.manifest.version == ms.FORMAT_VERSION
    assert ds.manifest.table is not None
    assert ds.manifest.table.records == 15
    assert_rows(path, 45)
    assert ds.verify().ok


def test_upgrade_in_place_keeps_every_row_and_the_unsealed_shard(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    as_format_1(path, "1.0")
    files = sorted(os.listdir(path / "shards"))
    assert ms.upgrade(path) == "1.0"
    assert ms.upgrade(path) is None
    ds = ms.open(path)
    assert ds.manifest.version == ms.FORMAT_VERSION
    assert [shard.sealed for shard in ds.shards][-2:] == [True, False]
    assert sorted(os.listdir(path / "shards")) == files  # no shard file touched or added
    assert_rows(path, 40)
    assert ds.verify().ok  # the unsealed shard now has its prefix_checksum


def test_the_upgrade_command(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    as_format_1(path)
    first = run_from_repo([sys.executable, "-m", "memshard", "upgrade", str(path)])
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{path}: upgraded from format 1.1 to {ms.FORMAT_VERSION}\n"
    again = run_from_repo([sys.executable, "-m", "memshard", "upgrade", str(path)])
    assert again.stdout == f"{path}: already format {ms.FORMAT_VERSION}, nothing to do\n"
    assert_rows(path, 40)


def test_an_upgrade_that_fails_before_publishing_leaves_format_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make(tmp_path / "ds")
    as_format_1(path)

    def full_disk(root: str, manifest: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("memshard.appender.publish_manifest", full_disk)
    with pytest.raises(WriteFailedError):
        ms.upgrade(path)
    monkeypatch.undo()
    assert (path / TABLE_NAME).exists()  # written, but no manifest counts it
    assert ms.open(path).manifest.version == "1.1"
    assert_rows(path, 40)
    assert ms.upgrade(path) == "1.1"
    assert_rows(path, 40)
    assert ms.open(path).verify().ok


def test_a_format_1_dataset_whose_files_fit_no_table_stays_readable(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    as_format_1(path)
    document = json.loads((path / MANIFEST_NAME).read_text())
    first = document["shards"][0]["files"]["x"]
    renamed = "shards/renamed-by-hand.npy"
    os.rename(path / first["path"], path / renamed)
    first["path"] = renamed
    del document["checksum"]
    (path / MANIFEST_NAME).write_text(json.dumps(document))
    assert_rows(path, 40)
    with pytest.raises(UpgradeError, match="renamed-by-hand"):
        ms.append(path)
    with pytest.raises(UpgradeError):
        ms.upgrade(path)
    assert_rows(path, 40)


def test_a_newer_major_version_is_refused_by_this_reader(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")
    document = json.loads((path / MANIFEST_NAME).read_text())
    document["version"] = "3.0"
    del document["checksum"]
    (path / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(UnsupportedVersionError, match=r"reads 1\.x and 2\.x"):
        ms.open(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kind", "sparse", "field kind 'sparse' is not one this reader knows"),
        ("codec", {"id": "zstd", "level": 3}, "codec {'id': 'zstd', 'level': 3} is not one"),
    ],
)
@pytest.mark.parametrize("version", ["2.1", "2.9"])
def test_a_field_stored_in_a_way_this_reader_does_not_know_is_refused(
    tmp_path: Path, key: str, value: Any, message: str, version: str
) -> None:
    """A later minor version stores a field another way; this reader refuses it, naming the
    field, even though it ignores the other keys a newer minor version adds."""
    path = make(tmp_path / "ds")
    document = json.loads((path / MANIFEST_NAME).read_text())
    document["version"] = version
    document["fields"]["y"][key] = value
    del document["checksum"]
    (path / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=rf"fields\.y\.{key}: {re.escape(message)}"):
        ms.open(path)


def test_closing_a_dataset_unmaps_its_table_and_keeps_its_shard_list(tmp_path: Path) -> None:
    path = make(tmp_path / "ds")

    def table_mappings() -> int:
        with open("/proc/self/maps") as maps:
            return sum(str(path / TABLE_NAME) in line for line in maps)

    ds = ms.open(path)
    assert table_mappings() == 1
    before = list(ds.shards)
    ds.close()
    assert table_mappings() == 0
    assert list(ds.shards) == before
