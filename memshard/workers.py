"""Worker processes for conversions and builds: fresh interpreters that open their work
themselves.

Each worker is ``python -m memshard.workers FD PARENT_PID``, started with :mod:`subprocess`
rather than :mod:`multiprocessing`: it shares no state with the parent (no inherited HDF5
handle, no library lock held by a parent thread at ``fork`` time). A conversion's worker never
re-imports the caller's ``__main__`` script, so a conversion works from any script, notebook
or stdin. A build's worker is prepared as a ``spawn`` child of :mod:`multiprocessing` is
(:func:`memshard.workerjob.spawn_preparation`): the parent's ``sys.path`` and working
directory and, only when the build's function lives in the caller's ``__main__`` script,
that script, imported under the name ``__mp_main__`` (so its ``if __name__ == "__main__":``
block does not run).

The parent and a worker exchange pickled messages over a socket pair
(:class:`multiprocessing.connection.Connection`):

- parent -> worker: the preparation (a dict, or ``None``), then ``(work, with_progress)``
  once (a :class:`~memshard.workerjob.Work`), then one task per message (a tuple whose
  first item is its index), then ``None`` to finish;
- worker -> parent: :class:`~memshard.workerjob.Progress`, :class:`~memshard.workerjob.Done`
  (a task's result) or :class:`~memshard.workerjob.Failed` (after which the worker exits);
  they live in :mod:`memshard.workerjob`, not here, because a worker runs this module as
  ``__main__``, whose classes the parent could not unpickle.

A worker never outlives the converting process: a parent killed with SIGKILL cannot stop its
workers, and one left running would go on writing parts into the staging dataset while a
resume completes it, leaving shard files and part locks that no one removes. On Linux the
kernel kills a worker when its parent dies (``PR_SET_PDEATHSIG``); everywhere, a worker whose
parent has gone starts no further shard.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.spawn
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from . import interrupt
from .errors import ConversionFailedError
from .workerjob import WORKER_MODULE, Done, Failed, Message, Progress, Work

#: Seconds a worker told to finish may take to exit before it is killed.
EXIT_TIMEOUT = 10
#: ``prctl`` option (linux/prctl.h): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class WorkerProcesses:
    """``count`` worker processes, each holding its opened ``work``; a context manager.

    ``preparation`` (see :func:`spawn_preparation`) is applied in each worker before
    ``work`` is unpickled there; ``name`` says what the workers do, in the error that
    reports one dead.
    """

    def __init__(
        self,
        count: int,
        work: Work,
        progress: bool,
        *,
        preparation: dict[str, Any] | None = None,
        name: str = "conversion",
    ) -> None:
        self._name = name
        self._workers: list[tuple[subprocess.Popen[bytes], Connection]] = []
        try:
            for _ in range(count):
                self._workers.append(_start_worker())
            for _, connection in self._workers:
                connection.send(preparation)
                connection.send((work, progress))
        except BaseException:
            self.close()
            raise

    @property
    def connections(self) -> list[Connection]:
        """One connection per worker, in start order."""
        return [connection for _, connection in self._workers]

    def send(self, connection: Connection, task: tuple[Any, ...]) -> bool:
        """Give the worker behind ``connection`` one task; ``False`` if it has gone
        (its failure report or end of file is then still to be read from :meth:`messages`)."""
        try:
            connection.send(task)
        except OSError:
            return False
        return True

    def messages(self) -> Iterator[tuple[Connection, Message]]:
        """Messages from any worker as they arrive (blocks until one does).

        Raises:
            ConversionFailedError: a worker exited without reporting (killed, out of memory).
            KeyboardInterrupt: Ctrl-C was pressed (the wait wakes up for it, see
                :func:`memshard.interrupt.wakeup_fd`).
        """
        wakeup = interrupt.wakeup_fd()
        while True:
            interrupt.check()
            for ready in wait([*self.connections, *([wakeup] if wakeup is not None else [])]):
                if ready is wakeup:
                    _drain(wakeup)
                    interrupt.check()
                    continue
                assert isinstance(ready, Connection)
                try:
                    message = ready.recv()
                except (EOFError, OSError):
                    raise ConversionFailedError(self._death_report(ready)) from None
                yield ready, message

    def _death_report(self, connection: Connection) -> str:
        for process, candidate in self._workers:
            if candidate is connection:
                code = process.wait()
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                return f"{self._name} worker {process.pid} died ({how})"
        return f"a {self._name} worker died"

    def close(self) -> None:
        """Tell every worker to finish, then make sure each has."""
        for _, connection in self._workers:
            with contextlib.suppress(OSError):
                connection.send(None)
            connection.close()
        for process, _ in self._workers:
            try:
                process.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._workers = []

    def terminate(self) -> None:
        """Stop the workers at once (after an error or an interrupt)."""
        for process, _ in self._workers:
            if process.poll() is None:
                process.kill()
        self.close()

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()


def _drain(wakeup: socket.socket) -> None:
    """Read every byte the signal handler wrote to the wake-up socket."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while wakeup.recv(4096):
            pass


