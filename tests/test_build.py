"""memshard.build: a function run on raw inputs, in real processes, resumably.

The functions built with live in ``tests/build_helpers.py`` (worker processes load them from
there). A build must give the rows a sequential loop gives, in input order; an interrupted
build (SIGKILL of the parent or of a worker, Ctrl-C, a failing input), resumed, must give the
same dataset, shard for shard and byte for byte, as one that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client, LocalCluster

import memshard as ms
from memshard import errors
from memshard.buildrecord import BUILD_ATTR, SkippedInput
from memshard.buildrows import infer_fields, is_one_row
from memshard.layout import staging_path
from memshard.schema import field_specs
from tests.build_helpers import (
    DRAWING_FIELDS,
    LABELS,
    Failing,
    Gated,
    KillsItsProcess,
    PressesCtrlC,
    WatchesParts,
    assert_same_rows,
    committed_inputs,
    drawings,
    expected_rows,
    layout,
    live_members,
    square,
    squares_batch,
    stored_rows,
    wait_until,
)
from tests.helpers import REPO_ROOT

#: Inputs of most builds here: 30 inputs of 0-2 rows each, 5 inputs per part (6 parts).
COUNT, PER_PART = 30, 5


def build_drawings(fn: Any, dst: Path, **options: Any) -> ms.BuildReport:
    options = {"fields": DRAWING_FIELDS, "labels": LABELS, "inputs_per_part": PER_PART,
               "progress": False, **options}  # fmt: skip
    return ms.build(fn, range(COUNT), dst, **options)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The drawings built in this process, never interrupted: what every build must equal."""
    path = tmp_path_factory.mktemp("reference") / "drawings"
    build_drawings(drawings, path, workers=0)
    return path


def assert_equals_reference(path: Path, reference: Path) -> None:
    assert_same_rows(stored_rows(path), expected_rows(drawings, range(COUNT)))
    assert layout(path) == layout(reference)
    assert not os.path.lexists(staging_path(path))
    assert os.listdir(path / "parts") == []  # no part left behind


# -- what fn returns, in input order ---------------------------------------------------------


def test_processes_give_the_rows_of_a_sequential_loop_in_input_order(tmp_path, reference):
    report = build_drawings(drawings, tmp_path / "ds", workers=2)
    assert_equals_reference(tmp_path / "ds", reference)
    rows = len(expected_rows(drawings, range(COUNT)))
    assert (report.inputs, report.rows, report.parts, report.resumed) == (COUNT, rows, 6, 0)
    assert report.skipped == ()
    dataset = ms.open(tmp_path / "ds")
    assert dataset.labels == {"label": ("cat", "dog", "fox")}
    record = dataset.attrs[BUILD_ATTR]
    assert (record["committed"], record["inputs"], record["inputs_per_part"]) == (COUNT, COUNT, 5)
    assert record["function"] == "tests.build_helpers:drawings"


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (square, [(n * n, n) for n in range(COUNT)]),
        (squares_batch, [(v * v, v) for n in range(COUNT) for v in n * 10 + np.arange(n % 4)]),
    ],
    ids=["one-row", "batch"],
)
def test_a_mapping_is_one_row_or_a_batch_by_its_dimensions(tmp_path, fn, expected):
    fields = {"x": ("int32", (3,)), "n": ("int64", ())}
    report = ms.build(fn, range(COUNT), tmp_path / "ds", fields=fields, workers=0, progress=False)
    dataset = ms.open(tmp_path / "ds")
    assert report.rows == len(expected) == len(dataset)
    np.testing.assert_array_equal(dataset["x"][:], [[x] * 3 for x, _ in expected])
    np.testing.assert_array_equal(dataset["n"][:], [n for _, n in expected])


def test_fields_are_inferred_from_the_first_rows(tmp_path):
    report = ms.build(drawings, range(2, COUNT), tmp_path / "ds", workers=0, progress=False)
    dataset = ms.open(tmp_path / "ds")
    assert dataset.fields["image"].dtype == np.uint8
    assert dataset.fields["image"].shape == (4, 4)
    assert dataset.fields["strokes"].shape == (None, 2)  # input 2 yields 1 and 2 strokes
    assert dataset.fields["strokes"].dtype == np.float32
    assert dataset.fields["label"].dtype == np.int64  # a Python int
    assert_same_rows(stored_rows(tmp_path / "ds"), expected_rows(drawings, range(2, COUNT)))
    assert report.rows == len(dataset)


