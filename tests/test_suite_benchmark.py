"""``python -m benchmarks --quick`` runs end to end, so the comparison suite cannot rot.

Checked here: it runs, every format answers with the rows written, and it reports every
figure, goal and chart. Speed goals are judged by reading its output, never by timed tests.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.compare import PREAD, WrongAnswer, check_readers, measure_cold
from benchmarks.core import Workload
from benchmarks.formats import BASELINE, MEMSHARD, Format, Unavailable, peers
from benchmarks.formats.redis_rows import RedisFormat
from benchmarks.suite import MEASUREMENTS
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
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict, Path]:
    root = tmp_path_factory.mktemp("suite")
    scratch, out = root / "scratch", root / "out"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--dir", str(scratch)]
    completed = run_from_repo([*command, "--out", str(out)])
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    report = json.loads((out / "results.json").read_text())
    return completed.stdout, completed.stderr, report, out


def redis_expected() -> bool:
    """The Redis peer runs where ``redis-server`` is installed; elsewhere it must be skipped
    with the reason printed (see test_quick_run_says_why_a_peer_was_skipped)."""
    return shutil.which("redis-server") is not None


def test_quick_run_measures_every_format_in_every_workload(quick_run: tuple) -> None:
    _, _, report, _ = quick_run
    assert report["mode"] == "quick"
    assert set(report["workloads"]) == {"images", "vectors"}
    for name, workload in report["workloads"].items():
        expected = [f for f in FORMATS if f != "Redis" or redis_expected()]
        assert list(workload["formats"]) == expected, name
        figures = workload["figures"]
        for measurement in MEASUREMENTS:
            assert measurement.key in figures, (name, measurement.key)
        for key in ("write", "row", "gather", "scan", "loader0", "loader2"):
            assert set(figures[key]) == set(expected), (name, key)
            for fmt, figure in figures[key].items():
                assert figure["value"] > 0, (name, key, fmt)
                assert len(figure["samples"]) >= 1
        on_disk = {f for f in expected if f not in ("in-RAM", "Redis")}
        cold = figures["cold"]
        assert set(cold) == on_disk | {PREAD, "memshard, no prefetch"}, name
        assert all(figure["extra"]["resident_after_eviction"] <= 0.02 for figure in cold.values())
        assert workload["notes"]["cold"].keys() == set(expected) - on_disk
        for fmt, figure in figures["growth"].items():
            assert {"rss", "uss", "private"} <= figure["extra"].keys(), fmt
            assert figure["work"] == 2, "two workers per epoch were read"
        assert set(workload["conversion"]) == {
            "h5py read",
            "from_hdf5, 1 worker",
            "from_hdf5, 2 workers",
        }


def test_quick_run_prints_tables_with_ratios_to_np_memmap(quick_run: tuple) -> None:
    stdout, _, _, out = quick_run
    markdown = (out / "results.md").read_text()
    for text in (stdout, markdown):
        assert "## Physical limits" in text
        assert "f.write + fsync (disk)" in text
        assert "## images: 1,024 rows of float32[3, 64, 64]" in text
        assert "## Goals" in text
        header = next(line for line in text.splitlines() if line.startswith("| format"))
        assert [cell.strip() for cell in header.strip("|").split("|")][1:] == [
            measurement.title for measurement in MEASUREMENTS
        ]
    memmap_rows = [line for line in markdown.splitlines() if line.startswith(f"| {BASELINE} ")]
    assert len(memmap_rows) == 2
    assert all(line.count("(1.00x)") >= 6 for line in memmap_rows), memmap_rows


def test_quick_run_judges_every_goal(quick_run: tuple) -> None:
    stdout, _, report, _ = quick_run
    goals = report["goals"]
    assert len(goals) == 18
    for goal in goals:
        assert goal["ratio"] > 0
        assert goal["met"] == (goal["ratio"] >= float(goal["target"].removeprefix(">= ")[:-1]))
    assert f"goals met: {sum(g['met'] for g in goals)} of 18" in stdout


def test_quick_run_draws_one_chart_per_workload(quick_run: tuple) -> None:
    _, _, _, out = quick_run
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


def test_every_format_reads_back_the_rows_written(tmp_path: Path) -> None:
    formats, data = written(tmp_path)
    readers = {fmt.name: fmt.open() for fmt in formats}
    try:
        check_readers(formats, readers, data, seed=1)
        for fmt in formats:
            indices = np.array([299, 0, 7, 7, 150])
            out = fmt.empty(len(indices))
            readers[fmt.name].cold_gather(indices, out)
            assert np.array_equal(out, data[indices]), fmt.name
    finally:
        for fmt in formats:
            readers[fmt.name].close()
            fmt.remove()
            fmt.stop()


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


def test_cold_gather_evicts_the_files_and_checks_the_rows(tmp_path: Path) -> None:
    formats, data = written(tmp_path, rows=2048)
    try:
        figures, failures = measure_cold(formats, data, gather_rows=64, repeats=1, seed=5)
    finally:
        for fmt in formats:
            fmt.remove()
            fmt.stop()
    assert failures == {}
    assert MEMSHARD in figures
    assert PREAD in figures
    assert all(f.extra["resident_after_eviction"] <= 0.02 for f in figures.values())
