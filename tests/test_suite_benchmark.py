"""``python -m benchmarks --quick`` runs end to end, so the comparison suite cannot rot.

Checked here, on its JSON report: every format has every figure (the run itself checks that
each returns the rows written, warm and cold, and fails otherwise), every goal is judged from
the figures, and the run cleans up; besides, that the markdown report and the charts are
written, that a format answering wrong rows is caught and that the Redis peer starts and stops
(or is skipped, saying why). Speed goals are judged by reading the output, never by timed
tests.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.compare import (
    EXTEND,
    EXTEND_CLOSE,
    MEMSHARD_PLAIN,
    PLAIN_WRITE,
    PLAIN_WRITE_FSYNC,
    PREAD,
    PREAD_PARALLEL,
    WrongAnswer,
    check_readers,
)
from benchmarks.core import Workload
from benchmarks.formats import BASELINE, MEMSHARD, Format, Unavailable, peers
from benchmarks.formats.redis_rows import RedisFormat
from benchmarks.limits import LIMITS
from benchmarks.suite import GOALS, MEASUREMENTS
from benchmarks.system import EVICTION_TOLERANCE
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

FORMATS = [
    "memshard",
    "in-RAM",
    "np.memmap",
    "h5py contiguous",
    "h5py chunked",
    "zarr v3",
    "LMDB",
    "Redis",
    "npy-per-row",
]
ROWS = {"images": 512, "vectors": 2048}
FIGURE_KEYS = {"value", "samples", "work", "extra"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: One quick run of the suite: its stdout, its JSON report and its output folder.
QuickRun = tuple[str, dict[str, Any], Path]


def redis_expected() -> bool:
    """The Redis peer runs where ``redis-server`` is installed; elsewhere it must be skipped
    with the reason recorded (see test_quick_run_measures_every_format_in_every_workload)."""
    return shutil.which("redis-server") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One quick run with small sizes: its stdout, its JSON report and its output folder."""
    root = tmp_path_factory.mktemp("suite")
    scratch, out = root / "scratch", root / "out"
    command = [
        sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1",
        "--rows-images", str(ROWS["images"]), "--rows-vectors", str(ROWS["vectors"]),
        "--dir", str(scratch), "--out", str(out), "--json", str(root / "copy.json"),
    ]  # fmt: skip
    completed = run_from_repo(command)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    report = json.loads((out / "results.json").read_text())
    assert json.loads((root / "copy.json").read_text()) == report, "--json writes the same"
    return completed.stdout, report, out


