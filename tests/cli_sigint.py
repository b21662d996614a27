"""Interrupt an HDF5 conversion with a real SIGINT, at a chosen row, for the CLI tests.

In a child process, :func:`install` makes :meth:`memshard.hdf5.Hdf5Reader.read` send SIGINT
to its own process the first time it is asked for rows reaching ``row``, so Python raises
``KeyboardInterrupt`` in the converting process exactly as Ctrl-C would, at a deterministic
point (no sleeps, no timing). Importing this module changes nothing (pytest imports it
to collect doctests); only :func:`install` patches::

    python -c "import cli_sigint; cli_sigint.install(500); ..." (tests/ on PYTHONPATH)
"""

from __future__ import annotations

import os
import signal
from typing import Any


def install(row: int) -> None:
    """Patch the HDF5 reader of this process to raise SIGINT once rows ``>= row`` are read."""
    from memshard import hdf5

    # A process started in the background may inherit SIGINT as ignored: restore Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    original = hdf5.Hdf5Reader.read
    sent: list[bool] = []

    def read(self: Any, name: str, start: int, stop: int, out: Any) -> None:
        if stop > row and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        original(self, name, start, stop, out)

    hdf5.Hdf5Reader.read = read  # type: ignore[method-assign]
