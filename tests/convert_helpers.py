"""Helpers for the conversion tests: sources that stop at a chosen row, and a child process.

:class:`StopAt` wraps a conversion source's opener (``memshard.sources.SourcePlan.opener``).
The reader it opens behaves as the wrapped one until it is asked for a row at or beyond
``row`` (and before ``until``, if given); then it raises ``KeyboardInterrupt``
(``how="interrupt"``), an ``OSError`` (``how="error"``) or kills its own process with
``SIGKILL`` (``how="kill"``). It is picklable, so conversion worker processes
(``python -m memshard.workers``, which find this package through the ``PYTHONPATH`` they
are given) apply it too.

Run as a child process, :func:`main` converts an HDF5 file with such a reader and is killed
at the chosen row: ``python -m tests.convert_helpers SRC DST ROW SHARD_BYTES WORKERS``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memshard.convert import STAGING_SUFFIX

HOW = ("interrupt", "error", "kill", "ctrl-c")


def staging_of(dst: Path) -> Path:
    """Where a conversion to ``dst`` builds the dataset before renaming it."""
    return Path(str(dst) + STAGING_SUFFIX)


def assert_same_values(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal values, the same bits, stored little-endian."""
    assert got.dtype.byteorder in "=<|"
    assert got.dtype == expected.dtype.newbyteorder("<")
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert got.tobytes() == np.ascontiguousarray(expected, dtype=got.dtype).tobytes()


@dataclass(frozen=True)
class StopAt:
    """An opener whose readers stop the conversion once row ``row`` is asked for.

    ``protected_pid`` is a process that must never be killed (the test runner): a ``kill``
    requested there raises ``AssertionError`` instead.
    """

    inner: Any
    row: int
    how: str
    protected_pid: int | None = None
    until: int | None = None
    #: With ``how="ctrl-c"``: a file created when the SIGINT is sent, so that it is sent once,
    #: as one key press sends it, however many reads pass the row afterwards.
    pressed: str | None = None

    def __post_init__(self) -> None:
        assert self.how in HOW, self.how

    def __call__(self) -> StoppingReader:
        return StoppingReader(self.inner(), self)


class StoppingReader:
    """Reads through the wrapped reader, stopping as :class:`StopAt` says."""

    def __init__(self, inner: Any, rule: StopAt) -> None:
        self._inner = inner
        self._rule = rule

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        self._check(start, stop)
        self._inner.read(name, start, stop, out)

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        self._check(start, stop)
        packed: tuple[np.ndarray, np.ndarray] = self._inner.read_ragged(name, start, stop)
        return packed

    def _check(self, start: int, stop: int) -> None:
        rule = self._rule
        if stop > rule.row and (rule.until is None or start < rule.until):
            stop_here(rule)

    def close(self) -> None:
        self._inner.close()


def stop_here(rule: StopAt) -> None:
    """Stop the way ``rule`` says."""
    if rule.how == "interrupt":
        raise KeyboardInterrupt(f"test interrupt at row {rule.row}")
    if rule.how == "error":
        raise OSError(f"test read error at row {rule.row}")
    if rule.how == "ctrl-c":  # what a terminal sends: SIGINT to the whole process group
        if rule.protected_pid is not None and os.getpgid(rule.protected_pid) == os.getpgrp():
            raise AssertionError("StopAt(how='ctrl-c') would interrupt the test runner")
        if rule.pressed is not None:
            try:
                os.close(os.open(rule.pressed, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
        os.killpg(os.getpgrp(), signal.SIGINT)
        return
    if rule.protected_pid == os.getpid():
        raise AssertionError("StopAt(how='kill') would kill the test runner")
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class PauseInSecondShard:
    """An opener whose readers, asked for a row of a second shard (the reader's first shard
    written, the second one's part started), write their process id and a newline to the FIFO
    ``report`` and then wait for a signal that never comes: a conversion worker is paused
    inside a part, holding its lock, for as long as it lives."""

    inner: Any
    shard_rows: int
    report: str

    def __call__(self) -> PausingReader:
        return PausingReader(self.inner(), self)


class PausingReader:
    """Reads through the wrapped reader, pausing as :class:`PauseInSecondShard` says."""

    def __init__(self, inner: Any, rule: PauseInSecondShard) -> None:
        self._inner = inner
        self._rule = rule
        self._first: int | None = None

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        self._check(start)
        self._inner.read(name, start, stop, out)

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        self._check(start)
        packed: tuple[np.ndarray, np.ndarray] = self._inner.read_ragged(name, start, stop)
        return packed

    def _check(self, start: int) -> None:
        shard = start // self._rule.shard_rows
        if self._first is None:
            self._first = shard
        elif shard != self._first:
            fd = os.open(self._rule.report, os.O_WRONLY)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            while True:
                signal.pause()

    def close(self) -> None:
        self._inner.close()


#: ``memshard ARGS`` whose HDF5 conversions read through :class:`PauseInSecondShard`:
#: ``python -c PAUSED_CLI REPORT SHARD_ROWS ARGS...``.
PAUSED_CLI = """
import dataclasses, sys
import memshard.hdf5
from memshard.cli import main
from tests.convert_helpers import PauseInSecondShard
report, shard_rows = sys.argv[1], int(sys.argv[2])
plan = memshard.hdf5.plan
def paused(*args, **kwargs):
    found = plan(*args, **kwargs)
    return dataclasses.replace(found, opener=PauseInSecondShard(found.opener, shard_rows, report))
memshard.hdf5.plan = paused
sys.exit(main(sys.argv[3:]))
"""


def with_stop(plan: Any, row: int, how: str, until: int | None = None) -> Any:
    """``plan`` with its opener wrapped in :class:`StopAt` (protecting this process)."""
    return dataclasses.replace(plan, opener=StopAt(plan.opener, row, how, os.getpid(), until))


def main(src: str, dst: str, row: int, shard_bytes: int, workers: int, how: str = "kill") -> None:
    """Convert ``src`` to ``dst``, stopping as ``how`` says when row ``row`` is read.

    With ``how="ctrl-c"`` (run it in a session of its own), the process group gets SIGINT:
    this prints ``INTERRUPTED`` and exits with status 130 if the conversion raised
    ``KeyboardInterrupt``.
    """
    from memshard import hdf5
    from memshard.convert import convert
    from memshard.errors import SmallShardWarning

    warnings.filterwarnings("ignore", category=SmallShardWarning)  # small shards on purpose
    plan = hdf5.plan(src, None)
    pressed = f"{dst}.ctrl-c"
    plan = dataclasses.replace(plan, opener=StopAt(plan.opener, row, how, pressed=pressed))
    try:
        convert(plan, dst, shard_bytes=shard_bytes, workers=workers, progress=False)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        if os.path.exists(pressed):
            os.unlink(pressed)
        sys.exit(130)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))


@dataclass(frozen=True)
class FailingOpener:
    """An opener that cannot open the source (as if it vanished before a worker started)."""

    message: str

    def __call__(self) -> Any:
        raise OSError(self.message)
