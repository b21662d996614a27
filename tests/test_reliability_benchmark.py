"""The checksum benchmark runs end to end in quick mode, so its code cannot rot.

Its speed goal is judged from the benchmark's output, never by a timed test; what is checked
here is that every figure is reported and every injected bit flip was detected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke


def test_quick_reliability_benchmark_reports_every_figure(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.reliability", "--quick", "--size-gib", "0.01",
        "--flips", "60", "--repeats", "1", "--dir", str(tmp_path / "scratch"),
        "--json", str(report_path),
    ]  # fmt: skip
    result = run_from_repo(command)
    assert result.returncode in (0, 1), result.stderr  # 1: the speed goal was missed here
    for row in ("`ds.verify()`", "`preadv`", "xxh3 over RAM"):
        assert row in result.stdout
    for region in ("manifest", "header", "data"):
        assert f"single-byte flips in the {region} detected | 20 of 20 | all | yes" in (
            result.stdout
        )
    report = json.loads(report_path.read_text())
    assert report["flips"] == {
        region: {"injected": 20, "detected": 20} for region in ("manifest", "header", "data")
    }
    assert report["speed"]["verify_bytes_per_second"] > 0
    assert list((tmp_path / "scratch").iterdir()) == []
