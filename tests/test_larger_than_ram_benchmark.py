"""The larger-than-RAM benchmark runs end to end in quick mode, so its code cannot rot.

Checked here: the JSON report of a quick run holds every figure (the write, the disk's limits,
both epochs with their memory and ratios) and the dataset is gone afterwards; an epoch stopped
by ``--max-seconds`` says so; a run without the free space it needs refuses before writing
anything; a Ctrl-C in the middle of an epoch still removes the dataset. Speeds are judged by
reading the output, never by timed tests.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.larger_than_ram import CANDIDATES, MARGIN_BYTES, RANDOM_THREADS
from tests.helpers import run_from_repo

#: A benchmark smoke test: its own CI step (`pytest -m benchmark_smoke`), not the default run.
pytestmark = pytest.mark.benchmark_smoke

#: Warnings are errors, except torch's advice on machines with fewer CPUs than workers.
WARNINGS = "error,ignore:This DataLoader will create:UserWarning"
#: Rows of the quick mode's 0.05 GB of 48 KiB rows.
QUICK_ROWS = 50_000_000 // (3 * 64 * 64 * 4)
RECORD_KEYS = {
    "mode", "machine", "seconds", "size_bytes", "ram_bytes", "rows", "row_bytes", "shards",
    "batch_size", "num_workers", "max_seconds", "write", "disk", "epochs", "removed",
}  # fmt: skip
EPOCH_KEYS = {
    "samples", "epoch_samples", "complete", "seconds", "samples_per_s", "bytes_per_s",
    "first_batch_seconds", "disk_bytes_read", "resident_before", "rows_ok", "workers", "ratios",
}  # fmt: skip
LIMITS = ["sequential", *(f"random_{threads}" for threads in RANDOM_THREADS)]


def run(tmp_path: Path, *options: str) -> tuple[Any, Path, Path]:
    """A quick run with ``options`` in ``tmp_path``: the finished process, the scratch folder
    and the JSON report's path."""
    scratch, report = tmp_path / "scratch", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "benchmarks.larger_than_ram", "--quick",
        "--dir", str(scratch), "--json", str(report), *options,
    ]  # fmt: skip
    return run_from_repo(command, warnings=WARNINGS), scratch, report


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick run: its stdout and its JSON report; the dataset is gone afterwards."""
    completed, scratch, report = run(tmp_path_factory.mktemp("larger-than-ram"))
    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == [], "the dataset was not removed"
    return completed.stdout, json.loads(report.read_text())


def test_quick_run_records_the_dataset_and_its_write(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    assert set(report) == RECORD_KEYS
    assert (report["mode"], report["rows"], report["row_bytes"]) == ("quick", QUICK_ROWS, 49152)
    assert report["size_bytes"] == QUICK_ROWS * 49152
    assert (report["batch_size"], report["num_workers"], report["shards"]) == (256, 2, 1)
    assert report["max_seconds"] is None
    assert report["removed"] is True
    assert report["write"]["bytes"] == report["size_bytes"]
    assert report["write"]["bytes_per_s"] > 0


def test_quick_run_measures_the_disk_before_and_after_the_epochs(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    disk = report["disk"]
    assert set(disk) == {"direct_io", "limit_seconds", *LIMITS}
    assert isinstance(disk["direct_io"], bool)
    for name in LIMITS:
        assert len(disk[name]["before"]) == len(disk[name]["after"]) == 1, name
        assert disk[name]["median"] > 0, name


def test_quick_run_reads_each_epoch_whole_and_right(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    assert list(report["epochs"]) == [candidate.key for candidate in CANDIDATES]
    for key, epoch in report["epochs"].items():
        assert set(epoch) == EPOCH_KEYS, key
        assert epoch["samples"] == epoch["epoch_samples"] == QUICK_ROWS, key
        assert (epoch["complete"], epoch["rows_ok"]) == (True, True), key
        assert epoch["samples_per_s"] == pytest.approx(epoch["samples"] / epoch["seconds"])
        assert epoch["bytes_per_s"] == pytest.approx(epoch["samples_per_s"] * 49152)
        assert 0 < epoch["first_batch_seconds"] <= epoch["seconds"], key
        assert 0 <= epoch["resident_before"] <= 1, key
        assert set(epoch["ratios"]) == set(LIMITS), key
        sequential = epoch["bytes_per_s"] / report["disk"]["sequential"]["median"]
        assert epoch["ratios"]["sequential"] == pytest.approx(sequential), key
        assert len(epoch["workers"]) == 2, key
        for worker in epoch["workers"]:
            assert worker["peak_rss"] >= worker["peak_private"] > 0, key
            assert worker["samples"] >= 1, key


def test_quick_run_prints_the_markdown_report(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = quick_run
    assert stdout.startswith("# memshard larger-than-RAM epoch (quick mode)")
    for title in ("## dataset: ", "## the disk's limits", "## one epoch"):
        assert title in stdout
    assert "STOPPED EARLY" not in stdout
    assert "was removed." in stdout


def test_max_seconds_stops_each_epoch_early_and_says_so(tmp_path: Path) -> None:
    completed, scratch, report_path = run(tmp_path, "--max-seconds", "0.001")
    assert completed.returncode == 0, completed.stderr
    assert list(scratch.iterdir()) == []
    report = json.loads(report_path.read_text())
    assert report["max_seconds"] == 0.001
    for key, epoch in report["epochs"].items():
        assert (epoch["complete"], epoch["rows_ok"]) == (False, True), key
        assert epoch["samples"] == 256, "an epoch stops after the batch that passes the limit"
    assert "STOPPED EARLY at --max-seconds 0.001" in completed.stdout


def test_refuses_without_the_free_space_and_writes_nothing(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    size_gb = (2 * stat.f_bavail * stat.f_frsize + MARGIN_BYTES) / 1e9
    completed, scratch, report = run(tmp_path, "--size-gb", f"{size_gb:.3f}")
    assert completed.returncode == 2, completed.stderr
    assert f"not enough free space in {tmp_path}" in completed.stderr
    assert "Nothing was written." in completed.stderr
    assert completed.stdout == ""
    assert not scratch.exists()
    assert not report.exists()


#: Runs the quick mode with a real SIGINT sent to itself as the first batch of the first
#: epoch arrives (workers alive, every shard written), as a Ctrl-C would.
INTERRUPTED = """
import os, signal, sys
import benchmarks.larger_than_ram as bench
signal.signal(signal.SIGINT, signal.default_int_handler)
check_batch = bench.check_batch
def interrupt(*args):
    os.kill(os.getpid(), signal.SIGINT)
    return check_batch(*args)
bench.check_batch = interrupt
sys.exit(bench.main(sys.argv[1:]))
"""


def test_ctrl_c_during_an_epoch_removes_the_dataset(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    command = [sys.executable, "-c", INTERRUPTED, "--quick", "--dir", str(scratch)]
    completed = run_from_repo(command, warnings=WARNINGS)
    assert completed.returncode == 130, completed.stderr
    assert "one epoch" in completed.stderr
    assert f"interrupted; the dataset in {scratch}" in completed.stderr
    assert completed.stderr.rstrip().endswith("was removed")
    assert list(scratch.iterdir()) == []
