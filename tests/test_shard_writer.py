"""Shard files are written in pieces that end on 2 MiB file offsets (memshard.shardwriter).

The page cache of ext4 and xfs keeps each aligned 2 MiB written by one call in one 2 MiB folio,
so a writer hands the kernel only pieces that end on a multiple of ``HUGE_PAGE``; the rest of
an append waits in its buffer. What the tests pin, on real files:

- after each ``extend`` the file holds exactly the rows up to the last 2 MiB boundary they
  reach (or only the header), and past that nothing but reserved zeros;
- more than ``WRITE_BUFFER_BYTES`` waiting have their space reserved at once, so a file size
  limit or a full file system fails the ``extend`` itself; a file system without ``fallocate``
  gets the waiting bytes written at once instead;
- a commit, a seal or a part's close writes everything, and another process reads every
  committed row.
- on tmpfs, whose page sizes do not depend on the writes, a writer writes through instead:
  appends wait in the buffer up to ``WRITE_BUFFER_BYTES``, larger batches go out at once.

Children that need a file size limit or a mounted file system run as
``python -m tests.test_shard_writer CHILD ARGS...`` and print one JSON line.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard.layout import SHARDS_DIR
from memshard.npyheader import HUGE_PAGE
from memshard.shardwriter import (
    TMPFS_MAGIC,
    WRITE_BUFFER_BYTES,
    file_system_type,
    reserve_space,
)
from tests.helpers import REPO_ROOT

#: One uint8 field of 4000-byte rows: a row count rarely ends a 2 MiB piece by chance.
ROW_BYTES = 4000
FIELDS = {"x": ("uint8", (ROW_BYTES,))}
#: Where the rows start in a shard file of :data:`FIELDS`.
HEADER = 4096


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    """Rows ``start .. start + count``: row i is all ``i % 251 + 1``, never a zero byte, so
    the written part of a file is told from reserved zeros by its content."""
    values = (np.arange(start, start + count) % 251 + 1).astype(np.uint8)
    return {"x": np.ascontiguousarray(np.broadcast_to(values[:, None], (count, ROW_BYTES)))}


def expected_bytes(count: int) -> bytes:
    """The data bytes of rows ``0 .. count``."""
    return rows(0, count)["x"].tobytes()


def only_shard_file(root: Path) -> Path:
    """The one ``.npy`` shard file under ``root``."""
    (found,) = [path for path in (root / SHARDS_DIR).rglob("*.npy") if path.is_file()]
    return found


def fallocate_works(directory: Path) -> bool:
    """Whether the file system of ``directory`` reserves space with ``fallocate``."""
    probe = directory / "fallocate-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return reserve_space(fd, 0, 4096)
    finally:
        os.close(fd)
        probe.unlink()


def on_tmpfs(directory: Path) -> bool:
    fd = os.open(directory, os.O_RDONLY)
    try:
        return file_system_type(fd) == TMPFS_MAGIC
    finally:
        os.close(fd)


@dataclass
class Model:
    """What a writer of :data:`FIELDS` has written and reserved, step by step: in pieces
    ending on 2 MiB offsets (``aligned``), or written through (on tmpfs)."""

    aligned: bool
    reserves: bool
    rows: int = 0
    written: int = HEADER
    reserved: int = HEADER

    @classmethod
    def of(cls, directory: Path) -> Model:
        """The model of a writer in ``directory``."""
        return cls(aligned=not on_tmpfs(directory), reserves=fallocate_works(directory))

    def extend(self, count: int) -> None:
        self.rows += count
        stop = HEADER + self.rows * ROW_BYTES
        if self.aligned:
            self.written = max(self.written, stop - stop % HUGE_PAGE)
        if stop - max(self.written, self.reserved) > WRITE_BUFFER_BYTES:
            if self.aligned and self.reserves:
                self.reserved = stop
            else:
                self.written = stop

    def flush(self) -> None:
        self.written = HEADER + self.rows * ROW_BYTES

    @property
    def size(self) -> int:
        return max(self.written, self.reserved)


def check_file(path: Path, model: Model) -> None:
    """The file holds the model's rows up to what it has written, then zeros to its size."""
    content = path.read_bytes()
    assert len(content) == model.size, (len(content), model)
    written = content[HEADER : model.written]
    assert written == expected_bytes(model.rows)[: model.written - HEADER]
    assert content[model.written :].count(0) == model.size - model.written


