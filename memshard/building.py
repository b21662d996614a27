"""Building a dataset from raw inputs with your own function: :func:`build`.

``build(fn, inputs, dst)`` runs ``fn`` on every input (file paths, ids, ranges, chunk
descriptors: any sequence) and writes what it returns (:mod:`memshard.buildrows` says what it
may return) as the rows of a new dataset at ``dst``, in input order, whatever order the work
finishes in. The inputs are cut into parts of consecutive inputs, each written as one part
(:mod:`memshard.parts`) straight into the staging dataset ``DST.memshard-partial`` by
whichever process runs it (:mod:`memshard.buildjob`), and committed in order
(:mod:`memshard.buildrun`) together with the build record (:mod:`memshard.buildrecord`) that
says how many inputs are committed. The rows are never copied again: a commit adopts the
part's files, and the final step renames the staging dataset to ``DST``.

An interrupted build (Ctrl-C, ``kill -9``, a dead worker, a lost Dask worker, a failing
input) leaves the staging dataset with the first inputs' rows committed; the same call with
``resume=True`` skips them and does the rest, and the result is the one an uninterrupted
build gives: the same rows in the same order, in the same shards.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import interrupt
from . import manifest as manifest_io
from .appender import Appender, append, create
from .buildjob import BuildJob, OnError, input_error
from .buildrecord import (
    BUILD_ATTR,
    BuildRecord,
    SkippedInput,
    describe_input,
    function_name,
    inputs_digest,
)
from .buildrows import batch_bytes, collect, has_rows, infer_fields, input_rows
from .buildrun import (
    PARTS_IN_FLIGHT_PER_WORKER,
    InProcess,
    OnCluster,
    Runner,
    WorkerPool,
    cluster_threads,
    run_parts,
)
from .errors import (
    ArgumentError,
    BuildError,
    BuildFieldsError,
    BuildPicklingError,
    BuildStateError,
    DatasetExistsError,
    MemshardError,
    SchemaError,
)
from .layout import MANIFEST_NAME, PARTS_DIR, staging_path
from .manifest import Manifest
from .parts import PartTarget, discard_parts
from .progress import Bar, progress_bar
from .schema import (
    DEFAULT_SHARD_BYTES,
    field_specs,
    label_vocabularies,
    shard_size_mismatch,
)
from .workerjob import MAX_WORKERS, in_worker_process, main_is_importable, refers_to_main

__all__ = ["PARTS_IN_FLIGHT_PER_WORKER", "BuildReport", "build"]

#: Inputs the build tries, in this process, to find the first output with rows (which gives
#: the fields when they are not declared, and the size of a part).
PROBE_INPUTS = 8
#: By default every worker gets at least this many parts ...
PARTS_PER_WORKER = 8
#: ... and a part's rows fill at most this fraction of a shard (estimated from the first
#: input's output): fewer, larger parts would leave workers idle at the end, and lose more
#: work to an interruption.
PART_FILL = 0.9


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build` did.

    Attributes:
        path: the dataset built (absolute).
        inputs: ``len(inputs)``.
        rows: the rows of the dataset.
        skipped: the inputs skipped (``on_error="skip"``): ``(index, repr, error)`` each, in
            input order; on a resume, those of the earlier runs first (as many as the build
            record lists).
        seconds: how long this call took.
        parts: parts written and committed by this call.
        resumed: inputs committed before this call (by an interrupted run), which it skipped.
        in_flight_limit: the most parts this call could have in flight (handed to a worker
            and not yet committed).
        max_in_flight: the most parts it had in flight.
    """

    path: str
    inputs: int
    rows: int
    skipped: tuple[SkippedInput, ...]
    seconds: float
    parts: int
    resumed: int
    in_flight_limit: int
    max_in_flight: int


