"""A writer killed with SIGKILL at random moments, or at every file operation of its
append, roll, seal, commit and resume, never loses a committed row and can always resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from tests import crash_harness as harness
from tests.crash_writer import FIELDS, SHARD_BYTES, rows
from tests.fault_writer import make_plan
from tests.helpers import run_from_repo

REPO = Path(__file__).resolve().parent.parent
TRIALS = 30


def _run_until_killed(path: Path, seed: int, acks_before_kill: int) -> int:
    """Start a writer, kill it with SIGKILL after ``acks_before_kill`` acknowledged commits, and
    return the last acknowledged row count."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_writer", str(path), str(seed)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = int(child.stdout.readline().split()[1])
    for _ in range(acks_before_kill):
        acknowledged = int(child.stdout.readline().split()[1])
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return acknowledged


def _check_dataset(path: Path, acknowledged: int) -> int:
    ds = ms.open(path)
    assert len(ds) >= acknowledged
    expected = rows(0, len(ds))
    np.testing.assert_array_equal(ds["x"][:], expected["x"])
    np.testing.assert_array_equal(ds["y"][:], expected["y"])
    for shard in ds.shards:
        if shard.sealed:
            loaded = np.load(os.path.join(path, shard.files["y"].path), mmap_mode="r")
            np.testing.assert_array_equal(
                loaded, np.arange(shard.row_offset, shard.row_offset + shard.rows)
            )
    return len(ds)


def test_killed_writer_keeps_every_committed_row(tmp_path: Any) -> None:
    path = tmp_path / "d"
    ms.create(path, fields=FIELDS, shard_bytes=SHARD_BYTES).close()
    rng = np.random.default_rng(2026)
    committed = 0
    for trial in range(TRIALS):
        acknowledged = _run_until_killed(path, trial, int(rng.integers(0, 12)))
        assert acknowledged >= committed
        committed = _check_dataset(path, acknowledged)
    assert committed > 0
    with ms.append(path) as writer:
        writer.extend(rows(writer.rows, 5))
    assert _check_dataset(path, committed + 5) == committed + 5
    leftovers = set(os.listdir(path / "shards")) - {
        os.path.basename(f.path) for s in ms.open(path).shards for f in s.files.values()
    }
    assert leftovers == set()


# -- the fault-injection crash harness (tests/crash_harness.py) --------------------------------
def _assert_crash_safe(summary: dict[str, Any]) -> None:
    failures = json.dumps(summary["failures"], indent=1)
    assert summary["committed_rows_lost"] == 0, failures
    assert summary["unreadable_after_crash"] == 0, failures
    assert summary["wrong_row_count_after_crash"] == 0, failures
    assert summary["rows_read_back_wrong"] == 0, failures
    assert summary["sealed_shards_failing_np_load"] == 0, failures
    assert summary["datasets_failing_verify"] == 0, failures
    assert summary["stray_files_after_next_append"] == 0, failures
    assert summary["resume_failures"] == 0, failures
    assert summary["sync_order_violations"] == 0, failures
    assert summary["child_errors"] == 0, failures
    assert summary["harness_errors"] == 0, failures
    assert summary["failed_trials"] == 0, failures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: Any) -> Iterator[harness.Workspace]:
    """A scratch directory and children forked from a zygote, as the harness runs them."""
    with harness.Launcher("fork") as launcher:
        yield harness.Workspace(str(tmp_path_factory.mktemp("crash-harness")), launcher)


@pytest.fixture(scope="module")
def crashed(workspace: harness.Workspace) -> str:
    """A dataset left by a writer killed just before publishing a commit."""
    return harness.prepare_crashed_base(workspace)


@pytest.fixture(scope="module")
def crashed_ragged(workspace: harness.Workspace) -> str:
    """The same, of ragged fields (tests.crash_writer.RAGGED_FIELDS)."""
    return harness.prepare_crashed_base(workspace, ragged=True)


@pytest.fixture(scope="module")
def crashed_compressed(workspace: harness.Workspace) -> str:
    """The same, of compressed fields (tests.crash_writer.COMPRESSED_FIELDS)."""
    return harness.prepare_crashed_base(workspace, compressed=True)


