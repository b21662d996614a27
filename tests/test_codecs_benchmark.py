"""The codec benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on the JSON report of one quick run: every installed candidate is measured on
each workload at each distinct block size and its rows came back intact (the run's checks),
the workloads compress as the issue describes them (sketches a lot, embeddings barely), the
GIL probe ran on every candidate, the hostile trials covered every call with every frame it
takes and their memory readings see an unbounded call inflate the bomb, and the report holds
the choice for each family. Speed is judged by reading the report, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.codec_candidates import FAMILIES, candidates
from benchmarks.codec_hostile import BOMB, BOUND, KINDS, apis
from benchmarks.codecs import WORKLOADS
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

#: Rows per block of each workload: one row, 64 KiB and 256 KiB (equal ones measured once).
BLOCK_ROWS = {"sketches": [1, 4], "frames": [1, 5], "embeddings": [1, 21, 85]}
BOMB_BYTES = 16 << 20  # quick mode's --bomb-mib
RESULT_KEYS = {
    "candidate", "family", "workload", "rows_per_block", "block_bytes", "blocks",
    "compressed_bytes", "ratio", "compress_bytes_per_s", "decompress_bytes_per_s", "row_ns",
    "gather_1_thread_ns", "gather_2_threads_ns", "speedup_2_threads", "setup_s", "samples_ns",
}  # fmt: skip

QuickRun = tuple[str, dict[str, Any], Path]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One quick run: its stdout, its JSON report and its output folder."""
    out = tmp_path_factory.mktemp("codecs")
    command = [sys.executable, "-m", "benchmarks.codecs", "--quick", "--out", str(out)]
    completed = run_from_repo(command)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads((out / "codecs.json").read_text()), out


def test_every_candidate_is_measured_at_every_block_size(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    names = [candidate["name"] for candidate in report["candidates"]]
    assert names == [candidate.name for candidate in candidates()]
    skipped = {(s["candidate"], s["workload"], int(s["rows_per_block"])) for s in report["skipped"]}
    assert all(name == "zstandard L3 + dictionary" for name, _, _ in skipped), skipped
    for workload in WORKLOADS:
        for rows in BLOCK_ROWS[workload.name]:
            measured = [
                r["candidate"]
                for r in report["results"]
                if r["workload"] == workload.name and r["rows_per_block"] == rows
            ]
            expected = [n for n in names if (n, workload.name, rows) not in skipped]
            assert measured == expected, (workload.name, rows)
    references = [(r["workload"], r["rows_per_block"]) for r in report["references"]]
    assert references == [(w.name, rows) for w in WORKLOADS for rows in BLOCK_ROWS[w.name]]
    assert all(r["speedup_2_threads"] > 0 for r in report["references"])


def test_each_result_holds_its_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    row_bytes = {workload.name: workload.row_bytes for workload in WORKLOADS}
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        assert result["block_bytes"] == result["rows_per_block"] * row_bytes[result["workload"]]
        raw = result["blocks"] * result["block_bytes"]
        assert result["ratio"] == pytest.approx(raw / result["compressed_bytes"])
        one, two = result["gather_1_thread_ns"], result["gather_2_threads_ns"]
        assert result["speedup_2_threads"] == pytest.approx(one / two)
        for key, samples in result["samples_ns"].items():
            assert len(samples) == report["repeats"], key
            assert all(sample > 0 for sample in samples), key


def test_the_workloads_compress_as_the_issue_describes(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    zstd = [r for r in report["results"] if r["family"] == "zstd"]
    assert min(r["ratio"] for r in zstd if r["workload"] == "sketches") > 20
    assert max(r["ratio"] for r in zstd if r["workload"] == "embeddings") < 1.3
    frames = [r["ratio"] for r in zstd if r["workload"] == "frames"]
    assert min(frames) > 1.0
    assert max(frames) < 3


def test_the_gil_probe_measures_every_candidate(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    probed = [record["candidate"] for record in report["gil_probe"]]
    assert probed == [candidate["name"] for candidate in report["candidates"]]
    for record in report["gil_probe"]:
        if "skipped" in record:
            assert record["candidate"] == "zstandard L3 + dictionary", record
            continue
        assert record["block_bytes"] <= report["probe_bytes"]
        assert len(record["samples"]) == report["repeats"]
        assert all(share >= 0 for share in record["samples"]), record


def test_every_call_meets_every_frame_it_takes(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert (report["bomb_bytes"], report["hostile_bound"]) == (BOMB_BYTES, BOUND)
    trials = {(t["api"], t["kind"]) for t in report["hostile"]}
    for name, api in apis().items():
        kinds = {kind for api_name, kind in trials if api_name == name}
        assert BOMB in kinds, name
        assert kinds <= set(KINDS if api.bounded else [BOMB]), name
    for trial in report["hostile"]:
        assert trial["outcome"] in ("raised", "returned", "crashed"), trial
        if trial["outcome"] != "crashed":
            assert trial["VmHWM"] >= 0, trial
            assert trial["seconds"] >= 0, trial


def test_memory_readings_see_an_unbounded_call_inflate_the_bomb(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    unbounded = [t for t in report["hostile"] if not t["bounded"] and t["outcome"] == "returned"]
    assert unbounded
    assert all(t["VmHWM"] >= BOMB_BYTES * 0.9 for t in unbounded), unbounded


def test_the_report_states_a_choice_per_family(quick_run: QuickRun) -> None:
    stdout, report, out = quick_run
    assert stdout.startswith("# memshard codec candidates (quick mode)")
    assert set(report["choice"]) == set(FAMILIES)
    markdown = (out / "codecs.md").read_text()
    sections = ["## Workloads", "## Candidates", "## Choice", "## Speed and ratio"]
    sections += ["## Threads", "## Hostile frames", "## How each figure is measured"]
    assert [markdown.index(section) for section in sections] == sorted(
        markdown.index(section) for section in sections
    )
    for family in FAMILIES:
        assert f"- **{family}: " in markdown, family
    assert "checks passed: " in markdown
