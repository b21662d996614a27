"""HDF5 through h5py, contiguous or chunked (one row per chunk for images), no compression;
and :class:`PlainRead`, the fastest plain h5py read of a whole file, which conversions from
HDF5 are compared with.

A gather reads large rows one ``data[i]`` at a time and small rows in one fancy selection of
the sorted unique indices (h5py needs them increasing), reordered in memory: whichever of
h5py's reads is faster for the row size (see :data:`ROW_BY_ROW_BYTES`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import Format, Reader, chunks_of, require

#: Rows at least this large are gathered one ``data[i]`` at a time: for 48 KiB images that
#: was 2x (contiguous) to 30x (chunked) faster here than one fancy selection, which in turn
#: was 4-6x faster for 512-byte vectors.
ROW_BY_ROW_BYTES = 16 << 10
#: Bytes a block of :class:`PlainRead` aims at (whole chunks).
BLOCK_BYTES = 8 << 20


def _h5py() -> Any:
    return require("h5py", "pip install 'memshard[hdf5]'")


class Hdf5Reader(Reader):
    """One ``h5py.File`` opened read-only in this process."""

    def __init__(self, path: str) -> None:
        self.file = _h5py().File(path, "r")
        self.data = self.file["x"]

    def row(self, index: int) -> np.ndarray:
        return np.asarray(self.data[index])

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        if out[0].nbytes >= ROW_BY_ROW_BYTES:
            for slot, index in enumerate(indices.tolist()):
                out[slot] = self.data[index]
            return
        unique, inverse = np.unique(indices, return_inverse=True)
        np.take(self.data[unique], inverse, axis=0, out=out)

    def scan(self, start: int, out: np.ndarray) -> None:
        self.data.read_direct(out, np.s_[start : start + len(out)])

    def close(self) -> None:
        self.file.close()


class Hdf5Format(Format):
    """One HDF5 dataset ``x``; ``chunked``: chunks of about 64 KiB (see :func:`chunks_of`)."""

    def __init__(self, root: str, workload: Any, *, chunked: bool) -> None:
        super().__init__(root, workload)
        self.chunk_rows, layout = chunks_of(workload) if chunked else (0, "contiguous")
        self.name = "h5py chunked" if chunked else "h5py contiguous"
        self.description = f"HDF5 through h5py, {layout}, no compression"
        self.path = os.path.join(root, "data.h5")

    def write(self, batches: Iterable[np.ndarray]) -> None:
        os.makedirs(self.root, exist_ok=True)
        shape = (self.workload.rows, *self.workload.shape)
        chunks = (self.chunk_rows, *self.workload.shape) if self.chunk_rows else None
        with _h5py().File(self.path, "w") as file:
            data = file.create_dataset("x", shape=shape, dtype=np.float32, chunks=chunks)
            start = 0
            for batch in batches:
                rows = np.s_[start : start + len(batch)]
                data.write_direct(np.ascontiguousarray(batch), dest_sel=rows)
                start += len(batch)

    def open(self) -> Hdf5Reader:
        return Hdf5Reader(self.path)


def block_rows(chunk_rows: int, row_bytes: int) -> int:
    """Rows per block: whole chunks, about :data:`BLOCK_BYTES` in all (at least one chunk).

    Example:
        >>> block_rows(1, 49152), block_rows(64, 49152)
        (170, 128)
    """
    return chunk_rows * max(1, BLOCK_BYTES // (chunk_rows * row_bytes))


class PlainRead:
    """Reads every dataset of an HDF5 file in chunk-aligned blocks of about
    :data:`BLOCK_BYTES` with ``read_direct`` into one buffer, allocated and touched when made:
    the best plain h5py can do. Calling it reads the file once and returns the bytes read."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: (dataset name, bytes of a row, rows of a block) of each dataset.
        self.plans: list[tuple[str, int, int]] = []
        with _h5py().File(path, "r") as handle:
            for name, dataset in handle.items():
                row_bytes = dataset.dtype.itemsize * math.prod(dataset.shape[1:])
                chunk_rows = dataset.chunks[0] if dataset.chunks else 1
                rows = min(dataset.shape[0], block_rows(chunk_rows, row_bytes))
                self.plans.append((name, row_bytes, rows))
        self.buffer = np.ones(max(rows * size for _, size, rows in self.plans), dtype=np.uint8)

    def __call__(self) -> int:
        total = 0
        with _h5py().File(self.path, "r") as handle:
            for name, row_bytes, rows in self.plans:
                dataset = handle[name]
                for start in range(0, dataset.shape[0], rows):
                    stop = min(dataset.shape[0], start + rows)
                    out = self.buffer[: (stop - start) * row_bytes].view(dataset.dtype)
                    out = out.reshape(stop - start, *dataset.shape[1:])
                    dataset.read_direct(out, np.s_[start:stop])
                    total += out.nbytes
        return total
