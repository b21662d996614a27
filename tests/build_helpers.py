"""Functions for the tests of :func:`memshard.build`, and a child process that runs a build.

Everything here is picklable (module-level functions, frozen dataclasses), so worker
processes and Dask workers load it by reference (they find this package on the ``sys.path``
their parent gives them). Functions that wait poll a condition with a deadline; none sleeps
to synchronise.

Run as a child process, :func:`main` builds ``range(COUNT)`` with :class:`Drawings` gated at
``GATE_AT`` (inputs from there on wait until the file ``GATE`` exists)::

    python -m tests.build_helpers DST COUNT WORKERS INPUTS_PER_PART GATE_AT GATE
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import memshard as ms
from memshard.buildrecord import BUILD_ATTR

#: Seconds any wait here lasts at most before it fails the test.
DEADLINE = 60.0
#: The fields of :func:`drawings`: an image, a ragged field of strokes, a label.
DRAWING_FIELDS = {
    "image": ("uint8", (4, 4)),
    "strokes": ("float32", (None, 2)),
    "label": ("int64", ()),
}
LABELS = {"label": ["cat", "dog", "fox"]}


def drawings(n: int) -> Iterator[dict[str, Any]]:
    """Rows of input ``n``: ``n % 3`` of them (none for a multiple of 3), row ``k`` with an
    image of ``n + k``, ``k + 1`` strokes and label ``n % 3``."""
    for k in range(n % 3):
        yield {
            "image": np.full((4, 4), (n + k) % 256, dtype=np.uint8),
            "strokes": np.arange(2 * (k + 1), dtype=np.float32).reshape(k + 1, 2) + n,
            "label": n % 3,
        }


def square(n: int) -> dict[str, Any]:
    """One row: ``x`` = ``[n*n, n*n, n*n]`` (int32) and ``n``."""
    return {"x": np.full(3, n * n, dtype=np.int32), "n": n}


def squares_batch(n: int) -> dict[str, Any]:
    """A batch of ``n % 4`` rows of :func:`square`'s fields, rows ``n*10 + k``."""
    values = np.arange(n % 4) + n * 10
    return {"x": np.repeat((values * values).astype(np.int32)[:, None], 3, axis=1), "n": values}


def expected_rows(fn: Any, inputs: Any, skip: Collection[int] = ()) -> list[Any]:
    """The rows a function that yields rows gives for ``inputs`` in order (but those in
    ``skip``): the sequential reference a build must equal."""
    return [row for index, item in enumerate(inputs) if index not in skip for row in fn(item)]


def stored_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of the dataset at ``path``, one mapping each (ragged rows as arrays)."""
    dataset = ms.open(path)
    columns = {name: dataset[name] for name in dataset.fields}
    return [{name: column[i] for name, column in columns.items()} for i in range(len(dataset))]


def assert_same_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for number, (row, want) in enumerate(zip(got, expected, strict=True)):
        assert set(row) == set(want), number
        for name in row:
            np.testing.assert_array_equal(np.asarray(row[name]), np.asarray(want[name]))


def layout(path: str | Path) -> list[tuple[int, tuple[str, ...]]]:
    """Each shard's rows and its files' checksums: equal layouts hold the same bytes."""
    dataset = ms.open(path)
    return [
        (shard.rows, tuple(file.checksum or "" for file in shard.files.values()))
        for shard in dataset.shards
    ]


def committed_inputs(staging: str | Path) -> int:
    """Inputs the build record of the (staging) dataset at ``staging`` says are committed; 0
    while it does not exist."""
    try:
        manifest = json.loads((Path(staging) / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return int(manifest["attrs"][BUILD_ATTR]["committed"])


def wait_until(condition: Any, what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition()`` until it is true; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def live_members(group: int) -> list[str]:
    """``pid state`` of every live process of process group ``group`` (zombies left out:
    they run nothing, and whoever adopts orphans in a container may take its time to reap
    them)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(f"{entry} {fields[0]}")
    return members


