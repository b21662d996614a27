"""Faults of the environment: a full disk, failing ``fsync``, read-only file systems, too few
file descriptors, and shard files changed under an open reader.

Each fault is a real condition where the sandbox allows it: a file size limit
(``RLIMIT_FSIZE``), a small tmpfs and a read-only bind mount (both mounted by a child process in
its own private mount namespace, so nothing leaks into the host's mount table), and lowered
descriptor limits (``RLIMIT_NOFILE``). Faults the kernel cannot be asked for (EIO from
``fsync``, a failed rename) are injected by monkeypatching :mod:`os`, which memshard calls
through the module attribute.

Children run as ``python -m tests.test_env_faults CHILD ARGS...`` and print one JSON line.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard import mappings
from memshard.errors import (
    AppenderClosedError,
    CommitNotDurableError,
    DatasetChangedError,
    MemshardError,
    ShardMissingError,
    ShardSizeError,
    UnsafePathError,
    WriteFailedError,
)
from memshard.layout import LOCK_NAME, MANIFEST_NAME, MANIFEST_TEMP_PREFIX, SHARDS_DIR
from memshard.shardtable import TABLE_NAME

REPO = Path(__file__).resolve().parent.parent
REAL_FSYNC = os.fsync
REAL_WRITE = os.write
REAL_PWRITE = os.pwrite
REAL_OPEN = os.open
REAL_UNLINK = os.unlink

#: A 4 KiB float32 row: page-sized rows make shard files grow by whole pages.
PAGE_ROW = (1024,)
#: x: 16 bytes a row, y: 8.
SMALL = {"x": ("float32", (4,)), "y": ("int64", ())}
SMALL_ROW_BYTES = 24


# -- helpers ------------------------------------------------------------------------------------
def page_rows(start: int, count: int) -> dict[str, np.ndarray]:
    """Rows ``start .. start + count`` of a ``{"x": float32 (1024,)}`` dataset: row i is all i."""
    index = np.arange(start, start + count, dtype=np.float32)
    return {"x": np.ascontiguousarray(np.broadcast_to(index[:, None], (count, *PAGE_ROW)))}


def small_rows(start: int, count: int) -> dict[str, np.ndarray]:
    """Rows of :data:`SMALL`: ``x`` is all i, ``y`` is i."""
    index = np.arange(start, start + count)
    x = np.broadcast_to(index[:, None], (count, 4)).astype(np.float32)
    return {"x": x, "y": index.astype(np.int64)}


#: A ragged int32 field, a ragged field of int16 triples, and a fixed field.
RAGGED = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "y": ("int64", ())}


def ragged_rows(start: int, count: int, tokens: int | None = None) -> dict[str, Any]:
    """Rows of :data:`RAGGED` in which every element of row i is i: ``tokens`` tokens each
    (by default ``i * 7 % 13``, so some rows are empty), ``i % 4`` strokes, ``y = i``."""
    index = range(start, start + count)
    return {
        "tokens": [np.full(i * 7 % 13 if tokens is None else tokens, i, np.int32) for i in index],
        "strokes": [np.full((i % 4, 3), i, np.int16) for i in index],
        "y": np.arange(start, start + count, dtype=np.int64),
    }


def big_ragged_rows(start: int, count: int) -> dict[str, Any]:
    """Rows of :data:`RAGGED` of about 4 KiB: 1000 tokens each."""
    return ragged_rows(start, count, tokens=1000)


def ragged_rows_are_correct(dataset: ms.Dataset, tokens: int | None = None) -> bool:
    """Whether the dataset of :data:`RAGGED` holds the rows of :func:`ragged_rows` (given
    ``tokens``), read by slice and by ``take``."""
    n = len(dataset)
    index = np.arange(n)
    if not (dataset["y"][:] == index).all():
        return False
    taken = dataset.take(index[::-1])
    for name in ("tokens", "strokes"):
        for batch, order in ((dataset[name][:], index), (taken[name], index[::-1])):
            lengths = np.diff(batch.offsets)
            if name == "strokes":
                expected = order % 4
            else:
                expected = order * 7 % 13 if tokens is None else np.full(len(order), tokens)
            if not np.array_equal(lengths, expected):
                return False
            rows = np.repeat(order, lengths)
            if not (batch.values.reshape(len(rows), -1) == rows[:, None]).all():
                return False
    return True


#: Compressed fields: a zstd field of 256-byte rows, four to a block; an lz4 ragged field; a
#: plain field.
COMPRESSED = {
    "img": ("uint8", (256,), {"codec": "zstd", "block_bytes": 1024}),
    "codes": ("int32", (None,), {"codec": "lz4", "block_bytes": 1024}),
    "y": ("int64", ()),
}


def compressed_rows(start: int, count: int, tokens: int | None = None) -> dict[str, Any]:
    """Rows of :data:`COMPRESSED`: ``img`` random bytes seeded by the row (they do not
    compress: the disk fills), ``codes`` as :func:`ragged_rows` makes ``tokens``, ``y = i``."""
    index = range(start, start + count)
    return {
        "img": np.array([_noise(i) for i in index], dtype=np.uint8).reshape(count, 256),
        "codes": [np.full(i * 7 % 13 if tokens is None else tokens, i, np.int32) for i in index],
        "y": np.arange(start, start + count, dtype=np.int64),
    }


def big_compressed_rows(start: int, count: int) -> dict[str, Any]:
    """Rows of :data:`COMPRESSED` of about 4 KiB before compression: 1000 codes each."""
    return compressed_rows(start, count, tokens=1000)


def _noise(row: int) -> np.ndarray:
    return np.random.default_rng(row).integers(0, 256, 256, dtype=np.uint8)


def compressed_rows_are_correct(dataset: ms.Dataset, tokens: int | None = None) -> bool:
    """Whether the dataset of :data:`COMPRESSED` holds the rows of :func:`compressed_rows`
    (given ``tokens``), read by slice, by row and by ``take`` (in threads)."""
    n = len(dataset)
    index = np.arange(n)
    expected = compressed_rows(0, n, tokens)
    if not (dataset["y"][:] == index).all():
        return False
    taken = dataset.take(index[::-1], threads=2)
    if not np.array_equal(dataset["img"][:], expected["img"]):
        return False
    if not np.array_equal(taken["img"], expected["img"][::-1]):
        return False
    for batch, order in ((dataset["codes"][:], index), (taken["codes"], index[::-1])):
        lengths = np.diff(batch.offsets)
        if not np.array_equal(lengths, [len(expected["codes"][i]) for i in order]):
            return False
        if not (batch.values == np.repeat(order, lengths)).all():
            return False
    return all(np.array_equal(dataset["codes"][i], row) for i, row in enumerate(expected["codes"]))


def rows_are_correct(dataset: ms.Dataset, start: int = 0, stop: int | None = None) -> bool:
    """Whether every element of row i of every field is i, for rows ``start .. stop``."""
    stop = len(dataset) if stop is None else stop
    expected = np.arange(start, stop)
    for name in dataset.fields:
        values = dataset[name][start:stop].reshape(stop - start, -1)
        if not (values == expected[:, None]).all():
            return False
    return True


def descriptors_under(root: str | os.PathLike[str]) -> list[str]:
    """Paths inside ``root`` that this process has open."""
    prefix = os.path.realpath(root)
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target == prefix or target.startswith(prefix + os.sep):
                found.append(target)
    return found


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def outcome(action: Callable[[], Any]) -> dict[str, Any]:
    """Run ``action``: its JSON-able value, or a description of what it raised."""
    try:
        value = action()
    except BaseException as exc:
        return {
            "error": type(exc).__name__,
            "typed": isinstance(exc, MemshardError),
            "bases": [cls.__name__ for cls in type(exc).__mro__],
            "errno": getattr(exc, "errno", None),
            "message": str(exc),
        }
    return {"error": None, "value": value}


def leftovers(root: Path) -> set[str]:
    """Temporary manifests, and shard files (ragged fields' offsets files too) the manifest
    does not name."""
    named = {os.path.basename(path) for path in ms.open(root).shards.file_paths()}
    temporary = {name for name in os.listdir(root) if name.startswith(MANIFEST_TEMP_PREFIX)}
    return temporary | (set(os.listdir(root / SHARDS_DIR)) - named)


@contextlib.contextmanager
def no_fsync() -> Iterator[None]:
    """Skip ``fsync`` while building fixtures of hundreds of shards (durability is not tested
    there, and ext4 makes each fsync cost a millisecond or more)."""
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = REAL_FSYNC


def run_child(*args: str, prefix: tuple[str, ...] = (), timeout: float = 120.0) -> dict[str, Any]:
    """Run a child of this module; return the JSON it printed last."""
    command = [*prefix, sys.executable, "-m", "tests.test_env_faults", *args]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"child {args} exited with {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def run_in_private_mount_namespace(*args: str) -> dict[str, Any]:
    """Run a child that mounts file systems, in a mount namespace of its own (so its mounts
    vanish with it); fail when the environment cannot do that."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("mounting needs root and unshare(1), which this test environment provides")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.fail(f"cannot create a mount namespace: {probe.stderr.decode().strip()}")
    report = run_child(*args, prefix=("unshare", "-m", "--propagation", "private"))
    if "skip" in report:
        pytest.fail(report["skip"])
    return report


def mount(*args: str) -> str | None:
    """Run mount(8); the error text, or None if it worked."""
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else (result.stderr.strip() or "mount failed")


def unmount(target: str) -> None:
    mappings.CACHE.clear()  # mapped shards keep the file system busy
    gc.collect()
    if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


# -- disk full: a file size limit (EFBIG) -------------------------------------------------------
#: Largest file the child may write: the header and 15 rows of 4 KiB.
FILE_SIZE_LIMIT = 64 << 10
COMMITTED_BEFORE_LIMIT = 8


def child_file_size_limit(path: str, where: str) -> dict[str, Any]:
    """Commit 8 rows, then write past ``RLIMIT_FSIZE`` at ``commit`` (rows buffered, flushed by
    the commit) or in ``extend`` (a batch larger than the write buffer goes out at once)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, hard))
    writer = ms.append(path)
    writer.extend(page_rows(0, COMMITTED_BEFORE_LIMIT))
    writer.commit()
    report: dict[str, Any] = {}
    if where == "commit":
        report["extend"] = outcome(lambda: writer.extend(page_rows(8, 16)))
        report["failure"] = outcome(writer.commit)
    else:
        report["failure"] = outcome(lambda: writer.extend(page_rows(8, 300)))
    report["commit_after"] = outcome(writer.commit)
    report["extend_after"] = outcome(lambda: writer.extend(page_rows(8, 1)))
    report["append_after"] = outcome(lambda: writer.append({"x": np.zeros(PAGE_ROW)}))
    report["close"] = outcome(writer.close)
    report["committed_rows"] = writer.committed_rows
    report["descriptors_left"] = descriptors_under(path)
    dataset = ms.open(path)
    report["rows_seen"] = len(dataset)
    report["rows_correct"] = rows_are_correct(dataset)
    return report


@pytest.mark.parametrize("where", ["commit", "extend"])
def test_file_size_limit_fails_the_appender_and_a_new_process_resumes(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "ds"
    ms.create(path, fields={"x": ("float32", PAGE_ROW)}, shard_bytes=4 << 20).close()
    report = run_child("file_size_limit", str(path), where)

    if where == "commit":
        assert report["extend"]["error"] is None  # buffered, nothing written yet
    failure = report["failure"]
    assert failure["error"] == "WriteFailedError", failure
    assert failure["errno"] == errno.EFBIG
    assert str(path) in failure["message"]
    for later in ("commit_after", "extend_after", "append_after"):
        assert report[later]["error"] == "AppenderClosedError", report[later]
        assert str(path) in report[later]["message"]
        assert "failed earlier" in report[later]["message"]
    assert report["close"]["error"] is None
    assert report["committed_rows"] == COMMITTED_BEFORE_LIMIT
    assert report["rows_seen"] == COMMITTED_BEFORE_LIMIT
    assert report["rows_correct"]
    assert report["descriptors_left"] == []

    # This process has no limit: the dataset is as last committed, and appending resumes.
    dataset = ms.open(path)
    assert len(dataset) == COMMITTED_BEFORE_LIMIT
    assert dataset.verify().ok
    shard_file = path / dataset.shards[-1].files["x"].path
    assert shard_file.stat().st_size > dataset.shards[-1].files["x"].nbytes + 4096  # the debris
    with ms.append(path) as writer:
        assert writer.rows == COMMITTED_BEFORE_LIMIT
        writer.extend(page_rows(COMMITTED_BEFORE_LIMIT, 40))
    dataset = ms.open(path)
    assert len(dataset) == COMMITTED_BEFORE_LIMIT + 40
    assert rows_are_correct(dataset)
    assert dataset.verify().ok
    assert shard_file.stat().st_size == 4096 + 48 * 4096
    assert leftovers(path) == set()


# -- disk full: a real, small tmpfs (ENOSPC) ----------------------------------------------------
def child_full_tmpfs(mountpoint: str, kind: str = "fixed") -> dict[str, Any]:
    """Mount a 2 MiB tmpfs, fill it with a ballast file and a dataset until ENOSPC, check
    what is left, free the ballast and resume. ``kind`` "ragged": a dataset of
    :data:`RAGGED` fields, rows of about 4 KiB; "compressed": of :data:`COMPRESSED` fields,
    rows of about 4 KiB before compression."""
    os.makedirs(mountpoint, exist_ok=True)
    problem = mount("-t", "tmpfs", "-o", "size=2m", "memshard-test", mountpoint)
    if problem is not None:
        return {"skip": f"cannot mount a tmpfs here: {problem}"}
    correct: Callable[[ms.Dataset], bool]
    fields: dict[str, Any]
    if kind == "ragged":
        fields, more = RAGGED, big_ragged_rows
        correct = functools.partial(ragged_rows_are_correct, tokens=1000)
    elif kind == "compressed":
        fields, more = COMPRESSED, big_compressed_rows
        correct = functools.partial(compressed_rows_are_correct, tokens=1000)
    else:
        fields, more, correct = {"x": ("float32", PAGE_ROW)}, page_rows, rows_are_correct
    try:
        path = os.path.join(mountpoint, "ds")
        ballast = os.path.join(mountpoint, "ballast")
        with open(ballast, "wb") as handle:
            handle.write(bytes(768 << 10))
        writer = ms.create(path, fields=fields, shard_bytes=256 << 10)
        report: dict[str, Any] = {"shard_rows": writer.manifest.shard_rows}
        failure = None
        for _ in range(1000):  # 2 MiB hold fewer than 500 rows
            failure = outcome(functools.partial(writer.extend, more(writer.rows, 5)))
            if failure["error"] is None:
                failure = outcome(writer.commit)
            if failure["error"] is not None:
                break
        report["failure"] = failure
        # A failed appender has already let go: no descriptor, and the lock is free.
        report["descriptors_at_failure"] = descriptors_under(path)
        report["append_at_failure"] = outcome(lambda: ms.append(path).abort())
        report["commit_after"] = outcome(writer.commit)
        report["close"] = outcome(writer.close)
        report["committed_rows"] = writer.committed_rows
        report["descriptors_left"] = descriptors_under(path)
        dataset = ms.open(path)  # readers need no space
        report["rows_seen"] = len(dataset)
        report["sealed_shards"] = sum(shard.sealed for shard in dataset.shards)
        report["rows_correct"] = correct(dataset)
        report["verify_ok"] = dataset.verify().ok
        del dataset

        os.unlink(ballast)

        def resume() -> int:
            with ms.append(path) as again:
                rows = again.rows
                again.extend(more(rows, 20))
            return rows

        report["resume"] = outcome(resume)
        dataset = ms.open(path)
        report["rows_after_resume"] = len(dataset)
        report["rows_correct_after_resume"] = correct(dataset)
        report["verify_ok_after_resume"] = dataset.verify().ok
        report["leftovers"] = sorted(leftovers(Path(path)))
        del dataset
        return report
    finally:
        unmount(mountpoint)


def test_full_tmpfs_fails_the_appender_and_resumes_after_space_is_freed(tmp_path: Path) -> None:
    report = run_in_private_mount_namespace("full_tmpfs", str(tmp_path / "mnt"))
    failure = report["failure"]
    assert failure["error"] == "WriteFailedError", failure
    assert failure["errno"] == errno.ENOSPC
    assert str(tmp_path / "mnt" / "ds") in failure["message"]
    assert os.strerror(errno.ENOSPC) in failure["message"]  # it says what failed
    assert report["descriptors_at_failure"] == []
    assert report["append_at_failure"] == {"error": None, "value": None}
    assert report["commit_after"]["error"] == "AppenderClosedError"
    assert report["close"]["error"] is None
    committed = report["committed_rows"]
    assert committed >= report["shard_rows"]  # it filled at least one shard first
    assert report["rows_seen"] == committed
    assert report["rows_correct"]
    assert report["verify_ok"]
    assert report["descriptors_left"] == []
    assert report["resume"] == {"error": None, "value": committed}
    assert report["rows_after_resume"] == committed + 20
    assert report["rows_correct_after_resume"]
    assert report["verify_ok_after_resume"]
    assert report["leftovers"] == []


# -- disk full, simulated: os.write and os.pwrite raising ENOSPC --------------------------------
def fail_writes(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int], bool]) -> None:
    """Make ``os.write`` and ``os.pwrite`` raise ENOSPC on the descriptors ``fails`` picks."""

    def full_disk(fd: int, data: Any) -> int:
        if fails(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return REAL_WRITE(fd, data)

    def full_disk_at(fd: int, data: Any, offset: int) -> int:
        if fails(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return REAL_PWRITE(fd, data, offset)

    monkeypatch.setattr(os, "write", full_disk)
    monkeypatch.setattr(os, "pwrite", full_disk_at)


#: Where writing fails, and how many rows are committed by then.
ENOSPC_AT: dict[str, tuple[Callable[[str], bool], int]] = {
    # the rows buffered since the last commit, flushed by the commit
    "shard data at commit": (lambda name: name.endswith("-00000001.x.npy"), 5),
    # the header of a shard created when the previous one fills up (the second field's file)
    "header of a new shard": (lambda name: name.endswith("-00000002.y.npy"), 7),
    "temporary manifest": (lambda name: name.startswith(MANIFEST_TEMP_PREFIX), 5),
}


@pytest.mark.parametrize("where", list(ENOSPC_AT))
def test_enospc_from_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / "ds"
    writer = ms.create(path, fields=SMALL, shard_bytes=4 * SMALL_ROW_BYTES)  # 4-row shards
    writer.extend(small_rows(0, 5))  # shard 0 sealed, shard 1 holds 1 row
    writer.commit()
    matches, committed = ENOSPC_AT[where]
    fail_writes(monkeypatch, lambda fd: matches(os.path.basename(fd_path(fd))))

    def write() -> None:
        writer.extend(small_rows(5, 2))  # buffered in shard 1
        writer.commit()  # flushes shard 1, writes a manifest
        writer.extend(small_rows(7, 3))  # fills shard 1, starts shard 2
        writer.commit()

    with pytest.raises(WriteFailedError) as caught:
        write()
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"[Errno {errno.ENOSPC}] {path}: write failed")
    for attempt in (writer.commit, lambda: writer.extend(small_rows(10, 1))):
        with pytest.raises(AppenderClosedError, match="failed earlier"):
            attempt()
    assert writer.committed_rows == committed
    writer.close()
    monkeypatch.undo()  # space is back

    dataset = ms.open(path)
    assert len(dataset) == committed
    assert rows_are_correct(dataset)
    assert dataset.verify().ok
    with ms.append(path) as again:
        again.extend(small_rows(committed, 9))
    dataset = ms.open(path)
    assert len(dataset) == committed + 9
    assert rows_are_correct(dataset)
    assert leftovers(path) == set()
    # Last: a failed appender, once closed, holds no descriptor into the dataset.
    assert descriptors_under(path) == []


@pytest.mark.parametrize("fault", ["ENOSPC", "EIO from fsync"])
def test_create_on_a_failing_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """``create`` that cannot write its first manifest: a typed error naming the path, and
    nothing left behind."""

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    if fault == "ENOSPC":
        fail_writes(monkeypatch, lambda fd: True)
    else:
        monkeypatch.setattr(os, "fsync", failing_fsync)
    path = tmp_path / "ds"
    with pytest.raises(OSError) as caught:  # noqa: PT011 - the type is checked below
        ms.create(path, fields=SMALL)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    assert caught.value.errno in (errno.ENOSPC, errno.EIO)
    assert isinstance(caught.value, WriteFailedError), repr(caught.value)
    assert str(path) in str(caught.value)


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write`` may write fewer bytes than asked (signals, some file systems)."""

    def short_write(fd: int, data: Any) -> int:
        return REAL_WRITE(fd, memoryview(data)[:1000])

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return REAL_PWRITE(fd, memoryview(data)[:1000], offset)

    monkeypatch.setattr(os, "write", short_write)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    path = tmp_path / "ds"
    with ms.create(path, fields={"x": ("float32", PAGE_ROW)}, shard_bytes=1 << 20) as writer:
        writer.extend(page_rows(0, 300))  # larger than the write buffer: written directly
        writer.commit()
        writer.extend(page_rows(300, 7))
    monkeypatch.undo()
    dataset = ms.open(path)
    assert len(dataset) == 307
    assert rows_are_correct(dataset)
    assert dataset.verify().ok


# -- EIO from fsync -----------------------------------------------------------------------------
class FsyncSpy:
    """``os.fsync`` that records every call's path and raises EIO the first time ``fails``
    matches one."""

    def __init__(self, fails: Callable[[str], bool]) -> None:
        self.fails = fails
        self.calls: list[tuple[str, str]] = []  # (path, thread name)
        self.failed_at: int | None = None
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        path = fd_path(fd)
        with self._lock:
            self.calls.append((path, threading.current_thread().name))
            if self.failed_at is None and self.fails(path):
                self.failed_at = len(self.calls)
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        REAL_FSYNC(fd)

    @property
    def failed_call(self) -> tuple[str, str]:
        """(path, thread name) of the fsync that failed."""
        assert self.failed_at is not None, f"no fsync matched; calls: {self.calls}"
        return self.calls[self.failed_at - 1]

    def after_failure(self) -> list[tuple[str, str]]:
        assert self.failed_at is not None
        return self.calls[self.failed_at :]


def _fsync_targets(root: str) -> dict[str, Callable[[str], bool]]:
    shards = os.path.join(root, SHARDS_DIR)
    return {
        "sealed shard file (deferred)": lambda p: p.endswith("-00000000.x.npy"),
        "unsealed shard file": lambda p: p.endswith("-00000001.x.npy"),
        "shards/ directory": lambda p: p == shards,
        "shard table": lambda p: p.endswith(TABLE_NAME),
        "temporary manifest": lambda p: os.path.basename(p).startswith(MANIFEST_TEMP_PREFIX),
        "dataset directory (after the rename)": lambda p: p == root,
    }


FSYNC_TARGETS = list(_fsync_targets("/"))


@pytest.mark.parametrize("target", FSYNC_TARGETS)
def test_eio_from_fsync_fails_the_appender_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """A commit whose fsync fails raises WriteFailedError, never calls fsync again (a retry
    could report lost pages as durable), and leaves the previous commit in place."""
    path = tmp_path / "ds"
    root = os.path.realpath(path)
    writer = ms.create(path, fields=SMALL, shard_bytes=4 * SMALL_ROW_BYTES)  # 4-row shards
    writer.extend(small_rows(0, 3))
    writer.commit()  # shard 0 unsealed, 3 rows
    writer.extend(small_rows(3, 3))  # seals shard 0 (fsync deferred), shard 1 holds 2 rows
    spy = FsyncSpy(_fsync_targets(root)[target])
    monkeypatch.setattr(os, "fsync", spy)

    after_rename = target == "dataset directory (after the rename)"
    with pytest.raises(WriteFailedError) as caught:
        writer.commit()
    assert caught.value.errno == errno.EIO
    assert isinstance(caught.value, OSError)
    if after_rename:  # visible, durability unknown: counted as committed, never re-appended
        assert isinstance(caught.value, CommitNotDurableError)
        assert f"{root}: generation 2 (6 rows) is visible but may not" in str(caught.value)
        assert writer.committed_rows == 6
    else:
        assert not isinstance(caught.value, CommitNotDurableError)
        assert f"{path}: write failed" in str(caught.value)
        assert writer.committed_rows == 3
    assert spy.failed_call  # the fault was injected where intended
    with pytest.raises(AppenderClosedError, match=r"failed earlier \(\w+: \[Errno 5\]"):
        writer.commit()
    with pytest.raises(AppenderClosedError):
        writer.extend(small_rows(6, 1))
    writer.close()
    writer.abort()
    del writer
    gc.collect()
    assert spy.after_failure() == [], "fsync was called again after it failed"
    assert descriptors_under(path) == []
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)

    # Resuming in a new appender: the rows of the failed commit are not there.
    with ms.append(path) as again:
        again.extend(small_rows(again.rows, 4))
    dataset = ms.open(path)
    assert rows_are_correct(dataset)
    assert leftovers(path) == set()
    assert dataset.verify().ok
    # The rows the appender reported as committed, then the 4 appended on resuming.
    assert len(dataset) == (6 if after_rename else 3) + 4


