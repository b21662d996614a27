"""The in-RAM ndarray: the upper bound of every read (no file, no page-cache mapping)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .base import Format, Reader, fill


class RamReader(Reader):
    """Plain ndarray indexing."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def row(self, index: int) -> np.ndarray:
        return np.array(self.array[index])

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        # mode="clip": with the default "raise", take() gathers into a temporary array and
        # copies that into out; the indices are valid, so clipping changes nothing.
        np.take(self.array, indices, axis=0, out=out, mode="clip")

    def scan(self, start: int, out: np.ndarray) -> None:
        np.copyto(out, self.array[start : start + len(out)])


class RamFormat(Format):
    """Rows copied into one anonymous in-memory array (inherited by forked workers)."""

    name = "in-RAM"
    description = "one in-RAM ndarray (upper bound: no file at all)"
    on_disk = False

    array: np.ndarray | None = None

    def write(self, batches: Iterable[np.ndarray]) -> None:
        array = self.empty(self.workload.rows)
        fill(array, batches)
        self.array = array

    def open(self) -> RamReader:
        if self.array is None:
            raise RuntimeError("in-RAM: nothing written yet")
        return RamReader(self.array)

    def files(self) -> list[str]:
        return []

    def remove(self) -> None:
        self.array = None
