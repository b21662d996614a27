"""The five ways :mod:`benchmarks.ragged` stores variable-length rows, each written from the
same batches and read through the fastest interface a user of it would reasonably write.

- ``flat``: the physical bound, a hand-rolled Megatron-style pair: every row's values back to
  back in one ``.bin`` file and int64 offsets in an ``.idx`` file, both memory-mapped
  (``mmap`` + ``np.frombuffer``, plain ndarrays). A gather copies each row's bytes into one
  new buffer (``memoryview`` slices, the fastest of the hand-written gathers tried).
- ``memshard``: a dataset of one ragged field; ``col[i]`` and ``col[indices]``.
- ``HF datasets``: Hugging Face ``datasets``, an Arrow ``list<int32>`` column saved with
  ``save_to_disk`` and memory-mapped by ``load_from_disk``, read with
  ``with_format("numpy", dtype=...)`` (without the dtype, its numpy format turns int32 ids
  into int64); a gather packs the rows it returns with ``np.concatenate``. Strokes are
  flattened into ``list<int16>`` and reshaped on read, as for HDF5: stored as
  ``Array2D(shape=(None, 3))``, a 256-row gather took 10x longer in a trial here (15.8 ms
  against 1.6 ms).
- ``LMDB``: one key per row (8-byte big-endian row number), the row's raw bytes as the value,
  its shape known from the field; read in one long read transaction with ``buffers=True``.
- ``HDF5 vlen``: one h5py dataset of ``h5py.vlen_dtype`` (strokes flattened, reshaped to
  ``(n, 3)`` on read); a gather reads the sorted unique rows in one selection (h5py needs
  them increasing) and reorders them.

Every reader returns a row as a copy the caller can keep, and a gather as one :class:`Packed`
pair in request order.
"""

from __future__ import annotations

import abc
import itertools
import math
import mmap
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

import memshard as ms

from .core import files_under
from .formats.base import require
from .ragged_data import Packed, RaggedWorkload, pack


class RaggedReader(abc.ABC):
    """An open view of a written format, used by one process."""

    @abc.abstractmethod
    def row(self, index: int) -> np.ndarray:
        """A copy of row ``index``, of shape ``(n, *tail)``."""

    @abc.abstractmethod
    def gather(self, indices: np.ndarray) -> Packed:
        """Rows ``indices`` (unsorted, repeats allowed) packed in request order."""

    def close(self) -> None:  # noqa: B027 - most readers hold nothing to release
        """Release what the reader holds."""


class ViewReader(RaggedReader):
    """A reader that can also return a row without copying it (a view of a mapping)."""

    @abc.abstractmethod
    def view(self, index: int) -> np.ndarray:
        """Row ``index`` as a read-only view."""

    def row(self, index: int) -> np.ndarray:
        return np.array(self.view(index))


class RaggedFormat(abc.ABC):
    """One way of storing a workload, under ``root``."""

    #: Short name, in tables and JSON.
    name: str = ""
    #: How it stores and reads the rows, for the table's legend.
    description: str = ""

    def __init__(self, root: str, workload: RaggedWorkload) -> None:
        self.root = root
        self.workload = workload

    @abc.abstractmethod
    def write(self, batches: Sequence[Packed]) -> None:
        """Store every row of ``batches`` in order, then close."""

    @abc.abstractmethod
    def open(self) -> RaggedReader:
        """A reader of what :meth:`write` stored; safe to call in a forked worker."""

    def files(self) -> list[str]:
        """Every file holding the data."""
        return files_under(self.root)

    def remove(self) -> None:
        """Delete what :meth:`write` stored."""
        shutil.rmtree(self.root, ignore_errors=True)


