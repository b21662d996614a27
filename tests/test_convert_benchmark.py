"""The conversion benchmark runs end to end in quick mode, so its code cannot rot.

Only that it runs and reports every figure is checked here: speed and memory goals are judged
by reading the benchmark's output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

SOURCES = ("contiguous", "chunked", "gzip")
#: Every row of the table, per source file, by key.
KEYS = {
    source: [
        f"{source}_h5py_read",
        f"{source}_from_hdf5_workers_1",
        f"{source}_from_hdf5_workers_2",
        f"{source}_peak_rss_workers_1",
        f"{source}_peak_rss_workers_2",
    ]
    for source in SOURCES
}
TABLE_COLUMNS = ["measurement", "result", "ratio", "goal", "met"]


def test_quick_conversion_benchmark_reports_every_figure(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.convert",
        "--quick",
        "--size-gib",
        "0.01",
        "--repeats",
        "1",
        "--dir",
        str(scratch),
        "--json",
        str(report_path),
    ]
    completed = run_from_repo(command)

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if "|" in line]
    assert rows[0] == TABLE_COLUMNS
    measurements = [row[0] for row in rows[2:]]
    for source in SOURCES:
        assert f"{source}: plain h5py `read_direct`, ~8 MiB chunk-aligned blocks" in measurements
        for workers in (1, 2):
            assert f"{source}: `from_hdf5(workers={workers})`" in measurements
            assert f"{source}: peak RSS of `from_hdf5(workers={workers})` process tree" in (
                measurements
            )
    assert any(measurement.startswith("disk: `os.write`") for measurement in measurements)
    assert len(measurements) == 5 * len(SOURCES) + 1
    assert "goals met:" in completed.stdout
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"

    report = json.loads(report_path.read_text())
    assert report["mode"] == "quick"
    assert list(report["sources"]) == list(SOURCES)
    for source, keys in KEYS.items():
        record = report["sources"][source]
        assert record["shards"] > 1, f"{source}: quick mode should span several shards"
        results = {result["key"]: result for result in record["results"]}
        assert list(results) == keys
        for key, result in results.items():
            assert result["value"] > 0, f"{key}: {result['value']}"
            assert result["met"] in (True, False, None)
        for workers in (1, 2):
            speed = results[f"{source}_from_hdf5_workers_{workers}"]
            assert speed["ratio"] > 0
            assert isinstance(speed["met"], bool)
            memory = results[f"{source}_peak_rss_workers_{workers}"]["details"]
            assert len(memory["workers"]) == (workers if workers > 1 else 0)
            assert memory["converter"] > 0
    assert report["disk"]["value"] > 0