FRESH = harness.Start()


def _census(
    launcher: harness.Launcher, where: Path, plan: str, start: harness.Start = FRESH
) -> Any:
    where.mkdir()
    return harness.run_census(launcher, harness.prepare_dataset(str(where), start), plan)


@pytest.mark.parametrize("launcher", ["exec", "fork"])
def test_census_is_deterministic_for_a_plan(tmp_path: Any, crashed: str, launcher: str) -> None:
    plan = make_plan(11, 4)
    assert make_plan(11, 4) == plan
    with harness.Launcher(launcher) as children:
        fresh = [_census(children, tmp_path / f"fresh{i}", plan) for i in range(2)]
        resumed = [
            _census(children, tmp_path / f"crashed{i}", harness.SHORT_PLAN, harness.Start(crashed))
            for i in range(2)
        ]
    # Targets name temporary manifests after the writer's pid; operations and steps agree.
    assert [op[:2] for op in fresh[0]] == [op[:2] for op in fresh[1]]
    assert [op[:2] for op in resumed[0]] == [op[:2] for op in resumed[1]]
    assert len(resumed[0]) == 56  # 48 before format 2, and 4 per commit for the table
    assert {op[1] for op in resumed[0]} == {"resume", "seal", "roll", "commit"}
    assert {op[0] for op in resumed[0]} == {
        "unlink", "ftruncate", "pwrite", "write", "fsync", "fsync_directory", "replace"
    }  # fmt: skip


def test_exec_and_fork_children_count_the_same_operations(
    tmp_path: Any, workspace: harness.Workspace
) -> None:
    plan = make_plan(12, 5)
    with harness.Launcher("exec") as children:
        executed = _census(children, tmp_path / "exec", plan)
    forked = _census(workspace.launcher, tmp_path / "fork", plan)
    assert [op[:2] for op in executed] == [op[:2] for op in forked]


def test_the_crashed_base_holds_every_kind_of_leftover(crashed: str) -> None:
    strays = harness.stray_files(crashed)
    assert strays["temporary manifests"] == 1
    assert strays["unnamed shard files"] == 2
    assert strays["unsealed shards with uncommitted bytes"] == 1
    assert len(ms.open(crashed)) == 30


def test_the_crashed_ragged_base_holds_every_kind_of_leftover(crashed_ragged: str) -> None:
    strays = harness.stray_files(crashed_ragged)
    assert strays["temporary manifests"] == 1
    assert strays["unnamed shard files"] == 10  # shards 1 and 2, five files each
    assert strays["unsealed shards with uncommitted bytes"] == 1  # shard 0, sealed meanwhile
    assert strays["uncommitted shard table records"] == 1
    ds = ms.open(crashed_ragged)
    assert len(ds) == 12
    assert [(shard.rows, shard.sealed) for shard in ds.shards] == [(12, False)]
    last = ds.shards[-1].files["tokens"]
    assert last.prefix_checksum is not None
    assert last.offsets_prefix_checksum is not None


def test_the_crashed_compressed_base_holds_every_kind_of_leftover(crashed_compressed: str) -> None:
    strays = harness.stray_files(crashed_compressed)
    assert strays["temporary manifests"] == 1
    assert strays["unnamed shard files"] == 15  # shards 1 to 3, five files each
    assert strays["unsealed shards with uncommitted bytes"] == 1
    assert strays["uncommitted shard table records"] == 1
    ds = ms.open(crashed_compressed)
    assert len(ds) == 12
    assert [(shard.rows, shard.sealed) for shard in ds.shards] == [(12, False)]
    for name in ("img", "codes"):
        last = ds.shards[-1].files[name]
        assert last.prefix_checksum is not None
        assert last.offsets_prefix_checksum is not None
    # 12 committed rows of ten to a block: the commit wrote the last two as a block of two.
    ends = np.load(os.path.join(crashed_compressed, ds.shards[-1].files["img"].offsets_path))
    assert len(np.unique(ends[1:13])) == 2