def test_inference_rules() -> None:
    one_row = {"x": np.zeros((2, 3), "f4"), "y": 1}
    assert infer_fields(one_row, where="input 0") == {
        "x": (np.dtype("f4"), (2, 3)),
        "y": (np.dtype("i8"), ()),
    }
    with pytest.raises(errors.BuildFieldsError, match=r"may be one row or a batch"):
        infer_fields({"x": np.zeros((2, 3)), "y": np.zeros(2)}, where="input 0")
    with pytest.raises(errors.BuildFieldsError, match=r"differ only in their length"):
        infer_fields([{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}], where="input 0")
    with pytest.raises(errors.BuildFieldsError, match=r"row 1 has the fields"):
        infer_fields([{"x": 1}, {"y": 1}], where="input 0")
    specs = field_specs({"x": ("f4", (3,)), "t": ("i4", (None,))})
    assert is_one_row({"x": [1, 2, 3], "t": [1, 2]}, specs, where="")
    assert not is_one_row({"x": [[1, 2, 3]], "t": [[1, 2]]}, specs, where="")
    assert not is_one_row({"x": np.zeros((2, 3)), "t": [[1], [2, 3]]}, specs, where="")
    with pytest.raises(errors.BatchError, match=r"fields \['x'\] have the dimensions of one row"):
        is_one_row({"x": [1, 2, 3], "t": [[1], [2, 3]]}, specs, where="")


def test_a_mapping_that_may_be_a_batch_needs_fields_and_nothing_is_written(tmp_path):
    with pytest.raises(
        errors.BuildFieldsError,
        match=r"input 0 \(1\): .* may be one row or a batch.*declare the fields",
    ):
        ms.build(squares_batch, range(1, 5), tmp_path / "ds", workers=0)
    assert os.listdir(tmp_path) == []


# -- bad inputs ------------------------------------------------------------------------------


def test_on_error_raise_names_the_input_shows_the_worker_traceback_and_commits_nothing_of_it(
    tmp_path, reference
):
    dst = tmp_path / "ds"
    with pytest.raises(errors.BuildInputError) as raised:
        build_drawings(Failing(frozenset({17})), dst, workers=2)
    error = raised.value
    assert (error.index, error.input_repr) == (17, "17")
    assert "input 17 (17): fn tests.build_helpers:Failing raised ValueError" in str(error)
    assert 'build_helpers.py", line' in error.traceback
    assert "is damaged" in error.traceback
    assert f"In process {os.getpid()}:" not in str(error)  # a worker's traceback
    committed = committed_inputs(staging_path(dst))
    assert committed <= 15  # parts 0-2 at most: the part of input 17 is not
    assert not dst.exists()
    # The input repaired, the same call resumes (the function is the same class).
    report = build_drawings(Failing(), dst, workers=2, resume=True)
    assert report.resumed == committed
    assert_equals_reference(dst, reference)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("shape", r"field 'image': got shape \(5, 4\) for one row, expected \(4, 4\)"),
        ("dtype", r"field 'label'"),
    ],
)
def test_a_row_that_does_not_match_the_fields_is_a_typed_error_naming_the_input(
    tmp_path, how, message
):
    with pytest.raises(errors.BuildRowError, match=rf"input 7 \(7\), row 0: {message}") as raised:
        build_drawings(Failing(frozenset({7}), how), tmp_path / "ds", workers=0)
    assert raised.value.index == 7
    assert isinstance(raised.value, errors.BatchError)


def test_on_error_skip_records_the_inputs_in_the_attrs_and_the_report(tmp_path):
    bad = frozenset({4, 11, 25})
    fn = Failing(bad, "raise")
    report = build_drawings(fn, tmp_path / "ds", workers=0, on_error="skip")
    assert [skip.index for skip in report.skipped] == sorted(bad)
    assert report.skipped[0] == SkippedInput(4, "4", "ValueError: input 4 is damaged")
    index, shown, error = report.skipped[1]
    assert (index, shown, error) == (11, "11", "ValueError: input 11 is damaged")
    assert_same_rows(stored_rows(tmp_path / "ds"), expected_rows(drawings, range(COUNT), bad))
    record = ms.open(tmp_path / "ds").attrs[BUILD_ATTR]
    assert record["skipped_count"] == 3
    assert record["skipped"][2] == {
        "index": 25,
        "input": "25",
        "error": "ValueError: input 25 is damaged",
    }


def test_a_bad_row_is_skipped_too(tmp_path):
    report = build_drawings(Failing(frozenset({5}), "shape"), tmp_path / "ds", workers=0,
                            on_error="skip")  # fmt: skip
    ((index, _, error),) = report.skipped
    assert index == 5
    assert error.startswith("BatchError: input 5 (5), row 0: field 'image'")
    assert_same_rows(stored_rows(tmp_path / "ds"), expected_rows(drawings, range(COUNT), {5}))


