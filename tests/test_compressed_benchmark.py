"""The compressed-fields benchmark runs end to end in quick mode, so its code cannot rot.

Checked here, on the JSON report of one quick run: every format was written and read back right
(the run's correctness checks, by gathers and through every DataLoader), or is reported as not
measured with the reason; every measurement has a figure for every candidate; each goal is
judged from those figures; the markdown and JSON are written and the scratch folder is empty
afterwards. Speed goals are judged by reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.codecs import WORKLOADS
from benchmarks.compressed import GOALS, LOADER_FORMATS, QUICK_ROWS, THREADS_1, Goal, goal_ratio
from benchmarks.compressed_formats import (
    HF_NOT_MEASURED,
    MEMSHARD,
    MEMSHARD_BLOSC,
    MEMSHARD_ZSTD,
    REDIS,
    formats,
)
from benchmarks.core import Figure
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

#: Warnings are errors, except torch's advice on machines with fewer CPUs than workers.
WARNINGS = "error,ignore:This DataLoader will create:UserWarning"
REPEATS = 2
NAMES = [fmt.name for fmt in formats("unused", "w", "uint8", (1,), 1 << 20)]
COMPRESSED_MEMSHARD = (MEMSHARD_ZSTD, MEMSHARD_BLOSC)
RECORD_KEYS = {
    "mode", "machine", "seconds", "command", "rows", "repeats", "batch_size", "num_workers",
    "default_threads", "loader_batches", "not_measured", "workloads", "goals",
}  # fmt: skip
WORKLOAD_KEYS = {
    "workload", "nbytes", "formats", "skipped", "stored", "write_seconds", "gather", "cold",
    "loader", "convert",
}  # fmt: skip

QuickRun = tuple[str, dict[str, Any], Path]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One quick run: its stdout, its JSON report and its output folder; the scratch folder
    is empty afterwards."""
    tmp = tmp_path_factory.mktemp("compressed")
    scratch, out, report = tmp / "scratch", tmp / "out", tmp / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.compressed", "--quick",
        "--dir", str(scratch), "--out", str(out), "--json", str(report),
    ]  # fmt: skip
    completed = run_from_repo(command, warnings=WARNINGS)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(scratch.iterdir()) == [], "the formats were not removed"
    return completed.stdout, json.loads(report.read_text()), out


def measured(record: dict[str, Any]) -> list[str]:
    """The formats a workload's record has figures for, in table order."""
    return [name for name in NAMES if name not in record["skipped"]]


def test_quick_run_records_every_workload(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert set(report) == RECORD_KEYS
    assert (report["mode"], report["rows"], report["repeats"]) == ("quick", QUICK_ROWS, REPEATS)
    assert report["command"] == "python -m benchmarks.compressed --quick"
    assert (report["batch_size"], report["num_workers"]) == (256, 2)
    assert report["not_measured"] == {"HF datasets": HF_NOT_MEASURED}
    assert list(report["workloads"]) == [workload.name for workload in WORKLOADS]
    for name, record in report["workloads"].items():
        assert set(record) == WORKLOAD_KEYS, name
        assert record["workload"]["rows"] == QUICK_ROWS[name]
        assert list(record["formats"]) == NAMES, name
        assert set(record["skipped"]) <= {REDIS}, "only Redis may be missing (no redis-server)"
        assert all(reason for reason in record["skipped"].values()), name


def test_every_format_is_stored_and_sized(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for name, record in report["workloads"].items():
        assert list(record["stored"]) == measured(record), name
        assert list(record["write_seconds"]) == measured(record), name
        assert record["stored"][MEMSHARD] >= record["nbytes"], "uncompressed holds every byte"
        assert all(size > 0 for size in record["stored"].values()), name
    sketches = report["workloads"]["sketches"]
    for fmt in COMPRESSED_MEMSHARD:
        assert sketches["stored"][fmt] * 10 < sketches["nbytes"], "sketches compress well"


def test_every_measurement_has_its_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    for name, record in report["workloads"].items():
        names = measured(record)
        threads_1 = [fmt + THREADS_1 for fmt in COMPRESSED_MEMSHARD]
        assert set(record["gather"]) == {*names, *threads_1}, name
        assert list(record["cold"]) == [fmt for fmt in names if fmt != REDIS], name
        assert list(record["loader"]) == [fmt for fmt in names if fmt in LOADER_FORMATS]
        assert len(record["convert"]) == 3 * len(COMPRESSED_MEMSHARD), name
        for key in ("gather", "cold", "loader", "convert"):
            for fmt, figure in record[key].items():
                assert len(figure["samples"]) == REPEATS, (name, key, fmt)
                assert min(figure["samples"]) <= figure["value"] <= max(figure["samples"])
                assert figure["value"] > 0, (name, key, fmt)
        for fmt, figure in record["cold"].items():
            assert 0 <= figure["extra"]["cached"] <= 1, (name, fmt)


def test_each_goal_is_judged_on_the_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert len(report["goals"]) == len(GOALS)
    for goal, result in zip(GOALS, report["goals"], strict=True):
        raw = report["workloads"][goal.workload]
        record = {
            **raw,
            **{
                key: {fmt: Figure.of(figure["samples"]) for fmt, figure in raw[key].items()}
                for key in ("gather", "cold", "loader")
            },
        }
        ratio = goal_ratio(Goal(**{k: result[k] for k in Goal.__dataclass_fields__}), record)
        assert ratio is not None, goal
        assert result["ratio"] == pytest.approx(ratio)
        assert result["met"] is (result["ratio"] >= result["min_ratio"])


def test_quick_run_prints_and_writes_the_report(quick_run: QuickRun) -> None:
    stdout, report, out = quick_run
    assert stdout.startswith("# memshard compressed fields (quick mode)")
    for text in (
        "- load average at start:",
        "## sketches: 256 rows of uint8[1x256x256]",
        "## frames: 256 rows of float32[3x64x64]",
        "## embeddings: 2,048 rows of float32[768]",
        "Cold random gather",
        "## Goals",
        HF_NOT_MEASURED,
        "load average at end:",
    ):
        assert text in stdout, text
    checks = sum(len(r["gather"]) + len(r["loader"]) for r in report["workloads"].values())
    assert f"checks passed: {checks} of {checks}" in stdout
    assert (out / "compressed.md").read_text().startswith(stdout.split("\n", 1)[0])
    assert json.loads((out / "compressed.json").read_text())["goals"] == report["goals"]
