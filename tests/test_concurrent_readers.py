"""Readers in other processes refresh and read while a writer commits thousands of times.

One writer process commits 2,000 times, 1 to 7 rows each, into small shards (so it rolls over
to a new shard every dozen commits and sometimes closes and reopens the dataset). Row ``i``
holds ``x = i`` in every element and ``y = i``. Three reader processes loop over
``Dataset.refresh()`` and check, at every refresh, that the row count never goes down, that
every new row and a random sample of older ones hold exactly their expected content (a row
half ``i`` and half ``0`` would be a torn row), and that nothing raises.

The processes synchronise through pipes, never by sleeping: at three checkpoints the writer
stops after a commit and waits until every reader has reported seeing that commit, which
proves that the readers really ran while the writer was in the middle of its work.

The same runs, shorter, on a dataset of ragged fields (:data:`RAGGED_FIELDS`): rows of
varying length, some larger than a shard, whose shards roll on size; a reader must see each
row whole, of its length, never cut short or shifted by an offset it read before its commit.

Children run as ``python -m tests.test_concurrent_readers (writer|reader) PATH SEED [ragged]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

import numpy as np

import memshard as ms

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SHAPE = (5, 7)
FIELDS = {"x": ("float32", SAMPLE_SHAPE), "y": ("int64", ())}
#: 40-row shards: the writer seals one about every ten commits.
SHARD_ROWS = 40
SHARD_BYTES = SHARD_ROWS * (4 * 35 + 8)
COMMITS = 2000
#: Commits after which the writer waits until every reader has seen them.
CHECKPOINTS = (500, 1000, 1500)
READERS = 3
#: Older rows each reader checks per loop, besides every new row.
SAMPLE = 16
#: Kill everything if the test has not finished by then.
DEADLINE = 150.0


#: The ragged run: a ragged int32 field, a ragged field of int16 triples and a fixed field,
#: in shards of about 36 rows; fewer commits and readers.
RAGGED_FIELDS = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "y": ("int64", ())}
RAGGED_SHARD_BYTES = 2048
RAGGED_COMMITS = 200
RAGGED_CHECKPOINTS = (50, 100, 150)
RAGGED_READERS = 2


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    """The content of rows ``start .. start + count``."""
    index = np.arange(start, start + count)
    x = np.broadcast_to(index[:, None, None], (count, *SAMPLE_SHAPE)).astype(np.float32)
    return {"x": x, "y": index}


def token_count(index: np.ndarray) -> np.ndarray:
    """Tokens of rows ``index``: 0 to 12, and 600 (more than a shard) every 50th row."""
    return np.where(index % 50 == 25, 600, index * 7 % 13)


def ragged_rows(start: int, count: int) -> dict[str, Any]:
    """Rows of :data:`RAGGED_FIELDS`: every element of row i is i; ``token_count(i)`` tokens
    and ``i % 4`` strokes."""
    index = np.arange(start, start + count)
    return {
        "tokens": [np.full(n, i, np.int32) for i, n in zip(index, token_count(index), strict=True)],
        "strokes": [np.full((i % 4, 3), i, np.int16) for i in index],
        "y": index,
    }


# -- the writer ---------------------------------------------------------------------------------
def writer_main(path: str, seed: int, ragged: bool = False) -> None:
    rng = np.random.default_rng(seed)
    writer = ms.append(path)
    make, commits = (ragged_rows, RAGGED_COMMITS) if ragged else (rows, COMMITS)
    checkpoints = RAGGED_CHECKPOINTS if ragged else CHECKPOINTS
    for commit in range(1, commits + 1):
        count = int(rng.integers(1, 8))
        batch = make(writer.rows, count)
        if rng.random() < 0.25:
            for i in range(count):
                writer.append({name: values[i] for name, values in batch.items()})
        else:
            writer.extend(batch)
        if rng.random() < 0.02:
            writer.close()  # seals a short shard; the next appender starts a new one
            writer = ms.append(path)
        else:
            writer.commit()
        if commit in checkpoints:
            print(f"CHECK {writer.committed_rows}", flush=True)
            assert sys.stdin.readline().strip() == "GO"
    writer.close()
    print(f"DONE {writer.committed_rows}", flush=True)


# -- a reader -----------------------------------------------------------------------------------
class TornRowError(AssertionError):
    pass


def check_rows(dataset: ms.Dataset, index: np.ndarray, how: str) -> None:
    """Read rows ``index`` (sorted and contiguous for ``slice``) and check their content."""
    if "tokens" in dataset.fields:
        check_ragged_rows(dataset, index, how)
        return
    if how == "slice":
        x = dataset["x"][int(index[0]) : int(index[-1]) + 1]
        y = dataset["y"][int(index[0]) : int(index[-1]) + 1]
    elif how == "take":
        batch = dataset.take(index)
        x, y = batch["x"], batch["y"]
    else:
        x, y = dataset["x"][index], dataset["y"][index]
    good = (x.reshape(index.size, -1) == index[:, None]).all(axis=1) & (y == index)
    if not good.all():
        bad = int(np.flatnonzero(~good)[0])
        raise TornRowError(
            f"row {int(index[bad])} read by {how} at len {len(dataset)}: "
            f"x holds {sorted(set(x[bad].ravel().tolist()))}, y is {int(y[bad])}"
        )


def check_ragged_rows(dataset: ms.Dataset, index: np.ndarray, how: str) -> None:
    """:func:`check_rows` of a ragged dataset: each row of its length, every element i; by
    slice, by ``take``, or row by row (``fancy``)."""
    if how == "slice":
        key = slice(int(index[0]), int(index[-1]) + 1)
        batches = {name: dataset[name][key] for name in ("tokens", "strokes")}
        y = dataset["y"][key]
    elif how == "take":
        batch = dataset.take(index)
        batches, y = {name: batch[name] for name in ("tokens", "strokes")}, batch["y"]
    else:
        batches = {
            name: [dataset[name][i] for i in index.tolist()] for name in ("tokens", "strokes")
        }
        y = dataset["y"][index]
    lengths = {"tokens": token_count(index), "strokes": index % 4}
    for name, batch in batches.items():
        for position, (row, i) in enumerate(zip(batch, index.tolist(), strict=True)):
            if row.shape[0] != lengths[name][position] or not (row == i).all():
                raise TornRowError(
                    f"row {i} of {name} read by {how} at len {len(dataset)}: shape {row.shape}, "
                    f"holds {sorted(set(row.ravel().tolist()))[:5]}"
                )
    if not (y == index).all():
        raise TornRowError(f"y of rows {index.tolist()[:5]}... read by {how}: {y.tolist()[:5]}")


class Commands:
    """Lines from the parent on stdin, polled without blocking (and without the buffering of
    ``sys.stdin``, which could hide a line from ``select``)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.pending = b""

    def poll(self) -> str | None:
        if b"\n" not in self.pending and select.select([self.fd], [], [], 0)[0]:
            self.pending += os.read(self.fd, 4096)
        if b"\n" not in self.pending:
            return None
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()


