"""The ways :mod:`benchmarks.compressed` stores compressed rows, each written from the same
batches and read through the fastest interface a user of it would reasonably write.

- ``memshard``: uncompressed, the baseline; ``memshard zstd-3`` and ``memshard blosc``:
  compressed fields (blosc: zstd level 5, bit shuffle for uint8 sketches, byte shuffle for
  floats). Gathers are ``Dataset.take(indices, out=...)``, with the default threads or
  ``threads=1``.
- ``LMDB+lz4``: one key per row (8-byte big-endian row number), the value the row's bytes
  through ``lz4.frame.compress`` (the seed setup); read in one long read transaction with
  ``buffers=True``, each value ``lz4.frame.decompress``-ed into the output.
- ``Redis+savez``: one key per row on a ``redis-server`` started here, the value a
  ``np.savez_compressed`` blob (the seed setup); ``MSET`` per write batch, ``MGET`` per
  gather, each blob read with ``np.load``.
- ``zarr zstd``: a zarr v3 array, zstd level 3, chunks of 1 row or of 64 rows (no sharding:
  it made zarr 3.1's random gathers about 3x slower, see :mod:`benchmarks.formats.zarr_array`);
  gathers by ``oindex``.
- ``HDF5 gzip`` / ``HDF5 blosc``: h5py, chunks of one row, gzip level 4 or hdf5plugin's
  blosc (zstd level 5, the same shuffle as memshard blosc); large rows are gathered one
  ``data[i]`` at a time, small ones in one selection of the sorted unique rows, reordered.

Every reader fills a caller's array with rows ``indices`` (unsorted, repeats allowed).
"""

from __future__ import annotations

import abc
import io
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

import memshard as ms
from memshard import mappings

from .core import files_under
from .formats.base import Unavailable, byte_view, require
from .formats.hdf5_file import ROW_BY_ROW_BYTES
from .formats.lmdb_rows import key_of
from .formats.redis_rows import RedisServer

ZSTD_LEVEL = 3
BLOSC_LEVEL = 5
HDF5_GZIP_LEVEL = 4
ZARR_CHUNKS = (1, 64)


def blosc_codec(dtype: str) -> str:
    """memshard's blosc codec for ``dtype``: bit shuffle for bytes, byte shuffle for wider
    items.

    Example:
        >>> blosc_codec("uint8"), blosc_codec("float32")
        ('blosc:zstd:5:bit', 'blosc:zstd:5:byte')
    """
    shuffle = "bit" if np.dtype(dtype).itemsize == 1 else "byte"
    return f"blosc:zstd:{BLOSC_LEVEL}:{shuffle}"


class Reader(abc.ABC):
    """An open view of a written format, used by one process."""

    @abc.abstractmethod
    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``indices`` (unsorted, in request order)."""

    def close(self) -> None:  # noqa: B027 - most readers hold nothing to release
        """Release what the reader holds."""


class Format(abc.ABC):
    """One way of storing rows of ``dtype[shape]`` under ``root``."""

    name: str = ""
    description: str = ""
    #: Whether its data lives in files (and so has a cold page cache to measure).
    on_disk: bool = True

    def __init__(self, root: str, dtype: str, shape: tuple[int, ...], shard_bytes: int) -> None:
        self.root = root
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.shard_bytes = shard_bytes
        self.rows = 0

    @abc.abstractmethod
    def write(self, batches: Sequence[np.ndarray]) -> None:
        """Store every row of ``batches`` in order, then close."""

    @abc.abstractmethod
    def open(self) -> Reader:
        """A reader of what :meth:`write` stored; safe to call in a forked worker."""

    def stored_bytes(self) -> int:
        """Bytes the data takes where it is stored."""
        return sum(os.path.getsize(path) for path in self.files())

    def files(self) -> list[str]:
        """Every file holding the data (what a cold-cache measurement evicts)."""
        return files_under(self.root)

    def remove(self) -> None:
        """Delete what :meth:`write` stored (and stop what it started)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def drop_caches(self) -> None:  # noqa: B027 - only memshard caches mappings
        """Forget what this process keeps mapped of the data, so the kernel can evict it."""