# -- flat: one values file and one offsets file -----------------------------------------------
class FlatFiles:
    """The flat pair's files mapped read-only: ``values`` ``(total, *tail)`` and ``offsets``,
    plain ndarrays over ``mmap`` (a ``np.memmap`` slice pays for its subclass)."""

    def __init__(self, root: str, workload: RaggedWorkload) -> None:
        self.maps: list[mmap.mmap] = []
        raw = self._map(os.path.join(root, "values.bin"))
        dtype = np.dtype(workload.dtype)
        self.values = np.frombuffer(raw, dtype=dtype).reshape(-1, *workload.tail)
        self.offsets = np.frombuffer(self._map(os.path.join(root, "offsets.idx")), np.int64)
        self.bytes = memoryview(raw)
        self.element_bytes = workload.element_bytes

    def _map(self, path: str) -> Any:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return b""
            self.maps.append(mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ))
        return self.maps[-1]

    def gather(self, indices: np.ndarray) -> Packed:
        """Rows ``indices`` packed: each row's bytes copied into one new buffer."""
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        values = np.empty((int(offsets[-1]), *self.values.shape[1:]), dtype=self.values.dtype)
        target = values.reshape(-1).view(np.uint8).data
        source, size = self.bytes, self.element_bytes
        for start, end, at, stop in zip(
            (starts * size).tolist(),
            (ends * size).tolist(),
            (offsets[:-1] * size).tolist(),
            (offsets[1:] * size).tolist(),
            strict=True,
        ):
            target[at:stop] = source[start:end]
        return Packed(values, offsets)

    def close(self) -> None:
        """Unmap both files (the arrays over them must be gone)."""
        del self.values, self.offsets, self.bytes
        for mapping in self.maps:
            mapping.close()
        self.maps.clear()