def test_quick_run_reports_the_run_and_the_limits(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    assert report.keys() == {"mode", "machine", "effort", "limits", "workloads", "goals", "seconds"}
    assert report["mode"] == "quick"
    assert report["effort"] == {"repeats": 1, "slow_repeats": 1, "run_seconds": 0.01}
    assert {"cpus", "memshard", "scratch"} <= report["machine"].keys()
    assert report["seconds"] > 0
    assert list(report["limits"]) == list(LIMITS)
    for figure in report["limits"].values():
        assert figure.keys() == FIGURE_KEYS
        assert figure["value"] > 0
        assert len(figure["samples"]) == 1


def test_quick_run_measures_every_format_in_every_workload(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    expected = [f for f in FORMATS if f != "Redis" or redis_expected()]
    on_disk = {f for f in expected if f not in ("in-RAM", "Redis")}
    assert list(report["workloads"]) == ["images", "vectors"]
    for name, workload in report["workloads"].items():
        assert f"{ROWS[name]:,} rows" in workload["description"]
        assert list(workload["formats"]) == expected, name
        assert set(workload["skipped"]) == set(FORMATS) - set(expected)
        figures = workload["figures"]
        assert list(figures) == [measurement.key for measurement in MEASUREMENTS]
        for key in ("write", "row", "gather", "scan", "loader0", "loader2"):
            assert list(figures[key]) == expected, (name, key)
            for fmt, figure in figures[key].items():
                assert figure.keys() == FIGURE_KEYS
                assert figure["value"] > 0, (name, key, fmt)
                assert figure["work"] >= 1, (name, key, fmt)
                assert len(figure["samples"]) == 1
        for fmt, figure in figures["growth"].items():
            assert figure["extra"].keys() == {"rss", "uss", "private"}, fmt
            assert figure["work"] == 2, "two workers per epoch were read"
        cold = figures["cold"]
        assert set(cold) == on_disk | {PREAD, PREAD_PARALLEL, MEMSHARD_PLAIN}, name
        for figure in cold.values():
            assert figure["value"] > 0
            assert figure["extra"]["resident_after_eviction"] <= EVICTION_TOLERANCE
        not_in_files = {fmt: "n/a: not in files" for fmt in expected if fmt not in on_disk}
        assert workload["notes"]["cold"] == not_in_files
        assert list(workload["conversion"]) == [
            "h5py read",
            "from_hdf5, 1 worker",
            "from_hdf5, 2 workers",
        ]
        assert list(workload["extend"]) == [EXTEND, PLAIN_WRITE, EXTEND_CLOSE, PLAIN_WRITE_FSYNC]
        for figure in [*workload["conversion"].values(), *workload["extend"].values()]:
            assert figure["value"] > 0


def test_quick_run_judges_every_goal_from_the_figures(quick_run: QuickRun) -> None:
    _, report, _ = quick_run
    goals = report["goals"]
    per_workload = {w: sum(g[0] in (None, w) for g in GOALS) for w in ("images", "vectors")}
    assert len(goals) == sum(per_workload.values()) == 20
    for goal in goals:
        workload = report["workloads"][goal["workload"]]
        key = next(g[1] for g in GOALS if g[5] == goal["goal"] and g[0] in (None, goal["workload"]))
        figures = workload["extend"] if key == "extend" else workload["figures"][key]
        assert goal["peer"] in figures, goal
        minimum = float(goal["target"].removeprefix(">= ").removesuffix("x"))
        assert goal["ratio"] > 0
        assert goal["met"] == (goal["ratio"] >= minimum), goal
    best = [g for g in goals if g["workload"] == "images" and g["goal"] == "DataLoader, 2 workers"]
    loader2 = report["workloads"]["images"]["figures"]["loader2"]
    peers_only = {name: f["value"] for name, f in loader2.items() if name != MEMSHARD}
    assert [g["peer"] for g in best] == [max(peers_only, key=peers_only.__getitem__)]


def test_quick_run_writes_the_markdown_report_and_one_chart_per_workload(
    quick_run: QuickRun,
) -> None:
    stdout, _, out = quick_run
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# memshard comparison benchmark (quick mode)")
    assert stdout.startswith("# memshard comparison benchmark (quick mode)")
    for name in ("images", "vectors"):
        chart = out / f"{name}.png"
        assert chart.read_bytes()[:8] == PNG_MAGIC
        assert chart.stat().st_size > 20_000


def test_redis_peer_is_skipped_with_the_reason_when_redis_server_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    fmt = RedisFormat(str(tmp_path / "redis"), Workload("v", (4,), 8, 1 << 20))
    with pytest.raises(Unavailable, match="redis-server is not on PATH"):
        fmt.start()


def test_redis_server_is_started_and_stopped_where_installed(tmp_path: Path) -> None:
    fmt = RedisFormat(str(tmp_path / "redis"), Workload("v", (4,), 8, 1 << 20))
    if not redis_expected():
        with pytest.raises(Unavailable, match="apt-get install redis-server"):
            fmt.start()
        return
    fmt.start()
    assert fmt.server is not None
    process = fmt.server.process
    try:
        assert fmt.server.client().ping()
    finally:
        fmt.stop()
    assert process.poll() is not None, "redis-server still runs after stop()"


def written(tmp_path: Path, rows: int = 300) -> tuple[list[Format], np.ndarray]:
    workload = Workload("images", (3, 8, 8), rows, 64 << 10)
    data = np.random.default_rng(3).random((rows, 3, 8, 8), dtype=np.float32)
    formats = [fmt for fmt in peers(str(tmp_path), workload) if redis_expected() or fmt.on_disk]
    for fmt in formats:
        fmt.start()
        fmt.write([data[start : start + 64] for start in range(0, rows, 64)])
    return formats, data


def test_a_format_answering_wrong_rows_is_caught(tmp_path: Path) -> None:
    formats, data = written(tmp_path)
    memmap = next(fmt for fmt in formats if fmt.name == BASELINE)
    array = np.load(memmap.files()[0], mmap_mode="r+")
    array += 1.0
    array.flush()
    del array
    readers = {fmt.name: fmt.open() for fmt in formats}
    try:
        with pytest.raises(WrongAnswer, match=BASELINE):
            check_readers(formats, readers, data, seed=1)
    finally:
        for fmt in formats:
            readers[fmt.name].close()
            fmt.remove()
            fmt.stop()