def test_a_function_that_cannot_be_pickled_is_refused_by_name_before_anything_is_written(
    tmp_path,
):
    def local(n: int) -> dict[str, int]:
        return {"n": n}

    with pytest.raises(errors.BuildPicklingError, match=r"fn .*<lambda> cannot be pickled"):
        ms.build(lambda n: {"n": n}, range(4), tmp_path / "ds", workers=2)
    with pytest.raises(errors.BuildPicklingError, match=r"fn .*local cannot be pickled.*workers=0"):
        ms.build(local, range(4), tmp_path / "ds", workers=2)
    assert os.listdir(tmp_path) == []
    ms.build(local, range(4), tmp_path / "ds", workers=0)  # in this process, it runs
    assert ms.open(tmp_path / "ds")["n"][:].tolist() == [0, 1, 2, 3]


def test_an_input_that_cannot_be_pickled_is_named(tmp_path):
    inputs = [1, 2, threading.Lock(), 4]
    with pytest.raises(errors.BuildPicklingError, match=r"input 2 \(<unlocked _thread.lock"):
        ms.build(square, inputs, tmp_path / "ds", workers=2, inputs_per_part=2,
                 fields={"x": ("int32", (3,)), "n": ("int64", ())})  # fmt: skip


# -- bounded memory --------------------------------------------------------------------------


def test_parts_in_flight_never_exceed_the_bound_while_a_slow_part_holds_the_commits(tmp_path):
    """Part 0 is slow: its first input waits until two other parts have finished, whose
    records wait, uncommitted, for it. Every input of every part counts the parts that have
    files in the staging dataset when it starts: never more than the bound."""
    dst, log = tmp_path / "ds", tmp_path / "log"
    fn = WatchesParts(staging_path(dst), str(log), finished=2)
    report = ms.build(fn, range(24), dst, workers=2, inputs_per_part=2, progress=False,
                      fields={"x": ("int32", (3,)), "n": ("int64", ())})  # fmt: skip
    limit = 2 * 2  # two parts per worker
    assert report.in_flight_limit == limit == report.max_in_flight
    seen = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert sorted(n for n, _, _ in seen) == list(range(24))
    assert max(parts for _, parts, _ in seen) <= limit
    first = next(entry for entry in seen if entry[0] == 0)
    assert first[2] >= 2  # input 0 went on only with two later parts finished, waiting
    np.testing.assert_array_equal(ms.open(dst)["n"][:], np.arange(24))


# -- interruptions and resume ----------------------------------------------------------------


def run_child(dst: Path, gate: Path, at: int, workers: int = 2) -> subprocess.Popen[str]:
    """A build of the drawings in a process of its own session (and process group), whose
    inputs from ``at`` on wait for ``gate``."""
    command = [sys.executable, "-m", "tests.build_helpers", str(dst), str(COUNT), str(workers),
               str(PER_PART), str(at), str(gate)]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO_ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True
    )


def wait_for_no_process_in(group: int) -> None:
    wait_until(lambda: not live_members(group), f"the processes of group {group} to end")


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_an_interrupted_build_resumes_to_the_dataset_of_an_uninterrupted_one(
    tmp_path, reference, signal_name
):
    """The parent is killed (SIGKILL: its workers die with it) or Ctrl-C is pressed (SIGINT
    to the whole process group, as a terminal sends it) once parts 0-2 are committed and
    the workers wait in input 15; the same call with resume=True skips inputs 0-14."""
    dst, gate = tmp_path / "ds", tmp_path / "gate"
    child = run_child(dst, gate, at=15)
    staging = staging_path(dst)
    try:
        wait_until(lambda: committed_inputs(staging) == 15, "parts 0-2 committed")
        os.killpg(child.pid, getattr(signal, signal_name))
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if signal_name == "SIGINT":
        assert child.returncode == 130, stderr
        assert stderr.strip().endswith("KeyboardInterrupt"), stderr
    else:
        assert child.returncode == -signal.SIGKILL
    wait_for_no_process_in(child.pid)  # no worker outlives the build
    assert committed_inputs(staging) == 15
    assert not dst.exists()
    gate.touch()
    report = build_drawings(Gated(15, str(gate)), dst, workers=2, resume=True)
    assert (report.resumed, report.parts) == (15, 3)
    assert_equals_reference(dst, reference)


