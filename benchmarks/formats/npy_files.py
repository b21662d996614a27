"""One ``.npy`` file per row, 1000 files per folder: the common "folder of samples" layout."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from .base import Format, Reader

FILES_PER_FOLDER = 1000


def row_path(root: str, index: int) -> str:
    """Where row ``index`` is stored."""
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
    description = "one `.npy` file per row (`np.save` / `np.load`), 1000 files per folder"

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
