"""Writers never lose a committed row to their own descriptors, locks or races: each
descriptor is closed once, a lock never outlives its writer or leaks into a child, a replaced
directory never receives an appender's manifest, and a manifest readers refuse is never
published."""

from __future__ import annotations

import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memshard as ms
from memshard.errors import (
    DatasetChangedError,
    DatasetLockedError,
    ManifestTooLargeError,
    ShardSizeError,
)
from memshard.manifest import MAX_MANIFEST_BYTES
from memshard.shardtable import TABLE_NAME
from tests.helpers import run_from_repo

FIELDS = {"x": ("int64", ()), "y": ("int16", (3,))}
ROW_BYTES = 8 + 6


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    index = np.arange(start, start + count)
    return {"x": index, "y": np.repeat(index[:, None], 3, axis=1).astype(np.int16)}


def descriptors_under(root: Path) -> list[str]:
    """Paths inside ``root`` that this process has open."""
    prefix = os.path.realpath(root)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target == prefix or target.startswith(prefix + os.sep):
            found.append(target)
    return found


def with_unsealed_last_shard(path: Path) -> None:
    """A dataset whose last shard holds committed rows and is not sealed."""
    writer = ms.create(path, FIELDS, shard_bytes=8 * ROW_BYTES)
    writer.extend(rows(0, 11))  # shard 0 sealed, shard 1 holds 3 rows
    writer.commit()
    writer.abort()


# -- 1: every descriptor has one owner and is closed once ------------------------------------
def test_a_failed_append_closes_its_descriptors_once_and_leaks_none(tmp_path: Path) -> None:
    """``append`` failing while it reopens a damaged unsealed shard must not leave a number
    that its half-built appender closes again later: by then another appender's lock may
    have that number."""
    damaged, other = tmp_path / "damaged", tmp_path / "other"
    with_unsealed_last_shard(damaged)
    last = ms.open(damaged).shards[-1]
    os.truncate(damaged / last.files["y"].path, 4096)  # "x" reopens fine, "y" is short
    ms.create(other, FIELDS).close()

    with pytest.raises(ShardSizeError) as caught:
        ms.append(damaged)
    assert descriptors_under(damaged) == []
    holder = ms.append(other)  # may get the very numbers the failed append closed
    del caught
    gc.collect()  # the half-built appender is finalised now
    with pytest.raises(DatasetLockedError):
        ms.append(other)
    holder.extend(rows(0, 2))
    holder.close()
    assert len(ms.open(other)) == 2


# -- 2: a replaced directory never receives an appender's manifest --------------------------
def test_an_appender_whose_directory_was_replaced_refuses_to_commit(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS).close()
    writer = ms.append(path)
    writer.extend(rows(0, 5))
    os.rename(path, tmp_path / "moved-away")
    with ms.create(path, FIELDS) as replacement:
        replacement.extend(rows(100, 2))
    with pytest.raises(DatasetChangedError, match="replaced or removed"):
        writer.commit()
    assert ms.open(path)["x"][:].tolist() == [100, 101]  # the new dataset is untouched
    assert descriptors_under(tmp_path) == []  # and the failed appender let everything go


def test_overwrite_of_a_dataset_being_appended_to_fails_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with ms.create(path, FIELDS) as writer:
        writer.extend(rows(0, 3))
    with ms.append(path) as appending:
        with pytest.raises(DatasetLockedError):
            ms.create(path, FIELDS, overwrite=True)
        appending.extend(rows(3, 2))
    assert ms.open(path)["x"][:].tolist() == [0, 1, 2, 3, 4]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["ds"]


def test_races_between_writers_lose_no_committed_row() -> None:
    """Two real processes at a time: overwrite against append, create against create, discard
    against write_part (see tests/race_harness.py); every outcome is a serial one."""
    from tests import race_harness

    summary = race_harness.harness(25, seed=1)
    assert summary["races"] == 75
    assert summary["failures"] == 0, summary["problems"]
    outcomes = summary["outcomes"]
    # Both sides of each race won sometimes: the races really overlapped.
    assert (
        outcomes.get("create-create: create #1 ok", 0)
        + outcomes.get("create-create: create #2 ok", 0)
        == 25
    )
    assert (
        outcomes.get("create-create: create #1 DatasetExistsError", 0)
        + outcomes.get("create-create: create #2 DatasetExistsError", 0)
        == 25
    )


