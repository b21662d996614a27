"""What every stored format of the comparison suite provides: write, open, read, list files.

A :class:`Format` stores one workload (``rows`` rows of float32 ``shape``) under its own
directory and is driven by the suite the same way for every peer, so the figures differ only by
what the format does. Each reads through the fastest interface a user of that library would
reasonably write; the module of each format says which and why.
"""

from __future__ import annotations

import abc
import importlib
import shutil
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..core import DTYPE, Workload, files_under
from ..system import aligned_empty

#: Bytes a chunk of the chunked peers aims at.
CHUNK_BYTES = 64 << 10


class Reader(abc.ABC):
    """An open view of a written format, used by one process."""

    @abc.abstractmethod
    def row(self, index: int) -> np.ndarray:
        """A copy of row ``index`` (get + copy: the bytes the caller can keep)."""

    @abc.abstractmethod
    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``indices`` (unsorted, in request order)."""

    def cold_gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        """:meth:`gather` as the format would do it on data not in the page cache."""
        self.gather(indices, out)

    @abc.abstractmethod
    def scan(self, start: int, out: np.ndarray) -> None:
        """Copy rows ``start : start + len(out)`` into ``out``."""

    def warm(self) -> None:  # noqa: B027 - readers through read() need only the page cache
        """Touch every row through this reader once (after the files were read into the page
        cache), so a memory-mapping reader has its pages mapped before anything is timed."""

    def close(self) -> None:  # noqa: B027 - most readers hold nothing to release
        """Release what the reader holds (mappings, handles, connections)."""


class Format(abc.ABC):
    """One peer: a way of storing the workload, written under ``root``."""

    #: Short name, used in tables, JSON and charts.
    name: str = ""
    #: How it stores the rows, for the table's legend.
    description: str = ""
    #: Whether its data lives in files (and so has a cold page cache to measure).
    on_disk: bool = True

    def __init__(self, root: str, workload: Workload) -> None:
        self.root = root
        self.workload = workload

    def empty(self, rows: int) -> np.ndarray:
        """An uninitialised, page-aligned array of ``rows`` rows of the workload.

        Page-aligned so that no format is penalised by where its data sits: on this machine's
        AMD CPU, glibc's ``memcpy`` (``rep movsb``) of a 48 KiB row runs at 2-3 GB/s instead of
        10-15 when the destination lies 1-31 bytes past the source modulo 4096, and
        ``np.empty`` returns buffers 16 bytes past a page boundary, against page-aligned
        memshard shards but not, say, a ``.npy`` file's data at byte 128.
        """
        return aligned_empty((rows, *self.workload.shape), DTYPE)

    @abc.abstractmethod
    def write(self, batches: Iterable[np.ndarray]) -> None:
        """Store all ``batches`` in order, then close or flush as the library requires."""

    @abc.abstractmethod
    def open(self) -> Reader:
        """A reader of what :meth:`write` stored; safe to call in a forked worker."""

    def files(self) -> list[str]:
        """Every file holding the data (what a cold-cache measurement evicts)."""
        return files_under(self.root)

    def remove(self) -> None:
        """Delete what :meth:`write` stored."""
        shutil.rmtree(self.root, ignore_errors=True)

    def drop_caches(self) -> None:  # noqa: B027 - only memshard caches mappings
        """Forget what this process keeps mapped or cached of the data between readers, so
        that the kernel can evict its files."""

    def start(self) -> None:  # noqa: B027 - only servers need starting
        """Start whatever the format needs before a write (a server)."""

    def stop(self) -> None:  # noqa: B027
        """Stop what :meth:`start` started."""


def chunks_of(workload: Workload) -> tuple[int, str]:
    """Rows of a chunk of the chunked peers (h5py chunked, zarr): about :data:`CHUNK_BYTES`,
    at least one row; and how the table's legend says it.

    Example:
        >>> chunks_of(Workload("images", (3, 64, 64), 1000, 0))
        (1, 'chunks of 1 row')
    """
    rows = max(1, min(workload.rows, CHUNK_BYTES // workload.row_bytes))
    return rows, f"chunks of {rows} row{'s' if rows > 1 else ''}"


def fill(array: Any, batches: Iterable[np.ndarray]) -> None:
    """Copy ``batches`` into consecutive rows of ``array`` (an ndarray, memmap or zarr array)."""
    start = 0
    for batch in batches:
        array[start : start + len(batch)] = batch
        start += len(batch)


def byte_view(out: np.ndarray) -> tuple[memoryview, int]:
    """``out`` (C-contiguous) as one flat writable byte view, and the bytes of one row: slice
    assignment into it is a plain ``memcpy`` from any bytes-like value."""
    return memoryview(out.data).cast("B"), out[0].nbytes if len(out) else 0


class Unavailable(Exception):
    """A format cannot run here (a missing program or package); the message says why."""


def require(module: str, install: str) -> Any:
    """Import ``module`` for a peer, or raise :class:`Unavailable` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Unavailable(f"{module} is not installed ({install})") from error