def test_eio_from_a_background_fsync_is_reported_at_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than MAX_DEFERRED_FILES sealed files are synced on a worker thread; its failure
    fails the next commit, and the failed file is never synced again."""
    path = tmp_path / "ds"
    writer = ms.create(path, fields=SMALL, shard_bytes=SMALL_ROW_BYTES)  # 1-row shards
    writer.extend(small_rows(0, 2))
    writer.commit()
    spy = FsyncSpy(lambda p: p.endswith("-00000003.x.npy"))
    monkeypatch.setattr(os, "fsync", spy)
    writer.extend(small_rows(2, 40))  # 80 sealed files: the oldest go to the worker thread
    with pytest.raises(WriteFailedError) as caught:
        writer.commit()
    assert caught.value.errno == errno.EIO
    writer.close()
    gc.collect()
    failed_path, thread = spy.failed_call
    assert thread.startswith("memshard-fsync"), thread
    assert [call for call in spy.calls if call[0] == failed_path] == [(failed_path, thread)]
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)
    assert len(ms.open(path)) == 2
    assert descriptors_under(path) == []
    with ms.append(path) as again:
        again.extend(small_rows(2, 3))
    assert rows_are_correct(ms.open(path))
    assert leftovers(path) == set()


def test_eio_from_the_manifest_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds"
    writer = ms.create(path, fields=SMALL, shard_bytes=4 * SMALL_ROW_BYTES)
    writer.extend(small_rows(0, 3))
    writer.commit()
    real_replace = os.replace
    renames: list[str] = []

    def failing_replace(source: Any, target: Any, **kw: Any) -> None:
        renames.append(os.fspath(target))
        if os.fspath(target).endswith(MANIFEST_NAME):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, target, **kw)

    monkeypatch.setattr(os, "replace", failing_replace)
    spy = FsyncSpy(lambda p: False)
    monkeypatch.setattr(os, "fsync", spy)
    writer.extend(small_rows(3, 3))
    with pytest.raises(WriteFailedError) as caught:
        writer.commit()
    assert caught.value.errno == errno.EIO
    assert str(path) in str(caught.value)
    calls = len(spy.calls)
    with pytest.raises(AppenderClosedError):
        writer.commit()
    writer.close()
    assert len(spy.calls) == calls  # nothing synced after the failure
    assert renames == [str(path / MANIFEST_NAME)]  # and no second rename
    monkeypatch.undo()

    dataset = ms.open(path)
    assert len(dataset) == 3
    assert rows_are_correct(dataset)
    assert any(name.startswith(MANIFEST_TEMP_PREFIX) for name in os.listdir(path))  # ignored
    with ms.append(path) as again:
        again.extend(small_rows(3, 2))
    assert len(ms.open(path)) == 5
    assert leftovers(path) == set()


# -- ragged fields: a file size limit, a full tmpfs, failing writes and fsyncs -------------------
RAGGED_COMMITTED_BEFORE_LIMIT = 8


def child_ragged_file_size_limit(path: str, where: str) -> dict[str, Any]:
    """Commit 8 rows of :data:`RAGGED`, then pass ``RLIMIT_FSIZE`` with a values file (rows of
    1000 tokens, 4 KB) at ``commit`` (buffered rows) or in ``extend`` (a batch larger than the
    write buffer), or with the offsets files (``offsets``: 10,000 empty rows)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, hard))
    writer = ms.append(path)
    writer.extend(big_ragged_rows(0, RAGGED_COMMITTED_BEFORE_LIMIT))
    writer.commit()
    start = RAGGED_COMMITTED_BEFORE_LIMIT
    batch = {
        "commit": lambda: big_ragged_rows(start, 16),
        "extend": lambda: big_ragged_rows(start, 300),
        "offsets": lambda: ragged_rows(start, 10_000, tokens=0),
    }[where]()
    report: dict[str, Any] = {"extend": outcome(lambda: writer.extend(batch))}
    report["commit"] = outcome(writer.commit)
    report["extend_after"] = outcome(lambda: writer.extend(big_ragged_rows(start, 1)))
    report["close"] = outcome(writer.close)
    report["committed_rows"] = writer.committed_rows
    report["descriptors_left"] = descriptors_under(path)
    dataset = ms.open(path)
    report["rows_seen"] = len(dataset)
    report["rows_correct"] = ragged_rows_are_correct(dataset, tokens=1000)
    return report


