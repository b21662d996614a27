"""The checksum benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on its JSON report: every injected bit flip was detected (a correctness check:
the run exits with 1 otherwise), every speed figure is reported, and the run cleans up;
besides, that the markdown report is printed. Its speed goal is judged by reading the output,
never by a timed test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke


def test_quick_reliability_benchmark_detects_every_flip(tmp_path: Path) -> None:
    scratch, report_path = tmp_path / "scratch", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.reliability", "--quick", "--size-gib", "0.01",
        "--flips", "60", "--repeats", "1", "--dir", str(scratch), "--json", str(report_path),
    ]  # fmt: skip
    completed = run_from_repo(command)

    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    assert completed.stdout.startswith("# memshard checksum benchmark (quick mode)")
    report = json.loads(report_path.read_text())
    assert report["mode"] == "quick"
    assert report["flips"] == {
        region: {"injected": 20, "detected": 20} for region in ("manifest", "header", "data")
    }
    speed = report["speed"]
    assert speed["bytes"] == speed["rows"] * 3 * 64 * 64 * 4
    assert (speed["repeats"], speed["shards"] >= 1) == (1, True)
    for figure in ("verify", "read", "hash"):
        assert speed[f"{figure}_bytes_per_second"] > 0
