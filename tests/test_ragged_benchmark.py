"""The ragged-fields benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on the JSON report of one quick run (4,000 token sequences, 2,000 stroke arrays):
every format was written and read back right (the run's correctness checks), every
measurement has a figure for every candidate, each goal is judged from those figures, the
report says the page cache was warm, the markdown and JSON are written and the scratch folder
is empty afterwards. Speed goals are judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.ragged import GOALS, speed_ratio
from benchmarks.ragged_data import QUICK_STROKE_ROWS, QUICK_TOKEN_ROWS
from benchmarks.ragged_formats import FORMATS
from benchmarks.ragged_loaders import MODES
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

#: Warnings are errors, except torch's advice on machines with fewer CPUs than workers.
WARNINGS = "error,ignore:This DataLoader will create:UserWarning"
REPEATS = 2
NAMES = [fmt.name for fmt in FORMATS]
WORKLOADS = {"tokens": QUICK_TOKEN_ROWS, "strokes": QUICK_STROKE_ROWS}
RECORD_KEYS = {
    "mode", "machine", "seconds", "command", "rows", "repeats", "batch_size", "write_rows",
    "num_workers", "loader_batches", "page_cache", "workloads", "goals",
}  # fmt: skip
WORKLOAD_KEYS = {
    "workload", "elements", "value_bytes", "built", "cached", "row", "view", "gather",
    "gather_elements", "loaders", "append",
}  # fmt: skip
APPEND_KEYS = {
    "memshard extend", "f.write", "memshard extend + close", "f.write + fsync", "bytes",
}  # fmt: skip

QuickRun = tuple[str, dict[str, Any], Path]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One quick run: its stdout, its JSON report and its output folder; the scratch folder
    is empty afterwards."""
    tmp = tmp_path_factory.mktemp("ragged")
    scratch, out, report = tmp / "scratch", tmp / "out", tmp / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.ragged", "--quick",
        "--dir", str(scratch), "--out", str(out), "--json", str(report),
    ]  # fmt: skip
    completed = run_from_repo(command, warnings=WARNINGS)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(scratch.iterdir()) == [], "the formats were not removed"
    return completed.stdout, json.loads(report.read_text()), out


def test_quick_run_records_both_workloads(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert set(report) == RECORD_KEYS
    assert (report["mode"], report["rows"], report["repeats"]) == ("quick", WORKLOADS, REPEATS)
    assert report["command"] == "python -m benchmarks.ragged --quick"
    assert (report["batch_size"], report["num_workers"], report["page_cache"]) == (256, 2, "warm")
    assert list(report["workloads"]) == list(WORKLOADS)
    for name, record in report["workloads"].items():
        assert set(record) == WORKLOAD_KEYS, name
        assert record["workload"]["rows"] == WORKLOADS[name]
        assert record["elements"] > WORKLOADS[name], "every row holds at least one element"
        for fmt in NAMES:
            assert record["built"][fmt]["bytes"] >= record["value_bytes"], (name, fmt)
            assert 0 <= record["cached"][fmt] <= 1, (name, fmt)


def test_every_format_has_its_read_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for name, record in report["workloads"].items():
        for measurement in ("row", "gather"):
            assert list(record[measurement]) == NAMES, (name, measurement)
        assert list(record["view"]) == ["flat", "memshard"], name
        for measurement in ("row", "view", "gather"):
            for fmt, figure in record[measurement].items():
                assert len(figure["samples"]) == REPEATS, (name, measurement, fmt)
                assert min(figure["samples"]) <= figure["value"] <= max(figure["samples"])
                assert figure["value"] > 0, (name, measurement, fmt)
                assert figure["work"] >= 1, (name, measurement, fmt)
            assert record[measurement]["flat"]["work"] == record[measurement]["memshard"]["work"]


def test_every_loader_mode_and_the_append_are_measured(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for name, record in report["workloads"].items():
        assert list(record["loaders"]) == list(MODES), name
        for mode, figures in record["loaders"].items():
            assert set(figures) == {"flat", "memshard"}, (name, mode)
            for figure in figures.values():
                assert len(figure["samples"]) == REPEATS, (name, mode)
                assert figure["value"] > 0, (name, mode)
        append = record["append"]
        assert set(append) == APPEND_KEYS, name
        assert append["bytes"]["value"] == record["value_bytes"] + 8 * (WORKLOADS[name] + 1)
        assert all(append[key]["value"] > 0 for key in APPEND_KEYS), name


def test_each_goal_is_judged_on_the_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert len(report["goals"]) == len(GOALS) * len(WORKLOADS)
    for result in report["goals"]:
        record = report["workloads"][result["workload"]]
        figures: dict[str, Any] = {
            key: {fmt: _Figure(figure["value"]) for fmt, figure in value.items()}
            for key, value in record.items()
            if key in ("row", "gather", "append")
        }
        figures["loaders"] = {
            mode: {fmt: _Figure(figure["value"]) for fmt, figure in by_format.items()}
            for mode, by_format in record["loaders"].items()
        }
        ratio = speed_ratio(result["measurement"], figures, result["baseline"])
        assert result["ratio"] == pytest.approx(ratio)
        assert result["met"] is (result["ratio"] >= result["min_ratio"])


class _Figure:
    """A figure read back from the JSON (only its value)."""

    def __init__(self, value: float) -> None:
        self.value = value


def test_quick_run_prints_and_writes_the_report(quick_run: QuickRun) -> None:
    stdout, report, out = quick_run
    assert stdout.startswith("# memshard ragged fields (quick mode)")
    for text in (
        "page cache: WARM",
        "## tokens: 4,000 rows of int32[None]",
        "## strokes: 2,000 rows of int16[None, 3]",
        "## Goals",
        "## How each figure is measured",
        f"checks passed: {2 * (len(NAMES) + 1)} of {2 * (len(NAMES) + 1)}",
    ):
        assert text in stdout, text
    assert (out / "ragged.md").read_text().startswith(stdout.split("\n", 1)[0])
    assert json.loads((out / "ragged.json").read_text())["goals"] == report["goals"]
