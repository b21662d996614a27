"""Parallel writers: parts written independently, committed in one ordered, atomic step."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import errors
from memshard.manifest import own_checksum
from memshard.parts import PartTarget, dumps_part, load_part, loads_part

FIELDS = {"x": ("float32", (3,)), "y": ("int64", ())}
ROW_BYTES = 3 * 4 + 8


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    """Rows whose content names their global position: y == position, x == position + [0,.1,.2]."""
    y = np.arange(start, start + count, dtype=np.int64)
    x = (y[:, None] + np.array([0.0, 0.1, 0.2])).astype(np.float32)
    return {"x": x, "y": y}


def make(path: os.PathLike[str] | str, shard_rows: int = 8, **kwargs: object) -> str:
    ms.create(path, FIELDS, shard_bytes=ROW_BYTES * shard_rows, **kwargs).close()  # type: ignore[arg-type]
    return os.fspath(path)


def part_of(path: str, start: int, count: int, **kwargs: object) -> ms.Part:
    with ms.write_part(path, **kwargs) as part:  # type: ignore[arg-type]
        part.extend(rows(start, count))
    assert part.part is not None
    return part.part


def assert_rows(path: str, count: int) -> None:
    dataset = ms.open(path)
    assert len(dataset) == count
    expected = rows(0, count)
    np.testing.assert_array_equal(dataset["y"][:], expected["y"])
    np.testing.assert_array_equal(dataset["x"][:], expected["x"])


def part_files(path: str) -> list[str]:
    return sorted(
        name for name in os.listdir(os.path.join(path, "shards")) if name.startswith("p-")
    )


def test_parts_written_in_any_order_are_committed_in_key_order(tmp_path):
    path = make(tmp_path / "ds")
    sizes = [5, 20, 8, 1]
    starts = np.cumsum([0, *sizes[:-1]])
    parts = [part_of(path, int(starts[k]), sizes[k], key=k) for k in (2, 0, 3, 1)]
    assert len(ms.open(path)) == 0  # nothing is visible before the commit

    ranges = ms.commit_parts(path, parts)

    assert list(ranges.values()) == [range(0, 5), range(5, 25), range(25, 33), range(33, 34)]
    assert_rows(path, 34)
    dataset = ms.open(path)
    assert [shard.rows for shard in dataset.shards] == [5, 8, 8, 4, 8, 1]
    assert all(shard.sealed for shard in dataset.shards)
    assert os.listdir(tmp_path / "ds" / "parts") == []  # records of committed parts are gone
    for shard in dataset.shards:  # every shard file is a plain .npy
        loaded = np.load(os.path.join(path, shard.files["y"].path), mmap_mode="r")
        np.testing.assert_array_equal(loaded, rows(shard.row_offset, shard.rows)["y"])
    assert dataset.verify().ok


def test_order_given_and_order_function(tmp_path):
    path = make(tmp_path / "ds")
    first, second = part_of(path, 0, 3, key="b"), part_of(path, 3, 4, key="a")
    ms.commit_parts(path, [first, second], order="given")
    third, fourth = part_of(path, 10, 2, key=(1, 0)), part_of(path, 7, 3, key=(0, 5))
    ranges = ms.commit_parts(path, [third.id, fourth.id], order=lambda part: part.key)
    assert ranges == {fourth.id: range(7, 10), third.id: range(10, 12)}
    assert_rows(path, 12)


def test_parts_follow_rows_of_an_appender_and_seal_its_open_shard(tmp_path):
    path = make(tmp_path / "ds")
    appender = ms.append(path)
    appender.extend(rows(0, 11))
    appender.commit()  # leaves an unsealed shard of 3 rows
    appender.abort()
    assert not ms.open(path).shards[-1].sealed
    ms.commit_parts(path, [part_of(path, 11, 9, key=0)])
    with ms.append(path) as appender:
        appender.extend(rows(20, 5))
    assert_rows(path, 25)
    assert [shard.rows for shard in ms.open(path).shards] == [8, 3, 8, 1, 5]


def test_commit_is_all_or_nothing(tmp_path):
    path = make(tmp_path / "ds")
    good = part_of(path, 0, 4, key=0)
    unfinished = ms.write_part(path, key=1)
    unfinished.extend(rows(4, 4))
    before = ms.open(path).generation

    with pytest.raises(errors.PartIncompleteError, match="still being written"):
        ms.commit_parts(path, [good, unfinished.id])
    assert ms.open(path).generation == before
    assert len(ms.open(path)) == 0

    finished = unfinished.close()
    ms.commit_parts(path, [good, finished])
    assert_rows(path, 8)


def _write_then_wait(path: str, ready: multiprocessing.connection.Connection) -> None:
    writer = ms.write_part(path, key=7, group="victim")
    writer.extend(rows(0, 20))
    ready.send(writer.id)
    ready.recv()  # never answered: the parent kills this process mid-write


def test_a_killed_writer_leaves_a_part_that_is_never_committed(tmp_path):
    path = make(tmp_path / "ds")
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_write_then_wait, args=(path, child_end))
    process.start()
    victim = parent_end.recv()
    assert process.pid is not None  # started
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    assert any(name.startswith(victim) for name in part_files(path))

    with pytest.raises(errors.PartIncompleteError, match="never finished"):
        ms.commit_parts(path, [victim])
    retry = part_of(path, 0, 20, key=7)
    ms.commit_parts(path, [retry])
    assert_rows(path, 20)

    assert ms.discard_parts(path, group="victim") == [victim]
    assert not any(name.startswith(victim) for name in part_files(path))
    assert os.listdir(os.path.join(path, "parts")) == []
    assert_rows(path, 20)


def test_committing_a_part_twice_is_refused(tmp_path):
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 3, key=0)
    ms.commit_parts(path, [part])
    # Its record is gone (the commit deleted it), but the manifest names its files: the
    # documented PartCommittedError, not "no record: never finished".
    other = part_of(path, 3, 5, key=1)
    for parts in ([part], [part.id], [other, part]):
        with pytest.raises(errors.PartCommittedError, match=f"part {part.id} is committed already"):
            ms.commit_parts(path, parts)
    assert_rows(path, 3)
    assert ms.discard_parts(path, [other]) == [other.id]
    (tmp_path / "ds" / "parts" / f"{part.id}.json").write_bytes(dumps_part(part))
    with pytest.raises(errors.PartCommittedError, match=part.id):
        ms.commit_parts(path, [part])
    assert ms.discard_parts(path) == [part.id]  # only the stale record goes
    assert_rows(path, 3)


def test_bad_part_lists_are_refused(tmp_path):
    path = make(tmp_path / "ds")
    keyed, unkeyed = part_of(path, 0, 2, key=0), part_of(path, 2, 2)
    text_key = part_of(path, 2, 2, key="z")
    cases: list[tuple[list[ms.Part | str], str]] = [
        ([keyed, keyed], "more than once"),
        ([keyed, unkeyed], "needs every part to have a key"),
        ([keyed, text_key], "distinct and of one kind"),
        (["not-a-part"], "is not a part id"),
    ]
    for listed, match in cases:
        with pytest.raises(errors.PartError, match=match):
            ms.commit_parts(path, listed)
    with pytest.raises(errors.ArgumentError, match="order must be"):
        ms.commit_parts(path, [keyed], order="fastest")  # type: ignore[arg-type]
    with pytest.raises(errors.PartError, match="differs from its record"):
        ms.commit_parts(path, [keyed.model_copy(update={"key": 5})])
    assert len(ms.open(path)) == 0


def test_parts_of_another_dataset_are_refused(tmp_path):
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 2, key=0)
    record = (tmp_path / "ds" / "parts" / f"{part.id}.json").read_bytes()
    make(tmp_path / "ds", overwrite=True)  # a new dataset (uuid) at the same path
    (tmp_path / "ds" / "parts").mkdir()
    (tmp_path / "ds" / "parts" / f"{part.id}.json").write_bytes(record)
    with pytest.raises(errors.PartError, match="another dataset"):
        ms.commit_parts(path, [part.id])


def test_damaged_records_and_files_are_refused(tmp_path):
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 10, key=0)
    record_path = tmp_path / "ds" / "parts" / f"{part.id}.json"
    good = record_path.read_bytes()
    flipped = bytearray(good)
    flipped[good.index(b'"rows": 10') + 9] = ord("9")
    record_path.write_bytes(bytes(flipped))
    with pytest.raises(errors.PartError, match="checksum does not match"):
        ms.commit_parts(path, [part.id])
    record_path.write_bytes(good[:-5])
    with pytest.raises(errors.PartError, match="not a part record"):
        ms.commit_parts(path, [part.id])
    record_path.write_bytes(good)

    data_file = os.path.join(path, part.shards[0].files["x"].path)
    with open(data_file, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(errors.ChecksumError, match=data_file):
        ms.commit_parts(path, [part], verify=True)
    os.truncate(data_file, 4096 + 4)
    with pytest.raises(errors.ShardSizeError, match=data_file):
        ms.commit_parts(path, [part])
    assert len(ms.open(path)) == 0


def test_records_round_trip_and_are_checked(tmp_path):
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 17, key=(3, 1))
    assert loads_part(dumps_part(part), where="x") == part
    assert load_part(path, part.id) == part
    assert part.key == (3, 1)
    assert part.rows == 17
    assert len(part.shards) == 3
    body = dumps_part(part).replace(b'"rows": 17', b'"rows": 18')
    prefix = body[: body.rindex(b'"xxh3_64:')]
    resealed = prefix + f'"{own_checksum(prefix)}"}}\n'.encode()  # a valid checksum, bad rows
    with pytest.raises(errors.PartError, match="not a valid part record"):
        loads_part(resealed, where="x")


def test_a_record_whose_file_has_a_prefix_checksum_is_refused(tmp_path):
    """A part's shards are sealed: a prefix_checksum (of unsealed shards only) in a record is
    refused when it is read, never left to fail the commit's manifest validation."""
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 3, key=0)
    checksum = part.shards[0].files["y"].checksum
    body = dumps_part(part).replace(
        f'"checksum": "{checksum}"'.encode(),
        f'"checksum": "{checksum}", "prefix_checksum": "{checksum}"'.encode(),
    )
    prefix = body[: body.rindex(b'"xxh3_64:')]
    record = prefix + f'"{own_checksum(prefix)}"}}\n'.encode()
    with pytest.raises(errors.PartError, match="no prefix_checksum"):
        loads_part(record, where="x")
    with open(os.path.join(path, "parts", f"{part.id}.json"), "wb") as handle:
        handle.write(record)
    with pytest.raises(errors.PartError, match="no prefix_checksum"):
        ms.commit_parts(path, [part.id])
    assert len(ms.open(path)) == 0