@interrupt.deferring
def build(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    dst: str | os.PathLike[str],
    *,
    fields: Mapping[str, Any] | None = None,
    labels: Mapping[str, Iterable[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    workers: int | None = None,
    client: Any = None,
    inputs_per_part: int | None = None,
    resume: bool = False,
    on_error: OnError = "raise",
    progress: bool | None = None,
    shard_bytes: int | None = None,
) -> BuildReport:
    """Run ``fn`` on every input and write what it returns as a new dataset at ``dst``.

    ``fn(input)`` returns one row (a mapping ``{field: value}``), a batch of rows (a mapping
    of arrays stacked along a first axis), or an iterable of rows (a list, a generator); see
    :mod:`memshard.buildrows` for how a mapping tells a row from a batch. The rows land in
    input order. The inputs are cut into parts of ``inputs_per_part`` consecutive inputs;
    every part is written where it runs, straight into the staging dataset
    ``DST.memshard-partial``, and committed in order; ``DST`` appears (one ``rename``) when
    every input is done. At most :data:`PARTS_IN_FLIGHT_PER_WORKER` parts per worker are in
    flight (handed to a worker and not yet committed), so memory and the staging dataset's
    uncommitted files stay bounded however slowly parts are committed.

    Parameters:
        fn: called once per input (and, unless both ``fields`` and ``inputs_per_part`` are
            given, in this process on the first inputs until one gives a row: that output
            gives the fields and the part size). With worker processes
            it must be picklable: a function defined at the top level of a module or
            script (a script's ``if __name__ == "__main__":`` block is not run by the
            workers, which import the script as ``spawn`` does); not a lambda or a local
            function.
        inputs: a sequence (``len`` and indexing): file paths, ids, ``range``\\ s, chunk
            descriptors. Each input is sent to the process that runs it.
        dst: where the dataset appears; it must not exist (see ``resume``).
        fields: ``{name: (dtype, shape)}`` as :func:`memshard.create` takes them (fixed,
            ragged ``(dtype, (None, *tail))``, and any other kind ``create`` accepts).
            Omitted: inferred from the first output with a row, as
            :func:`memshard.buildrows.infer_fields` says; a mapping returned is then one row.
        labels: as for :func:`memshard.create`.
        attrs: as for :func:`memshard.create`; the attrs also hold the build record under
            ``"memshard.build"`` (:mod:`memshard.buildrecord`).
        workers: worker processes (``None``: ``os.cpu_count()``); 0 or 1 runs ``fn`` in this
            process.
        client: a ``dask.distributed.Client``: run the parts on its cluster instead, whose
            workers must share ``dst``'s file system (``workers`` must then be ``None``). A
            lost worker's part is run again elsewhere by the scheduler.
        inputs_per_part: inputs per part; by default, enough parts for
            :data:`PARTS_PER_WORKER` per worker, each filling at most about one shard.
            Every part ends in a shard of its own.
        resume: continue the interrupted build to ``dst`` (skipping the inputs it
            committed), or, if it finished, return its report without writing anything; with
            no interrupted build, start one.
        on_error: ``"raise"``: stop at the first input on which ``fn`` fails, or whose output
            does not match the fields; nothing of it is committed, the inputs before it are
            kept for a resume. ``"skip"``: leave such inputs out, and list them in the report
            and the build record.
        progress: show a bar (inputs and rows done, rows/s, time left) on stderr; ``None``:
            when stderr is a terminal.
        shard_bytes: as for :func:`memshard.create` (default
            :data:`~memshard.DEFAULT_SHARD_BYTES`); on a resume, the interrupted build's.

    Returns:
        A :class:`BuildReport`.

    Raises:
        BuildInputError: ``fn`` failed on an input (``on_error="raise"``); the message and
            its attributes name the input (index and ``repr``) and hold the traceback.
        BuildRowError: what ``fn`` returned for an input does not match the fields
            (``on_error="raise"``); the message names the input and the field.
        BuildFieldsError: no fields given, and they cannot be inferred.
        BuildPicklingError: ``fn`` or an input cannot be sent to a worker process.
        BuildStateError: an interrupted build to ``dst`` is in the way (without
            ``resume``), or it is another build (other fn, inputs, fields, part size).
        BuildError: a worker process died, or a Dask task failed for good.
        DatasetExistsError: ``dst`` exists (and is not this build, finished).
        SchemaError, ArgumentError: bad arguments; nothing is written.
        KeyboardInterrupt: Ctrl-C, taken between inputs (in worker processes, at once); the
            committed inputs are kept for a resume.

    Example:
        >>> import memshard as ms, numpy as np, tempfile, os
        >>> def square(n):
        ...     return {"x": np.full(3, n * n, dtype="int32"), "n": n}
        >>> path = os.path.join(tempfile.mkdtemp(), "squares")
        >>> report = ms.build(square, range(5), path, workers=0)
        >>> x = ms.open(path)["x"]
        >>> report.rows, x[:, 0].tolist()
        (5, [0, 1, 4, 9, 16])
    """
    started = time.monotonic()
    root = os.path.abspath(os.fspath(dst))
    _check_arguments(fn, inputs, on_error, inputs_per_part, attrs)
    processes = _process_count(workers, client)
    asked = BuildRecord(function_name(fn), len(inputs), inputs_digest(inputs), 1)
    if resume and os.path.lexists(root) and not os.path.lexists(staging_path(root)):
        return _finished(root, asked, fields, labels, started)
    if os.path.lexists(root):
        raise DatasetExistsError(
            f"{root}: already exists; a build writes a new dataset (delete it, or build elsewhere)"
        )
    if client is None and processes > 1:
        _check_sendable(fn)
    slots = cluster_threads(client) if client is not None else max(1, processes)
    appender, record = _open_staging(
        fn, inputs, root, asked, fields, labels, attrs, slots, inputs_per_part, resume,
        on_error, shard_bytes,
    )  # fmt: skip
    resumed = record.committed
    try:
        job = BuildJob(fn, PartTarget.of(appender.path), on_error, f"build{secrets.token_hex(4)}")
        planned = _planned_parts(record)
        with progress_bar(record.inputs, desc=os.path.basename(root), enabled=progress,
                          unit="inputs", initial=resumed, rows=True) as bar:  # fmt: skip
            runner = _runner(job, client, processes, len(planned), bar, appender)
            result = run_parts(runner, planned, inputs, appender, record)
        # Parts left by the workers of a killed run: wait until they are dead, then delete.
        discard_parts(appender, wait=True)
        rows = appender.rows
        appender.close_into(root, overwrite=False)
    except BaseException:
        appender.abort()
        raise
    return BuildReport(
        path=root,
        inputs=record.inputs,
        rows=rows,
        skipped=record.skipped + result.skipped,
        seconds=time.monotonic() - started,
        parts=result.parts,
        resumed=resumed,
        in_flight_limit=result.in_flight_limit,
        max_in_flight=result.max_in_flight,
    )


def _check_arguments(
    fn: Any,
    inputs: Any,
    on_error: Any,
    inputs_per_part: Any,
    attrs: Mapping[str, Any] | None,
) -> None:
    if in_worker_process():
        raise BuildError(
            "memshard.build was called in a worker process of a build, which imports the "
            'script that defines fn: guard the call with `if __name__ == "__main__":`'
        )
    if not callable(fn):
        raise ArgumentError(f"fn must be callable, got {type(fn).__name__}")
    if (
        isinstance(inputs, (str, bytes, Mapping))
        or not hasattr(inputs, "__len__")
        or not hasattr(inputs, "__getitem__")
    ):
        raise ArgumentError(
            f"inputs must be a sequence (len and indexing: a list, a range, an array), got "
            f"{type(inputs).__name__}; for an iterator, pass list(...)"
        )
    if on_error not in ("raise", "skip"):
        raise ArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if inputs_per_part is not None and (
        isinstance(inputs_per_part, bool)
        or not isinstance(inputs_per_part, int)
        or inputs_per_part < 1
    ):
        raise ArgumentError(f"inputs_per_part must be a positive int, got {inputs_per_part!r}")
    if attrs is not None and BUILD_ATTR in attrs:
        raise ArgumentError(f"attrs: {BUILD_ATTR!r} is the build's own record")


def _process_count(workers: Any, client: Any) -> int:
    """Worker processes to start (0 or 1: none, ``fn`` runs here)."""
    if client is not None:
        if workers is not None:
            raise ArgumentError(
                "pass workers or client, not both: the parts run on the cluster's workers"
            )
        return 0
    if workers is None:
        return min(os.cpu_count() or 1, MAX_WORKERS)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise ArgumentError(f"workers must be an int in 0..{MAX_WORKERS}, got {workers!r}")
    return workers


def _check_sendable(fn: Any) -> None:
    """``fn`` can be sent to a worker process, and loaded there.

    Raises:
        BuildPicklingError: it cannot be pickled, or lives in the ``__main__`` of an
            interactive session, which a worker cannot import.
    """
    name = function_name(fn)
    try:
        in_main = refers_to_main(fn)
    except Exception as exc:
        raise BuildPicklingError(
            f"fn {name} cannot be pickled, so worker processes cannot run it "
            f"({type(exc).__name__}: {exc}); define it at the top level of a module or script "
            "(a lambda or a function defined inside another cannot be pickled), or pass "
            "workers=0 to run it in this process"
        ) from None
    if in_main and not main_is_importable():
        raise BuildPicklingError(
            f"fn {name} is defined in an interactive session (its __main__ has no file), "
            "which worker processes cannot import; define it in a module and import it, or "
            "pass workers=0 to run it in this process"
        )


def _open_staging(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    root: str,
    asked: BuildRecord,
    fields: Mapping[str, Any] | None,
    labels: Mapping[str, Iterable[str]] | None,
    attrs: Mapping[str, Any] | None,
    slots: int,
    inputs_per_part: int | None,
    resume: bool,
    on_error: OnError,
    shard_bytes: int | None,
) -> tuple[Appender, BuildRecord]:
    """The appender of the staging dataset, and its build record: the interrupted build's
    (``resume``), or a new one."""
    staging = staging_path(root)
    if os.path.lexists(staging):
        if not resume:
            raise BuildStateError(
                f"{staging}: an interrupted build to {root} is here; pass resume=True to "
                "complete it, or delete the directory to start over"
            )
        return _resumed(staging, asked, fields, labels, inputs_per_part, shard_bytes)
    size = DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes
    if fields is not None and inputs_per_part is not None:
        given, per_part = fields, inputs_per_part  # nothing to learn from a first output
    else:
        given, bytes_per_input = _probe(fn, inputs, fields, labels, on_error)
        per_part = inputs_per_part or _inputs_per_part(len(inputs), bytes_per_input, size, slots)
    record = BuildRecord(asked.function, asked.inputs, asked.digest, per_part)
    appender = create(staging, given, labels=labels, shard_bytes=size,
                      attrs={**(attrs or {}), BUILD_ATTR: record.to_attrs()})  # fmt: skip
    return appender, record


def _resumed(
    staging: str,
    asked: BuildRecord,
    fields: Mapping[str, Any] | None,
    labels: Mapping[str, Iterable[str]] | None,
    inputs_per_part: int | None,
    shard_bytes: int | None,
) -> tuple[Appender, BuildRecord]:
    """The interrupted build at ``staging``, checked to be the one asked for, its uncommitted
    parts deleted (those whose writers still live, once they are done: see :func:`build`)."""
    appender = append(staging)
    try:
        record = BuildRecord.of(appender.manifest.attrs, staging)
        difference = _difference(
            appender.manifest, record, asked, fields, labels, inputs_per_part, shard_bytes
        )
        if difference is not None:
            raise BuildStateError(
                f"{staging}: the interrupted build {difference}; delete the directory to start over"
            )
        _end_stale_jobs(staging)
        discard_parts(appender)
    except BaseException:
        appender.abort()
        raise
    return appender, record


def _finished(
    root: str,
    asked: BuildRecord,
    fields: Mapping[str, Any] | None,
    labels: Mapping[str, Iterable[str]] | None,
    started: float,
) -> BuildReport:
    """The report of the build that finished at ``root`` (a resume repeated after the build
    completed), writing nothing.

    Raises:
        DatasetExistsError: ``root`` is not this build, finished; the message says how.
    """
    try:
        manifest = manifest_io.load(os.path.join(root, MANIFEST_NAME))
        record = BuildRecord.of(manifest.attrs, root)
    except (OSError, MemshardError) as exc:
        raise DatasetExistsError(
            f"{root}: already exists and is not a finished build ({exc})"
        ) from None
    difference = _difference(manifest, record, asked, fields, labels, None, None)
    if difference is None and record.committed != record.inputs:
        difference = f"committed {record.committed:,} of {record.inputs:,} inputs"
    if difference is not None:
        raise DatasetExistsError(
            f"{root}: already exists and is not this build, finished: it {difference}"
        )
    return BuildReport(
        path=root,
        inputs=record.inputs,
        rows=manifest.rows,
        skipped=record.skipped,
        seconds=time.monotonic() - started,
        parts=0,
        resumed=record.committed,
        in_flight_limit=0,
        max_in_flight=0,
    )


def _difference(
    manifest: Manifest,
    record: BuildRecord,
    asked: BuildRecord,
    fields: Mapping[str, Any] | None,
    labels: Mapping[str, Iterable[str]] | None,
    inputs_per_part: int | None,
    shard_bytes: int | None,
) -> str | None:
    """How the build ``record`` describes (with ``manifest``) differs from the one asked
    for; what is not given (``None``) is taken as recorded."""
    mismatch = record.mismatch(asked)
    if mismatch is not None:
        return mismatch
    if fields is not None and field_specs(fields) != manifest.fields:
        return f"has the fields {dict(manifest.fields)}, this call {field_specs(fields)}"
    if labels is not None:
        vocabularies = label_vocabularies(labels, manifest.fields)
        if vocabularies != manifest.labels:
            return f"has the labels {dict(manifest.labels)}, this call {vocabularies}"
    if inputs_per_part is not None and inputs_per_part != record.inputs_per_part:
        return (
            f"has {record.inputs_per_part} inputs per part, this call asks for "
            f"{inputs_per_part}; leave inputs_per_part out to keep the first run's"
        )
    return shard_size_mismatch(manifest, shard_bytes)


def _end_stale_jobs(staging: str) -> None:
    """Remove the running markers of the cluster jobs of a killed build: their tasks that
    still run then start no part (spec/PARTS.md section 5)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(os.path.join(staging, PARTS_DIR)):
            if name.endswith(".running"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(staging, PARTS_DIR, name))


def _probe(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    fields: Mapping[str, Any] | None,
    labels: Mapping[str, Iterable[str]] | None,
    on_error: OnError,
) -> tuple[Mapping[str, Any], int | None]:
    """The fields to create the dataset with (``fields``, or inferred), and the bytes of the
    rows of the first input that gives any (``None`` if none of the first
    :data:`PROBE_INPUTS` does), from ``fn`` run here on the first inputs.

    Raises:
        BuildFieldsError: no ``fields``, and they cannot be inferred.
        BuildInputError, BuildRowError: a first input fails (``on_error="raise"``).
        SchemaError: bad ``fields`` or ``labels``, or inferred fields create refuses.
    """
    for index in range(min(len(inputs), PROBE_INPUTS)):
        item = inputs[index]
        where = f"input {index} ({describe_input(item)})"
        try:
            output = collect(fn(item), where=where)
            if not has_rows(output):
                continue
            given = fields if fields is not None else infer_fields(output, where=where)
            specs = field_specs(given)
            batch, _ = input_rows(output, specs, label_vocabularies(labels, specs), where=where)
        except (BuildFieldsError, SchemaError):
            raise
        except Exception as exc:
            if on_error == "raise":
                raise input_error(exc, index, item, fn) from None
            continue
        return given, None if batch is None else batch_bytes(batch)
    if fields is None:
        tried = min(len(inputs), PROBE_INPUTS)
        raise BuildFieldsError(
            f"none of the first {tried} inputs gave a row to infer the fields from; "
            "declare them with fields="
        )
    return fields, None


def _inputs_per_part(count: int, bytes_per_input: int | None, shard_bytes: int, slots: int) -> int:
    """The default part size: :data:`PARTS_PER_WORKER` parts per worker at least, rows of at
    most :data:`PART_FILL` of a shard (at ``bytes_per_input``, when known)."""
    spread = max(1, math.ceil(count / (PARTS_PER_WORKER * slots)))
    if not bytes_per_input:
        return spread
    return max(1, min(spread, int(shard_bytes * PART_FILL) // bytes_per_input))


def _planned_parts(record: BuildRecord) -> list[tuple[int, int, int]]:
    """``(index, start, stop)`` of the parts still to write: part ``k`` holds inputs
    ``k * P`` to ``(k + 1) * P - 1``, from the first input not committed (a multiple of
    ``P``, or the end)."""
    step, count = record.inputs_per_part, record.inputs
    return [
        (start // step, start, min(count, start + step))
        for start in range(record.committed, count, step)
    ]


def _runner(
    job: BuildJob, client: Any, processes: int, parts: int, bar: Bar, appender: Appender
) -> Runner:
    if client is not None:
        return OnCluster(job, client, bar, appender)
    if processes > 1 and parts > 1:
        return WorkerPool(job, min(processes, parts), bar)
    return InProcess(job, bar)