@pytest.mark.parametrize("where", ["commit", "extend", "offsets"])
def test_file_size_limit_with_ragged_fields(tmp_path: Path, where: str) -> None:
    path = tmp_path / "ds"
    ms.create(path, fields=RAGGED, shard_bytes=4 << 20).close()
    report = run_child("ragged_file_size_limit", str(path), where)

    failed = report["extend"] if where == "extend" else report["commit"]
    assert failed["error"] == "WriteFailedError", report
    assert failed["errno"] == errno.EFBIG
    assert str(path) in failed["message"]
    if where == "commit":
        assert report["extend"]["error"] is None  # buffered, nothing written yet
    if where == "extend":
        assert report["commit"]["error"] == "AppenderClosedError"
    assert report["extend_after"]["error"] == "AppenderClosedError"
    assert "failed earlier" in report["extend_after"]["message"]
    assert report["close"]["error"] is None
    assert report["committed_rows"] == RAGGED_COMMITTED_BEFORE_LIMIT
    assert report["rows_seen"] == RAGGED_COMMITTED_BEFORE_LIMIT
    assert report["rows_correct"]
    assert report["descriptors_left"] == []

    dataset = ms.open(path)
    assert len(dataset) == RAGGED_COMMITTED_BEFORE_LIMIT
    assert dataset.verify().ok
    with ms.append(path) as writer:
        writer.extend(big_ragged_rows(writer.rows, 12))
    dataset = ms.open(path)
    assert len(dataset) == RAGGED_COMMITTED_BEFORE_LIMIT + 12
    assert ragged_rows_are_correct(dataset, tokens=1000)
    assert dataset.verify().ok
    assert leftovers(path) == set()


