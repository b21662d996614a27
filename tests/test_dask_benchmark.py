"""The dask write benchmark runs end to end in quick mode with tiny sizes, so its code cannot rot.

Checked here, on its JSON report: both clusters measured, the ratios computed from the medians,
the outputs checked, the commit's cost and the 50M-row estimate consistent, and the run cleans
up; besides, that the markdown report is printed. Speed goals are judged by reading the
output, never by timed tests.

The benchmark runs in a child process with ``PYTHONWARNINGS=error``, which its dask worker
processes inherit: a warning anywhere (a port already in use, an unclosed resource) fails it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

ROWS = 600
#: 4 MiB shards hold 85 rows of float32[3, 64, 64] + int64: 8 blocks of one shard.
SHARD_MIB = 4
SHARD_ROWS = 85
ROW_BYTES = 3 * 64 * 64 * 4 + 8
#: Low enough that some worker counts of the estimate hit it.
STORAGE_GBPS = 1.0
TARGET_ROWS = 50_000_000
TARGET_WORKERS = [1, 2, 8, 32, 100, 500]
WORKERS = (1, 2)
RESULT_KEYS = [
    "from_dask_workers_1",
    "from_dask_workers_2",
    "generate_workers_1",
    "generate_workers_2",
    "extend_in_process",
]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def test_quick_dask_benchmark_reports_consistent_figures(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.dask_write", "--quick", "--rows", str(ROWS),
        "--shard-mib", str(SHARD_MIB), "--repeats", "1", "--commit-parts", "20",
        "--storage-gbps", str(STORAGE_GBPS), "--dir", str(scratch), "--json", str(report_path),
    ]  # fmt: skip
    completed = run_from_repo(command)

    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
    assert "Warning" not in completed.stderr, completed.stderr
    assert list(scratch.iterdir()) == [], "the scratch directory was not cleaned up"
    assert completed.stdout.startswith("# memshard from_dask benchmark (quick mode)")
    report = json.loads(report_path.read_text())
    assert (report["mode"], report["config"]["repeats"]) == ("quick", 1)
    assert report["seconds"] > 0
    config = report["config"]
    assert (config["rows"], config["shard_rows"], config["block_rows"]) == (ROWS, SHARD_ROWS, 85)
    assert config["blocks"] == -(-ROWS // SHARD_ROWS)

    results = report["results"]
    assert list(results) == RESULT_KEYS
    for key, result in results.items():
        assert len(result["samples_ns"]) == 1, key
        assert close(result["median_ns"], statistics.median(result["samples_ns"])), key
        assert close(result["rows_per_s"], ROWS / (result["median_ns"] / 1e9)), key
        assert close(result["bytes_per_s"], result["rows_per_s"] * ROW_BYTES), key
    for n in WORKERS:
        assert results[f"from_dask_workers_{n}"]["workers"] == n
        assert results[f"generate_workers_{n}"]["workers"] == n

    speedups = report["speedups"]
    one, two = results["from_dask_workers_1"], results["from_dask_workers_2"]
    assert close(speedups["from_dask_2_over_1"], one["median_ns"] / two["median_ns"])
    assert close(speedups["from_dask_2_over_1"], two["rows_per_s"] / one["rows_per_s"])
    generate_ratio = (
        results["generate_workers_1"]["median_ns"] / (results["generate_workers_2"]["median_ns"])
    )
    assert close(speedups["generate_2_over_1"], generate_ratio)
    for n in WORKERS:
        over = (
            results[f"generate_workers_{n}"]["median_ns"]
            / results[f"from_dask_workers_{n}"]["median_ns"]
        )
        assert close(speedups[f"from_dask_over_generate_{n}"], over)
    extend = results["extend_in_process"]["median_ns"] / two["median_ns"]
    assert close(speedups["from_dask_2_over_extend"], extend)
    assert report["goal"] == {
        "from_dask_2_over_1": 1.6,
        "met": speedups["from_dask_2_over_1"] >= 1.6,
    }
    disk = report["disk"]
    assert (disk["key"], disk["unit"], disk["met"]) == ("disk_write_fsync", "B/s", None)
    assert disk["value"] > 0

    assert sorted(report["checks"]) == ["1", "2"]
    for n in WORKERS:
        check = report["checks"][str(n)]
        assert check["passed"], check
        assert check["rows"] == check["expected_rows"] == ROWS
        assert check["labels_equal"]
        assert check["images_equal"]
        assert len(check["blocks_per_worker"]) == n
        assert sum(check["blocks_per_worker"]) == config["blocks"]

    commit = report["commit"]
    assert commit["parts"] == 20
    per_part = (commit["many_parts_ns"] - commit["one_part_ns"]) / 19
    assert close(commit["per_part_ns"], per_part)

    estimate = report["estimate"]
    parts = -(-TARGET_ROWS // SHARD_ROWS)
    # this run's blocks, and one block per 64 MiB shard (1,024 rows)
    assert sorted(map(int, commit["extrapolated_s"])) == sorted({parts, -(-TARGET_ROWS // 1024)})
    assert (estimate["rows"], estimate["parts"]) == (TARGET_ROWS, parts)
    storage = STORAGE_GBPS * 1e9
    assert close(estimate["storage_bps"], storage)
    commit_s = (commit["one_part_ns"] + per_part * (parts - 1)) / 1e9
    rates = {
        "isolated": one["rows_per_s"],
        "shared_host": two["rows_per_s"] / 2,
    }
    assert list(estimate["tables"]) == list(rates)
    floor_s = TARGET_ROWS * ROW_BYTES / storage
    for basis, table in estimate["tables"].items():
        assert [row["workers"] for row in table] == TARGET_WORKERS
        for row in table:
            assert close(row["per_worker_rows_s"], rates[basis])
            uncapped = TARGET_ROWS / (row["workers"] * rates[basis])
            assert close(row["uncapped_s"], uncapped)
            assert close(row["write_s"], max(uncapped, floor_s))
            assert row["capped"] == (uncapped < floor_s)
            assert close(row["commit_s"], commit_s)
            assert close(row["total_s"], row["write_s"] + commit_s)
        uncapped_times = [row["uncapped_s"] for row in table]
        write_times = [row["write_s"] for row in table]
        assert uncapped_times == sorted(uncapped_times, reverse=True)
        assert len(set(uncapped_times)) == len(uncapped_times)
        assert write_times == sorted(write_times, reverse=True)
        assert table[-1]["capped"], "500 workers should hit a 1 GB/s storage cap"
        assert not table[0]["capped"] or rates[basis] * ROW_BYTES > storage
