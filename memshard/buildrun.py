"""Running a build's parts: in this process, in worker processes, or on a Dask cluster.

:func:`run_parts` keeps at most :data:`PARTS_IN_FLIGHT_PER_WORKER` parts per worker in
flight, and commits them in input order, each with the build record
(:mod:`memshard.buildrecord`) that says how far the committed inputs go, in the same commit.
A part is in flight from the moment it is handed to a worker until it is committed: one that
finishes before a part ahead of it waits, uncommitted, and counts; so a slow part (or a slow
committer) stops new parts from starting instead of letting finished ones pile up, and the
staging dataset never holds more than the bound of uncommitted parts of one build.

The three runners hand out tasks ``(index, start, inputs)`` and give back
:class:`~memshard.buildjob.BuiltPart` results:

- :class:`InProcess` runs them here, one after the other (``workers`` 0 or 1);
- :class:`WorkerPool` in worker processes (:mod:`memshard.workers`), as many as asked;
- :class:`OnCluster` on a ``dask.distributed`` client's workers (:mod:`memshard.dask`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .appender import Appender
from .buildjob import BuildJob, BuiltPart, write_inputs
from .buildrecord import BUILD_ATTR, BuildRecord, SkippedInput, describe_input, function_name
from .errors import BuildError, BuildPicklingError, ConversionFailedError, MemshardError
from .ordercommit import COMMIT_BYTES, OrderedCommit
from .progress import Bar
from .workerjob import Failed, Progress, spawn_preparation

#: Parts in flight (handed out, not yet committed) per worker: one running, one waiting in
#: the worker's queue, so that no worker waits for the committer between two parts.
PARTS_IN_FLIGHT_PER_WORKER = 2

#: A part of a build: ``(index, start, stop)``, inputs ``start:stop``.
PlannedPart = tuple[int, int, int]


class Runner(Protocol):
    """Where parts run: hands out tasks, gives back finished parts."""

    @property
    def slots(self) -> int:
        """How many parts run at once."""

    def submit(self, task: tuple[int, int, list[Any]]) -> None:
        """Hand out task ``(index, start, inputs)``."""

    def next_done(self) -> BuiltPart:
        """A part that has finished (blocks until one has)."""

    def stop(self) -> None:
        """Stop at once, after a failure or an interrupt."""

    def close(self) -> None:
        """End, every part handed out having finished."""


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_parts` did: parts committed, inputs skipped, the bound of parts in
    flight and the most there were."""

    parts: int
    skipped: tuple[SkippedInput, ...]
    in_flight_limit: int
    max_in_flight: int


def run_parts(
    runner: Runner,
    planned: Sequence[PlannedPart],
    inputs: Sequence[Any],
    appender: Appender,
    record: BuildRecord,
) -> RunResult:
    """Write the ``planned`` parts of ``inputs`` with ``runner`` and commit them in order,
    each commit with ``record`` updated (in the dataset's attrs, next to the other attrs).

    On any failure or interrupt the runner is stopped and the parts finished in order are
    committed, so that a resume redoes as little as it can; then the error is raised.
    """
    limit = PARTS_IN_FLIGHT_PER_WORKER * runner.slots
    books = _Books(record, appender.manifest.attrs)
    # Each part is committed as soon as those before it are (part_bytes = COMMIT_BYTES): a
    # build's parts are slow to make, and a resume redoes every part not committed.
    committer = OrderedCommit(appender, planned[0][0] if planned else 0, COMMIT_BYTES,
                              attrs=books.attrs_up_to)  # fmt: skip
    upcoming = iter(planned)
    running = most = 0
    try:
        while True:
            while running + committer.pending < limit:
                following = next(upcoming, None)
                if following is None:
                    break
                index, start, stop = following
                runner.submit((index, start, [inputs[i] for i in range(start, stop)]))
                running += 1
                most = max(most, running + committer.pending)
            if running == 0:
                break
            built = runner.next_done()
            running -= 1
            books.finished(built)
            committer.finished(built.index, built.part)
        committer.flush()
    except BaseException:
        runner.stop()
        with contextlib.suppress(Exception):
            committer.flush()
        raise
    runner.close()
    return RunResult(books.committed_parts, tuple(books.skipped), limit, most)


class _Books:
    """The build record as parts finish and are committed, and what this run skipped."""

    def __init__(self, record: BuildRecord, attrs: Mapping[str, Any]) -> None:
        self._record = record
        self._attrs = {key: value for key, value in attrs.items() if key != BUILD_ATTR}
        self._finished: dict[int, BuiltPart] = {}
        self.skipped: list[SkippedInput] = []
        self.committed_parts = 0

    def finished(self, built: BuiltPart) -> None:
        self._finished[built.index] = built
        self.skipped.extend(built.skipped)

    def attrs_up_to(self, last: int) -> dict[str, Any]:
        """The attrs to commit with the parts up to ``last``."""
        first = min(self._finished)
        committed = [self._finished.pop(index) for index in range(first, last + 1)]
        skipped = [skip for built in committed for skip in built.skipped]
        self._record = self._record.committed_up_to(committed[-1].stop, skipped)
        self.committed_parts += len(committed)
        return {**self._attrs, BUILD_ATTR: self._record.to_attrs()}