def test_full_tmpfs_with_ragged_fields(tmp_path: Path) -> None:
    report = run_in_private_mount_namespace("full_tmpfs", str(tmp_path / "mnt"), "ragged")
    failure = report["failure"]
    assert failure["error"] == "WriteFailedError", failure
    assert failure["errno"] == errno.ENOSPC
    assert str(tmp_path / "mnt" / "ds") in failure["message"]
    assert report["descriptors_at_failure"] == []
    assert report["append_at_failure"] == {"error": None, "value": None}
    assert report["commit_after"]["error"] == "AppenderClosedError"
    assert report["close"]["error"] is None
    committed = report["committed_rows"]
    assert report["sealed_shards"] >= 1  # shards rolled on size before the disk filled
    assert report["rows_seen"] == committed
    assert report["rows_correct"]
    assert report["verify_ok"]
    assert report["descriptors_left"] == []
    assert report["resume"] == {"error": None, "value": committed}
    assert report["rows_after_resume"] == committed + 20
    assert report["rows_correct_after_resume"]
    assert report["verify_ok_after_resume"]
    assert report["leftovers"] == []


#: Where writing a dataset of :data:`RAGGED` fails (200-byte shards: rows 0-2, 3-5, 6-8, 9),
#: and how many rows are committed by then.
RAGGED_ENOSPC_AT: dict[str, tuple[str, int]] = {
    "offsets data, flushed as the shard is sealed": ("-00000001.tokens.offsets.npy", 5),
    "values header of a new shard": ("-00000003.strokes.npy", 7),
    "offsets header of a new shard": ("-00000003.strokes.offsets.npy", 7),
}


@pytest.mark.parametrize("where", list(RAGGED_ENOSPC_AT))
def test_enospc_from_write_of_ragged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "ds"
    writer = ms.create(path, fields=RAGGED, shard_bytes=200)
    writer.extend(ragged_rows(0, 5))  # shard 0 sealed, shard 1 holds 2 rows
    writer.commit()
    suffix, committed = RAGGED_ENOSPC_AT[where]
    fail_writes(monkeypatch, lambda fd: fd_path(fd).endswith(suffix))

    def write() -> None:
        writer.extend(ragged_rows(5, 2))  # fills and seals shard 1, starts shard 2
        writer.commit()
        writer.extend(ragged_rows(7, 3))  # fills shard 2, starts shard 3
        writer.commit()

    with pytest.raises(WriteFailedError) as caught:
        write()
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"[Errno {errno.ENOSPC}] {path}: write failed")
    # At once, while the error (and the frames of the failed seal) live: no descriptor.
    assert descriptors_under(path) == []
    with pytest.raises(AppenderClosedError, match="failed earlier"):
        writer.commit()
    assert writer.committed_rows == committed
    writer.close()
    monkeypatch.undo()

    dataset = ms.open(path)
    assert len(dataset) == committed
    assert ragged_rows_are_correct(dataset)
    assert dataset.verify().ok
    with ms.append(path) as again:
        again.extend(ragged_rows(committed, 9))
    dataset = ms.open(path)
    assert len(dataset) == committed + 9
    assert ragged_rows_are_correct(dataset)
    assert leftovers(path) == set()
    assert descriptors_under(path) == []