def test_a_part_record_states_the_format_version_it_was_written_for(tmp_path):
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 3, key=0)
    assert part.version == ms.FORMAT_VERSION == "2.2"
    assert b"prefix_checksum" not in dumps_part(part)


def test_the_appender_resuming_leaves_running_parts_alone(tmp_path):
    path = make(tmp_path / "ds")
    running = ms.write_part(path, key=1)
    running.extend(rows(8, 5))
    with ms.append(path) as appender:  # cleans its own leftovers only
        appender.extend(rows(0, 8))
    assert part_files(path)
    ms.commit_parts(path, [running.close()])
    assert_rows(path, 13)


def test_discard_skips_live_writers_and_keeps_committed_files(tmp_path):
    path = make(tmp_path / "ds")
    committed = part_of(path, 0, 4, key=0)
    ms.commit_parts(path, [committed])
    finished = part_of(path, 4, 4, key=1, group="jobb")
    live = ms.write_part(path, key=2, group="jobb")
    live.extend(rows(8, 4))
    assert ms.discard_parts(path, group="jobb") == [finished.id]
    with pytest.raises(errors.PartIncompleteError):
        ms.commit_parts(path, [finished])
    ms.commit_parts(path, [live.close()], order="given")
    dataset = ms.open(path)
    np.testing.assert_array_equal(dataset["y"][:], [0, 1, 2, 3, 8, 9, 10, 11])
    assert ms.discard_parts(path) == []


