"""A zarr v3 array with chunks of about 64 KiB (one row of an image), no sharding.

Chunking by row is what random access wants. Sharding (many chunks per file) was measured
too: it cuts the file count but made zarr 3.1's random gathers about 3x slower here (the shard
index is read again for every chunk), so the faster layout stands for zarr. No compressor,
since random floats do not compress and the comparison is of the format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import Format, Reader, chunks_of, fill, require


def _zarr() -> Any:
    return require("zarr", "pip install 'memshard[zarr]'")


class ZarrReader(Reader):
    """``zarr.open_array`` read-only; gathers through orthogonal indexing (``oindex``)."""

    def __init__(self, path: str) -> None:
        self.array = _zarr().open_array(path, mode="r")

    def row(self, index: int) -> np.ndarray:
        return np.asarray(self.array[index])

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        out[...] = self.array.oindex[indices]

    def scan(self, start: int, out: np.ndarray) -> None:
        out[...] = self.array[start : start + len(out)]


class ZarrFormat(Format):
    """zarr format 3 on the local file system."""

    name = "zarr v3"

    def __init__(self, root: str, workload: Any) -> None:
        super().__init__(root, workload)
        self.chunk_rows, chunks = chunks_of(workload)
        self.description = (
            f"zarr v3 array, {chunks}, no sharding, no compressor, gathers by `oindex`"
        )

    def write(self, batches: Iterable[np.ndarray]) -> None:
        array = _zarr().create_array(
            store=self.root,
            shape=(self.workload.rows, *self.workload.shape),
            chunks=(self.chunk_rows, *self.workload.shape),
            dtype="float32",
            compressors=None,
            zarr_format=3,
            overwrite=True,
        )
        fill(array, batches)

    def open(self) -> ZarrReader:
        return ZarrReader(self.root)