RAGGED_FSYNC_TARGETS = {
    "sealed offsets file (deferred)": "-00000000.tokens.offsets.npy",
    "unsealed values file": "-00000001.tokens.npy",
    "unsealed offsets file": "-00000001.strokes.offsets.npy",
}


@pytest.mark.parametrize("target", list(RAGGED_FSYNC_TARGETS))
def test_eio_from_fsync_of_ragged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    path = tmp_path / "ds"
    writer = ms.create(path, fields=RAGGED, shard_bytes=200)
    writer.extend(ragged_rows(0, 3))
    writer.commit()  # shard 0 unsealed, 3 rows
    writer.extend(ragged_rows(3, 3))  # seals shard 0 (fsync deferred), shard 1 holds 3 rows
    spy = FsyncSpy(lambda p: p.endswith(RAGGED_FSYNC_TARGETS[target]))
    monkeypatch.setattr(os, "fsync", spy)
    with pytest.raises(WriteFailedError) as caught:
        writer.commit()
    assert caught.value.errno == errno.EIO
    assert not isinstance(caught.value, CommitNotDurableError)
    assert f"{path}: write failed" in str(caught.value)
    assert writer.committed_rows == 3
    assert spy.failed_call
    with pytest.raises(AppenderClosedError, match=r"failed earlier"):
        writer.commit()
    writer.close()
    gc.collect()
    assert spy.after_failure() == [], "fsync was called again after it failed"
    assert descriptors_under(path) == []
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)

    dataset = ms.open(path)
    assert len(dataset) == 3
    assert ragged_rows_are_correct(dataset)
    with ms.append(path) as again:
        again.extend(ragged_rows(3, 4))
    dataset = ms.open(path)
    assert len(dataset) == 7
    assert ragged_rows_are_correct(dataset)
    assert dataset.verify().ok
    assert leftovers(path) == set()


def test_short_writes_of_ragged_files_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_write(fd: int, data: Any) -> int:
        return REAL_WRITE(fd, memoryview(data)[:1000])

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return REAL_PWRITE(fd, memoryview(data)[:1000], offset)

    monkeypatch.setattr(os, "write", short_write)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    path = tmp_path / "ds"
    with ms.create(path, fields=RAGGED, shard_bytes=1 << 20) as writer:
        writer.extend(big_ragged_rows(0, 300))  # larger than the write buffer: written directly
        writer.commit()
        writer.extend(big_ragged_rows(300, 7))
    monkeypatch.undo()
    dataset = ms.open(path)
    assert len(dataset) == 307
    assert len(dataset.shards) > 1  # rolled on size
    assert ragged_rows_are_correct(dataset, tokens=1000)
    assert dataset.verify().ok


def test_a_failed_part_writer_of_ragged_fields_leaves_nothing_once_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in a part's offsets file: a typed error at once, the dataset unchanged, and
    discard_parts removes every file the part left (its offsets files too)."""
    path = tmp_path / "ds"
    with ms.create(path, fields=RAGGED, shard_bytes=200) as writer:
        writer.extend(ragged_rows(0, 4))
    fail_writes(monkeypatch, lambda fd: fd_path(fd).endswith("-00000001.strokes.offsets.npy"))
    part = ms.write_part(path)
    with pytest.raises(WriteFailedError) as caught:
        part.extend(ragged_rows(4, 10))  # 200-byte shards: shard 1 is sealed meanwhile
    assert caught.value.errno == errno.ENOSPC
    assert f"{path}: part {part.id}: write failed" in str(caught.value)
    monkeypatch.undo()
    part._release()  # as if its process had died: files stay, the lock is free
    assert any(name.startswith("p-") for name in os.listdir(path / SHARDS_DIR))
    assert ms.discard_parts(path) == [part.id]
    assert not any(name.startswith("p-") for name in os.listdir(path / SHARDS_DIR))
    dataset = ms.open(path)
    assert len(dataset) == 4
    assert ragged_rows_are_correct(dataset)
    assert leftovers(path) == set()


# -- compressed fields: a full tmpfs, failing writes and fsyncs ---------------------------------
def test_full_tmpfs_with_compressed_fields(tmp_path: Path) -> None:
    """A real ENOSPC while frames and block ends are written: the committed rows decompress
    right, verify passes, and writing resumes once space is freed."""
    report = run_in_private_mount_namespace("full_tmpfs", str(tmp_path / "mnt"), "compressed")
    failure = report["failure"]
    assert failure["error"] == "WriteFailedError", failure
    assert failure["errno"] == errno.ENOSPC
    assert str(tmp_path / "mnt" / "ds") in failure["message"]
    assert report["descriptors_at_failure"] == []
    assert report["append_at_failure"] == {"error": None, "value": None}
    assert report["commit_after"]["error"] == "AppenderClosedError"
    assert report["close"]["error"] is None
    committed = report["committed_rows"]
    assert report["sealed_shards"] >= 1  # shards rolled on size before the disk filled
    assert report["rows_seen"] == committed
    assert report["rows_correct"]
    assert report["verify_ok"]
    assert report["descriptors_left"] == []
    assert report["resume"] == {"error": None, "value": committed}
    assert report["rows_after_resume"] == committed + 20
    assert report["rows_correct_after_resume"]
    assert report["verify_ok_after_resume"]
    assert report["leftovers"] == []


#: Shards of :data:`COMPRESSED` rolled at 2400 bytes hold 7 rows: the script below commits
#: rows 0-4 (shard 0, a block of 4 and one of 1), rows 5-8 (seals shard 0 with a block of
#: rows 5-6; shard 1 starts with a block of 7-8), then 9-14 (shard 1 sealed, shard 2 starts).
COMPRESSED_SHARD_BYTES = 2400
#: Where writing fails, and how many rows are committed by then.
COMPRESSED_ENOSPC_AT: dict[str, tuple[str, int]] = {
    "frames of a block written by a commit": ("-00000000.img.npy", 5),
    "block ends of a new shard": ("-00000001.img.offsets.npy", 5),
    "frames of a ragged field, a shard later": ("-00000002.codes.npy", 9),
    "block and element ends, a shard later": ("-00000002.codes.offsets.npy", 9),
}


def _write_compressed_rounds(writer: ms.Appender) -> None:
    for start, count in ((5, 4), (9, 6)):
        writer.extend(compressed_rows(start, count))
        writer.commit()


@pytest.mark.parametrize("where", list(COMPRESSED_ENOSPC_AT))
def test_enospc_from_write_of_compressed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "ds"
    writer = ms.create(path, fields=COMPRESSED, shard_bytes=COMPRESSED_SHARD_BYTES)
    writer.extend(compressed_rows(0, 5))
    writer.commit()  # a block of 4 rows and one of 1 (written by the commit)
    suffix, committed = COMPRESSED_ENOSPC_AT[where]
    fail_writes(monkeypatch, lambda fd: fd_path(fd).endswith(suffix))
    with pytest.raises(WriteFailedError) as caught:
        _write_compressed_rounds(writer)
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"[Errno {errno.ENOSPC}] {path}: write failed")
    assert descriptors_under(path) == []
    with pytest.raises(AppenderClosedError, match="failed earlier"):
        writer.commit()
    assert writer.committed_rows == committed
    writer.close()
    monkeypatch.undo()

    dataset = ms.open(path)
    assert len(dataset) == committed
    assert compressed_rows_are_correct(dataset)
    assert dataset.verify().ok
    with ms.append(path) as again:  # cuts the unsealed shard's frames back, new blocks after
        again.extend(compressed_rows(committed, 9))
    dataset = ms.open(path)
    assert len(dataset) == committed + 9
    assert compressed_rows_are_correct(dataset)
    assert dataset.verify().ok
    assert leftovers(path) == set()
    assert descriptors_under(path) == []


COMPRESSED_FSYNC_TARGETS = {
    "sealed frames (deferred)": "-00000000.img.npy",
    "sealed block and element ends (deferred)": "-00000000.codes.offsets.npy",
    "unsealed block ends": "-00000001.img.offsets.npy",
    "unsealed frames of a ragged field": "-00000001.codes.npy",
}


@pytest.mark.parametrize("target", list(COMPRESSED_FSYNC_TARGETS))
def test_eio_from_fsync_of_compressed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    path = tmp_path / "ds"
    writer = ms.create(path, fields=COMPRESSED, shard_bytes=COMPRESSED_SHARD_BYTES)
    writer.extend(compressed_rows(0, 5))
    writer.commit()  # shard 0 unsealed, 5 rows
    writer.extend(compressed_rows(5, 4))  # seals shard 0 (fsync deferred), shard 1: 2 rows
    spy = FsyncSpy(lambda p: p.endswith(COMPRESSED_FSYNC_TARGETS[target]))
    monkeypatch.setattr(os, "fsync", spy)
    with pytest.raises(WriteFailedError) as caught:
        writer.commit()
    assert caught.value.errno == errno.EIO
    assert not isinstance(caught.value, CommitNotDurableError)
    assert writer.committed_rows == 5
    assert spy.failed_call
    writer.close()
    gc.collect()
    assert spy.after_failure() == [], "fsync was called again after it failed"
    assert descriptors_under(path) == []
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)

    dataset = ms.open(path)
    assert len(dataset) == 5
    assert compressed_rows_are_correct(dataset)
    with ms.append(path) as again:
        again.extend(compressed_rows(5, 10))
    dataset = ms.open(path)
    assert len(dataset) == 15
    assert compressed_rows_are_correct(dataset)
    assert dataset.verify().ok
    assert leftovers(path) == set()


def test_short_writes_of_compressed_files_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_write(fd: int, data: Any) -> int:
        return REAL_WRITE(fd, memoryview(data)[:100])

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return REAL_PWRITE(fd, memoryview(data)[:100], offset)

    monkeypatch.setattr(os, "write", short_write)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    path = tmp_path / "ds"
    with ms.create(path, fields=COMPRESSED, shard_bytes=64 << 10) as writer:
        writer.extend(big_compressed_rows(0, 40))
        writer.commit()
        writer.extend(big_compressed_rows(40, 7))
    monkeypatch.undo()
    dataset = ms.open(path)
    assert len(dataset) == 47
    assert len(dataset.shards) > 1
    assert compressed_rows_are_correct(dataset, tokens=1000)
    assert dataset.verify().ok


def test_a_failed_part_writer_of_compressed_fields_leaves_nothing_once_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in a part's frames: a typed error at once, the dataset unchanged, and
    discard_parts removes every file the part left (its block ends files too)."""
    path = tmp_path / "ds"
    with ms.create(path, fields=COMPRESSED, shard_bytes=COMPRESSED_SHARD_BYTES) as writer:
        writer.extend(compressed_rows(0, 4))
    fail_writes(monkeypatch, lambda fd: fd_path(fd).endswith("-00000001.img.npy"))
    part = ms.write_part(path)
    with pytest.raises(WriteFailedError) as caught:
        part.extend(compressed_rows(4, 20))  # shard 0 of the part is sealed meanwhile
    assert caught.value.errno == errno.ENOSPC
    assert f"{path}: part {part.id}: write failed" in str(caught.value)
    monkeypatch.undo()
    part._release()  # as if its process had died: files stay, the lock is free
    assert any(name.startswith("p-") for name in os.listdir(path / SHARDS_DIR))
    assert ms.discard_parts(path) == [part.id]
    assert not any(name.startswith("p-") for name in os.listdir(path / SHARDS_DIR))
    dataset = ms.open(path)
    assert len(dataset) == 4
    assert compressed_rows_are_correct(dataset)
    assert leftovers(path) == set()