class FlatReader(ViewReader):
    """Rows sliced out of the mapped values file by the mapped offsets."""

    def __init__(self, root: str, workload: RaggedWorkload) -> None:
        self.files = FlatFiles(root, workload)
        self.values, self.offsets = self.files.values, self.files.offsets

    def view(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def gather(self, indices: np.ndarray) -> Packed:
        return self.files.gather(indices)

    def close(self) -> None:
        del self.values, self.offsets
        self.files.close()


class FlatFormat(RaggedFormat):
    """``values.bin`` (raw values) and ``offsets.idx`` (raw int64 offsets), written with
    ``f.write``."""

    name = "flat"
    description = (
        "one raw values file + one int64 offsets file (hand-rolled, Megatron style), "
        "mapped with `mmap` + `np.frombuffer`"
    )

    def write(self, batches: Sequence[Packed]) -> None:
        os.makedirs(self.root, exist_ok=True)
        end = 0
        with (
            open(os.path.join(self.root, "values.bin"), "wb") as values,
            open(os.path.join(self.root, "offsets.idx"), "wb") as offsets,
        ):
            offsets.write(np.zeros(1, dtype=np.int64).data)
            for batch in batches:
                values.write(np.ascontiguousarray(batch.values).data)
                offsets.write((batch.offsets[1:] + end).data)
                end += int(batch.offsets[-1])

    def open(self) -> FlatReader:
        return FlatReader(self.root, self.workload)


# -- memshard ---------------------------------------------------------------------------------
class MemshardReader(ViewReader):
    """``ms.open(root)[name]``: ``col[i]`` a zero-copy view, ``col[indices]`` a Ragged batch."""

    def __init__(self, root: str, name: str) -> None:
        self.dataset = ms.open(root)
        self.column = self.dataset[name]

    def view(self, index: int) -> np.ndarray:
        return self.column[index]  # type: ignore[no-any-return]

    def gather(self, indices: np.ndarray) -> Packed:
        batch = self.column[indices]
        return Packed(batch.values, batch.offsets)

    def close(self) -> None:
        del self.column
        self.dataset.close()


class MemshardFormat(RaggedFormat):
    """A memshard dataset of one ragged field, written with ``extend`` of packed pairs."""

    name = "memshard"
    description = (
        "one ragged field, `extend` of packed (values, offsets) pairs; `col[i]`, `col[indices]`"
    )

    def write(self, batches: Sequence[Packed]) -> None:
        write_memshard(self.root, self.workload, batches)

    def open(self) -> MemshardReader:
        return MemshardReader(self.root, self.workload.name)


def write_memshard(root: str, workload: RaggedWorkload, batches: Sequence[Packed]) -> None:
    """A new memshard dataset at ``root`` holding ``batches``, one ``extend`` each."""
    name = workload.name
    with ms.create(root, workload.fields, shard_bytes=workload.shard_bytes) as appender:
        for batch in batches:
            appender.extend({name: {"values": batch.values, "offsets": batch.offsets}})


# -- Hugging Face datasets --------------------------------------------------------------------
#: Arrow ``list`` offsets are int32: the rows of one chunk hold fewer elements than this.
ARROW_CHUNK_ELEMENTS = 1 << 30


def _datasets() -> Any:
    module = require("datasets", "pip install 'memshard[bench]'")
    module.disable_progress_bars()
    return module


class HfReader(RaggedReader):
    """``load_from_disk(root).with_format("numpy", dtype=dtype)``; the Arrow files mapped."""

    def __init__(self, root: str, workload: RaggedWorkload) -> None:
        loaded = _datasets().load_from_disk(root)
        self.data = loaded.with_format("numpy", dtype=np.dtype(workload.dtype))
        self.name = workload.name
        self.tail = workload.tail
        self.empty = np.empty((0, *workload.tail), dtype=workload.dtype)

    def row(self, index: int) -> np.ndarray:
        return np.asarray(self.data[index][self.name]).reshape(-1, *self.tail)

    def gather(self, indices: np.ndarray) -> Packed:
        rows = self.data[indices][self.name]
        return pack([row.reshape(-1, *self.tail) for row in rows], self.empty)


class HfFormat(RaggedFormat):
    """An Arrow ``list`` column built over the packed arrays (no row-by-row copy), then
    ``Dataset.save_to_disk`` (its default shards of 500 MB)."""

    name = "HF datasets"
    description = (
        "Arrow `list<int32>` (strokes: `list<int16>`, flattened), "
        '`save_to_disk` / `load_from_disk` (memory-mapped), `with_format("numpy")`'
    )

    def write(self, batches: Sequence[Packed]) -> None:
        datasets = _datasets()
        pa = require("pyarrow", "pip install 'memshard[bench]'")

        width = math.prod(self.workload.tail)
        feature = datasets.List(datasets.Value(self.workload.dtype))
        chunks = [
            pa.ListArray.from_arrays(
                pa.array((chunk.offsets * width).astype(np.int32)), pa.array(chunk.values.ravel())
            )
            for chunk in arrow_chunks(batches)
        ]
        table = pa.table({self.workload.name: pa.chunked_array(chunks)})
        info = datasets.DatasetInfo(features=datasets.Features({self.workload.name: feature}))
        datasets.Dataset(table, info=info).save_to_disk(self.root)

    def open(self) -> HfReader:
        return HfReader(self.root, self.workload)


def arrow_chunks(batches: Sequence[Packed]) -> list[Packed]:
    """``batches`` joined into chunks of fewer than :data:`ARROW_CHUNK_ELEMENTS` elements
    (Arrow's int32 list offsets; a tail's inner list counts every scalar)."""
    chunks: list[Packed] = []
    current: list[Packed] = []
    size = 0
    for batch in batches:
        scalars = batch.values.size
        if current and size + scalars >= ARROW_CHUNK_ELEMENTS:
            chunks.append(concatenated(current))
            current, size = [], 0
        current.append(batch)
        size += scalars
    if current:
        chunks.append(concatenated(current))
    return chunks


def concatenated(batches: Sequence[Packed]) -> Packed:
    """Consecutive batches as one."""
    values = np.concatenate([batch.values for batch in batches])
    ends = np.cumsum([0] + [int(batch.offsets[-1]) for batch in batches])
    offsets = [batches[0].offsets[:1]]
    offsets += [batch.offsets[1:] + end for batch, end in zip(batches, ends, strict=False)]
    return Packed(values, np.concatenate(offsets))


# -- LMDB -------------------------------------------------------------------------------------
def _lmdb() -> Any:
    return require("lmdb", "pip install 'memshard[bench]'")


def key_of(index: int) -> bytes:
    """The key of row ``index``: sorts like the row numbers."""
    return index.to_bytes(8, "big")


class LmdbReader(RaggedReader):
    """A read-only environment (no lock, no readahead) and one read transaction held open,
    values as zero-copy buffers."""

    def __init__(self, root: str, workload: RaggedWorkload) -> None:
        self.environment = _lmdb().open(
            root, readonly=True, lock=False, readahead=False, meminit=False, max_readers=64
        )
        self.transaction = self.environment.begin(buffers=True)
        self.dtype = np.dtype(workload.dtype)
        self.tail = workload.tail
        self.element_bytes = workload.element_bytes

    def row(self, index: int) -> np.ndarray:
        value = self.transaction.get(key_of(index))
        return np.array(np.frombuffer(value, dtype=self.dtype).reshape(-1, *self.tail))

    def gather(self, indices: np.ndarray) -> Packed:
        get = self.transaction.get
        buffers = [get(index.to_bytes(8, "big")) for index in indices.tolist()]
        offsets = np.zeros(len(buffers) + 1, dtype=np.int64)
        np.cumsum([len(buffer) for buffer in buffers], out=offsets[1:])
        offsets //= self.element_bytes
        values = np.frombuffer(b"".join(buffers), dtype=self.dtype).reshape(-1, *self.tail)
        return Packed(values, offsets)

    def close(self) -> None:
        self.transaction.abort()
        self.environment.close()


class LmdbFormat(RaggedFormat):
    """One environment, one transaction per write batch, keys appended in order."""

    name = "LMDB"
    description = "one key per row (the row's raw bytes), one read transaction"

    def write(self, batches: Sequence[Packed]) -> None:
        os.makedirs(self.root, exist_ok=True)
        nbytes = sum(batch.values.nbytes for batch in batches)
        rows = sum(len(batch) for batch in batches)
        # Values above half a page go to overflow pages of whole pages.
        map_size = 2 * nbytes + rows * (mmap.PAGESIZE + 64) + (64 << 20)
        environment = _lmdb().open(self.root, map_size=map_size, sync=False)
        try:
            index = 0
            for batch in batches:
                ends = batch.offsets.tolist()
                with environment.begin(write=True) as transaction:
                    for start, end in itertools.pairwise(ends):
                        transaction.put(key_of(index), batch.values[start:end], append=True)
                        index += 1
            environment.sync(True)
        finally:
            environment.close()

    def open(self) -> LmdbReader:
        return LmdbReader(self.root, self.workload)


# -- HDF5 vlen --------------------------------------------------------------------------------
def _h5py() -> Any:
    return require("h5py", "pip install 'memshard[hdf5]'")


class Hdf5Reader(RaggedReader):
    """One ``h5py.File`` opened read-only in this process."""

    def __init__(self, root: str, workload: RaggedWorkload) -> None:
        self.file = _h5py().File(os.path.join(root, "data.h5"), "r")
        self.data = self.file[workload.name]
        self.tail = workload.tail
        self.empty = np.empty((0, *workload.tail), dtype=workload.dtype)

    def row(self, index: int) -> np.ndarray:
        return np.asarray(self.data[index]).reshape(-1, *self.tail)

    def gather(self, indices: np.ndarray) -> Packed:
        unique, inverse = np.unique(indices, return_inverse=True)
        rows = self.data[unique]
        return pack([rows[slot].reshape(-1, *self.tail) for slot in inverse.tolist()], self.empty)

    def close(self) -> None:
        self.file.close()


class Hdf5Format(RaggedFormat):
    """One dataset of ``vlen_dtype(dtype)`` (rows flattened), written a batch at a time."""

    name = "HDF5 vlen"
    description = "`h5py.vlen_dtype`, strokes flattened"

    def write(self, batches: Sequence[Packed]) -> None:
        h5py = _h5py()
        os.makedirs(self.root, exist_ok=True)
        rows = sum(len(batch) for batch in batches)
        kind = h5py.vlen_dtype(np.dtype(self.workload.dtype))
        width = math.prod(self.workload.tail)
        with h5py.File(os.path.join(self.root, "data.h5"), "w") as file:
            data = file.create_dataset(self.workload.name, (rows,), dtype=kind)
            start = 0
            for batch in batches:
                flat = batch.values.ravel()
                ends = (batch.offsets * width).tolist()
                column = np.empty(len(batch), dtype=object)
                for slot, (first, end) in enumerate(itertools.pairwise(ends)):
                    column[slot] = flat[first:end]
                data[start : start + len(batch)] = column
                start += len(batch)

    def open(self) -> Hdf5Reader:
        return Hdf5Reader(self.root, self.workload)


#: Every format, the baseline first.
FORMATS: tuple[type[RaggedFormat], ...] = (
    FlatFormat,
    MemshardFormat,
    HfFormat,
    LmdbFormat,
    Hdf5Format,
)