def _start_worker() -> tuple[subprocess.Popen[bytes], Connection]:
    parent_end, child_end = socket.socketpair()
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_parent, *filter(None, [environment.get("PYTHONPATH")])]
    )
    command = [sys.executable, "-m", WORKER_MODULE, str(child_end.fileno()), str(os.getpid())]
    try:
        with _sigint_blocked():
            process = subprocess.Popen(
                command,
                pass_fds=[child_end.fileno()],
                stdin=subprocess.DEVNULL,
                env=environment,
            )
    finally:
        child_end.close()
    return process, Connection(parent_end.detach())


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread for the block, so that a worker started in it inherits the
    blocked signal across ``exec``.

    Ctrl-C goes to the whole process group; a worker ignores it, but only once its
    ``__main__`` runs, after the interpreter has started and imported memshard. A Ctrl-C in
    between would print a ``KeyboardInterrupt`` traceback from the worker. Blocked, it stays
    pending until the worker ignores SIGINT, which discards it. This thread sees a Ctrl-C
    that arrives meanwhile when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(parent: int) -> None:
    """Have this process killed when ``parent``, the converter that started it, dies; exit at
    once if it has died already.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that started the worker ends; the converter
    starts its workers from the thread that runs the conversion, which waits for them. The
    parent may have died between starting this process and the request, which then covers
    nothing: the parent id, now another process's, tells.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def serve(connection: Connection, parent: int) -> None:
    """The worker's loop: prepare, open the work, run tasks until told to stop or until
    ``parent`` has gone."""
    # What cannot be loaded or opened here is reported; a closed connection (EOFError,
    # OSError) is the parent's end, and ends the worker quietly.
    preparation = connection.recv()
    try:
        if preparation is not None:
            multiprocessing.spawn.prepare(preparation)
    except Exception as exc:
        _send_failure(connection, -1, exc)
        return
    received = connection.recv_bytes()
    try:
        work, progress = pickle.loads(received)
        runner = work.open()
    except Exception as exc:
        _send_failure(connection, -1, exc)
        return
    report = (lambda count, rows=0: connection.send(Progress(count, rows))) if progress else None
    try:
        while (task := connection.recv()) is not None and os.getppid() == parent:
            try:
                result = runner.run(task, report)
            except Exception as exc:
                _send_failure(connection, task[0], exc)
                return
            connection.send(Done(task[0], result))
    finally:
        runner.close()


def _send_failure(connection: Connection, index: int, exc: Exception) -> None:
    try:
        connection.send(Failed(index, exc))
    except Exception:  # an exception that does not pickle: send its text
        message = f"task {index}: {type(exc).__name__}: {exc}"
        connection.send(Failed(index, ConversionFailedError(message)))


if __name__ == "__main__":
    die_with_parent(int(sys.argv[2]))
    # Ctrl-C reaches the whole process group; the parent alone decides, and stops the workers.
    # The parent started this process with SIGINT blocked (see _sigint_blocked): ignoring it
    # first, then unblocking it, discards a Ctrl-C that came while the interpreter started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
    except (EOFError, KeyboardInterrupt, OSError):
        # The parent closed the connection (it was interrupted or failed): leave quietly.
        sys.exit(1)
