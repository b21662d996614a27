"""The PyTorch loader benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on its JSON report: every comparison of every section with positive figures and
its goal judged from them, the worker memory, shuffle quality and cold-cache figures, and that
the run cleans up; besides, that the markdown report is printed. Speed and memory goals are
judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from benchmarks.torch_loader import COLD_CANDIDATES, MAX_WORKER_GROWTH, WINDOWS
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

#: Every comparison the report must hold, per section.
RESULTS = {
    "loader_vectors": [
        "loader_vectors_vs_items",
        "loader_vectors_vs_memmap",
        "loader_vectors_madvise",
        "loader_vectors_torch_strategy_vs_memmap",
    ],
    "loader_images": [
        "loader_images_vs_ram",
        "loader_images_madvise",
        "loader_images_torch_strategy_vs_ram",
    ],
    "memory": ["memory_vectors", "memory_images"],
    "mixing": [],
    "cold": [f"cold_{candidate.key}" for candidate in COLD_CANDIDATES[1:]],
}
#: The comparisons with a goal, and the least ratio (or, for memory, the largest value).
GOALS = {
    "loader_vectors_vs_items": 2.0,
    "loader_vectors_vs_memmap": 1.0,
    "loader_images_vs_ram": 0.95,
    "cold_madvise": 2.0,
}
ROWS = {"vectors": 5000, "images": 600}
MEMORY_FIGURES = {"rss", "uss", "private"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick run with tiny sizes: its stdout and its JSON report."""
    tmp_path = tmp_path_factory.mktemp("torch-benchmark")
    scratch, report_path = tmp_path / "scratch", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.torch_loader", "--quick", "--repeats", "1",
        "--rows-images", str(ROWS["images"]), "--rows-vectors", str(ROWS["vectors"]),
        "--samples", "1024", "--dir", str(scratch), "--json", str(report_path),
    ]  # fmt: skip
    # Warnings are errors, except torch's advice on machines with fewer CPUs than workers.
    completed = run_from_repo(
        command, warnings="error,ignore:This DataLoader will create:UserWarning"
    )
    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    return completed.stdout, json.loads(report_path.read_text())


def test_quick_run_reports_the_run(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, report = quick_run
    assert report["mode"] == "quick"
    assert (report["repeats"], report["cold_repeats"]) == (1, 1)
    assert (report["batch_size"], report["num_workers"]) == (256, 2)
    assert report["seconds"] > 0
    for name, rows in ROWS.items():
        assert report["workloads"][name]["rows"] == rows
    assert list(report["sections"]) == list(RESULTS)


def test_quick_run_reports_every_comparison_and_judges_its_goal(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    for name, keys in RESULTS.items():
        results = {result["key"]: result for result in report["sections"][name]["results"]}
        assert list(results) == keys
        for key, result in results.items():
            assert result["ratio"] > 0, key
            if result["unit"] == "samples/s":
                assert result["memshard"] > 0, key
                assert result["baseline"] > 0, key
                assert result["ratio"] == pytest.approx(result["memshard"] / result["baseline"])
            if key in GOALS and result["unit"] == "samples/s":
                assert result["target"] == {"min_ratio": GOALS[key], "max_value": None}
                assert result["met"] == (result["ratio"] >= GOALS[key]), key
            elif key.startswith("memory_"):
                assert result["target"] == {"min_ratio": None, "max_value": MAX_WORKER_GROWTH}
                assert result["met"] == (result["memshard"] < MAX_WORKER_GROWTH), key
            else:
                assert (result["goal"], result["met"]) == ("none (context)", None), key


def test_quick_run_reports_worker_memory(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, report = quick_run
    section = report["sections"]["memory"]
    memory = section["details"]
    assert memory.keys() == {"vectors", "images"}
    for workload, figures in memory.items():
        result = next(r for r in section["results"] if r["key"] == f"memory_{workload}")
        for dataset, figure in (("memshard", "memshard"), ("naive", "baseline")):
            workers = figures[dataset]["workers"]
            assert len(workers) == report["num_workers"]
            assert result[figure] == max(worker["growth"] for worker in workers)
            for worker in workers:
                assert len(worker["epochs"]) == 2
                for snapshot in [worker["start"], *worker["epochs"]]:
                    assert snapshot.keys() == MEMORY_FIGURES
                    assert all(snapshot[key] > 0 for key in MEMORY_FIGURES), snapshot
                growth = worker["epochs"][-1]["private"] - worker["start"]["private"]
                assert worker["growth"] == growth


def test_quick_run_reports_mixing_and_cold_runs(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, report = quick_run
    mixing = report["sections"]["mixing"]["details"]
    assert list(mixing) == ["random", *(f"window_{window}" for window in WINDOWS)]
    for figures in mixing.values():
        assert figures["shards"] >= 1
        assert 1 <= figures["labels"] <= 10
    cold = report["sections"]["cold"]["details"]
    assert list(cold["runs"]) == [candidate.key for candidate in COLD_CANDIDATES]
    assert 0 <= cold["max_resident_before"] <= 1
    for runs in cold["runs"].values():
        assert len(runs) == 1
        for run in runs:
            assert run["samples"] == ROWS["images"], "a quick cold run reads an epoch"
            assert run["ns"] > 0
            assert run["resident_before"] <= cold["max_resident_before"]


def test_quick_run_prints_the_markdown_report(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, report = quick_run
    assert stdout.startswith("# memshard PyTorch loader benchmark (quick mode)")
    for section in report["sections"].values():
        assert f"## {section['title']}" in stdout