# -- read-only file systems ---------------------------------------------------------------------
def _read_everything(path: str) -> dict[str, Any]:
    dataset = ms.open(path)
    rows = len(dataset)
    gathered = dataset.take(np.arange(rows)[::-1])
    return {
        "rows": rows,
        "correct": rows_are_correct(dataset)
        and bool((gathered["y"] == np.arange(rows)[::-1]).all()),
        "verify_ok": dataset.verify().ok,
        "refreshed": dataset.refresh(),
        "unpickled_rows": len(pickle.loads(pickle.dumps(dataset))),
    }


def _use_read_only(view: str, source: str, unlink: Callable[[str], None]) -> dict[str, Any]:
    """Read the dataset ``view/ds`` on a read-only file system and try to write to it, with
    the lock file present and then deleted (by ``unlink``, through the writable ``source``)."""
    dataset = os.path.join(view, "ds")
    report: dict[str, Any] = {}
    for lock in ("lock present", "lock deleted"):
        if lock == "lock deleted":
            unlink(os.path.join(source, "ds", LOCK_NAME))
        before = sorted(os.listdir(view)), sorted(os.listdir(dataset))
        report[lock] = {
            "read": outcome(lambda: _read_everything(dataset)),
            "append": outcome(lambda: ms.append(dataset).close()),
            "overwrite": outcome(lambda: ms.create(dataset, fields=SMALL, overwrite=True).close()),
            "create": outcome(lambda: ms.create(os.path.join(view, "new"), fields=SMALL).close()),
            "lock_exists": os.path.exists(os.path.join(source, "ds", LOCK_NAME)),
            "unchanged": before == (sorted(os.listdir(view)), sorted(os.listdir(dataset))),
        }
    return report


