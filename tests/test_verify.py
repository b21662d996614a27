"""``verify``: what a report says, and which damage it finds in which files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memshard.verify import VerifyReport
from tests.helpers import write_dataset


def _flip_last_data_byte(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        value = handle.read(1)[0]
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([value ^ 0xFF]))


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
