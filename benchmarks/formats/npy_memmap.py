"""One ``.npy`` file through ``np.memmap``: the hand-rolled baseline every ratio is taken to."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable

import numpy as np

from ..core import touch_mapping
from .base import Format, Reader


class MemmapReader(Reader):
    """``np.load(mmap_mode="r")``; gathers with ``np.take(..., out=, mode="clip")``."""

    def __init__(self, path: str) -> None:
        self.array = np.load(path, mmap_mode="r")

    def row(self, index: int) -> np.ndarray:
        return np.array(self.array[index])

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        # mode="clip": with the default "raise", take() gathers into a temporary array and
        # copies that into out; the indices are valid, so clipping changes nothing.
        np.take(self.array, indices, axis=0, out=out, mode="clip")

    def scan(self, start: int, out: np.ndarray) -> None:
        np.copyto(out, self.array[start : start + len(out)])

    def warm(self) -> None:
        touch_mapping(self.array, len(self.array))

    def close(self) -> None:
        del self.array
        gc.collect()


class MemmapFormat(Format):
    """``np.lib.format.open_memmap`` filled batch by batch, then ``flush()`` (no fsync)."""

    name = "np.memmap"
    description = "one `.npy` file written and read through `np.memmap`"

    @property
    def path(self) -> str:
        """The ``.npy`` file."""
        return os.path.join(self.root, "x.npy")

    def write(self, batches: Iterable[np.ndarray]) -> None:
        os.makedirs(self.root, exist_ok=True)
        shape = (self.workload.rows, *self.workload.shape)
        array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
        start = 0
        for batch in batches:
            array[start : start + len(batch)] = batch
            start += len(batch)
        array.flush()
        del array

    def open(self) -> MemmapReader:
        return MemmapReader(self.path)