# -- the runners ------------------------------------------------------------------------------


class InProcess:
    """Runs parts in this process, one after the other; Ctrl-C is taken between inputs."""

    slots = 1

    def __init__(self, job: BuildJob, bar: Bar) -> None:
        self._job = job
        self._bar = bar
        self._tasks: collections.deque[tuple[int, int, list[Any]]] = collections.deque()

    def submit(self, task: tuple[int, int, list[Any]]) -> None:
        self._tasks.append(task)

    def next_done(self) -> BuiltPart:
        return self._job.run(self._tasks.popleft(), self._bar.update)

    def stop(self) -> None:
        self._tasks.clear()

    def close(self) -> None:
        pass


class WorkerPool:
    """Runs parts in ``count`` worker processes (:mod:`memshard.workers`), each given the
    job once and then its parts; a part goes to the worker with the fewest queued."""

    def __init__(self, job: BuildJob, count: int, bar: Bar) -> None:
        # Imported here: the package never imports the module a worker runs (python -m).
        from .workers import WorkerProcesses

        self._job = job
        self._bar = bar
        self._pool = WorkerProcesses(
            count, job, not bar.disable, preparation=spawn_preparation(job), name="build"
        )
        self._queued: dict[Any, collections.deque[int]] = {
            connection: collections.deque() for connection in self._pool.connections
        }
        self._messages = self._pool.messages()

    @property
    def slots(self) -> int:
        return len(self._queued)

    def submit(self, task: tuple[int, int, list[Any]]) -> None:
        connection = min(self._queued, key=lambda candidate: len(self._queued[candidate]))
        try:
            # A worker that has gone reports it (its failure or its death) to next_done.
            self._pool.send(connection, task)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise _unpicklable_input(task, exc) from None
        self._queued[connection].append(task[0])

    def next_done(self) -> BuiltPart:
        while True:
            try:
                connection, message = next(self._messages)
            except ConversionFailedError as exc:
                raise BuildError(f"{self._job.target.root}: {exc}; {RESUME_HINT}") from None
            if isinstance(message, Progress):
                self._bar.update(message.count, message.rows)
                continue
            if isinstance(message, Failed):
                raise self._failure(message)
            self._queued[connection].popleft()
            built: BuiltPart = message.result
            return built

    def _failure(self, message: Failed) -> Exception:
        if message.index >= 0:
            return message.error
        error = message.error
        return BuildPicklingError(
            f"a build worker process could not load fn {function_name(self._job.fn)} "
            f"({type(error).__name__}: {error}); define it in a module that the worker can "
            "import, or pass workers=0 to run it in this process"
        )

    def stop(self) -> None:
        self._pool.terminate()

    def close(self) -> None:
        self._pool.close()


class OnCluster:
    """Runs parts as tasks on a ``dask.distributed`` client (:class:`memshard.dask.ClusterTasks`),
    while the job's marker exists (spec/PARTS.md section 5)."""

    def __init__(self, job: BuildJob, client: Any, bar: Bar, appender: Appender) -> None:
        from .dask import ClusterTasks, start_job

        self._tasks = ClusterTasks(client)
        self._appender = appender
        self._marker = start_job(appender.path, job.group)
        self._job = dataclasses.replace(job, marker=self._marker)
        self._bar = bar

    @property
    def slots(self) -> int:
        return self._tasks.threads

    def submit(self, task: tuple[int, int, list[Any]]) -> None:
        index, start, items = task
        self._tasks.submit(index, write_inputs, self._job, index, start, items)

    def next_done(self) -> BuiltPart:
        try:
            _, built = self._tasks.next_done()
        except MemshardError:
            raise
        except Exception as exc:
            raise BuildError(
                f"{self._job.target.root}: a part failed on the cluster "
                f"({type(exc).__name__}: {exc}); {RESUME_HINT}"
            ) from exc
        self._bar.update(built.stop - built.start, built.rows)
        result: BuiltPart = built
        return result

    def stop(self) -> None:
        """Cancel the parts not started and end the job: parts still running find no marker
        when they start, and a resume deletes what the running ones leave."""
        self._tasks.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._marker)

    def close(self) -> None:
        from .dask import end_job

        end_job(self._appender, self._marker, self._job.group)


def cluster_threads(client: Any) -> int:
    """How many tasks the cluster of ``client`` runs at once."""
    from .dask import ClusterTasks

    return ClusterTasks(client).threads


#: What every error that stops a build with its committed inputs kept says.
RESUME_HINT = "the inputs committed so far are kept: run the same call with resume=True to continue"


def _unpicklable_input(task: tuple[int, int, list[Any]], exc: Exception) -> BuildPicklingError:
    """The error for a task that cannot be sent to a worker: fn is checked before, so an
    input of the task is at fault; name the first that does not pickle."""
    _, start, items = task
    for number, item in enumerate(items):
        try:
            pickle.dumps(item)
        except Exception as item_error:
            return BuildPicklingError(
                f"input {start + number} ({describe_input(item)}) cannot be sent to a worker "
                f"process: it cannot be pickled ({type(item_error).__name__}: {item_error}); "
                "pass workers=0 to run fn in this process"
            )
    return BuildPicklingError(f"a part cannot be sent to a worker process ({exc})")
