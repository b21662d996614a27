"""memshard itself: ``extend`` per batch, ``close()`` commits (fsync); reads by ``take``."""

from __future__ import annotations

import gc
from collections.abc import Iterable

import numpy as np

import memshard as ms
from memshard import mappings

from ..core import touch_mapping, write_dataset
from .base import Format, Reader


class MemshardReader(Reader):
    """Gathers through :meth:`memshard.Dataset.take` into the caller's array."""

    def __init__(self, path: str) -> None:
        self.dataset = ms.open(path)
        self.column = self.dataset["x"]

    def row(self, index: int) -> np.ndarray:
        return np.array(self.column[index])

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        self.dataset.take(indices, out={"x": out}, fields=["x"])

    def cold_gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        # The documented way to read rows not in the page cache: ask for all at once, then copy.
        self.dataset.prefetch(indices, fields=["x"])
        self.dataset.take(indices, out={"x": out}, fields=["x"])

    def scan(self, start: int, out: np.ndarray) -> None:
        np.copyto(out, self.column[start : start + len(out)])

    def warm(self) -> None:
        touch_mapping(self.column, len(self.column))

    def close(self) -> None:
        del self.column, self.dataset
        gc.collect()


class MemshardFormat(Format):
    """A memshard dataset with the default shard size (or the workload's)."""

    name = "memshard"
    description = "memshard dataset: `extend` per batch, `close()` commits with fsync"

    def write(self, batches: Iterable[np.ndarray]) -> None:
        write_dataset(self.root, self.workload, batches)

    def drop_caches(self) -> None:
        # memshard keeps shard mappings in a per-process cache after a Dataset is dropped
        # (any loader run in this process filled it too); unmapped, their pages can go.
        mappings.CACHE.clear()
        gc.collect()

    def open(self) -> MemshardReader:
        return MemshardReader(self.root)