# -- memshard ---------------------------------------------------------------------------------
class MemshardReader(Reader):
    """``Dataset.take`` into the caller's array, with ``threads`` (``None``: the default)."""

    def __init__(self, path: str, threads: int | None, cold: bool = False) -> None:
        self.dataset = ms.open(path)
        self.threads = threads
        self.cold = cold

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        if self.cold:  # the documented way to read rows not in the page cache
            self.dataset.prefetch(indices, fields=["x"])
        self.dataset.take(indices, out={"x": out}, fields=["x"], threads=self.threads)

    def close(self) -> None:
        self.dataset.close()


class MemshardFormat(Format):
    """A memshard dataset of one field ``x``, compressed with ``codec`` (``None``: not)."""

    def __init__(self, root: str, dtype: str, shape: tuple[int, ...], shard_bytes: int,
                 codec: str | None, name: str) -> None:  # fmt: skip
        super().__init__(root, dtype, shape, shard_bytes)
        self.codec = codec
        self.name = name
        self.description = f"memshard, field compressed with `{codec}`" if codec else (
            "memshard, not compressed (zero-copy `.npy` shards)"
        )  # fmt: skip

    def write(self, batches: Sequence[np.ndarray]) -> None:
        options = ({"codec": self.codec},) if self.codec else ()
        field = (self.dtype.name, self.shape, *options)
        with ms.create(self.root, fields={"x": field}, shard_bytes=self.shard_bytes) as out:
            for batch in batches:
                out.extend({"x": batch})
                self.rows += len(batch)

    def open(self, threads: int | None = None, cold: bool = False) -> MemshardReader:
        return MemshardReader(self.root, threads, cold)

    def drop_caches(self) -> None:
        mappings.CACHE.clear()


# -- LMDB + lz4 -------------------------------------------------------------------------------
class LmdbLz4Reader(Reader):
    """A read-only environment (no lock, no readahead) with one read transaction open."""

    def __init__(self, path: str) -> None:
        lmdb = require("lmdb", "pip install lmdb")
        self.decompress = require("lz4.frame", "pip install lz4").decompress
        self.environment = lmdb.open(
            path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=64
        )
        self.transaction = self.environment.begin(buffers=True)

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        flat, size = byte_view(out)
        get, decompress = self.transaction.get, self.decompress
        for offset, index in zip(range(0, len(flat), size), indices.tolist(), strict=True):
            flat[offset : offset + size] = decompress(get(index.to_bytes(8, "big")))

    def close(self) -> None:
        self.transaction.abort()
        self.environment.close()


class LmdbLz4Format(Format):
    """One LMDB environment, one transaction per write batch."""

    name = "LMDB+lz4"
    description = "LMDB, one key per row, `lz4.frame.compress` of the row's bytes"

    def write(self, batches: Sequence[np.ndarray]) -> None:
        lmdb = require("lmdb", "pip install lmdb")
        compress = require("lz4.frame", "pip install lz4").compress
        os.makedirs(self.root, exist_ok=True)
        nbytes = sum(batch.nbytes for batch in batches)
        environment = lmdb.open(self.root, map_size=2 * nbytes + (64 << 20))
        try:
            for batch in batches:
                with environment.begin(write=True) as transaction:
                    for row in batch:
                        transaction.put(key_of(self.rows), compress(row), append=True)
                        self.rows += 1
        finally:
            environment.close()

    def open(self) -> LmdbLz4Reader:
        return LmdbLz4Reader(self.root)


