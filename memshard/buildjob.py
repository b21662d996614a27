"""Writing one part of a build, in whichever process runs it: :func:`write_inputs`.

A build's inputs are cut into parts of consecutive inputs; part ``k`` holds the rows of
inputs ``k * P`` to ``(k + 1) * P - 1`` (``P`` inputs per part), in input order, and is
written as one part (:mod:`memshard.parts`, group ``build...``, key ``k``) straight into the
build's staging dataset, by this process, a worker process (:mod:`memshard.workers`, which
runs a :class:`BuildJob`) or a Dask worker. The build commits the parts in order.

Each input's rows are collected and checked against the fields before the first of them is
written (:func:`memshard.buildrows.input_rows`), so a failing input leaves nothing in the
part: with ``on_error="raise"`` the part is abandoned (its writer aborted) and the error,
naming the input and holding the traceback, goes to the build; with ``"skip"`` the input is
left out and listed in the part's result.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from . import interrupt
from .buildrecord import SkippedInput, describe_input, function_name
from .buildrows import collect, input_rows
from .errors import BatchError, BuildError, BuildInputError, BuildRowError
from .parts import Part, PartTarget, write_part
from .workerjob import Report

#: What the build does with an input that fails.
OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class BuiltPart:
    """Part ``index`` of a build, written: inputs ``start:stop``, ``rows`` rows, and the
    inputs skipped among them."""

    index: int
    start: int
    stop: int
    part: Part
    rows: int
    skipped: tuple[SkippedInput, ...]


@dataclass(frozen=True)
class BuildJob:
    """What every process that writes parts of a build needs (picklable); also the
    :class:`~memshard.workerjob.Work` of a build's worker process, whose tasks are
    ``(index, start, inputs)``.

    ``marker``, if set, is a file whose absence stops the job: a part is started only while
    it exists (a job on a Dask cluster, whose tasks may outlive the build, spec/PARTS.md
    section 5).
    """

    fn: Callable[[Any], Any]
    target: PartTarget
    on_error: OnError
    group: str
    marker: str | None = None

    def open(self) -> BuildJob:
        """Nothing to open: the job runs its tasks itself."""
        return self

    def run(self, task: tuple[Any, ...], report: Report | None) -> BuiltPart:
        """Write part ``task = (index, start, inputs)``; see :func:`write_inputs`."""
        index, start, items = task
        return write_inputs(self, index, start, items, report)

    def close(self) -> None:
        """Nothing to close."""


def write_inputs(
    job: BuildJob,
    index: int,
    start: int,
    items: Sequence[Any],
    report: Report | None = None,
) -> BuiltPart:
    """Run ``job.fn`` on ``items``, inputs ``start`` to ``start + len(items) - 1``, and
    write their rows as part ``index`` of the build: sealed, ``fsync``-ed shards and the
    part's record (not yet committed). ``report(1, rows)`` follows each input.

    Raises:
        BuildInputError: ``fn`` failed on an input (``on_error="raise"``).
        BuildRowError: what ``fn`` returned for an input does not match the fields
            (``on_error="raise"``).
        BuildError: the job has ended (its marker is gone).
        WriteFailedError: a write failed.
    """
    specs, labels = job.target.fields, job.target.labels
    skipped: list[SkippedInput] = []
    rows = 0
    with write_part(job.target, key=index, group=job.group) as part:
        # Checked while the part's lock is held, as memshard.dask.write_block does.
        if job.marker is not None and not os.path.exists(job.marker):
            raise BuildError(f"{job.target.root}: the build has ended; part {index} is not written")
        for number, item in enumerate(items):
            interrupt.check()
            position = start + number
            where = f"input {position} ({describe_input(item)})"
            try:
                batch, count = input_rows(collect(job.fn(item), where=where), specs, labels,
                                          where=where)  # fmt: skip
            except Exception as exc:
                error = input_error(exc, position, item, job.fn)
                if job.on_error == "raise":
                    raise error from None
                skipped.append(SkippedInput(position, error.input_repr, _summary(exc)))
                count = 0
            else:
                if batch is not None:
                    part.extend(batch)
            rows += count
            if report is not None:
                report(1, count)
    return BuiltPart(index, start, start + len(items), part.close(), rows, tuple(skipped))


def input_error(exc: Exception, index: int, item: Any, fn: Any) -> BuildInputError:
    """The error of input ``index`` (``item``) on which ``fn`` raised ``exc``, or whose
    output did not match the fields: :class:`BuildRowError` for a :class:`BatchError` (its
    message says what), else :class:`BuildInputError` with the traceback of this process."""
    shown = describe_input(item)
    if isinstance(exc, BatchError):
        return BuildRowError(str(exc), index=index, input_repr=shown)
    text = "".join(traceback.format_exception(type(exc), exc, _from_fn(exc.__traceback__)))
    return BuildInputError(
        f"input {index} ({shown}): fn {function_name(fn)} raised {_summary(exc)}\n\n"
        f"In process {os.getpid()}: {text}",
        index=index,
        input_repr=shown,
        traceback=text,
    )


def _from_fn(frames: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame outside memshard on (where ``fn`` starts)."""
    package = os.path.dirname(os.path.abspath(__file__))
    first = frames
    while first is not None and first.tb_frame.f_code.co_filename.startswith(package):
        first = first.tb_next
    return first if first is not None else frames


def _summary(exc: Exception) -> str:
    """``ValueError: message`` (the message of a row error names the input already)."""
    return f"{type(exc).__name__}: {exc}"
