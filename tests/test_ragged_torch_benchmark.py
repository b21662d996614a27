"""The ragged PyTorch benchmark runs end to end in quick mode, so its code cannot rot.

Checked on its JSON report: the padding waste of every batching, every loader candidate's
figures and the packed goal judged from them, the checks that each loader read the tokens it
was asked for, and that the run cleans up. Speed goals are judged by reading the output, never
by timed tests.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from benchmarks.ragged_torch import CANDIDATES, PACKED_GOAL, WINDOWS
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

ROWS, LENGTH_ROWS, BATCHES = 1500, 20_000, 4


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick run with tiny sizes: its stdout and its JSON report."""
    tmp_path = tmp_path_factory.mktemp("ragged-torch-benchmark")
    scratch, report_path = tmp_path / "scratch", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.ragged_torch", "--quick", "--repeats", "1",
        "--rows", str(ROWS), "--length-rows", str(LENGTH_ROWS), "--batches", str(BATCHES),
        "--dir", str(scratch), "--json", str(report_path),
    ]  # fmt: skip
    # Warnings are errors, except torch's advice on machines with fewer CPUs than workers.
    completed = run_from_repo(
        command, warnings="error,ignore:This DataLoader will create:UserWarning"
    )
    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    return completed.stdout, json.loads(report_path.read_text())


def test_quick_run_reports_the_padding_waste_of_each_batching(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    waste = report["sections"]["waste"]["details"]
    assert waste["rows"] == LENGTH_ROWS
    assert list(waste["waste"]) == ["random", *(f"window_{window}" for window in WINDOWS)]
    figures = list(waste["waste"].values())
    assert all(0 < figure < 1 for figure in figures)
    assert figures == sorted(figures, reverse=True), "larger windows waste less"


def test_quick_run_reports_every_loader_and_judges_the_packed_goal(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    assert (report["mode"], report["repeats"], report["num_workers"]) == ("quick", 1, 2)
    details = report["sections"]["loader"]["details"]
    assert (details["rows"], details["batches"]) == (ROWS, BATCHES)
    results = {result["key"]: result for result in details["results"]}
    assert list(results) == list(CANDIDATES)
    for key, result in results.items():
        assert result["tokens_per_s"] > 0, key
        assert result["batches_per_s"] > 0, key
        ratio = result["tokens_per_s"] / results["memmap"]["tokens_per_s"]
        assert result["ratio"] == pytest.approx(ratio), key
        padded = key in ("pad", "pad_grouped")
        assert (result["elements_per_token"] > 1) == padded, key
        if key == "packed":
            assert result["min_ratio"] == PACKED_GOAL
            assert result["met"] == (result["ratio"] >= PACKED_GOAL)
        else:
            assert (result["goal"], result["met"]) == ("none (context)", None), key


def test_quick_run_checks_the_tokens_and_prints_the_report(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    stdout, _ = quick_run
    assert stdout.startswith("# memshard ragged PyTorch benchmark (quick mode)")
    for title in ("## padding waste", "## DataLoader speed by ragged mode"):
        assert title in stdout
    checks = 1 + 2 * len(CANDIDATES)  # the waste order, and every loader's two runs
    assert f"checks passed: {checks} of {checks}" in stdout
