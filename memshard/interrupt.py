"""Ctrl-C during long operations: taken at the next block, never lost.

Python runs a signal handler in the main thread between two bytecodes, wherever they are. A
``KeyboardInterrupt`` raised by the default handler inside a weakref callback or a
``__del__`` (which run at any moment, for example when a mapping or a numpy view is freed)
cannot propagate: Python prints ``Exception ignored in: ...`` and discards it, and the
operation runs on to the end. So a plain Ctrl-C is lost now and then.

While :func:`deferred` is active, SIGINT only records the press and wakes up any wait on
:func:`wakeup_fd`; the operation's loops call :func:`check` between blocks, which raises
``KeyboardInterrupt`` from ordinary code, where it always propagates. A press is never lost:
if the operation ends before it checks, leaving :func:`deferred` raises it (unless
:func:`check` raised it already and the caller handled it). A second press
before the first was taken raises at once, as Python's own handler would (a way out of a
wait that cannot be woken).

The handler is installed only in the main thread, and only over Python's default handler:
a program that handles SIGINT itself (or ignores it) keeps its own behaviour.
"""

from __future__ import annotations

import functools
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _State:
    """The presses recorded while :func:`deferred` is active (in the main thread)."""

    def __init__(self) -> None:
        self.depth = 0
        self.presses = 0
        self.raised = False  # check() raised KeyboardInterrupt for the presses
        self.wakeup: tuple[socket.socket, socket.socket] | None = None


_STATE = _State()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed during the current :func:`deferred`
    block; otherwise return at once. Safe to call from any thread (a worker thread that
    raises stops its own work; the press stays recorded, so every loop stops)."""
    if _STATE.presses:
        _STATE.raised = True
        raise KeyboardInterrupt


def pressed() -> bool:
    """Whether Ctrl-C was pressed during the current :func:`deferred` block."""
    return _STATE.presses > 0


def wakeup_fd() -> socket.socket | None:
    """A socket that becomes readable when Ctrl-C is pressed during the current
    :func:`deferred` block (give it to ``select`` or ``multiprocessing.connection.wait``
    next to what a loop waits for), or None when no handler is installed."""
    return None if _STATE.wakeup is None else _STATE.wakeup[0]


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _STATE.presses += 1
    if _STATE.presses > 1:
        raise KeyboardInterrupt


class deferred:
    """Context manager: Ctrl-C is raised by :func:`check` (or on leaving), never in between.

    Nested blocks share the outermost one. Leaving any block raises ``KeyboardInterrupt`` if
    Ctrl-C was pressed and no exception is already on its way out; leaving the outermost
    one also restores the previous handler.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._previous_wakeup = -1
        self._installed = False
        self._nested = False

    def __enter__(self) -> deferred:
        if threading.current_thread() is not threading.main_thread():
            return self
        if _STATE.depth > 0:
            _STATE.depth += 1
            self._nested = True
            return self
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return self
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        _STATE.presses = 0
        _STATE.raised = False
        _STATE.wakeup = (reader, writer)
        self._previous = signal.signal(signal.SIGINT, _on_sigint)
        self._previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        _STATE.depth = 1
        self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._nested:
            _STATE.depth -= 1
            if exc_type is None and not _STATE.raised:
                check()  # the end of an operation is a block boundary too
            return
        if not self._installed:
            return
        signal.set_wakeup_fd(self._previous_wakeup)
        signal.signal(signal.SIGINT, self._previous)
        presses, _STATE.presses, _STATE.depth = _STATE.presses, 0, 0
        raised, _STATE.raised = _STATE.raised, False
        if _STATE.wakeup is not None:
            for end in _STATE.wakeup:
                end.close()
            _STATE.wakeup = None
        if presses and not raised and exc_type is None:
            raise KeyboardInterrupt


def deferring(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: run ``function`` inside :func:`deferred` (a long operation whose loops call
    :func:`check`)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with deferred():
            return function(*args, **kwargs)

    return wrapper
