"""The peers that need only numpy: an in-RAM ndarray (the upper bound of every read: no file,
no page-cache mapping), one ``.npy`` file through ``np.memmap`` (the hand-rolled baseline every
ratio is taken to), and one ``.npy`` file per row (the common "folder of samples" layout)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable

import numpy as np

from ..core import touch_mapping
from .base import Format, Reader, fill

FILES_PER_FOLDER = 1000


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


def row_path(root: str, index: int) -> str:
    """Where the one-file-per-row layout stores row ``index``."""
    return os.path.join(root, f"{index // FILES_PER_FOLDER:05d}", f"{index:08d}.npy")


class FilesReader(Reader):
    """``np.load`` of each row's file."""

    def __init__(self, root: str) -> None:
        self.root = root

    def row(self, index: int) -> np.ndarray:
        return np.asarray(np.load(row_path(self.root, index)))

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        for slot, index in enumerate(indices.tolist()):
            out[slot] = np.load(row_path(self.root, index))

    def scan(self, start: int, out: np.ndarray) -> None:
        self.gather(np.arange(start, start + len(out)), out)


class FilesFormat(Format):
    """``np.save`` of every row into its own file."""

    name = "npy-per-row"
    description = (
        f"one `.npy` file per row (`np.save` / `np.load`), {FILES_PER_FOLDER} files per folder"
    )

    def write(self, batches: Iterable[np.ndarray]) -> None:
        index = 0
        for batch in batches:
            for row in batch:
                if index % FILES_PER_FOLDER == 0:
                    os.makedirs(os.path.dirname(row_path(self.root, index)), exist_ok=True)
                np.save(row_path(self.root, index), row)
                index += 1

    def open(self) -> FilesReader:
        return FilesReader(self.root)