def child_read_only_bind_mount(source: str, view: str) -> dict[str, Any]:
    """Bind-mount directory ``source`` (holding the dataset ``ds``) read-only at ``view``."""
    os.makedirs(view, exist_ok=True)
    problem = mount("--bind", source, view) or mount("-o", "remount,ro,bind", view)
    if problem is not None:
        unmount(view)
        return {"skip": f"cannot make a read-only bind mount here: {problem}"}
    try:
        return _use_read_only(view, source, os.unlink)
    finally:
        unmount(view)


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def read_only_simulated(source: str) -> dict[str, Any]:
    """The same as the bind mount, with every write-like call failing with EROFS (for
    sandboxes where mounting is impossible)."""

    def refuse(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(args[0]))

    def open_read_only(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & WRITE_FLAGS:
            refuse(path)
        return REAL_OPEN(path, flags, *args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        for name in ("mkdir", "rename", "replace", "unlink", "rmdir", "truncate"):
            patch.setattr(os, name, refuse)
        patch.setattr(os, "open", open_read_only)
        return _use_read_only(source, source, REAL_UNLINK)


@pytest.fixture(scope="module", params=["bind mount", "simulated"])
def read_only(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """(report, the directory that is read-only) for a dataset ``ds`` of 10 rows in it."""
    source = tmp_path_factory.mktemp("readonly") / "data"
    with ms.create(source / "ds", fields=SMALL, shard_bytes=4 * SMALL_ROW_BYTES) as writer:
        writer.extend(small_rows(0, 10))
    if request.param == "simulated":
        return read_only_simulated(str(source)), source
    view = source.parent / "view"
    return run_in_private_mount_namespace("read_only_bind_mount", str(source), str(view)), view


LOCK_STATES = ["lock present", "lock deleted"]


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """10 rows of :data:`SMALL` in 4-row shards, closed."""
    path = tmp_path / "ds"
    with ms.create(path, fields=SMALL, shard_bytes=4 * SMALL_ROW_BYTES) as writer:
        writer.extend(small_rows(0, 10))
    return path


@pytest.mark.parametrize("lock", LOCK_STATES)
def test_read_only_file_system_reads(read_only: tuple[dict[str, Any], Path], lock: str) -> None:
    """Readers need no lock file and no write permission."""
    report = read_only[0][lock]
    assert report["read"] == {
        "error": None,
        "value": {
            "rows": 10,
            "correct": True,
            "verify_ok": True,
            "refreshed": False,
            "unpickled_rows": 10,
        },
    }
    assert report["lock_exists"] is (lock == "lock present")
    assert report["unchanged"]


@pytest.mark.parametrize("lock", LOCK_STATES)
def test_read_only_file_system_refuses_append(
    read_only: tuple[dict[str, Any], Path], lock: str
) -> None:
    report, view = read_only[0][lock], read_only[1]
    error = report["append"]
    assert error["error"] == "WriteFailedError", error
    assert error["errno"] == errno.EROFS
    assert str(view / "ds") in error["message"]
    assert report["unchanged"]
    # Last: the message names the lock file that could not be opened.
    assert str(view / "ds" / LOCK_NAME) in error["message"], error["message"]


@pytest.mark.parametrize("lock", LOCK_STATES)
@pytest.mark.parametrize("attempt", ["overwrite", "create"])
def test_read_only_file_system_refuses_create(
    read_only: tuple[dict[str, Any], Path], lock: str, attempt: str
) -> None:
    """``create`` where nothing can be written: a typed error naming the path, not a bare
    OSError from the first system call that failed."""
    report, view = read_only[0][lock], read_only[1]
    error = report[attempt]
    target = view / ("ds" if attempt == "overwrite" else "new")
    assert report["unchanged"]
    assert error["errno"] == errno.EROFS, error
    assert error["error"] == "WriteFailedError", error
    assert str(target) in error["message"]


def test_readers_never_create_the_lock_or_open_anything_for_writing(
    small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.unlink(small_dataset / LOCK_NAME)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in small_dataset.rglob("*")}

    before = snapshot()
    opened: list[tuple[str, int]] = []

    def recording_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        opened.append((os.fspath(path), flags))
        return REAL_OPEN(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", recording_open)
    dataset = ms.open(small_dataset)
    assert rows_are_correct(dataset)
    dataset.take([9, 0, 4])
    dataset.prefetch([1, 2])
    list(dataset["y"])
    assert dataset.verify().ok
    assert not dataset.refresh()
    assert len(pickle.loads(pickle.dumps(dataset["x"]))) == 10
    monkeypatch.undo()
    assert opened, "the reader opened nothing through os.open"
    assert [(p, f) for p, f in opened if f & WRITE_FLAGS] == []
    assert not (small_dataset / LOCK_NAME).exists()
    assert snapshot() == before


# -- too many open files ------------------------------------------------------------------------
#: Several hundred shards. "own segments": 3-row shards of 12 + 8 bytes a row, each mapped on
#: its own. "back to back": 2-row shards of page-sized rows, mapped back to back as one segment.
LAYOUTS = {
    "own segments": ({"x": ("float32", (3,)), "y": ("int64", ())}, 3 * 20, 900),
    "back to back": ({"x": ("float32", PAGE_ROW), "y": ("int64", ())}, 2 * (4096 + 8), 600),
}
DESCRIPTOR_LIMIT = 64


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = {}
    with no_fsync():
        for name, (fields, shard_bytes, rows) in LAYOUTS.items():
            path = tmp_path_factory.mktemp("many") / "ds"
            with ms.create(path, fields=fields, shard_bytes=shard_bytes) as writer:
                index = np.arange(rows)
                shape = (rows, *fields["x"][1])
                x = np.broadcast_to(index.reshape(-1, *[1] * len(shape[1:])), shape)
                writer.extend({"x": x.astype(np.float32), "y": index})
            assert len(ms.open(path).shards) == 300
            paths[name] = path
    return paths


def child_low_descriptor_limit(path: str, limit: str) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(limit), hard))
    dataset = ms.open(path)
    rows = len(dataset)
    rng = np.random.default_rng(0)

    def read_all() -> int:
        checked = 0
        assert rows_are_correct(dataset)
        checked += rows
        for _ in range(20):
            index = rng.integers(0, rows, 64)
            batch = dataset.take(index)
            assert (batch["y"] == index).all()
            assert (batch["x"].reshape(64, -1) == index[:, None]).all()
            assert (dataset["x"][index].reshape(64, -1) == index[:, None]).all()
            checked += 64
        for row in range(0, rows, 7):
            assert (dataset["x"][row] == row).all()
        return checked

    verified = outcome(lambda: dataset.verify().ok)  # one file at a time
    return {
        "verify": verified,
        "read": outcome(read_all),
        "shards": len(dataset.shards),
        "memory_areas": mappings.CACHE.memory_areas,
    }


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hundreds_of_shards_read_under_a_low_descriptor_limit(
    many_shards: dict[str, Path], layout: str
) -> None:
    """Mapped shards keep no descriptor, so a process allowed 64 can read 300 shards."""
    report = run_child("low_descriptor_limit", str(many_shards[layout]), str(DESCRIPTOR_LIMIT))
    assert report["shards"] == 300
    assert report["verify"] == {"error": None, "value": True}
    assert report["read"]["error"] is None, (
        f"reading {report['shards']} shards with RLIMIT_NOFILE={DESCRIPTOR_LIMIT}: {report['read']}"
    )
    assert report["read"]["value"] > LAYOUTS[layout][2]
    assert report["memory_areas"] >= 300


class MemoryAreaHog:
    """Takes every memory area (kernel mapping) the process may still create, but ``spare``:
    one reserved range of pages, every other page made readable, so that each split takes
    areas until the kernel refuses (``vm.max_map_count``). Machine-global settings are left
    alone; only this process runs out."""

    def __init__(self, spare: int) -> None:
        import ctypes
        import mmap

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mmap.restype = ctypes.c_void_p
        self.libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        ]  # fmt: skip
        self.libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        with open("/proc/sys/vm/max_map_count") as limit:
            pages = 2 * int(limit.read()) + 2
        self.page = mmap.PAGESIZE
        self.size = pages * self.page
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        no_access, readable = 0, mmap.PROT_READ
        self.base = self.libc.mmap(None, self.size, no_access, flags, -1, 0)
        assert self.base not in (None, ctypes.c_void_p(-1).value)
        split = 0
        while self.libc.mprotect(self.base + (2 * split + 1) * self.page, self.page, readable) == 0:
            split += 1
        assert ctypes.get_errno() == errno.ENOMEM
        for undo in range(split - 1, split - 1 - spare // 2, -1):  # 2 areas each
            self.libc.mprotect(self.base + (2 * undo + 1) * self.page, self.page, no_access)

    def release(self) -> None:
        self.libc.munmap(self.base, self.size)


def child_no_free_memory_areas(path: str) -> dict[str, Any]:
    """Read every row of a 300-shard dataset one at a time, holding each, with room for only
    a few more mappings: the kernel refuses to map after a few shards (``ENOMEM``)."""
    dataset = ms.open(path)
    unmapped = dataset.shards[-1]
    hog = MemoryAreaHog(spare=48)
    listed = outcome(lambda: list(dataset["x"]))
    direct = outcome(
        lambda: mappings.map_segment(
            path,
            dataset.manifest.fields["y"],
            [
                mappings.SegmentFile(
                    file=unmapped.files["y"],
                    manifest_rows=unmapped.rows,
                    sealed=True,
                    rows=unmapped.rows,
                )
            ],
        )
    )
    hog.release()
    report: dict[str, Any] = {"direct": direct, "shard_file": unmapped.files["y"].path}
    if listed["error"] is None:
        rows = listed["value"]
        report["listed"] = {"error": None, "value": len(rows)}
        report["correct"] = bool((np.stack(rows)[:, 0] == np.arange(len(dataset))).all())
        with open("/proc/self/maps") as maps:
            report["mapped_files"] = sum(path in line for line in maps)
    else:
        report["listed"] = listed
    return report


def test_reads_copy_when_the_kernel_refuses_a_mapping(many_shards: dict[str, Path]) -> None:
    """A process out of memory areas (``vm.max_map_count``): rows that cannot be mapped are
    copied; mapping directly raises a typed error naming the file."""
    report = run_child("no_free_memory_areas", str(many_shards["own segments"]))
    assert report["listed"] == {"error": None, "value": 900}, report
    assert report["correct"]
    assert 0 < report["mapped_files"] < 300  # some rows were views, the rest copies
    direct = report["direct"]
    assert direct["error"] == "MappingLimitError", direct
    assert "ReadFailedError" in direct["bases"]
    assert "OSError" in direct["bases"]
    assert direct["errno"] == errno.ENOMEM
    assert report["shard_file"] in direct["message"]
    assert "vm.max_map_count" in direct["message"]


def child_no_free_descriptors(path: str) -> dict[str, Any]:
    dataset = ms.open(path)
    first = float(dataset["x"][0][0])  # maps shard 0
    last = len(dataset) - 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    hog = []
    with contextlib.suppress(OSError):
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    report: dict[str, Any] = {
        "unmapped_row": outcome(lambda: float(dataset["x"][last][0])),
        "unmapped_take": outcome(lambda: int(dataset.take([last])["y"][0])),
        "mapped_row": outcome(lambda: float(dataset["x"][0][0]) == first),
    }
    for fd in hog:
        os.close(fd)
    report["after"] = outcome(lambda: float(dataset["x"][last][0]))
    report["descriptors_left"] = descriptors_under(path)
    report["last"] = last
    report["shard_file"] = os.path.join(path, dataset.shards[-1].files["x"].path)
    return report


def test_no_free_descriptor_at_all_gives_a_typed_error(many_shards: dict[str, Path]) -> None:
    report = run_child("no_free_descriptors", str(many_shards["own segments"]))
    assert report["mapped_row"] == {"error": None, "value": True}  # needs no descriptor
    for key in ("unmapped_row", "unmapped_take"):
        error = report[key]
        assert error["typed"], error
        assert report["shard_file"] in error["message"], error
        assert "Too many open files" in error["message"]
    assert report["after"] == {"error": None, "value": float(report["last"])}
    assert report["descriptors_left"] == []
    # Last: running out of descriptors says nothing about the path's safety.
    for key in ("unmapped_row", "unmapped_take"):
        assert "UnsafePathError" not in report[key]["bases"], report[key]


def test_a_failed_segment_mapping_leaks_no_descriptor(tmp_path: Path) -> None:
    """A shard missing in the middle of a back-to-back segment: the files opened before it
    must be closed again."""
    path = tmp_path / "ds"
    with ms.create(path, fields={"x": ("float32", PAGE_ROW)}, shard_bytes=2 * 4096) as w:
        w.extend(page_rows(0, 20))
    dataset = ms.open(path)
    missing = path / dataset.shards[6].files["x"].path
    missing.unlink()
    for _ in range(3):
        with pytest.raises(ShardMissingError, match=str(missing)):
            dataset["x"][0]
    assert descriptors_under(path) == []


# -- shard files changed under an open reader ---------------------------------------------------
#: Shard 2 (rows 6-8) of a dataset of 3-row shards, damaged after the reader opened the
#: dataset and mapped shard 0, before it mapped shard 2.
DAMAGED_SHARD, DAMAGED_ROW = 2, 7


def _fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _directory(path: str) -> None:
    os.unlink(path)
    os.mkdir(path)


def _symlink(path: str) -> None:
    outside = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))), "copy.npy")
    shutil.copyfile(path, outside)
    os.unlink(path)
    os.symlink(outside, path)


