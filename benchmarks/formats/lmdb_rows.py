"""LMDB with one key per row (8-byte big-endian row number), as PyTorch LMDB datasets do.

Written one transaction per batch with ``append=True`` (keys arrive sorted); read with the
settings those datasets use for random access (``readonly``, no lock, no readahead) and one
long read transaction with zero-copy ``buffers=True`` values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..system import PAGE
from .base import Format, Reader, byte_view, require


def _lmdb() -> Any:
    return require("lmdb", "pip install lmdb")


def key_of(index: int) -> bytes:
    """The key of row ``index``: sorts like the row numbers."""
    return index.to_bytes(8, "big")


class LmdbReader(Reader):
    """A read-only environment with one read transaction held open."""

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.environment = _lmdb().open(
            path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=64
        )
        self.transaction = self.environment.begin(buffers=True)
        self.shape = shape

    def _value(self, index: int) -> Any:
        value = self.transaction.get(key_of(index))
        if value is None:
            raise KeyError(index)
        return value

    def row(self, index: int) -> np.ndarray:
        return np.array(np.frombuffer(self._value(index), dtype=np.float32).reshape(self.shape))

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        flat, size = byte_view(out)
        get = self.transaction.get
        for offset, index in zip(range(0, len(flat), size), indices.tolist(), strict=True):
            flat[offset : offset + size] = get(index.to_bytes(8, "big"))

    def scan(self, start: int, out: np.ndarray) -> None:
        flat, size = byte_view(out)
        cursor = self.transaction.cursor()
        cursor.set_key(key_of(start))
        for offset in range(0, len(flat), size):
            flat[offset : offset + size] = cursor.value()
            cursor.next()

    def warm(self) -> None:
        for _, value in self.transaction.cursor():
            np.frombuffer(value, dtype=np.uint8)[:: PAGE // 2].sum()

    def close(self) -> None:
        self.transaction.abort()
        self.environment.close()


class LmdbFormat(Format):
    """One LMDB environment; each write batch one durable transaction (LMDB's default sync)."""

    name = "LMDB"
    description = "LMDB, one key per row; one durable transaction per write batch"

    def write(self, batches: Iterable[np.ndarray]) -> None:
        os.makedirs(self.root, exist_ok=True)
        # Room for the values plus B-tree pages and page padding of each value.
        map_size = 2 * self.workload.nbytes + (64 << 20)
        environment = _lmdb().open(self.root, map_size=map_size)
        try:
            index = 0
            for batch in batches:
                with environment.begin(write=True) as transaction:
                    for row in batch:
                        transaction.put(key_of(index), row, append=True)
                        index += 1
        finally:
            environment.close()

    def open(self) -> LmdbReader:
        return LmdbReader(self.root, self.workload.shape)