def test_bad_arguments_get_typed_errors(tmp_path):
    path = make(tmp_path / "ds", labels={"y": ["a", "b"]})
    for bad_group in (lambda: ms.write_part(path, group="Not/OK"),
                      lambda: ms.discard_parts(path, group="Not/OK")):  # fmt: skip
        with pytest.raises(errors.PartError, match="group must be 1-32 characters"):
            bad_group()
    with pytest.raises(errors.ArgumentError, match="part key"):
        ms.write_part(path, key=1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.DatasetNotFoundError):
        ms.write_part(tmp_path / "missing")
    with ms.write_part(path, key=0) as part:
        with pytest.raises(errors.LabelError):
            part.extend({"x": np.zeros((2, 3), np.float32), "y": np.array([0, 2])})
        with pytest.raises(errors.BatchError):
            part.extend({"x": np.zeros((2, 3), np.float32)})
        part.extend({"x": np.zeros((2, 3), np.float32), "y": np.array([0, 1])})
    assert part.close().rows == 2
    with pytest.raises(errors.AppenderClosedError):
        part.extend({"x": np.zeros((1, 3), np.float32), "y": np.array([0])})


def test_an_aborted_part_leaves_nothing(tmp_path):
    path = make(tmp_path / "ds")
    part = ms.write_part(path, key=0)

    def fail_while_writing() -> None:
        with part:
            part.extend(rows(0, 20))
            raise RuntimeError("the job failed")

    with pytest.raises(RuntimeError):
        fail_while_writing()
    assert part_files(path) == []
    assert os.listdir(os.path.join(path, "parts")) == []


