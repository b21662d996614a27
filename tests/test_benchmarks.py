"""The benchmark runs end to end in quick mode, so its code cannot rot.

Only that it runs and reports every figure is checked here: speed goals are judged by reading
the benchmark's output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import run_from_repo

#: Every measurement the report must hold, per workload.
MEASUREMENTS = {
    "images": {"extend_images", "extend_images_durable", "gather_images"},
    "vectors": {
        "gather_vectors",
        "single_row_vectors_ns",
        "single_row_vectors",
        "scan_vectors",
    },
}
TABLE_HEADER = "| measurement"
TABLE_COLUMNS = ["memshard", "baseline", "baseline name", "ratio", "goal", "met"]


def test_quick_benchmark_reports_every_measurement(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.core",
        "--quick",
        "--rows-images",
        "300",
        "--rows-vectors",
        "5000",
        "--repeats",
        "2",
        "--dir",
        str(scratch),
        "--json",
        str(report_path),
    ]
    completed = run_from_repo(command)

    assert completed.returncode == 0, completed.stderr
    header_lines = [line for line in completed.stdout.splitlines() if line.startswith(TABLE_HEADER)]
    assert len(header_lines) == len(MEASUREMENTS)
    for line in header_lines:
        assert [cell.strip() for cell in line.strip("|").split("|")][1:] == TABLE_COLUMNS
    assert "numpy" in completed.stdout
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"

    report = json.loads(report_path.read_text())
    assert report["mode"] == "quick"
    assert report["workloads"].keys() == MEASUREMENTS.keys()
    for name, keys in MEASUREMENTS.items():
        workload = report["workloads"][name]
        assert workload["shards"] > 1, f"{name}: quick mode should span several shards"
        results = {result["key"]: result for result in workload["results"]}
        assert results.keys() == keys
        for key, result in results.items():
            for figure in ("memshard_ns", "baseline_ns", "ratio", "nbytes"):
                assert result[figure] > 0, f"{name}/{key}: {figure} = {result[figure]}"
            assert isinstance(result["met"], bool)
