"""The conversion benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on its JSON report: every figure of every source file, the ratios and goals
computed from them, the memory of each process tree, and that the run cleans up (the run itself
checks every converted row and label); besides, that the markdown report is printed. Speed and
memory goals are judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.convert import MAX_RSS_BYTES, MIN_RATIO
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

SOURCES = ("contiguous", "chunked", "gzip")
ROW_BYTES = 3 * 64 * 64 * 4 + 8


def test_quick_conversion_benchmark_reports_every_figure(tmp_path: Path) -> None:
    scratch, report_path = tmp_path / "scratch", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.convert", "--quick", "--size-gib", "0.01",
        "--repeats", "1", "--dir", str(scratch), "--json", str(report_path),
    ]  # fmt: skip
    completed = run_from_repo(command)

    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    assert completed.stdout.startswith("# memshard conversion benchmark (quick mode)")
    report = json.loads(report_path.read_text())
    assert (report["mode"], report["repeats"]) == ("quick", 1)
    assert report["seconds"] > 0
    assert list(report["sources"]) == list(SOURCES)
    for source, record in report["sources"].items():
        assert record["data_bytes"] == record["rows"] * ROW_BYTES
        assert record["file_bytes"] > 0
        assert record["shards"] > 1, f"{source}: quick mode should span several shards"
        results = {result["key"]: result for result in record["results"]}
        read = results.pop(f"{source}_h5py_read")
        assert (read["unit"], read["ratio"], read["met"]) == ("B/s", None, None)
        assert read["value"] > 0
        for workers in (1, 2):
            speed = results.pop(f"{source}_from_hdf5_workers_{workers}")
            assert speed["value"] > 0
            assert speed["ratio"] == pytest.approx(speed["value"] / read["value"])
            assert speed["min_ratio"] == MIN_RATIO
            assert speed["met"] == (speed["ratio"] >= MIN_RATIO)
            assert len(speed["details"]["child_ns"]) == 1
            memory = results.pop(f"{source}_peak_rss_workers_{workers}")
            assert memory["unit"] == "bytes"
            details = memory["details"]
            assert len(details["workers"]) == (workers if workers > 1 else 0)
            assert details["converter"] > 0
            assert memory["value"] == details["converter"] + sum(details["workers"])
            assert memory["max_value"] == MAX_RSS_BYTES
            assert memory["met"] == (memory["value"] < MAX_RSS_BYTES)
        assert results == {}, "no other rows"
    disk = report["disk"]
    assert (disk["key"], disk["unit"], disk["met"]) == ("disk_write_fsync", "B/s", None)
    assert disk["value"] > 0