@dataclasses.dataclass
class ReaderStats:
    """What a reader reports, as JSON, when it stops."""

    lengths: list[int]
    loops: int = 0
    refreshes: int = 0
    rows_checked: int = 0
    final: int | None = None


def reader_main(path: str, seed: int, ragged: bool = False) -> None:
    os.nice(10)  # the writer's progress matters more than one more loop of a reader
    rng = np.random.default_rng(seed)
    dataset = ms.open(path)
    seen = len(dataset)
    stats = ReaderStats(lengths=[seen])
    waiting_for: int | None = None
    commands = Commands()
    print("READY", flush=True)
    while True:
        command = commands.poll()
        if command is not None and command.startswith("WAIT"):
            waiting_for = int(command.split()[1])
        stopping = command is not None and command.startswith("STOP")
        changed = dataset.refresh()
        length = len(dataset)
        if length < seen:
            raise AssertionError(f"len(dataset) went down from {seen} to {length}")
        if changed:
            stats.refreshes += 1
        if length > seen:
            new = np.arange(seen, length)
            check_rows(dataset, new, "slice")
            check_rows(dataset, new[::-1], "take")
            stats.rows_checked += 2 * new.size
            stats.lengths.append(length)
        if length:
            sample = rng.integers(0, length, SAMPLE)
            check_rows(dataset, sample, "take" if stats.loops % 2 else "fancy")
            stats.rows_checked += SAMPLE
        seen = length
        stats.loops += 1
        if waiting_for is not None and length >= waiting_for:
            print(f"SEEN {waiting_for} {length}", flush=True)
            waiting_for = None
        if stopping:
            check_rows(dataset, np.arange(length), "slice")  # everything, once more
            stats.final = length
            print(json.dumps(dataclasses.asdict(stats)), flush=True)
            return


