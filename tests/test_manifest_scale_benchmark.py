"""The shard-count benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on the JSON report of one quick run (10 and 1,000 shards): every measurement has
a figure for both formats and their ratio, the commits count the shards before them, the
format 2.0 manifest keeps its size while the 1.1 one grows, verify hashed every row, each
goal is judged from the figures, the report, chart and JSON are written and the datasets are
gone. Speed goals are judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.manifest_scale import FORMATS, MEASUREMENTS, NEW, OLD, ROW_BYTES
from memshard.shardtable import record_dtype
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

COUNTS = [10, 1_000]
REPEATS, VERIFY_REPEATS = 2, 1
RECORD_KEYS = {
    "mode", "machine", "seconds", "shard_counts", "fields", "rows_per_shard", "repeats",
    "verify_repeats", "batch_size", "fsync_while_building", "sizes", "goals",
}  # fmt: skip
SIZE_KEYS = {
    "shards", "rows", "files", "build_seconds", "manifest_bytes", "table_bytes", "figures",
    "verify",
}  # fmt: skip
FIGURE_KEYS = {"value", "samples", "work", "extra"}
GOALS = ["open", "refresh_first", "commit", "worker_first_batch", "verify"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Bytes before the first record of a shard table of two fields (its header).
TABLE_HEADER = 4096

QuickRun = tuple[str, dict[str, Any], Path]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One quick run: its stdout, its JSON report and its output folder; the scratch folder
    is empty afterwards."""
    tmp = tmp_path_factory.mktemp("manifest-scale")
    scratch, out, report = tmp / "scratch", tmp / "out", tmp / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.manifest_scale", "--quick",
        "--dir", str(scratch), "--out", str(out), "--json", str(report),
    ]  # fmt: skip
    completed = run_from_repo(command)
    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == [], "the datasets were not removed"
    return completed.stdout, json.loads(report.read_text()), out


def test_quick_run_records_each_shard_count(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert set(report) == RECORD_KEYS
    assert (report["mode"], report["shard_counts"], report["rows_per_shard"]) == (
        "quick",
        COUNTS,
        1,
    )
    assert (report["repeats"], report["verify_repeats"]) == (REPEATS, VERIFY_REPEATS)
    assert report["fields"] == {"x": ["float32", [4]], "y": ["int64", []]}
    assert report["fsync_while_building"] is False
    assert [size["shards"] for size in report["sizes"]] == COUNTS
    for size in report["sizes"]:
        count = size["shards"]
        assert set(size) == SIZE_KEYS
        assert (size["rows"], size["files"]) == (count, 2 * count)
        assert size["build_seconds"] > 0
        assert size["table_bytes"] == TABLE_HEADER + count * record_dtype(2).itemsize


def test_the_2_0_manifest_keeps_its_size_and_the_1_1_one_grows(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    small, large = (size["manifest_bytes"] for size in report["sizes"])
    assert abs(large[NEW] - small[NEW]) < 16, "only the digits of the counts may differ"
    assert large[OLD] > 50 * small[OLD]
    assert large[OLD] > 100 * large[NEW]


def test_every_measurement_has_both_formats_and_their_ratio(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for size in report["sizes"]:
        figures = size["figures"]
        assert list(figures) == [measurement.key for measurement in MEASUREMENTS]
        for key, by_format in figures.items():
            repeats = VERIFY_REPEATS if key == "verify" else REPEATS
            assert set(by_format) == {*FORMATS, "ratio"}, key
            for name in FORMATS:
                figure = by_format[name]
                assert set(figure) == FIGURE_KEYS, key
                assert len(figure["samples"]) == repeats, key
                assert all(sample > 0 for sample in figure["samples"]), key
                assert min(figure["samples"]) <= figure["value"] <= max(figure["samples"]), key
            ratio = by_format[OLD]["value"] / by_format[NEW]["value"]
            assert by_format["ratio"] == pytest.approx(ratio), key


def test_each_commit_adds_one_shard_after_the_dataset(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for size in report["sizes"]:
        count = size["shards"]
        for name in FORMATS:
            before = size["figures"]["commit"][name]["extra"]["shards_before"]
            assert before == [count + repeat for repeat in range(REPEATS)], name


def test_the_worker_measures_inside_its_wall_time(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for size in report["sizes"]:
        figures = size["figures"]
        for name in FORMATS:
            in_child = figures["worker_first_batch"][name]["samples"]
            wall = figures["worker_start_to_batch"][name]["samples"]
            assert all(0 < inner < outer for inner, outer in zip(in_child, wall, strict=True))


def test_verify_hashed_every_row_and_is_compared_with_hashing(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for size in report["sizes"]:
        record = size["verify"]
        assert (record["bytes"], record["files"]) == (size["rows"] * ROW_BYTES, size["files"])
        assert record["hash_bytes_per_s"] > 0
        assert record["read_floor_ns_per_file"] > 0
        for name in FORMATS:
            seconds = size["figures"]["verify"][name]["value"] / 1e9
            assert record[name]["bytes_per_s"] == pytest.approx(record["bytes"] / seconds)
            hashing = record["hash_ns"]["value"] / 1e9
            assert record[name]["hash_ratio"] == pytest.approx(hashing / seconds)
            assert record[name]["ns_per_file"] == pytest.approx(seconds * 1e9 / size["files"])


def test_each_goal_is_judged_on_the_2_0_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    sizes = {size["shards"]: size for size in report["sizes"]}
    assert [goal["key"] for goal in report["goals"]] == GOALS
    for goal in report["goals"]:
        size = sizes[goal["shards"]]
        if goal["key"] == "verify":
            assert goal["value"] == size["verify"][NEW]["hash_ratio"]
            assert goal["met"] is (goal["value"] >= goal["limit"])
        else:
            assert goal["value"] == size["figures"][goal["key"]][NEW]["value"]
            assert goal["met"] is (goal["value"] <= goal["limit"])
        if goal["key"] in ("open", "refresh_first"):
            assert goal["shards"] == COUNTS[-1], "judged at the largest count"


def test_quick_run_writes_the_report_chart_and_json(quick_run: QuickRun) -> None:
    stdout, report, out = quick_run
    assert stdout.startswith("# memshard shard-count scaling (quick mode)")
    for text in (
        "FSYNC SKIPPED WHILE BUILDING",
        "LOWER BOUND",
        "## Time against shard count",
        "## verify against hashing speed",
        "## Goals",
        "checks passed: ",
    ):
        assert text in stdout, text
    assert (out / "manifest-scale.md").read_text().startswith(stdout.split("\n", 1)[0])
    assert json.loads((out / "manifest-scale.json").read_text())["sizes"] == report["sizes"]
    assert (out / "manifest-scale.png").read_bytes().startswith(PNG_MAGIC)
