"""The PyTorch loader benchmark runs end to end in quick mode, so its code cannot rot.

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

#: Every comparison the report must hold, per section.
RESULTS = {
    "loader_vectors": {
        "loader_vectors_vs_items",
        "loader_vectors_vs_memmap",
        "loader_vectors_madvise",
        "loader_vectors_torch_strategy_vs_memmap",
    },
    "loader_images": {
        "loader_images_vs_ram",
        "loader_images_madvise",
        "loader_images_torch_strategy_vs_ram",
    },
    "memory": {"memory_vectors", "memory_images"},
    "mixing": set(),
    "cold": {
        "cold_shard_aware",
        "cold_madvise",
        "cold_random_madvise",
        "cold_window_1",
        "cold_window_2",
        "cold_window_8",
    },
}
TABLE_COLUMNS = ["measurement", "memshard", "baseline", "baseline name", "ratio", "goal", "met"]
MEMORY_FIGURES = ("rss", "uss", "private")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, Path]:
    """One quick run with tiny sizes: its stdout, its JSON report and its scratch directory."""
    tmp_path = tmp_path_factory.mktemp("torch-benchmark")
    scratch = tmp_path / "scratch"
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.torch_loader",
        "--quick",
        "--rows-images",
        "600",
        "--rows-vectors",
        "5000",
        "--samples",
        "1024",
        "--repeats",
        "1",
        "--dir",
        str(scratch),
        "--json",
        str(report_path),
    ]
    # Warnings are errors, except torch's advice on machines with fewer CPUs than workers.
    completed = run_from_repo(
        command, warnings="error,ignore:This DataLoader will create:UserWarning"
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(report_path.read_text()), scratch


def test_quick_run_prints_every_table_and_cleans_up(quick_run: tuple[str, dict, Path]) -> None:
    stdout, _, scratch = quick_run
    headers = [line for line in stdout.splitlines() if line.startswith("| measurement")]
    assert len(headers) == sum(1 for keys in RESULTS.values() if keys)
    for line in headers:
        assert [cell.strip() for cell in line.strip("|").split("|")] == TABLE_COLUMNS
    assert "goals met:" in stdout
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"


def test_quick_run_reports_every_measurement_with_positive_figures(
    quick_run: tuple[str, dict, Path],
) -> None:
    _, report, _ = quick_run
    assert report["mode"] == "quick"
    sections = report["sections"]
    assert sections.keys() == RESULTS.keys()
    for name, keys in RESULTS.items():
        results = {result["key"]: result for result in sections[name]["results"]}
        assert results.keys() == keys
        for key, result in results.items():
            figures = ("memshard", "baseline", "ratio")
            if result["unit"] == "bytes":  # a growth of memory; only the ratio must be positive
                figures = ("ratio",)
            for figure in figures:
                assert result[figure] > 0, f"{name}/{key}: {figure} = {result[figure]}"
            assert result["met"] in (True, False, None)


def test_quick_run_reports_worker_memory(quick_run: tuple[str, dict, Path]) -> None:
    _, report, _ = quick_run
    memory = report["sections"]["memory"]["details"]
    assert memory.keys() == {"vectors", "images"}
    for workload in memory.values():
        for dataset in ("memshard", "naive"):
            workers = workload[dataset]["workers"]
            assert len(workers) == report["num_workers"]
            for worker in workers:
                snapshots = [worker["start"], *worker["epochs"]]
                for snapshot in snapshots:
                    for figure in MEMORY_FIGURES:
                        assert snapshot[figure] > 0, f"{dataset}: {figure} = {snapshot[figure]}"


def test_quick_run_reports_mixing_and_checks_eviction(quick_run: tuple[str, dict, Path]) -> None:
    _, report, _ = quick_run
    mixing = report["sections"]["mixing"]["details"]
    assert mixing.keys() == {"random", "window_1", "window_2", "window_4", "window_8"}
    for figures in mixing.values():
        assert figures["shards"] >= 1
        assert figures["labels"] >= 1
    cold = report["sections"]["cold"]["details"]
    assert 0 <= cold["max_resident_before"] <= 1
    for runs in cold["runs"].values():
        for run in runs:
            assert run["samples"] > 0
            assert run["ns"] > 0