def _truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) - 5)


DAMAGE: dict[str, tuple[Callable[[str], None], type[MemshardError]]] = {
    "deleted": (os.unlink, ShardMissingError),
    "truncated": (_truncate, ShardSizeError),
    "replaced by a directory": (_directory, ShardMissingError),
    "replaced by a symlink to a valid copy": (_symlink, UnsafePathError),
    "replaced by a FIFO": (_fifo, ShardMissingError),
}


def child_damage_under_reader(source: str, work: str) -> dict[str, Any]:
    """For each damage: copy ``source``, open it, map shard 0, damage shard 2, read."""
    report: dict[str, Any] = {}
    for number, (name, (damage, _)) in enumerate(DAMAGE.items()):
        path = os.path.join(work, str(number), "ds")
        shutil.copytree(source, path, symlinks=True)
        dataset = ms.open(path)
        first = dataset["x"][0].copy()
        target = os.path.join(path, dataset.shards[DAMAGED_SHARD].files["x"].path)
        damage(target)
        verify = dataset.verify()
        report[name] = {
            "file": target,
            **_reads_after_damage(dataset, first),
            "verify": [(p.path, p.error.__name__) for p in verify.problems],
        }
    report["alive"] = True
    return report


def _reads_after_damage(dataset: ms.Dataset, first: np.ndarray) -> dict[str, Any]:
    """What each read of ``dataset`` gives, whose row 0 held ``first`` when it was mapped."""
    return {
        "row": outcome(lambda: dataset["x"][DAMAGED_ROW].tolist()),
        "take": outcome(lambda: dataset.take([DAMAGED_ROW, 0])["x"].tolist()),
        "slice": outcome(lambda: dataset["x"][5:9].tolist()),
        "mapped": outcome(lambda: bool((dataset["x"][0] == first).all())),
        "other field": outcome(lambda: int(dataset["y"][DAMAGED_ROW])),
        "other shard": outcome(lambda: dataset["x"][9].tolist()),
    }


@pytest.fixture(scope="module")
def damage_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("damage")
    source = work / "source"
    writer = ms.create(source, fields=SMALL, shard_bytes=3 * SMALL_ROW_BYTES)
    writer.extend(small_rows(0, 10))
    writer.commit()
    writer.abort()  # shards 0-2 sealed, shard 3 (row 9) unsealed
    return run_child("damage_under_reader", str(source), str(work))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_shard_damaged_under_an_open_reader(damage_report: dict[str, Any], damage: str) -> None:
    assert damage_report["alive"]
    report = damage_report[damage]
    error_type = DAMAGE[damage][1].__name__
    for access in ("row", "take", "slice"):
        error = report[access]
        assert error["error"] == error_type, (access, error)
        assert error["message"].startswith(report["file"]), (access, error)
    assert report["mapped"] == {"error": None, "value": True}
    assert report["other field"] == {"error": None, "value": DAMAGED_ROW}
    assert report["other shard"] == {"error": None, "value": [9.0] * 4}
    assert report["verify"] == [[report["file"], error_type]]


def test_every_new_mapping_and_every_copy_checks_the_size_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 shards of 2 rows, each its own segment, with room for 2: a shard truncated after
    its mapping was dropped is refused when it is mapped again; one read by copy (the room
    held by views) is refused too. The message names the file, its size and the size needed."""
    cache = mappings.MappingCache(2 * mappings.segment_areas(1))
    monkeypatch.setattr(mappings, "CACHE", cache)
    monkeypatch.setattr(ms.reader, "CACHE", cache)
    path = tmp_path / "ds"
    with ms.create(path, fields={"x": ("float32", (3,))}, shard_bytes=2 * 12) as writer:
        writer.extend({"x": np.repeat(np.arange(24, dtype=np.float32)[:, None], 3, axis=1)})
    dataset = ms.open(path)
    assert len(dataset._snapshot.layouts["x"].parts) == 12

    def cut(shard: int) -> tuple[str, int, int]:
        file = dataset.shards[shard].files["x"]
        target = os.path.join(dataset.path, file.path)
        os.truncate(target, file.data_offset + 4)
        return target, file.data_offset + 4, file.data_offset + file.nbytes

    assert float(dataset["x"][0][0]) == 0.0  # shard 0 mapped, no view kept
    assert float(dataset["x"][2][0]) + float(dataset["x"][4][0]) == 6.0  # shard 0 unmapped
    target, size, needed = cut(0)
    message = f"{target}: file is {size} bytes, the manifest needs {needed} (truncated shard)"
    with pytest.raises(ShardSizeError) as raised:
        dataset["x"][1]
    assert str(raised.value) == message
    held = [dataset["x"][6], dataset["x"][8]]  # views fill the room: reads copy now
    assert cache.memory_areas == cache.capacity
    assert float(dataset["x"][10][0]) == 10.0
    target, size, needed = cut(7)
    message = f"{target}: file is {size} bytes, the manifest needs {needed} (truncated shard)"
    for read in (lambda: dataset["x"][15], lambda: dataset["x"][13:16], lambda: dataset.take([14])):
        with pytest.raises(ShardSizeError) as raised:
            read()
        assert str(raised.value) == message
    assert [float(view[0]) for view in held] == [6.0, 8.0]


def test_a_mapped_shard_deleted_under_the_reader_still_reads(small_dataset: Path) -> None:
    dataset = ms.open(small_dataset)
    assert dataset["x"][1][0] == 1  # maps shard 0
    (small_dataset / dataset.shards[0].files["x"].path).unlink()
    assert (dataset["x"][0:4] == np.arange(4)[:, None]).all()  # the mapping keeps the file
    mappings.CACHE.clear()  # mappings are shared by the readers of a process
    with pytest.raises(ShardMissingError):
        ms.open(small_dataset)["x"][0]  # a new one needs the file


def test_refresh_after_the_dataset_was_replaced(small_dataset: Path) -> None:
    dataset = ms.open(small_dataset)
    row = dataset["x"][5].copy()
    old_uuid = dataset.uuid
    with ms.create(small_dataset, fields=SMALL, overwrite=True) as writer:
        writer.extend(small_rows(0, 3))
    with pytest.raises(DatasetChangedError) as caught:
        dataset.refresh()
    message = str(caught.value)
    assert message.startswith(f"{small_dataset}: the dataset was replaced")
    assert old_uuid in message
    assert (dataset["x"][5] == row).all()  # the old rows stay readable through their mappings
    assert len(dataset) == 10
    with pytest.raises(DatasetChangedError):
        pickle.loads(pickle.dumps(dataset))


def test_refresh_after_the_manifest_went_back(small_dataset: Path) -> None:
    old = (small_dataset / MANIFEST_NAME).read_bytes()
    with ms.append(small_dataset) as writer:
        writer.extend(small_rows(10, 2))
    dataset = ms.open(small_dataset)
    assert len(dataset) == 12
    (small_dataset / "old.json").write_bytes(old)
    os.replace(small_dataset / "old.json", small_dataset / MANIFEST_NAME)
    with pytest.raises(DatasetChangedError, match=f"^{small_dataset}: the manifest went back"):
        dataset.refresh()


# -- child entry point --------------------------------------------------------------------------
CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "file_size_limit": child_file_size_limit,
    "ragged_file_size_limit": child_ragged_file_size_limit,
    "full_tmpfs": child_full_tmpfs,
    "read_only_bind_mount": child_read_only_bind_mount,
    "low_descriptor_limit": child_low_descriptor_limit,
    "no_free_descriptors": child_no_free_descriptors,
    "no_free_memory_areas": child_no_free_memory_areas,
    "damage_under_reader": child_damage_under_reader,
}

if __name__ == "__main__":
    print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])), flush=True)