def test_the_crash_harness_race_mode_reports_its_figures(tmp_path: Path) -> None:
    report = tmp_path / "races.json"
    done = run_from_repo(
        [sys.executable, "-m", "tests.crash_harness", "--races", "3", "--json", str(report)]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| races run | 9 |" in done.stdout
    assert json.loads(report.read_text())["failures"] == 0


# -- 3: what readers refuse is never published -----------------------------------------------
def test_create_refuses_attrs_that_make_the_manifest_too_large(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with pytest.raises(ManifestTooLargeError, match="MAX_MANIFEST_BYTES") as caught:
        ms.create(path, FIELDS, attrs={"blob": "a" * MAX_MANIFEST_BYTES})
    assert str(path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing published, no staging left


def test_shards_never_grow_the_manifest_and_an_edit_past_its_limit_publishes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ds"
    small = ms.create(path, FIELDS, attrs={"blob": ""})
    small.close()
    overhead = len((path / "manifest.json").read_bytes())
    blob = "a" * (MAX_MANIFEST_BYTES - overhead - 1000)  # 1000 bytes from the limit
    writer = ms.create(path, FIELDS, shard_bytes=ROW_BYTES, attrs={"blob": blob}, overwrite=True)
    writer.extend(rows(0, 2))
    writer.commit()
    before = len((path / "manifest.json").read_bytes())
    writer.extend(rows(2, 200))  # 200 more one-row shards: their records go to the table
    writer.commit()
    assert len((path / "manifest.json").read_bytes()) - before < 50  # a few more digits
    table = (path / TABLE_NAME).read_bytes()
    with pytest.raises(ManifestTooLargeError, match=f"{path}: the manifest would be"):
        writer.commit_metadata({"attrs": {"blob": blob + "a" * 2000}})
    assert (path / TABLE_NAME).read_bytes() == table  # refused before anything was written
    writer.abort()
    dataset = ms.open(path)
    assert dataset["x"][:].tolist() == list(range(202))
    assert dataset.attrs == {"blob": blob}
    assert dataset.verify().ok


# -- 7: a lock never outlives its writer in a child -------------------------------------------
def test_a_forked_child_does_not_hold_the_lock_after_close(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS).close()
    writer = ms.append(path)
    release_read, release_write = os.pipe()
    started_read, started_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child says it runs, then waits until the parent has checked the lock
        os.close(release_write)
        os.write(started_write, b"1")
        os.read(release_read, 1)
        os._exit(0)
    os.close(release_read)
    os.close(started_write)
    assert os.read(started_read, 1) == b"1"  # fork() has returned in the child
    os.close(started_read)
    try:
        writer.close()
        ms.append(path).close()  # the child must not keep the lock
    finally:
        os.close(release_write)
        os.waitpid(pid, 0)


def test_a_killed_writers_lock_is_free_while_its_children_live(tmp_path: Path) -> None:
    """A writer that started a subprocess and forked a child, then was SIGKILLed: the dataset
    is free at once, though both children still run (they wait on the test's pipe)."""
    path = tmp_path / "ds"
    ms.create(path, FIELDS).close()
    script = (
        "import os, subprocess, sys, memshard as ms\n"
        f"writer = ms.append({str(path)!r})\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],\n"
        "                          close_fds=False)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.write(1, b'child runs\\n')\n"
        "    sys.stdin.read()\n"
        "    os._exit(0)\n"
        "os.write(1, f'{helper.pid} {child}\\n'.encode())\n"
        "sys.stdin.read()\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    lines = sorted([writer.stdout.readline(), writer.stdout.readline()])
    assert lines[1] == "child runs\n"
    children = [int(pid) for pid in lines[0].split()]
    try:
        with pytest.raises(DatasetLockedError):
            ms.append(path)  # the writer itself holds it
        writer.kill()
        writer.wait()
        ms.append(path).close()  # free, although both children live on
        for pid in children:
            os.kill(pid, 0)  # still running
    finally:
        writer.stdin.close()  # the children read end-of-file and exit
        writer.stdout.close()


def _wait_for(release: multiprocessing.connection.Connection) -> None:
    release.send("child runs")
    release.recv()


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_multiprocessing_child_does_not_hold_the_lock(tmp_path: Path, method: str) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS).close()
    writer = ms.append(path)
    context = multiprocessing.get_context(method)
    keep, release = context.Pipe()
    # typeshed types get_context(str) as BaseContext, which has no Process; every real
    # context (fork, spawn, forkserver) has one.
    child = context.Process(target=_wait_for, args=(release,))  # type: ignore[attr-defined]
    child.start()
    assert keep.recv() == "child runs"
    try:
        writer.close()
        ms.append(path).close()
        assert child.is_alive()
    finally:
        keep.send(None)
        child.join()


# -- 9: descriptors do not grow with the number of fields ---------------------------------------
def test_a_thousand_fields_write_under_a_128_descriptor_limit(tmp_path: Path) -> None:
    """Roll-overs, commits, a resume and a read of a 1,000-field dataset, in a process that may
    open at most 128 files."""
    script = f"""
import resource, numpy as np, memshard as ms
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
fields = {{f"f{{i}}": ("int32", ()) for i in range(1000)}}
def rows(start, count):
    return {{name: np.arange(start, start + count, dtype=np.int32) + i for i, name in
            enumerate(fields)}}
with ms.create({str(tmp_path / "ds")!r}, fields, shard_bytes=1000 * 4 * 3) as writer:
    writer.extend(rows(0, 7))  # 3 rows a shard: two roll-overs
    writer.commit()
    writer.extend(rows(7, 4))
with ms.append({str(tmp_path / "ds")!r}) as writer:  # reopens the unsealed last shard
    writer.extend(rows(11, 5))
dataset = ms.open({str(tmp_path / "ds")!r})
assert len(dataset) == 16, len(dataset)
assert dataset["f999"][:].tolist() == list(range(999, 1015))
assert dataset.verify().ok
print("ok")
"""
    done = run_from_repo([sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_readers_refuse_an_oversized_manifest_naming_its_real_size(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS).close()
    size = MAX_MANIFEST_BYTES + 12345
    os.truncate(path / "manifest.json", size)
    with pytest.raises(ManifestTooLargeError, match=f"{size:,} bytes, more than the"):
        ms.open(path)
    with pytest.raises(ManifestTooLargeError, match=f"{size:,} bytes"):
        ms.append(path)