# -- Redis + savez_compressed -----------------------------------------------------------------
def savez_blob(row: np.ndarray) -> bytes:
    """``row`` as ``np.savez_compressed`` writes it."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=row)
    return buffer.getvalue()


class RedisSavezReader(Reader):
    """One connection of this process; a gather is one ``MGET``."""

    def __init__(self, server: RedisServer) -> None:
        self.connection = server.client()

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        blobs = self.connection.mget([b"x:%d" % index for index in indices.tolist()])
        for slot, blob in enumerate(blobs):
            with np.load(io.BytesIO(blob)) as archive:
                out[slot] = archive["x"]

    def close(self) -> None:
        self.connection.close()


class RedisSavezFormat(Format):
    """Rows as ``savez_compressed`` blobs in a ``redis-server`` (no persistence) started by
    :meth:`write`; its stored bytes are the blobs' bytes."""

    name = "Redis+savez"
    description = "Redis 127.0.0.1, one key per row, `np.savez_compressed` blobs, `MGET`"
    on_disk = False
    server: RedisServer | None = None
    blob_bytes = 0

    def write(self, batches: Sequence[np.ndarray]) -> None:
        self.server = RedisServer(self.root)
        connection = self.server.client()
        try:
            for batch in batches:
                blobs = {b"x:%d" % (self.rows + i): savez_blob(row) for i, row in enumerate(batch)}
                self.blob_bytes += sum(len(blob) for blob in blobs.values())
                connection.mset(blobs)
                self.rows += len(batch)
        finally:
            connection.close()

    def open(self) -> RedisSavezReader:
        if self.server is None:
            raise RuntimeError("Redis: the server is not started")
        return RedisSavezReader(self.server)

    def stored_bytes(self) -> int:
        return self.blob_bytes

    def files(self) -> list[str]:
        return []

    def remove(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        super().remove()


# -- zarr v3 + zstd ---------------------------------------------------------------------------
class ZarrReader(Reader):
    """``zarr.open_array`` read-only; gathers by ``oindex``."""

    def __init__(self, path: str) -> None:
        self.array = require("zarr", "pip install zarr").open_array(path, mode="r")

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        out[...] = self.array.oindex[indices]


class ZarrZstdFormat(Format):
    """A zarr v3 array with zstd chunks of ``chunk_rows`` rows."""

    def __init__(self, root: str, dtype: str, shape: tuple[int, ...], shard_bytes: int,
                 chunk_rows: int) -> None:  # fmt: skip
        super().__init__(root, dtype, shape, shard_bytes)
        self.chunk_rows = chunk_rows
        self.name = f"zarr zstd {chunk_rows}-row"
        plural = "s" if chunk_rows > 1 else ""
        self.description = (
            f"zarr v3, zstd level {ZSTD_LEVEL}, chunks of {chunk_rows} row{plural}, no sharding"
        )

    def write(self, batches: Sequence[np.ndarray]) -> None:
        zarr = require("zarr", "pip install zarr")
        rows = sum(len(batch) for batch in batches)
        array = zarr.create_array(
            store=self.root,
            shape=(rows, *self.shape),
            chunks=(self.chunk_rows, *self.shape),
            dtype=self.dtype,
            compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
            zarr_format=3,
            overwrite=True,
        )
        for batch in batches:
            array[self.rows : self.rows + len(batch)] = batch
            self.rows += len(batch)

    def open(self) -> ZarrReader:
        return ZarrReader(self.root)


# -- HDF5 + gzip / blosc ----------------------------------------------------------------------
class Hdf5Reader(Reader):
    """One ``h5py.File`` opened read-only in this process."""

    def __init__(self, path: str) -> None:
        require("hdf5plugin", "pip install hdf5plugin")  # registers the blosc filter
        self.file = require("h5py", "pip install h5py").File(path, "r")
        self.data = self.file["x"]

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        if out[0].nbytes >= ROW_BY_ROW_BYTES:
            for slot, index in enumerate(indices.tolist()):
                out[slot] = self.data[index]
            return
        unique, inverse = np.unique(indices, return_inverse=True)
        np.take(self.data[unique], inverse, axis=0, out=out)

    def close(self) -> None:
        self.file.close()


class Hdf5Format(Format):
    """One HDF5 dataset ``x`` in chunks of one row, through ``compression`` (gzip or blosc)."""

    def __init__(self, root: str, dtype: str, shape: tuple[int, ...], shard_bytes: int,
                 compression: str) -> None:  # fmt: skip
        super().__init__(root, dtype, shape, shard_bytes)
        self.filter = compression
        self.name = f"HDF5 {compression}"
        if compression == "gzip":
            how = f"gzip level {HDF5_GZIP_LEVEL}"
        else:
            how = f"hdf5plugin blosc zstd level {BLOSC_LEVEL}, {self.shuffle_name} shuffle"
        self.description = f"HDF5 through h5py, chunks of 1 row, {how}"
        self.path = os.path.join(root, "data.h5")

    @property
    def shuffle_name(self) -> str:
        """The blosc shuffle: bit for bytes, byte for wider items (as memshard blosc)."""
        return "bit" if self.dtype.itemsize == 1 else "byte"

    def compression(self) -> dict[str, Any]:
        """``create_dataset`` keywords of the filter."""
        if self.filter == "gzip":
            return {"compression": "gzip", "compression_opts": HDF5_GZIP_LEVEL}
        plugin = require("hdf5plugin", "pip install hdf5plugin")
        shuffle = plugin.Blosc.BITSHUFFLE if self.shuffle_name == "bit" else plugin.Blosc.SHUFFLE
        return dict(plugin.Blosc(cname="zstd", clevel=BLOSC_LEVEL, shuffle=shuffle))

    def write(self, batches: Sequence[np.ndarray]) -> None:
        h5py = require("h5py", "pip install h5py")
        os.makedirs(self.root, exist_ok=True)
        rows = sum(len(batch) for batch in batches)
        with h5py.File(self.path, "w") as file:
            data = file.create_dataset(
                "x", shape=(rows, *self.shape), dtype=self.dtype, chunks=(1, *self.shape),
                **self.compression(),
            )  # fmt: skip
            for batch in batches:
                data[self.rows : self.rows + len(batch)] = batch
                self.rows += len(batch)

    def open(self) -> Hdf5Reader:
        return Hdf5Reader(self.path)


# -- the list ---------------------------------------------------------------------------------
MEMSHARD, MEMSHARD_ZSTD, MEMSHARD_BLOSC = "memshard", "memshard zstd-3", "memshard blosc"
LMDB, REDIS = LmdbLz4Format.name, RedisSavezFormat.name
ZARR_1, ZARR_64 = (f"zarr zstd {rows}-row" for rows in ZARR_CHUNKS)
HDF5_GZIP, HDF5_BLOSC = "HDF5 gzip", "HDF5 blosc"
#: Why Hugging Face ``datasets`` is not measured.
HF_NOT_MEASURED = (
    "Hugging Face datasets: not measured, `save_to_disk` writes Arrow files without "
    "compression, so it is no compressed format to compare"
)


def formats(scratch: str, workload: str, dtype: str, shape: tuple[int, ...],
            shard_bytes: int) -> list[Format]:  # fmt: skip
    """Every format of one workload, each in its own folder of ``scratch``, in table order."""

    def root(name: str) -> str:
        return os.path.join(scratch, f"{workload}-{name.replace(' ', '-').replace('+', '-')}")

    common = (dtype, shape, shard_bytes)
    return [
        MemshardFormat(root(MEMSHARD), *common, None, MEMSHARD),
        MemshardFormat(root(MEMSHARD_ZSTD), *common, f"zstd:{ZSTD_LEVEL}", MEMSHARD_ZSTD),
        MemshardFormat(root(MEMSHARD_BLOSC), *common, blosc_codec(dtype), MEMSHARD_BLOSC),
        LmdbLz4Format(root(LMDB), *common),
        RedisSavezFormat(root(REDIS), *common),
        *(ZarrZstdFormat(root(f"zarr-{rows}"), *common, rows) for rows in ZARR_CHUNKS),
        Hdf5Format(root(HDF5_GZIP), *common, "gzip"),
        Hdf5Format(root(HDF5_BLOSC), *common, "blosc"),
    ]


__all__ = ["Format", "Reader", "Unavailable", "formats", "blosc_codec", "savez_blob"]
