"""One line on stderr, instead of a bare "Bus error", when a mapped shard file shrinks.

A shard file truncated (or made unreadable, e.g. by an I/O error on a network file system)
after a process mapped it turns the next load from the lost pages into ``SIGBUS``. No program
recovers from that: the load cannot complete, and Python cannot turn it into an exception.
Readers refuse a file whose size does not match the manifest before every new mapping
(:func:`memshard.mappings.map_segment`); this module covers what that check cannot, a file
changed *after* it was mapped.

At every new mapping, :func:`install` makes sure a ``SIGBUS`` handler of memshard's is the
process's ``SIGBUS`` action (``sigaction`` with ``SA_SIGINFO``, through ctypes; one system call
when it is already). On a fault whose address (``si_addr``) lies in a range memshard mapped, the
handler writes :func:`message` to file descriptor 2: which dataset, which shard file, what
happened. Then, on every ``SIGBUS``, it puts back the action it replaced and returns: the
faulting load runs again, faults again, and that action runs with the original signal
information. With nothing installed before, that is the default action, so the process dies of
``SIGBUS`` (status -7 from ``subprocess``) as it would have; a handler installed before it, or
since (:mod:`faulthandler`'s traceback; torch's message in a DataLoader worker), runs after
the line. A ``SIGBUS`` that is not a fault (sent by ``kill``) is sent again to the thread, so
that action handles it too.

Why this design: Python-level handlers (``signal.signal``) run only after the C handler has
returned, and the load faults again first, so they never run (the process spins); and
:mod:`faulthandler` alone prints a traceback but cannot say which file was lost, nor is it
enabled unless the user asks for it.

Limits:

- Linux on the architectures in :data:`ARCHITECTURES` only (the ``struct sigaction`` layout is
  spelled out here); elsewhere nothing is installed and the process dies as before.
- The line needs memshard's handler to be the action when the fault happens: a handler
  installed after memshard's last new mapping (``faulthandler.enable()``, ``signal.signal``,
  torch's in a worker that maps nothing new) runs instead, and no line is written.
- The handler is Python code, called by ctypes inside the signal handler. A fault in a thread
  that does not hold the GIL (numpy releases it during large copies) first waits for the GIL;
  if the thread holding it waits for the faulting thread, the process hangs instead of dying.
  Reads by memshard and numpy cannot wait like that; native worker threads of other libraries
  given a zero-copy view could.
- Nothing makes the read succeed: the process dies all the same, and views of the file that
  other processes map fault too when they read the lost pages.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

#: Where the handler is installed: Linux on these machines, whose C library lays out
#: ``struct sigaction`` as ``_SigAction`` below and defines ``SA_SIGINFO`` as 4.
ARCHITECTURES = frozenset({"x86_64", "aarch64", "i686", "i386"})
SUPPORTED = sys.platform == "linux" and platform.machine() in ARCHITECTURES
_SA_SIGINFO = 4

#: Given a fault address, the dataset directory and the path (relative to it) of the shard
#: file mapped there, or None.
Lookup = Callable[[int], tuple[str, str] | None]


class _SigInfo(ctypes.Structure):
    # The leading members of Linux's siginfo_t; for SIGBUS the union starts with si_addr,
    # aligned as a pointer (offset 16 on 64-bit machines, 12 on 32-bit ones).
    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("si_addr", ctypes.c_void_p),
    ]


class _SigAction(ctypes.Structure):
    # The C library's struct sigaction: handler, a 1024-bit mask, flags, restorer.
    _fields_ = [
        ("sa_sigaction", ctypes.c_void_p),
        ("sa_mask", ctypes.c_ulong * (128 // ctypes.sizeof(ctypes.c_ulong))),
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(_SigInfo), ctypes.c_void_p)


def message(root: str, path: str, address: int) -> str:
    """The line written when a load at ``address``, from file ``path`` of dataset ``root``,
    faults.

    Example:
        >>> message("/data/frames", "shards/ab-00000001.x.npy", 0x7f00)  # doctest: +ELLIPSIS
        'memshard: a memory-mapped shard file of /data/frames was truncated or became unreadable while mapped (/data/frames/shards/ab-00000001.x.npy, address 0x7f00); ...'
    """  # noqa: E501
    return (
        f"memshard: a memory-mapped shard file of {root} was truncated or became unreadable "
        f"while mapped ({os.path.join(root, path)}, address {address:#x}); the process cannot "
        "go on and dies of SIGBUS. Never truncate or rewrite the files of a dataset that "
        f"readers have open; `memshard verify {root}` checks it.\n"
    )


class _Handler:
    """The handler: what to look addresses up in, and the action it replaced."""

    def __init__(self, libc: Any, lookup: Lookup) -> None:
        self.libc = libc
        self.raise_signal = getattr(libc, "raise")
        self.raise_signal.argtypes = [ctypes.c_int]
        self.raise_signal.restype = ctypes.c_int
        self.lookup = lookup
        self.previous = _SigAction()  # the default action until installed over another
        self.fired = False
        self.callback = _CALLBACK(self._on_sigbus)  # kept alive as long as the process
        self.pointer = ctypes.cast(self.callback, ctypes.c_void_p).value
        self.action = _SigAction()
        self.action.sa_sigaction = self.pointer
        self.action.sa_flags = _SA_SIGINFO

    def installed(self) -> bool:
        current = _SigAction()
        if self.libc.sigaction(signal.SIGBUS, None, ctypes.byref(current)):
            return False
        return bool(current.sa_sigaction == self.pointer)

    def install(self) -> bool:
        if self.installed():
            return True
        # Whatever is there now (a handler installed since, such as torch's in DataLoader
        # workers) becomes the action this one passes the signal on to.
        previous = _SigAction()
        if self.libc.sigaction(signal.SIGBUS, ctypes.byref(self.action), ctypes.byref(previous)):
            return False
        self.previous, self.fired = previous, False
        return True

    def _on_sigbus(self, signum: int, info: Any, _context: int) -> None:
        # Runs inside the signal handler: look up, write, restore; nothing that can block.
        fault, again = False, self.fired
        self.fired = True
        try:
            fault = info.contents.si_code > 0  # <= 0: sent by kill, tgkill, sigqueue
            address = info.contents.si_addr or 0
            found = self.lookup(address) if fault and not again else None
            if found is not None:
                line = message(found[0], found[1], address)
                os.write(2, line.encode("utf-8", "backslashreplace"))
        except BaseException:
            pass  # nothing may escape into the C signal handler
        finally:
            # Called again before the process died: a handler that this one passed the signal
            # to passed it back (faulthandler does, to the handler it replaced). The default
            # action ends that loop.
            restore = _SigAction() if again else self.previous
            self.libc.sigaction(signum, ctypes.byref(restore), None)
            if not fault:
                self.raise_signal(signum)  # blocked until this handler returns


_LOCK = threading.Lock()
_HANDLER: list[_Handler] = []  # at most one, created at the first install


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.sigaction.restype = ctypes.c_int
    return libc


def install(lookup: Lookup) -> bool:
    """Install the ``SIGBUS`` handler unless it is the one installed now (another may have
    replaced it since: it is then kept, as the action to pass the signal on to); return
    whether it is installed. ``lookup`` is used by the first call only. Costs one
    ``sigaction`` call when nothing changed."""
    if not SUPPORTED:
        return False
    with _LOCK:
        if not _HANDLER:
            _HANDLER.append(_Handler(_libc(), lookup))
        return _HANDLER[0].install()


def installed() -> bool:
    """Whether the handler is the ``SIGBUS`` action of this process now."""
    return bool(_HANDLER) and _HANDLER[0].installed()
