"""The build benchmark's peers run end to end in quick mode, so their code cannot rot.

Checked on the JSON report of one quick run: every peer (litdata, HF datasets, a pool feeding
LMDB) wrote both jobs (rasterised drawings, decoded images) and its own reader found every
row, or, for a peer whose library is not installed here, the report says so and how to
install it; every figure is present; the scratch folder is empty afterwards. Speed and memory
are read from the output, never judged by timed tests.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from benchmarks.build_peers import PEERS, QUICK_DRAWINGS, QUICK_IMAGES_PER_CLASS
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

RESULT_KEYS = {
    "peer", "job", "workers", "seconds", "rows_expected", "rows_read", "output_bytes",
    "peak_rss", "largest_process_rss", "ok",
}  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("build-peers")
    scratch, out, report = tmp / "scratch", tmp / "out", tmp / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.build_peers", "--quick",
        "--dir", str(scratch), "--out", str(out), "--json", str(report),
    ]  # fmt: skip
    completed = run_from_repo(command)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(scratch.iterdir()) == [], "the outputs were not removed"
    assert (out / "build-peers.md").read_text().startswith("# Build peers (quick mode)")
    return completed.stdout, json.loads(report.read_text())


def test_every_peer_wrote_every_row_of_both_jobs(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, report = quick_run
    assert report["mode"] == "quick"
    assert report["jobs"] == {
        "drawings": {"inputs": 8, "rows": QUICK_DRAWINGS},
        "images": {"inputs": 3 * QUICK_IMAGES_PER_CLASS, "rows": 3 * QUICK_IMAGES_PER_CLASS},
    }
    measured = {(result["job"], result["peer"]) for result in report["results"]}
    for peer in PEERS:
        if peer in report["skipped"]:
            assert "is not installed" in report["skipped"][peer]
            assert "pip install" in report["skipped"][peer]
        else:
            assert {("drawings", peer), ("images", peer)} <= measured
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        assert result["ok"]
        assert result["rows_read"] == result["rows_expected"] > 0
        assert result["seconds"] > 0
        assert result["output_bytes"] > 0
        assert result["workers"] == 2
        # The tree holds the child and its workers: at least the largest of them.
        assert result["peak_rss"] >= result["largest_process_rss"] * 0.9 > 0


def test_the_table_names_every_measured_peer(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, report = quick_run
    assert "| job" in stdout
    for result in report["results"]:
        assert result["peer"] in stdout
    assert "checks passed" in stdout
