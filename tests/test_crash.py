"""A writer killed with SIGKILL at random moments never loses a committed row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

import memshard as ms
from tests.crash_writer import FIELDS, SHARD_BYTES, rows

REPO = Path(__file__).resolve().parent.parent
TRIALS = 30


def _run_until_killed(path: Path, seed: int, acks_before_kill: int) -> int:
    """Start a writer, kill it with SIGKILL after ``acks_before_kill`` acknowledged commits, and
    return the last acknowledged row count."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_writer", str(path), str(seed)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = int(child.stdout.readline().split()[1])
    for _ in range(acks_before_kill):
        acknowledged = int(child.stdout.readline().split()[1])
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return acknowledged


def _check_dataset(path: Path, acknowledged: int) -> int:
    ds = ms.open(path)
    assert len(ds) >= acknowledged
    expected = rows(0, len(ds))
    np.testing.assert_array_equal(ds["x"][:], expected["x"])
    np.testing.assert_array_equal(ds["y"][:], expected["y"])
    for shard in ds.shards:
        if shard.sealed:
            loaded = np.load(os.path.join(path, shard.files["y"].path), mmap_mode="r")
            np.testing.assert_array_equal(
                loaded, np.arange(shard.row_offset, shard.row_offset + shard.rows)
            )
    return len(ds)


def test_killed_writer_keeps_every_committed_row(tmp_path: Any) -> None:
    path = tmp_path / "d"
    ms.create(path, fields=FIELDS, shard_bytes=SHARD_BYTES).close()
    rng = np.random.default_rng(2026)
    committed = 0
    for trial in range(TRIALS):
        acknowledged = _run_until_killed(path, trial, int(rng.integers(0, 12)))
        assert acknowledged >= committed
        committed = _check_dataset(path, acknowledged)
    assert committed > 0
    with ms.append(path) as writer:
        writer.extend(rows(writer.rows, 5))
    assert _check_dataset(path, committed + 5) == committed + 5
    leftovers = set(os.listdir(path / "shards")) - {
        os.path.basename(f.path) for s in ms.open(path).shards for f in s.files.values()
    }
    assert leftovers == set()
