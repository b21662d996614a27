"""The shard size of a conversion: a warning below :data:`memshard.convert.MIN_SHARD_BYTES`,
commits in growing batches (so that many small shards do not make a conversion slow down as
it goes), a changed size on resume refused with the sizes named, and ``overwrite`` starting
over from an interrupted run.

``--shard-size 1k`` with 48 KiB rows wrote one row per shard, 40,000 files, ever slower: the
converter committed each shard on its own, and every commit rewrites (and revalidates) the
whole manifest, so the work grew with the square of the shard count.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import memshard as ms
import memshard.hdf5 as ms_hdf5
from memshard.convert import COMMIT_GROWTH, MIN_SHARD_BYTES, STAGING_SUFFIX, convert
from memshard.errors import ConversionStateError, DatasetLockedError, SmallShardWarning
from tests.convert_helpers import with_stop

ROWS = 600
#: Bytes of one row of the source: 60 float32 and one int64.
ROW_BYTES = 60 * 4 + 8


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.arange(ROWS * 60, dtype=np.float32).reshape(ROWS, 60)
        handle["y"] = np.arange(ROWS, dtype=np.int64)
    return path


def staging(dst: Path) -> Path:
    return Path(f"{dst}{STAGING_SUFFIX}")


def interrupt_at_row_350(src: Path, dst: Path) -> None:
    """Convert ``src`` in shards of 100 rows, interrupted (KeyboardInterrupt) at row 350: the
    staging dataset keeps 300 rows."""
    plan = with_stop(ms_hdf5.plan(src, None), 350, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        convert(plan, dst, shard_bytes=100 * ROW_BYTES)


def assert_complete(ds: ms.Dataset) -> None:
    assert len(ds) == ROWS
    np.testing.assert_array_equal(ds["y"][:], np.arange(ROWS))
    np.testing.assert_array_equal(ds["x"][:, 0], np.arange(ROWS) * 60)


def test_small_shards_warn_once_naming_the_sizes(src: Path, tmp_path: Path) -> None:
    with pytest.warns(SmallShardWarning) as caught:
        ms.from_hdf5(src, tmp_path / "out", shard_bytes=10 * ROW_BYTES)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "shards of 10 rows (2.4 KiB of data), 60 shards and 120 files" in message
    assert "smaller than 1.0 MiB" in message
    assert "The default shard_bytes is 256.0 MiB" in message


@pytest.mark.parametrize(
    "shard_bytes",
    [100 * 4096, MIN_SHARD_BYTES],  # one small shard holds everything; shards of 1 MiB
    ids=["one-shard", "1MiB"],
)
def test_no_warning_for_one_shard_or_shards_of_a_mebibyte(tmp_path: Path, shard_bytes: int) -> None:
    path = tmp_path / "src.npy"
    rows = 3 * MIN_SHARD_BYTES // 4096 if shard_bytes == MIN_SHARD_BYTES else 100
    np.save(path, np.zeros((rows, 1024), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallShardWarning)
        ds = ms.from_numpy(path, tmp_path / "out", shard_bytes=shard_bytes)
    assert len(ds) == rows


def test_many_small_shards_are_committed_in_growing_batches(tmp_path: Path) -> None:
    """Every commit rewrites the manifest, so the number of commits bounds the work: one per
    shard was quadratic in the shard count. Batches of a sixteenth of the shards committed so
    far make it about 16 ln(n / 16) + 16 commits (56 for 200 shards), each row still
    committed in row order."""
    rows = 200
    values = np.arange(rows, dtype=np.int64)
    with pytest.warns(SmallShardWarning, match="shards of 1 rows"):
        ds = ms.from_numpy({"y": values}, tmp_path / "out", shard_bytes=8)
    assert len(ds.shards) == rows
    # Each commit adds at least max(1, committed // COMMIT_GROWTH) shards.
    committed, commits = 0, 0
    while committed < rows:
        committed += max(1, committed // COMMIT_GROWTH)
        commits += 1
    assert ds.generation <= commits, (ds.generation, commits)
    assert ds.generation < rows // 3
    np.testing.assert_array_equal(ds["y"][:], values)


def test_resume_with_another_shard_size_is_refused_naming_both(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    first = 100 * ROW_BYTES
    interrupt_at_row_350(src, dst)
    kept = ms.open(staging(dst))
    assert len(kept) == 300
    with pytest.raises(ConversionStateError) as refused:
        ms.from_hdf5(src, dst, resume=True, shard_bytes=10 * ROW_BYTES)
    message = str(refused.value)
    assert str(staging(dst)) in message
    assert "writes shards of 100 rows (24.2 KiB)" in message
    assert f"shard_bytes={10 * ROW_BYTES} asks for 10 rows (2.4 KiB)" in message
    assert "leave shard_bytes out" in message
    assert ms.open(staging(dst)).generation == kept.generation  # nothing changed
    # The same size given again, or none, resumes.
    assert_complete(ms.from_hdf5(src, dst, resume=True, shard_bytes=first))
    assert not staging(dst).exists()


def test_resume_without_a_shard_size_keeps_the_first_runs(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    interrupt_at_row_350(src, dst)
    ds = ms.from_hdf5(src, dst, resume=True)
    assert_complete(ds)
    assert {shard.rows for shard in ds.shards} == {100}


def test_a_finished_conversion_resumed_with_another_shard_size_is_refused(
    src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out"
    ms.from_hdf5(src, dst, shard_bytes=100 * ROW_BYTES)
    with pytest.raises(ms.errors.DatasetExistsError, match="asks for 50 rows"):
        ms.from_hdf5(src, dst, resume=True, shard_bytes=50 * ROW_BYTES)
    assert ms.from_hdf5(src, dst, resume=True, shard_bytes=100 * ROW_BYTES).generation >= 1


def test_overwrite_deletes_an_interrupted_run_and_starts_over(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    interrupt_at_row_350(src, dst)
    old = ms.open(staging(dst)).uuid
    with pytest.raises(ConversionStateError, match="overwrite=True to delete it and start over"):
        ms.from_hdf5(src, dst, shard_bytes=50 * ROW_BYTES)
    ds = ms.from_hdf5(src, dst, shard_bytes=50 * ROW_BYTES, overwrite=True)
    assert_complete(ds)
    assert ds.uuid != old
    assert {shard.rows for shard in ds.shards} == {50}  # the new size, from scratch
    assert sorted(os.listdir(tmp_path)) == ["out", "src.h5"]


def test_overwrite_never_deletes_a_conversion_that_is_running(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    interrupt_at_row_350(src, dst)
    with ms.append(staging(dst)):  # as a conversion still running holds it
        with pytest.raises(DatasetLockedError):
            ms.from_hdf5(src, dst, overwrite=True)
        assert len(ms.open(staging(dst))) == 300