# -- the test -----------------------------------------------------------------------------------
def _start(role: str, path: Path, seed: int, stderr: IO[str], *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.test_concurrent_readers", role, str(path), str(seed)]
    return subprocess.Popen(
        [*command, *extra],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def _send(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def _receive(process: subprocess.Popen[str], what: str, errors: Path) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line or line == "ERROR":
        process.wait()
        raise AssertionError(
            f"{what}: the child failed (exit status {process.returncode})\n" + errors.read_text()
        )
    return line


def _run(tmp_path: Path, path: Path, readers_count: int, *kind: str) -> tuple[int, list[Any]]:
    """Start ``readers_count`` readers and the writer on ``path``, hold the writer at each
    checkpoint until every reader has seen it, stop the readers once the writer is done.

    Returns:
        The rows the writer committed in all, and each reader's statistics.
    """
    errors = tmp_path / "stderr.txt"
    processes: list[subprocess.Popen[str]] = []

    def kill_all() -> None:
        for process in processes:
            process.kill()

    watchdog = threading.Timer(DEADLINE, kill_all)
    watchdog.start()
    with errors.open("w") as stderr:
        try:
            readers = [_start("reader", path, seed, stderr, *kind) for seed in range(readers_count)]
            processes.extend(readers)
            for number, reader in enumerate(readers):
                assert _receive(reader, f"reader {number} start", errors) == "READY"
            writer = _start("writer", path, 2026, stderr, *kind)
            processes.append(writer)
            while True:
                word, count = _receive(writer, "writer", errors).split()
                if word == "DONE":
                    final = int(count)
                    break
                assert word == "CHECK"
                for reader in readers:
                    _send(reader, f"WAIT {count}")
                for number, reader in enumerate(readers):
                    answer = _receive(reader, f"reader {number} at {count} rows", errors)
                    assert answer.startswith(f"SEEN {count} "), answer
                _send(writer, "GO")
            assert writer.wait() == 0
            for reader in readers:
                _send(reader, "STOP")
            stats: list[dict[str, Any]] = []
            for number, reader in enumerate(readers):
                stats.append(json.loads(_receive(reader, f"reader {number} stop", errors)))
                assert reader.wait() == 0
        finally:
            watchdog.cancel()
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        stream.close()
    return final, stats


def _check_stats(stats: list[Any], final: int, checkpoints: int) -> None:
    for number, report in enumerate(stats):
        assert report["final"] == final, (number, report["final"])
        lengths = report["lengths"]
        assert lengths == sorted(lengths)
        # Every checkpoint was seen while the writer waited in the middle of its run, so each
        # reader saw at least that many distinct row counts strictly between 0 and the end.
        assert len({n for n in lengths if 0 < n < final}) >= checkpoints, (number, report)
        assert report["refreshes"] >= checkpoints + 1
        assert report["rows_checked"] >= 2 * final


def test_readers_see_only_whole_committed_rows_while_a_writer_commits(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, fields=FIELDS, shard_bytes=SHARD_BYTES).close()
    assert ms.open(path).manifest.shard_rows == SHARD_ROWS
    final, stats = _run(tmp_path, path, READERS)
    assert final >= COMMITS  # at least one row per commit
    dataset = ms.open(path)
    assert len(dataset) == final
    assert len(dataset.shards) > COMMITS // 10  # the writer rolled over many times
    _check_stats(stats, final, len(CHECKPOINTS))


def test_readers_see_whole_ragged_rows_while_a_writer_commits(tmp_path: Path) -> None:
    """Ragged rows are each of their length and content at every refresh: a reader never
    slices values with offsets of rows not yet committed, nor misses a row's end."""
    path = tmp_path / "ds"
    ms.create(path, fields=RAGGED_FIELDS, shard_bytes=RAGGED_SHARD_BYTES).close()
    final, stats = _run(tmp_path, path, RAGGED_READERS, "ragged")
    assert final >= RAGGED_COMMITS
    dataset = ms.open(path)
    assert len(dataset) == final
    assert len(dataset.shards) > final // 40  # rolled on size, and on every big row
    check_rows(dataset, np.arange(final), "slice")
    assert dataset.verify().ok
    _check_stats(stats, final, len(RAGGED_CHECKPOINTS))


if __name__ == "__main__":
    role, target, seed_text, *kind = sys.argv[1:]
    try:
        (writer_main if role == "writer" else reader_main)(
            target, int(seed_text), kind == ["ragged"]
        )
    except BaseException:
        traceback.print_exc()
        print("ERROR", flush=True)
        sys.exit(1)
