"""What a worker process is given, and what it reports: the protocol of :mod:`memshard.workers`.

A worker process is given one :class:`Work` (picklable), opens it once (:meth:`Work.open`,
in the worker: a conversion opens its source there), then runs tasks with the
:class:`Runner` it got, one after the other, each a tuple whose first item is the task's
index. It reports back with the messages at the end of this module.

They live here, below every job that uses them (conversion, build), and not in
:mod:`memshard.workers`: a worker runs that module as ``__main__``, whose classes its parent
could not unpickle; and the package must not import that module (``python -m`` would run a
second copy of it). So does what a build's worker is prepared with
(:func:`spawn_preparation`).
"""

from __future__ import annotations

import io
import multiprocessing.spawn
import pickle
import sys
import types
from dataclasses import dataclass
from typing import Any, Protocol, Union

#: Most worker processes (or threads) a conversion or a build starts.
MAX_WORKERS = 256
#: The module a worker process runs as ``__main__``.
WORKER_MODULE = "memshard.workers"
#: What of :func:`multiprocessing.spawn.get_preparation_data` a build's worker takes: where
#: to import from, and the caller's ``__main__`` (only when the work refers to it).
PREPARATION_KEYS = ("sys_path", "sys_argv", "dir", "orig_dir")
MAIN_KEYS = ("init_main_from_name", "init_main_from_path")


class Report(Protocol):
    """How a task reports its progress: ``count`` more units done (bytes of a conversion,
    inputs of a build) and ``rows`` more rows written."""

    def __call__(self, count: int, rows: int = 0) -> None: ...


class Runner(Protocol):
    """What a worker runs tasks with; see :meth:`Work.open`."""

    def run(self, task: tuple[Any, ...], report: Report | None) -> Any:
        """Run ``task`` (whose first item is its index) and return its result (picklable)."""

    def close(self) -> None:
        """Release what :meth:`Work.open` opened."""


class Work(Protocol):
    """A job's part that every worker holds (picklable): opened once per worker."""

    def open(self) -> Runner:
        """Open what the tasks need (a source), in the worker process."""


@dataclass(frozen=True)
class Progress:
    """A worker did ``count`` more units of its task and wrote ``rows`` more rows."""

    count: int
    rows: int = 0


@dataclass(frozen=True)
class Done:
    """A worker finished task ``index`` with ``result`` (a part record, not yet committed)."""

    index: int
    result: Any


@dataclass(frozen=True)
class Failed:
    """A worker failed on task ``index`` (-1: before any task, opening its work) with
    ``error``; it exits."""

    index: int
    error: Exception


#: What a worker sends its parent.
Message = Union[Progress, Done, Failed]  # noqa: UP007 - a runtime alias on Python 3.10


# -- preparing a worker to load its work ---------------------------------------------------


def spawn_preparation(work: Any) -> dict[str, Any]:
    """What a build's worker needs before it can unpickle ``work``, as a ``spawn`` child of
    :mod:`multiprocessing` is given it: the parent's ``sys.path``, ``sys.argv`` and working
    directory, and the parent's ``__main__`` script or module if ``work`` refers to
    something defined there (a function of the script that calls :func:`memshard.build`).

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``work`` cannot be pickled.
    """
    data = multiprocessing.spawn.get_preparation_data("memshard-worker")
    keys = PREPARATION_KEYS + (MAIN_KEYS if refers_to_main(work) else ())
    return {key: data[key] for key in keys if key in data}


def refers_to_main(value: Any) -> bool:
    """Whether pickling ``value`` refers to a function or class of ``__main__``, which a worker
    can load only by importing the parent's ``__main__`` script.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``value`` cannot be pickled.
    """
    found = False

    class _Pickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            nonlocal found
            if getattr(obj, "__module__", None) == "__main__" and isinstance(
                obj, type | types.FunctionType
            ):
                found = True
            return NotImplemented

    _Pickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return found


def main_is_importable() -> bool:
    """Whether a worker can import this process's ``__main__``: a script or a module run
    with ``-m``, not an interactive session or a notebook."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    return bool(spec_name or getattr(main, "__file__", None))


def in_worker_process() -> bool:
    """Whether this process is a worker of this module that runs its own loop as ``__main__``
    (while it imports the caller's script, too: a script that starts a build at import time
    would start one in every worker)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == WORKER_MODULE
