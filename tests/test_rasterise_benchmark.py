"""The rasteriser benchmark (Pillow against numpy, per drawing) runs end to end in quick mode.

Checked on its JSON report: both candidates have a figure for every repeat, the images they
draw agree (the run's check) and the fastest is named. Which one is faster is read from the
output, never judged by a timed test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.rasterise import CANDIDATES
from tests.helpers import run_from_repo

pytestmark = pytest.mark.benchmark_smoke


def test_quick_run_measures_both_rasterisers(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "benchmarks.rasterise", "--quick",
               "--dir", str(tmp_path / "scratch"), "--json", str(report)]  # fmt: skip
    completed = run_from_repo(command)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    record = json.loads(report.read_text())
    assert (record["mode"], record["drawings"], record["size"]) == ("quick", 200, 256)
    assert set(record["ns_per_drawing"]) == set(CANDIDATES)
    for samples in record["samples"].values():
        assert len(samples) == record["repeats"] == 2
        assert all(value > 0 for value in samples)
    assert record["fastest"] in CANDIDATES
    assert record["agreement"]["min"] >= 0.6
    assert "checks passed: 1 of 1" in completed.stdout
    assert list((tmp_path / "scratch").iterdir()) == []