def part_ids(staging: str | Path) -> set[str]:
    """The parts with files in ``staging/parts``: running (a lock) or finished (a record),
    not committed."""
    try:
        names = os.listdir(Path(staging) / "parts")
    except FileNotFoundError:
        return set()
    return {n.lstrip(".").split(".")[0] for n in names if n.lstrip(".").startswith("p-")}


def finished_parts(staging: str | Path) -> int:
    """Parts in ``staging/parts`` with a record (finished, not committed)."""
    try:
        names = os.listdir(Path(staging) / "parts")
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if n.startswith("p-") and n.endswith(".json"))


@dataclass(frozen=True)
class Gated:
    """:func:`drawings`, but inputs from ``at`` on wait until the file ``gate`` exists."""

    at: int
    gate: str

    def __call__(self, n: int) -> Iterator[dict[str, Any]]:
        if n >= self.at:
            wait_until(lambda: os.path.exists(self.gate), f"the gate {self.gate}")
        return drawings(n)


@dataclass(frozen=True)
class Failing:
    """:func:`drawings`, failing on the inputs in ``bad``: raising ``ValueError``
    (``how="raise"``) or returning a row of the wrong shape (``how="shape"``) or of values
    the dtype cannot hold (``how="dtype"``)."""

    bad: frozenset[int] = field(default_factory=frozenset)
    how: str = "raise"

    def __call__(self, n: int) -> Iterator[dict[str, Any]]:
        if n not in self.bad:
            return drawings(n)
        if self.how == "raise":
            raise ValueError(f"input {n} is damaged")
        row = {"image": np.zeros((4, 4), np.uint8), "strokes": np.zeros((1, 2)), "label": 0}
        if self.how == "shape":
            row["image"] = np.zeros((5, 4), dtype=np.uint8)
        else:
            row["label"] = 2.5
        return iter([row])


@dataclass(frozen=True)
class WatchesParts:
    """:func:`square`, logging (to ``log``) how many parts of the build at ``staging`` have
    files when each input starts; input 0 waits until ``finished`` other parts have
    finished (their records wait for it, uncommitted)."""

    staging: str
    log: str
    finished: int

    def __call__(self, n: int) -> dict[str, Any]:
        if n == 0:
            wait_until(lambda: finished_parts(self.staging) >= self.finished, "finished parts")
        seen = len(part_ids(self.staging))
        with open(self.log, "a") as log:
            log.write(f"{n} {seen} {finished_parts(self.staging)}\n")
        return square(n)


@dataclass(frozen=True)
class KillsItsProcess:
    """:func:`drawings`, but input ``at`` waits until ``committed`` inputs of the build at
    ``staging`` are committed, then kills its own process (SIGKILL) the first time (the file
    ``marker`` records it)."""

    at: int
    committed: int
    staging: str
    marker: str
    protected_pid: int

    def __call__(self, n: int) -> Iterator[dict[str, Any]]:
        if n == self.at and not os.path.exists(self.marker):
            wait_until(lambda: committed_inputs(self.staging) >= self.committed, "commits")
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            if os.getpid() == self.protected_pid:
                raise AssertionError("KillsItsProcess would kill the test runner")
            os.kill(os.getpid(), signal.SIGKILL)
        return drawings(n)


@dataclass(frozen=True)
class PressesCtrlC:
    """:func:`drawings`, but input ``at`` sends SIGINT to this process (a Ctrl-C) the first
    time (the file ``marker`` records it)."""

    at: int
    marker: str

    def __call__(self, n: int) -> Iterator[dict[str, Any]]:
        if n == self.at and not os.path.exists(self.marker):
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.kill(os.getpid(), signal.SIGINT)
        return drawings(n)


def main(argv: list[str]) -> int:
    # The function from the module, not from __main__ (this file run with -m): the test
    # resumes the build with it, and a build records its function's name.
    from tests.build_helpers import Gated as gated

    dst, count, workers, per_part, at, gate = argv
    try:
        ms.build(gated(int(at), gate), range(int(count)), dst, fields=DRAWING_FIELDS,
                 labels=LABELS, workers=int(workers), inputs_per_part=int(per_part),
                 progress=False)  # fmt: skip
    except KeyboardInterrupt:
        print("KeyboardInterrupt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