@pytest.mark.parametrize("launcher", ["exec", "fork"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_at_k_stops_at_exactly_that_operation(
    tmp_path: Any, launcher: str, when: str
) -> None:
    with harness.Launcher(launcher) as children:
        ops = _census(children, tmp_path / "census", harness.PREFIX_PLAN)
        replace = [k for k, op in enumerate(ops, 1) if op[0] == "replace"][1]  # 30 -> 50 rows
        for k in (1, replace, len(ops)):
            (tmp_path / f"k{k}").mkdir()
            path = harness.prepare_dataset(str(tmp_path / f"k{k}"), FRESH)
            run = harness.run_injected(children, path, harness.PREFIX_PLAN, k, when)
            assert run.returncode == -signal.SIGKILL, run.stderr
            assert run.kill is not None
            assert run.kill[:4] == [str(k), when, *ops[k - 1][:2]]
            assert run.lines[-1].startswith("KILL ")
            if k == replace:
                temporary = [e for e in os.listdir(path) if e.startswith(".manifest.json.tmp-")]
                assert len(ms.open(path)) == (30 if when == "before" else 50)
                assert len(temporary) == (1 if when == "before" else 0)
        (tmp_path / "past").mkdir()
        path = harness.prepare_dataset(str(tmp_path / "past"), FRESH)
        run = harness.run_injected(children, path, harness.PREFIX_PLAN, len(ops) + 1, when)
    assert run.returncode == 0
    assert run.done == len(ops)
    assert run.kill is None
    assert len(ms.open(path)) == 50


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("script", ["short-from-crash", "big-shards"])
def test_killed_at_every_operation_of_a_short_script(
    workspace: harness.Workspace, crashed: str, script: str, when: str
) -> None:
    if script == "short-from-crash":
        start, plan, count = harness.Start(crashed), harness.SHORT_PLAN, 56
        steps = {"resume", "seal", "roll", "commit"}
    else:
        start, plan, count = (
            harness.Start(shard_bytes=harness.BIG_SHARD_BYTES),
            harness.BIG_PLAN,
            54,
        )
        steps = {"resume", "seal", "roll", "commit", "append"}
    ops = workspace.ops(start, plan)
    specs = [
        spec
        for spec in harness.every_step_trials(start, plan, ops)
        if spec.kind == f"every-step-{when}"
    ]
    results = harness.run_trials(workspace, specs, 2)
    summary = harness.summarize(results, 0.0)
    _assert_crash_safe(summary)
    assert summary["trials"] == len(ops) == count
    assert summary["children_killed"] == len(ops)
    assert set(summary["kills_by_step"]) == steps
    hits = sorted((int(r.label.split("kill-at=")[1].split()[0]), r.hits[0]) for r in results)
    assert hits == [(k, f"{op[0]} {op[1]} {when}") for k, op in enumerate(ops, 1)]
    assert summary["crashes_leaving"]["temporary manifests"] > 0
    assert summary["crashes_leaving"]["unnamed shard files"] > 0
    assert summary["crashes_leaving"]["unsealed shards with uncommitted bytes"] > 0
    assert summary["crashes_leaving"]["uncommitted shard table records"] > 0


def test_killed_at_every_operation_of_a_ragged_script(
    workspace: harness.Workspace, crashed_ragged: str
) -> None:
    """RAGGED_PLAN from the crashed ragged dataset, killed just before each of its file
    operations (killing just after one leaves what killing before the next does, but for
    files created in between; the harness's command line runs both sides)."""
    start = harness.Start(crashed_ragged, ragged=True)
    ops = workspace.ops(start, harness.RAGGED_PLAN)
    specs = [
        spec
        for spec in harness.every_step_trials(start, harness.RAGGED_PLAN, ops)
        if spec.kind == "every-step-before"
    ]
    results = harness.run_trials(workspace, specs, 4)  # bound by fsync latency, not the CPU
    summary = harness.summarize(results, 0.0)
    _assert_crash_safe(summary)
    assert summary["trials"] == len(ops) == 146
    assert summary["children_killed"] == len(ops)
    assert set(summary["kills_by_step"]) == {"resume", "seal", "roll", "commit", "part"}
    # Every step writes both files of each ragged field, and the part's files are adopted.
    for step in ("resume", "seal", "roll", "commit"):
        targets = {op[2] for op in ops if op[1] == step}
        assert any(target.endswith(".tokens.offsets.npy") for target in targets), step
        assert any(target.endswith(".strokes.npy") for target in targets), step
    assert any(op[2].startswith("shards/p-") for op in ops if op[1] == "seal")
    assert [op[0] for op in ops].count("replace") == 2  # the commit, and commit_parts
    for leftover in (
        "temporary manifests",
        "unnamed shard files",
        "unsealed shards with uncommitted bytes",
        "uncommitted shard table records",
        "files of parts",
    ):
        assert summary["crashes_leaving"][leftover] > 0, leftover


def test_killed_at_every_operation_of_a_compressed_script(
    workspace: harness.Workspace, crashed_compressed: str
) -> None:
    """COMPRESSED_PLAN from the crashed compressed dataset (a zstd field of ten rows a block,
    an lz4 ragged field, shards rolled on size, commits mid-block, a part), killed just
    before each of its file operations: the dataset opens with exactly the committed rows,
    every sealed file loads and decompresses to its rows, verify passes, and an appender
    resumes and finishes."""
    start = harness.Start(crashed_compressed, compressed=True)
    ops = workspace.ops(start, harness.COMPRESSED_PLAN)
    specs = [
        spec
        for spec in harness.every_step_trials(start, harness.COMPRESSED_PLAN, ops)
        if spec.kind == "every-step-before"
    ]
    results = harness.run_trials(workspace, specs, 4)  # bound by fsync latency, not the CPU
    summary = harness.summarize(results, 0.0)
    _assert_crash_safe(summary)
    assert summary["trials"] == len(ops) == 171
    assert summary["children_killed"] == len(ops)
    assert set(summary["kills_by_step"]) == {"resume", "seal", "roll", "commit", "part"}
    # Resume cuts both files of each compressed field back; a commit writes the pending
    # rows of a block (frames and block ends) before it syncs them.
    for step in ("resume", "seal", "commit"):
        targets = {op[2] for op in ops if op[1] == step}
        for suffix in (".img.npy", ".img.offsets.npy", ".codes.npy", ".codes.offsets.npy"):
            assert any(target.endswith(suffix) for target in targets), (step, suffix)
    pending = [op for op in ops if op[1] == "commit" and op[0] in ("write", "pwrite", "pwritev")]
    assert any(op[2].endswith(".img.npy") for op in pending), pending
    assert any(op[2].startswith("shards/p-") for op in ops if op[1] == "seal")
    assert [op[0] for op in ops].count("replace") == 3  # two commits, and commit_parts
    for leftover in (
        "temporary manifests",
        "unnamed shard files",
        "unsealed shards with uncommitted bytes",
        "uncommitted shard table records",
        "files of parts",
    ):
        assert summary["crashes_leaving"][leftover] > 0, leftover


def test_killed_at_random_operations_and_random_times(
    workspace: harness.Workspace, crashed: str
) -> None:
    rng = np.random.default_rng(2026)
    specs = harness.random_op_trials(rng, 12, crashed) + harness.random_time_trials(rng, 12)
    results = harness.run_trials(workspace, specs, 2)
    summary = harness.summarize(results, 0.0)
    _assert_crash_safe(summary)
    assert summary["trials_by_kind"]["random-op"] == 12
    assert summary["trials_by_kind"]["random-time"] == 12
    ragged = [r for r in results if "start=fresh-ragged" in r.label]
    assert {r.kind for r in ragged} == {"random-op", "random-time"}
    assert summary["children_killed"] == summary["children"]
    assert sum(summary["kills_by_step"].values()) == 12


def test_harness_command_line_writes_a_summary(tmp_path: Any) -> None:
    report = tmp_path / "summary.json"
    command = [sys.executable, "-m", "tests.crash_harness", "--trials", "6", "--seed", "3"]
    done = run_from_repo([*command, "--json", str(report)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| trials | 6 |" in done.stdout
    summary = json.loads(report.read_text())
    assert summary["trials"] == 6
    assert summary["trials_by_kind"] == {
        "every-step-before": 0, "every-step-after": 0, "random-op": 3, "random-time": 3
    }  # fmt: skip
    _assert_crash_safe(summary)


@pytest.mark.parametrize(
    ("breakage", "violation"),
    [
        (
            "import memshard.durable as d; d.sync_files = lambda paths: None",
            "with unsynced writes",
        ),
        ("import memshard.appender as a; a.fsync_directory = lambda path: None", "its directory"),
        (
            "import memshard.appender as a, memshard.durable as d, memshard.manifest as m\n"
            "def publish(root, manifest):\n"
            "    temporary = os.path.join(root, '.manifest.json.tmp-1')\n"
            "    d.write_file_durably(temporary, m.dumps_checked(manifest, where=root))\n"
            "    os.replace(temporary, os.path.join(root, 'manifest.json'))\n"
            "a.publish_manifest = publish",
            "commit returned before the dataset directory was synced",
        ),
    ],
    ids=["no-shard-fsync", "no-shards-dir-fsync", "no-dataset-dir-fsync"],
)
def test_the_sync_audit_catches_a_writer_that_skips_a_sync(
    tmp_path: Any, breakage: str, violation: str
) -> None:
    path = harness.prepare_dataset(str(tmp_path), FRESH)
    argv = [path, "--plan", "e30,c,e20,c"]
    code = f"import os\n{breakage}\nfrom tests.fault_writer import main\nmain({argv!r})"
    done = run_from_repo([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    audit = [line for line in done.stdout.splitlines() if line.startswith("AUDIT ")]
    assert audit
    assert any(violation in line for line in audit), audit


@pytest.mark.parametrize(
    ("breakage", "violation"),
    [
        (
            "import memshard.durable as d\n"
            "real = d.sync_files\n"
            "d.sync_files = lambda paths: real([p for p in paths if 'offsets' not in p])",
            r"^AUDIT published shards/\S+\.tokens\.offsets\.npy with unsynced writes$",
        ),
        (
            "import memshard.durable as d\n"
            "real = d.sync_files\n"
            "d.sync_files = lambda paths: real([p for p in paths if '/p-' not in p])",
            r"^AUDIT part record p-\S+\.json: published shards/p-\S+ with unsynced writes$",
        ),
    ],
    ids=["no-offsets-fsync", "no-part-fsync"],
)
def test_the_sync_audit_covers_offsets_files_and_part_records(
    tmp_path: Any, breakage: str, violation: str
) -> None:
    path = harness.prepare_dataset(str(tmp_path), harness.RAGGED)
    _audit_catches(tmp_path, path, breakage, violation, harness.RAGGED)


def test_the_sync_audit_covers_the_offsets_files_of_compressed_fields(tmp_path: Any) -> None:
    """The audit finds the block ends of both compressed fields (a fixed one and a ragged
    one) in the shard table's records, and their offsets files in the manifest's shards."""
    breakage = (
        "import memshard.durable as d\n"
        "real = d.sync_files\n"
        "d.sync_files = lambda paths: real([p for p in paths if 'offsets' not in p])"
    )
    for name in ("img", "codes"):
        path = harness.prepare_dataset(str(tmp_path / name), harness.COMPRESSED)
        violation = rf"^AUDIT published shards/\S+\.{name}\.offsets\.npy with unsynced writes$"
        _audit_catches(tmp_path / name, path, breakage, violation, harness.COMPRESSED)


def _audit_catches(
    tmp_path: Any, path: str, breakage: str, violation: str, start: harness.Start
) -> None:
    argv = [path, "--plan", "e30,c,p30,e3"]
    code = f"import os\n{breakage}\nfrom tests.fault_writer import main\nmain({argv!r})"
    done = run_from_repo([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    audit = [line for line in done.stdout.splitlines() if line.startswith("AUDIT ")]
    assert any(re.match(violation, line) for line in audit), audit
    # Unbroken, the same script passes the audit.
    clean = harness.prepare_dataset(str(tmp_path / "clean"), start)
    done = run_from_repo([sys.executable, "-m", "tests.fault_writer", clean, "--plan", argv[2]])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("AUDIT ")] == []
    assert "AUDITED 4" in lines  # the manifests of three commits, and the part's record
