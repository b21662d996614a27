"""The build benchmark runs end to end in quick mode, so its code cannot rot.

Checked on the JSON report of one quick run: every build wrote every row (the run's checks);
``ms.build`` was timed with 1 and 2 workers and on a Dask cluster on both jobs; memshard and
every installed peer ran on both jobs in child processes, with their memory (a peer not
installed is named with how to install it); the overheads come from the trivial builds; the
full-size model's four projections follow from its recorded inputs by its formula; every goal
is judged; the markdown is written and the scratch folder is empty afterwards. Speed goals
are judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.build import DASK, ONE, ONE_ZSTD, SCALING, TWO, TWO_ZSTD
from benchmarks.build_model import CLUSTER_WORKERS, MODEL_DRAWINGS, ONE_MACHINE_WORKERS
from benchmarks.build_peers import MEMSHARD, PEERS, QUICK_DRAWINGS, QUICK_IMAGES_PER_CLASS
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

RECORD_KEYS = {
    "mode", "machine", "seconds", "command", "repeats", "peer_repeats", "jobs", "scaling",
    "peers", "skipped", "overheads", "disk", "input_file", "model", "goals",
}  # fmt: skip
ROWS = {"drawings": QUICK_DRAWINGS, "images": 3 * QUICK_IMAGES_PER_CLASS}

QuickRun = tuple[str, dict[str, Any], Path]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    tmp = tmp_path_factory.mktemp("build-benchmark")
    scratch, out, report = tmp / "scratch", tmp / "out", tmp / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.build", "--quick",
        "--dir", str(scratch), "--out", str(out), "--json", str(report),
    ]  # fmt: skip
    completed = run_from_repo(command)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(scratch.iterdir()) == [], "the outputs were not removed"
    return completed.stdout, json.loads(report.read_text()), out


def test_every_build_wrote_every_row(quick_run: QuickRun) -> None:
    stdout, report, out = quick_run
    assert set(report) == RECORD_KEYS
    assert report["mode"] == "quick"
    assert report["command"] == "python -m benchmarks.build --quick"
    assert {name: job["rows"] for name, job in report["jobs"].items()} == ROWS
    assert "checks passed" in stdout  # and none failed: the run exited with 0
    assert (out / "build.md").read_text().startswith("# Building a dataset: ms.build (quick")
    assert json.loads((out / "build.json").read_text()) == report


def test_ms_build_is_timed_with_1_and_2_workers_and_on_dask(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert SCALING["drawings"] == (ONE, TWO, DASK, ONE_ZSTD, TWO_ZSTD)
    for job, candidates in SCALING.items():
        figures = report["scaling"][job]
        assert list(figures) == list(candidates)
        for candidate, figure in figures.items():
            assert len(figure["seconds"]) == len(figure["cpu"]) == report["repeats"] == 1
            assert len(figure["load"]) == 1
            assert figure["median"] == figure["seconds"][0] > 0, (job, candidate)
            assert figure["median_cpu"] == figure["cpu"][0] > 0
            assert figure["output_bytes"] > 0
    drawings = report["scaling"]["drawings"]
    # Rasterised drawings are mostly black: zstd stores them in a fraction of the bytes.
    assert drawings[ONE_ZSTD]["output_bytes"] < drawings[ONE]["output_bytes"] / 5


def test_memshard_and_every_peer_ran_in_a_child(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for job, rows in ROWS.items():
        measured = report["peers"][job]
        assert MEMSHARD in measured
        for tool in PEERS:
            if tool in report["skipped"]:
                assert "pip install" in report["skipped"][tool]
                assert tool not in measured
            else:
                assert tool in measured
        for tool, runs in measured.items():
            for run in runs:
                assert run["ok"], (job, tool)
                assert run["rows_read"] == rows
                assert run["workers"] == 2
                # Both measured; not compared: the tree is sampled every 10 ms, and a busy
                # machine can make the sampler miss a short-lived process's peak.
                assert run["peak_rss"] > 0
                assert run["largest_process_rss"] > 0


def test_overheads_come_from_the_trivial_builds(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    overheads = report["overheads"]
    slope = (overheads["many_parts_s"] - overheads["one_part_s"]) / (overheads["parts"] - 1)
    assert overheads["per_part_s"] == pytest.approx(slope)
    per_input = (overheads["one_part_s"] - overheads["fixed_s"]) / (overheads["inputs"] - 1)
    assert overheads["per_1000_inputs_s"] == pytest.approx(1000 * per_input)
    assert overheads["fixed_s"] > 0
    assert report["disk"]["value"] > 0
    assert report["disk"]["unit"] == "B/s"
    assert report["input_file"]["lines"] == QUICK_DRAWINGS
    assert report["input_file"]["scan_bytes_per_s"] > 0


def test_the_model_follows_from_its_inputs(quick_run: QuickRun) -> None:
    stdout, report, _ = quick_run
    inputs, found = report["model"]["inputs"], report["model"]["projections"]
    assert [(p["workers"], p["variant"]) for p in found] == [
        (ONE_MACHINE_WORKERS, "zstd"), (ONE_MACHINE_WORKERS, "plain"),
        (CLUSTER_WORKERS, "zstd"), (CLUSTER_WORKERS, "plain"),
    ]  # fmt: skip
    assert inputs["per_part_s"] == report["overheads"]["per_part_s"]
    assert inputs["disk_bytes_per_s"] == report["disk"]["value"]
    assert inputs["worker_start_s"] == report["overheads"]["pool_start_cpu_s"] / 2
    for p in found:
        on_dask = p["workers"] == CLUSTER_WORKERS
        assert p["efficiency"] == inputs["efficiency"]["dask" if on_dask else "workers"]
        assert 0 < p["efficiency"] <= 1
        stored, disk = inputs["stored_bytes"][p["variant"]], inputs["disk_bytes_per_s"]
        compute = MODEL_DRAWINGS * (inputs["cpu_per_drawing_s"][p["variant"]] + stored / disk)
        assert p["compute_s"] == pytest.approx(compute / (p["workers"] * p["efficiency"]))
        assert p["parts"] == math.ceil(MODEL_DRAWINGS / p["rows_per_part"])
        assert p["commit_s"] == pytest.approx(p["parts"] * inputs["per_part_s"])
        assert p["disk_s"] == pytest.approx(MODEL_DRAWINGS * stored / disk)
        slowest = max(p["compute_s"], p["commit_s"], p["disk_s"])
        assert p["total_s"] == pytest.approx(p["scan_s"] + p["start_s"] + slowest)
        assert p[f"{p['bound']}_s"] == slowest
    assert "T = scan + start + max(compute, commit, disk)" in stdout


def test_every_goal_is_judged(quick_run: QuickRun) -> None:
    stdout, report, _ = quick_run
    keys = [goal["key"] for goal in report["goals"]]
    measured_peers = [tool for tool in PEERS if tool not in report["skipped"]]
    assert len(keys) == 2 + 2 * len(measured_peers) + 4
    assert keys[:2] == ["drawings_2_workers", "drawings_dask"]
    assert all(isinstance(goal["met"], bool) for goal in report["goals"])
    met = sum(goal["met"] for goal in report["goals"])
    assert f"goals met: {met} of {len(keys)}" in stdout
    assert "load average (1 min) at the scaling runs" in stdout