def test_a_worker_killed_stops_the_build_and_a_resume_completes_it(tmp_path, reference):
    dst = tmp_path / "ds"
    fn = KillsItsProcess(at=16, committed=10, staging=staging_path(dst),
                         marker=str(tmp_path / "killed"), protected_pid=os.getpid())  # fmt: skip
    died = rf"build worker \d+ died \(signal {int(signal.SIGKILL)}\).*resume=True"
    with pytest.raises(errors.BuildError, match=died):
        build_drawings(fn, dst, workers=2)
    committed = committed_inputs(staging_path(dst))
    assert 10 <= committed <= 15
    report = build_drawings(fn, dst, workers=2, resume=True)
    assert report.resumed == committed
    assert_equals_reference(dst, reference)


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler in this process (what a program starts with)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_in_this_process_stops_at_the_next_input_and_a_resume_completes(tmp_path, reference):
    dst = tmp_path / "ds"
    fn = PressesCtrlC(at=12, marker=str(tmp_path / "pressed"))
    with pytest.raises(KeyboardInterrupt):
        build_drawings(fn, dst, workers=0)
    assert committed_inputs(staging_path(dst)) == 10  # parts 0 and 1; input 12 is in part 2
    report = build_drawings(fn, dst, workers=0, resume=True)
    assert report.resumed == 10
    assert_equals_reference(dst, reference)


def test_a_resume_of_another_build_is_refused(tmp_path):
    dst = tmp_path / "ds"
    with pytest.raises(errors.BuildInputError):
        build_drawings(Failing(frozenset({12})), dst, workers=0)
    staging = staging_path(dst)
    with pytest.raises(errors.BuildStateError, match=r"an interrupted build to .* is here"):
        build_drawings(Failing(), dst, workers=0)
    with pytest.raises(errors.BuildStateError, match="was built from 30 inputs, this call has 31"):
        ms.build(Failing(), range(COUNT + 1), dst, resume=True, workers=0)
    with pytest.raises(errors.BuildStateError, match=r"with fn tests\.build_helpers:Failing, this"):
        build_drawings(drawings, dst, resume=True, workers=0)
    with pytest.raises(errors.BuildStateError, match="from other inputs"):
        ms.build(Failing(), list(range(1, COUNT + 1)), dst, resume=True, workers=0)
    with pytest.raises(errors.BuildStateError, match="5 inputs per part, this call asks for 6"):
        build_drawings(Failing(), dst, resume=True, workers=0, inputs_per_part=6)
    assert committed_inputs(staging) == 10


def test_a_resume_of_a_finished_build_returns_its_report_and_writes_nothing(tmp_path):
    dst = tmp_path / "ds"
    first = build_drawings(Failing(frozenset({3})), dst, workers=0, on_error="skip")
    generation = ms.open(dst).generation
    again = build_drawings(Failing(frozenset({3})), dst, workers=0, on_error="skip", resume=True)
    assert (again.rows, again.resumed, again.parts) == (first.rows, COUNT, 0)
    assert again.skipped == first.skipped
    assert ms.open(dst).generation == generation
    with pytest.raises(errors.DatasetExistsError, match="with fn"):
        build_drawings(drawings, dst, workers=0, resume=True)
    with pytest.raises(errors.DatasetExistsError):
        build_drawings(Failing(frozenset({3})), dst, workers=0)


# -- a Dask cluster ------------------------------------------------------------------------------


def test_a_dask_cluster_builds_the_same_dataset_and_survives_a_lost_worker(tmp_path, reference):
    """A 2-process LocalCluster; the worker that runs input 16 is killed once (SIGKILL), its
    nanny restarts it and the scheduler runs the part again elsewhere."""
    dst = tmp_path / "ds"
    fn = KillsItsProcess(at=16, committed=0, staging=staging_path(dst),
                         marker=str(tmp_path / "killed"), protected_pid=os.getpid())  # fmt: skip
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)  # fmt: skip
    with cluster, Client(cluster) as client:
        report = build_drawings(fn, dst, client=client)
    assert (tmp_path / "killed").exists()
    assert report.in_flight_limit == 4
    assert_equals_reference(dst, reference)


def test_a_dask_client_need_not_be_the_default_one(tmp_path, reference):
    """The parts are waited for with the client given, not with the current one (there is
    none: ``set_as_default=False``, as a program holding several clients makes them)."""
    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                           dashboard_address=":0", silence_logs=logging.ERROR)  # fmt: skip
    with cluster, Client(cluster, set_as_default=False) as client:
        build_drawings(drawings, tmp_path / "ds", client=client)
    assert_equals_reference(tmp_path / "ds", reference)