def test_a_part_for_a_removed_dataset_fails_and_recreates_nothing(tmp_path):
    # The blocks of a failed from_dask may start after its staging dataset is removed.
    path = make(tmp_path / "ds")
    target = PartTarget.of(path)
    shutil.rmtree(path)
    with pytest.raises(errors.WriteFailedError, match="cannot start part"):
        ms.write_part(target, key=0)
    assert os.listdir(tmp_path) == []


def _write_part_in_process(path: str, start: int, count: int, key: int) -> ms.Part:
    return part_of(path, start, count, key=key)


def test_parts_from_concurrent_processes(tmp_path):
    path = make(tmp_path / "ds", shard_rows=16)
    target = PartTarget.of(path)
    sizes = [37, 5, 16, 64, 1, 30]
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        parts = pool.starmap(
            _write_part_in_process,
            [(target.root, starts[k], sizes[k], k) for k in reversed(range(len(sizes)))],
        )
    ms.commit_parts(path, parts)
    assert_rows(path, sum(sizes))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shard_rows=st.integers(1, 9),
    sizes=st.lists(st.integers(0, 30), min_size=0, max_size=6),
    already=st.integers(0, 12),
    permutation_seed=st.integers(0, 2**32 - 1),
)
def test_any_parts_commit_to_their_concatenation(
    tmp_path_factory, shard_rows, sizes, already, permutation_seed
):
    path = make(tmp_path_factory.mktemp("parts") / "ds", shard_rows=shard_rows)
    with ms.append(path) as appender:
        appender.extend(rows(0, already))
    starts = np.cumsum([already, *sizes[:-1]]).tolist() if sizes else []
    order = np.random.default_rng(permutation_seed).permutation(len(sizes))
    parts = [part_of(path, starts[k], sizes[k], key=int(k)) for k in order]
    ranges = ms.commit_parts(path, parts)
    total = already + sum(sizes)
    assert_rows(path, total)
    assert [r.start for r in ranges.values()] == [already, *starts[1:]] if sizes else ranges == {}
    dataset = ms.open(path)
    assert all(1 <= shard.rows <= shard_rows for shard in dataset.shards)
    assert sum(shard.rows for shard in dataset.shards) == total


def test_parts_are_invisible_to_a_plain_numpy_reader_until_committed(tmp_path):
    """A part's shard files are plain .npy files, whatever happens to its record."""
    path = make(tmp_path / "ds")
    part = part_of(path, 0, 12, key=0)
    for index, shard in enumerate(part.shards):
        loaded = np.load(os.path.join(path, shard.files["x"].path))
        np.testing.assert_array_equal(loaded, rows(8 * index, shard.rows)["x"])
    script = f"import memshard as ms; print(len(ms.open({path!r})))"
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "0"
