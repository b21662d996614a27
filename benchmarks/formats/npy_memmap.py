"""One ``.npy`` file through ``np.memmap``: the hand-rolled baseline every ratio is taken to."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable

import numpy as np

from ..core import touch_mapping
from .base import Format, fill
from .ram import RamReader


class MemmapReader(RamReader):
    """``np.load(mmap_mode="r")``, read as an in-RAM array is."""

    def __init__(self, path: str) -> None:
        super().__init__(np.load(path, mmap_mode="r"))

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
        fill(array, batches)
        array.flush()
        del array

    def open(self) -> MemmapReader:
        return MemmapReader(self.path)