#: Batches appended one after another, in rows of 4000 bytes; each ``None`` is a commit.
#: With the 4096-byte header, the waiting bytes after each step are: 400 KB (nothing written),
#: 707 KB past the first 2 MiB piece, 210 KB past 4 MiB, 2.0 MB (reserved), 40 KB more (within
#: the reservation), a piece to 6 MiB, then a 12 MB batch leaving 1.9 MB (reserved), a commit,
#: and batches after it that continue from an unaligned end.
STEPS = (100, 600, 400, 450, 10, 100, 3000, None, 300, 700)


def read_elsewhere(path: Path) -> tuple[int, bool]:
    """Rows of the dataset at ``path`` as another process sees them, and whether each is
    :func:`rows`' row."""
    code = (
        "import sys, numpy as np, memshard as ms\n"
        "from tests.test_shard_writer import rows\n"
        "data = ms.open(sys.argv[1])['x'][:]\n"
        "print(len(data), bool((data == rows(0, len(data))['x']).all()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    count, correct = done.stdout.split()
    return int(count), correct == "True"


def appender_steps(path: Path) -> None:
    """Run :data:`STEPS` through an appender of a new dataset at ``path``, checking its file
    against the :class:`Model` after each, and what another process reads after each commit."""
    model = Model.of(path.parent)
    writer = ms.create(path, FIELDS)
    for step in STEPS:
        if step is None:
            writer.commit()
            model.flush()
            assert read_elsewhere(path) == (model.rows, True)
        else:
            writer.extend(rows(model.rows, step))
            model.extend(step)
        check_file(only_shard_file(path), model)
    writer.close()
    model.flush()
    check_file(only_shard_file(path), model)
    assert read_elsewhere(path) == (model.rows, True)


def test_an_appender_writes_pieces_that_end_on_huge_page_offsets(tmp_path: Path) -> None:
    assert Model.of(tmp_path).aligned, "the test directory must not be on tmpfs"
    appender_steps(tmp_path / "ds")


def test_an_appender_writes_through_on_tmpfs(tmp_path: Path) -> None:
    """tmpfs gains nothing from aligned pieces: a writer there buffers up to 1 MiB, as all
    did before."""
    assert run_mounted("tmpfs-steps", tmp_path / "mnt") == {"failure": None}


def test_a_part_writer_writes_pieces_that_end_on_huge_page_offsets(tmp_path: Path) -> None:
    """A part writer starts writeback after each large batch; that must not write the
    buffer out early."""
    path = tmp_path / "ds"
    ms.create(path, FIELDS).close()
    model = Model.of(tmp_path)
    with ms.write_part(path) as part:
        for step in STEPS:
            if step is not None:
                part.extend(rows(model.rows, step))
                model.extend(step)
                check_file(only_shard_file(path), model)
    model.flush()
    check_file(only_shard_file(path), model)
    assert part.part is not None
    ms.commit_parts(path, [part.part], order="given")
    assert read_elsewhere(path) == (model.rows, True)


def test_rows_filling_a_shard_are_sealed_whole(tmp_path: Path) -> None:
    """A full shard is sealed with every row in it, whatever was waiting."""
    path = tmp_path / "ds"
    with ms.create(path, FIELDS, shard_bytes=2000 * ROW_BYTES) as writer:
        shard_rows = writer.manifest.shard_rows
        writer.extend(rows(0, shard_rows + 500))  # fills shard 0, 500 rows wait in shard 1
        first = min((path / "shards").iterdir())
        assert first.read_bytes()[HEADER:] == expected_bytes(shard_rows)
    assert [shard.rows for shard in ms.open(path).shards] == [shard_rows, 500]
    assert read_elsewhere(path) == (shard_rows + 500, True)


def test_short_writes_of_a_piece_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pwrite`` and ``pwritev`` may write fewer bytes than asked (signals, some file
    systems); the rest of a piece follows, also when the short write ends inside the buffer
    and the piece continues from the batch."""
    real_pwrite, real_pwritev = os.pwrite, os.pwritev

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, memoryview(data)[:300_000], offset)

    def short_pwritev(fd: int, buffers: list[Any], offset: int) -> int:
        return real_pwritev(fd, [memoryview(buffers[0])[:300_000]], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    monkeypatch.setattr(os, "pwritev", short_pwritev)
    path = tmp_path / "ds"
    with ms.create(path, FIELDS) as writer:
        for start, count in ((0, 100), (100, 2000), (2100, 7)):  # the second goes out in pieces
            writer.extend(rows(start, count))
    monkeypatch.undo()
    assert only_shard_file(path).read_bytes()[HEADER:] == expected_bytes(2107)
    assert read_elsewhere(path) == (2107, True)


# -- failing at once ---------------------------------------------------------------------------
def outcome(action: Callable[[], Any]) -> dict[str, Any]:
    """Run ``action``: its JSON-able value, or what it raised."""
    try:
        return {"error": None, "value": action()}
    except Exception as exc:  # reported to the parent, which asserts on it
        return {"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}


def fill_until_failure(path: str, batch: int) -> dict[str, Any]:
    """Create a dataset of :data:`FIELDS` at ``path``, commit 10 rows, then ``extend`` by
    ``batch`` rows until it fails; report where it failed and what is left."""
    writer = ms.create(path, FIELDS)
    writer.extend(rows(0, 10))
    writer.commit()
    report: dict[str, Any] = {"extends": 0}
    while True:
        failure = outcome(lambda: writer.extend(rows(writer.rows, batch)))
        if failure["error"] is not None:
            break
        report["extends"] += 1
    report["failure"] = failure
    report["commit_after"] = outcome(writer.commit)
    writer.close()
    report["committed_rows"] = writer.committed_rows
    report["rows_seen"] = len(ms.open(path))
    return report


def child_file_size_limit(path: str) -> dict[str, Any]:
    """Extend past ``RLIMIT_FSIZE`` (2.5 MiB): the first 2 MiB piece fits, the waiting rest
    does not."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5 * HUGE_PAGE // 4, hard))
    return fill_until_failure(path, 1000)


def child_mounted(kind: str, mountpoint: str) -> dict[str, Any]:
    """Mount a file system at ``mountpoint`` and write there: ``tmpfs`` (3 MiB, filled until
    a write fails), ``tmpfs-steps`` (64 MiB, :func:`appender_steps`) or ``ramfs`` (which has
    no ``fallocate``)."""
    os.makedirs(mountpoint, exist_ok=True)
    file_system, options = {
        "tmpfs": ("tmpfs", ["-o", "size=3m"]),
        "tmpfs-steps": ("tmpfs", ["-o", "size=64m"]),
        "ramfs": ("ramfs", []),
    }[kind]
    done = subprocess.run(
        ["mount", "-t", file_system, *options, f"memshard-{kind}", mountpoint],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        return {"cannot": done.stderr.strip() or "mount failed"}
    try:
        path = os.path.join(mountpoint, "ds")
        if kind == "tmpfs":
            return fill_until_failure(path, 1000)
        if kind == "tmpfs-steps":
            try:
                appender_steps(Path(path))
            except AssertionError:
                return {"failure": traceback.format_exc()}
            return {"failure": None}
        writer = ms.create(path, FIELDS)
        writer.extend(rows(0, 450))  # 1.8 MB waiting: no reservation, so written at once
        size = os.path.getsize(only_shard_file(Path(path)))
        writer.abort()
        return {"size": size, "reserves": fallocate_works(Path(mountpoint))}
    finally:
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


def run_child(*args: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.test_shard_writer", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def run_mounted(kind: str, mountpoint: Path) -> dict[str, Any]:
    """:func:`child_mounted` in a mount namespace of its own (its mount vanishes with it)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("mounting needs root and unshare(1), which this test environment provides")
    prefix = ("unshare", "-m", "--propagation", "private")
    report = run_child("mounted", kind, str(mountpoint), prefix=prefix)
    if "cannot" in report:
        pytest.fail(f"cannot mount a {kind} here: {report['cannot']}")
    return report


def check_failed_at_once(report: dict[str, Any], error: int) -> None:
    """One 4 MB extend succeeded at most; the next failed in ``extend`` with ``error``, and
    the appender kept its committed rows."""
    assert report["failure"] == {"error": "WriteFailedError", "errno": error}, report
    assert report["extends"] == 0, report  # the first extend over the limit failed
    assert report["commit_after"]["error"] == "AppenderClosedError"
    assert report["committed_rows"] == report["rows_seen"] == 10


def test_waiting_rows_past_the_file_size_limit_fail_the_extend(tmp_path: Path) -> None:
    check_failed_at_once(run_child("file_size_limit", str(tmp_path / "ds")), errno.EFBIG)


def test_waiting_rows_past_a_full_tmpfs_fail_the_extend(tmp_path: Path) -> None:
    check_failed_at_once(run_mounted("tmpfs", tmp_path / "mnt"), errno.ENOSPC)


def test_without_fallocate_waiting_rows_are_written_at_once(tmp_path: Path) -> None:
    """ramfs cannot reserve space: more than ``WRITE_BUFFER_BYTES`` waiting are written."""
    report = run_mounted("ramfs", tmp_path / "mnt")
    assert report == {"size": HEADER + 450 * ROW_BYTES, "reserves": False}


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "file_size_limit": child_file_size_limit,
    "mounted": child_mounted,
}


if __name__ == "__main__":
    print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])), flush=True)
