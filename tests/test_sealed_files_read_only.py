"""Sealed shard files are read-only: a writer clears their write permissions when it seals
them (0644 becomes 0444), so that a file readers map is not truncated or rewritten by mistake.

Root ignores file modes, so what the mode protects, and that every writer's own operations
still work on read-only files (resuming a shard sealed by a writer that died before its commit,
replacing a dataset, discarding parts), is checked in a child process that runs as the
unprivileged user "nobody" (uid 65534) when the tests run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms

REPO = Path(__file__).resolve().parent.parent
FIELDS = {"x": ("float32", (4,)), "y": ("int64", ())}
SHARD_ROWS = 4
NOBODY = 65534


def _rows(start: int, count: int) -> dict[str, np.ndarray]:
    """Rows ``start .. start + count``: ``x`` is all i, ``y`` is i."""
    index = np.arange(start, start + count)
    return {"x": np.repeat(index[:, None], 4, axis=1).astype(np.float32), "y": index}


def _modes(dataset: ms.Dataset) -> list[tuple[bool, int]]:
    """For each file of each shard: (sealed, permission bits)."""
    return [
        (shard.sealed, stat.S_IMODE(os.stat(os.path.join(dataset.path, file.path)).st_mode))
        for shard in dataset.shards
        for file in shard.files.values()
    ]


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _create(path: Path) -> ms.Appender:
    return ms.create(path, fields=FIELDS, shard_bytes=SHARD_ROWS * 24)


def test_the_appender_seals_files_read_only_and_leaves_the_open_shard_writable(
    tmp_path: Path, umask_022: None
) -> None:
    writer = _create(tmp_path / "ds")
    writer.extend(_rows(0, 10))
    writer.commit()
    modes = _modes(ms.open(tmp_path / "ds"))
    assert modes == [(True, 0o444)] * 4 + [(False, 0o644)] * 2
    writer.close()
    assert set(_modes(ms.open(tmp_path / "ds"))) == {(True, 0o444)}


def test_parts_and_conversions_seal_files_read_only(tmp_path: Path, umask_022: None) -> None:
    _create(tmp_path / "ds").close()
    with ms.write_part(tmp_path / "ds", key=0) as part:
        part.extend(_rows(0, 6))
    assert part.part is not None
    records = sorted((tmp_path / "ds" / "shards").iterdir())
    assert [stat.S_IMODE(path.stat().st_mode) for path in records] == [0o444] * 4
    ms.commit_parts(tmp_path / "ds", [part.part])
    assert set(_modes(ms.open(tmp_path / "ds"))) == {(True, 0o444)}
    converted = ms.from_numpy(_rows(0, 10), tmp_path / "converted", shard_bytes=SHARD_ROWS * 24)
    assert set(_modes(converted)) == {(True, 0o444)}


def test_sealing_keeps_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        with _create(tmp_path / "ds") as writer:
            writer.extend(_rows(0, 6))
            writer.commit()
            assert _modes(ms.open(tmp_path / "ds")) == [(True, 0o400)] * 2 + [(False, 0o600)] * 2
    finally:
        os.umask(previous)
    assert set(_modes(ms.open(tmp_path / "ds"))) == {(True, 0o400)}


# -- as an unprivileged user ---------------------------------------------------------------------
def _outcome(action: Any) -> str:
    try:
        action()
    except BaseException as exc:  # the child reports, the parent judges
        return type(exc).__name__
    return "ok"


def child_as_nobody(base: str) -> dict[str, Any]:
    """Everything a writer does to read-only sealed files, as "nobody" when started as root."""
    # A conversion imports modules lazily, and the standard library may be readable by root
    # only (here it lives under /root): import them all before dropping privileges.
    warm_up = os.path.join(base, "warm-up")
    ms.from_numpy(_rows(0, 3), warm_up)
    shutil.rmtree(warm_up)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    os.umask(0o022)
    report: dict[str, Any] = {"uid": os.geteuid()}
    path = os.path.join(base, "ds")
    writer = _create(Path(path))
    writer.extend(_rows(0, 6))
    writer.commit()  # shard 1 unsealed, 2 of 4 rows
    writer.extend(_rows(6, 2))  # fills shard 1, which is sealed (read-only) ...
    writer.abort()  # ... and never committed: the manifest still calls it unsealed
    dataset = ms.open(path)
    last = os.path.join(path, dataset.shards[-1].files["x"].path)
    sealed = os.path.join(path, dataset.shards[0].files["x"].path)
    report["sealed_uncommitted_mode"] = stat.S_IMODE(os.stat(last).st_mode)
    report["write_sealed"] = _outcome(lambda: open(sealed, "r+b").close())
    report["truncate_sealed"] = _outcome(lambda: os.truncate(sealed, 0))

    def resume() -> None:
        with ms.append(path) as again:
            again.extend(_rows(6, 4))

    report["resume"] = _outcome(resume)
    resumed = ms.open(path)
    report["rows"] = resumed["y"][:].tolist()
    report["modes"] = sorted(set(_modes(resumed)))
    report["overwrite"] = _outcome(lambda: ms.create(path, fields=FIELDS, overwrite=True).close())
    report["rows_after_overwrite"] = len(ms.open(path))

    def discard() -> list[str]:
        with ms.write_part(path, key=1) as part:
            part.extend(_rows(0, 6))
        return ms.discard_parts(path)

    report["discard"] = _outcome(discard)
    report["left_in_shards"] = sorted(os.listdir(os.path.join(path, "shards")))
    report["converted"] = _outcome(
        lambda: ms.from_numpy(_rows(0, 10), os.path.join(base, "c"), shard_bytes=96)
    )
    report["converted_again"] = _outcome(
        lambda: ms.from_numpy(_rows(0, 3), os.path.join(base, "c"), overwrite=True)
    )
    return report


def test_a_writer_without_privileges_still_resumes_replaces_and_discards() -> None:
    # Not tmp_path: pytest's base directory is private to the user running the tests.
    base = tempfile.mkdtemp(prefix="memshard-sealed-")
    try:
        os.chmod(base, 0o777)
        result = subprocess.run(
            [sys.executable, "-m", "tests.test_sealed_files_read_only", base],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(base)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["uid"] != 0
    assert report["sealed_uncommitted_mode"] == 0o444
    assert report["write_sealed"] == "PermissionError"
    assert report["truncate_sealed"] == "PermissionError"
    assert report["resume"] == "ok"
    assert report["rows"] == list(range(10))
    assert report["modes"] == [[True, 0o444]]
    assert report["overwrite"] == "ok"
    assert report["rows_after_overwrite"] == 0
    assert report["discard"] == "ok"
    assert report["left_in_shards"] == []
    assert report["converted"] == "ok"
    assert report["converted_again"] == "ok"


if __name__ == "__main__":
    print(json.dumps(child_as_nobody(sys.argv[1])), flush=True)
