"""Reading a ragged field: each shard's offsets and values files mapped through the
process-wide mapping cache, the offsets checked once per snapshot, rows handed out as views,
batches gathered into one packed :class:`~memshard.ragged.Ragged`.

Row ``i`` of shard ``s`` is ``values[offsets[i]:offsets[i + 1]]`` of that shard's files. The
offsets are the one thing a reader must trust to slice the values: before a shard's rows are
read, its offsets are checked to start at 0, never decrease and end within the values (at
their end, when the snapshot shows all the shard's rows), and then, being few (8 bytes a row),
against their checksum, so a damaged file is a :class:`~memshard.errors.ShardDataError` or a
:class:`~memshard.errors.ChecksumError`, never a short or shifted row. When the offsets do not
end at the values' end, the values file is checked against the manifest first: a values file
whose size disagrees with its record (truncated, or a record that lies about its elements) is
a :class:`~memshard.errors.ShardSizeError` naming it, as a slice would find. (The values
themselves are not checked when read, as for fixed fields: ``verify`` does that.)
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .checksum import StreamingChecksum
from .errors import ChecksumError, ShardDataError
from .indexing import SegmentTable, project_indices
from .manifest import FieldSpec, Shard, offsets_record
from .mappings import CACHE, SegmentFile, check_shard_file, read_rows, segment_areas
from .pagecache import advise_ranges, page_aligned_empty
from .ragged import Allocator, Ragged, allocate, offsets_in_order
from .shardtable import Shards

#: Most shards per ragged field whose mappings a dataset keeps for reading rows (two each).
PINNED_SHARDS = 32


class RaggedLayout:
    """Where the rows of one ragged field are: one segment per shard.

    ``table`` maps a row to its shard; ``lengths[s]`` is how many rows of shard ``s`` the
    snapshot shows (the unsealed last shard may hold more, committed later).
    """

    def __init__(
        self, root: str, name: str, spec: FieldSpec, shards: Shards, lengths: np.ndarray
    ) -> None:
        self.root = root
        self.name = name
        self.spec = spec
        self._shards = shards
        self._lengths = lengths.tolist()
        starts = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        self.table = SegmentTable.from_offsets(starts)
        self.starts: tuple[int, ...] = tuple(starts.tolist())
        self.memory_areas = 2 * segment_areas(1) * len(lengths)
        self._checked: set[int] = set()
        self._files: dict[int, _ShardFiles] = {}
        # The offsets and values of the shards rows were last read from, at most
        # PINNED_SHARDS of them (forgotten all at once when full). They keep those mappings
        # alive until the dataset is closed (:meth:`release`), so that reading a row costs
        # about what slicing a flat array does, not two look-ups in the mapping cache.
        self._pinned: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def release(self) -> None:
        """Let go of the mappings this layout keeps (see ``_pinned``)."""
        self._pinned = {}

    @property
    def rows(self) -> int:
        """Rows the snapshot shows."""
        return self.starts[-1]

    # -- one shard's files ---------------------------------------------------------------------
    def offsets(self, shard: int) -> np.ndarray:
        """The offsets of the rows of ``shard`` the snapshot shows (``rows + 1`` int64 values
        from 0), checked the first time.

        Raises:
            ShardDataError: the offsets start elsewhere than 0, decrease, or end past the
                values (or before their end, when all the shard's rows are shown).
            ChecksumError: the offsets of a shard whose rows are all shown do not match their
                checksum (``offsets_checksum``, or ``offsets_prefix_checksum`` if unsealed).
            ShardSizeError, ShardHeaderError, ShardMissingError: the values file does not
                match its record, found when the offsets do not end at its end.
            InvalidDatasetError: see :func:`memshard.mappings.map_segment`.
        """
        files = self._files.get(shard)
        if files is None:
            files = self._files_of(shard)
        offsets = CACHE.get(files.offsets_key)
        if offsets is None:
            offsets = CACHE.map(files.offsets_key, self.root, self.spec.offsets, (files.offsets,))
        if offsets is None:  # no room to map: read them
            rows = np.arange(files.offsets.rows)
            offsets = read_rows(self.root, self.spec.offsets, (files.offsets,), rows)
        if shard not in self._checked:
            self._check(shard, self._shards[shard], offsets)
            self._checked.add(shard)
        return offsets

    def values(self, shard: int) -> np.ndarray | None:
        """The values of ``shard``, mapped (read-only, shape ``(elements, *tail)``); None when
        the mapping cache has no room (read them with :meth:`read_values`)."""
        files = self._files.get(shard)
        if files is None:
            files = self._files_of(shard)
        if files.values.rows == 0:
            stored = self.spec.values
            return np.empty((0, *stored.shape), dtype=stored.numpy_dtype)
        values = CACHE.get(files.values_key)
        if values is None:
            values = CACHE.map(files.values_key, self.root, self.spec.values, (files.values,))
        return values

    def read_values(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Elements ``start:stop`` of ``shard``, copied with ``pread``."""
        files = self._files.get(shard) or self._files_of(shard)
        return read_rows(self.root, self.spec.values, (files.values,), np.arange(start, stop))

    def _files_of(self, shard: int) -> _ShardFiles:
        record = self._shards[shard]
        visible = self._lengths[shard]
        file = record.files[self.name]
        elements = file.nbytes // self.spec.values.row_bytes
        offsets = SegmentFile(
            file=offsets_record(file, self.spec, record.rows, sealed=record.sealed),
            manifest_rows=record.rows + 1,
            sealed=record.sealed,
            rows=visible + 1,
        )
        values = SegmentFile(file=file, manifest_rows=elements, sealed=record.sealed, rows=elements)
        files = _ShardFiles(
            offsets, (self.root, offsets.file.path, visible + 1), values,
            (self.root, file.path, elements),
        )  # fmt: skip
        self._files[shard] = files
        return files

    def _check(self, shard: int, record: Shard, offsets: np.ndarray) -> None:
        file = record.files[self.name]
        elements = file.nbytes // self.spec.values.row_bytes
        full = self._lengths[shard] == record.rows
        end = int(offsets[-1])
        path = f"{self.root}/{file.offsets_path}"
        if not offsets_in_order(offsets, elements, whole=full):
            if end != elements:  # the values file may be what disagrees with the record
                check_shard_file(self.root, self.spec.values, self._files[shard].values)
            raise ShardDataError(
                f"{path}: the offsets of field {self.name!r} must start at 0, never decrease "
                f"and end at its {elements} elements; they start at {int(offsets[0])} and end "
                f"at {end} (damaged file)"
            )
        if full:  # in order, yet damaged (a row boundary moved): only the checksum tells
            self._check_checksum(record, offsets)

    def _check_checksum(self, record: Shard, offsets: np.ndarray) -> None:
        """Compare the offsets of ``record``'s shard, all of its rows shown, with their
        checksum in the manifest (``offsets_checksum``, or ``offsets_prefix_checksum`` if
        unsealed), if it has one.

        Raises:
            ChecksumError: they differ.
        """
        file = record.files[self.name]
        expected = file.offsets_checksum if record.sealed else file.offsets_prefix_checksum
        if expected is None:
            return
        actual = StreamingChecksum()
        actual.update(np.ascontiguousarray(offsets, "<i8").data.cast("B"))
        if actual.digest() != expected:
            raise ChecksumError(
                f"{self.root}/{file.offsets_path}: the offsets of field {self.name!r} are "
                f"{actual.digest()}, the manifest records {expected} (damaged file)"
            )

    # -- reading rows --------------------------------------------------------------------------
    def row(self, row: int) -> np.ndarray:
        """Row ``row`` (``0 <= row < rows``): a read-only view, or a read-only copy when
        its shard cannot be mapped now."""
        shard = bisect.bisect_right(self.starts, row) - 1
        local = row - self.starts[shard]
        pinned = self._pinned.get(shard)
        if pinned is not None:
            offsets, values = pinned
            view: np.ndarray = values[offsets[local] : offsets[local + 1]]
            return view
        offsets = self.offsets(shard)
        start, stop = int(offsets[local]), int(offsets[local + 1])
        mapped = self.values(shard)
        if mapped is None:
            copy = self.read_values(shard, start, stop)
            copy.flags.writeable = False
            return copy
        if len(self._pinned) >= PINNED_SHARDS:
            self._pinned = {}
        self._pinned[shard] = (offsets, mapped)
        view = mapped[start:stop]
        return view

    def run(self, start: int, stop: int) -> Ragged:
        """Rows ``start:stop`` (in range, ``start <= stop``), values a view when they lie in
        one mapped shard."""
        if start < stop:
            shard = self.table.segment_of(start)
            if stop <= self.starts[shard + 1]:
                values = self.values(shard)
                if values is not None:
                    base = self.starts[shard]
                    offsets = self.offsets(shard)[start - base : stop - base + 1]
                    first = int(offsets[0])
                    return Ragged._of(values[first : int(offsets[-1])], offsets - first)
        return self.gather(np.arange(start, stop, dtype=np.int64))

    def gather(self, indices: np.ndarray, empty: Allocator | None = None) -> Ragged:
        """Rows ``indices`` (1-d, non-negative, in range) packed into one new buffer, in
        request order, read shard by shard.

        ``empty`` makes that buffer (see :data:`~memshard.ragged.Allocator`): it is called
        once, with shape ``(elements, *tail)``, once the offsets are read; by default a
        page-aligned array.

        Raises:
            OutArrayError: ``empty`` returned something else than the array asked for.
        """
        count = indices.size
        lengths = np.zeros(count, dtype=np.int64)
        pieces = []
        for shard, local, positions in project_indices(indices, self.table):
            offsets = self.offsets(shard)
            starts, stops = offsets[local], offsets[local + 1]
            lengths[positions] = stops - starts
            pieces.append((shard, starts, stops, positions))
        out_offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        out = allocate(
            empty or page_aligned_empty,
            (int(out_offsets[-1]), *self.spec.shape),
            self.spec.numpy_dtype,
            where=f"{self.root}: field {self.name!r}",
        )
        for shard, starts, stops, positions in pieces:
            self._copy(shard, starts, stops, _positions(positions, count), out, out_offsets)
        return Ragged._of(out, out_offsets)

    def _copy(
        self,
        shard: int,
        starts: np.ndarray,
        stops: np.ndarray,
        positions: np.ndarray,
        out: np.ndarray,
        out_offsets: np.ndarray,
    ) -> None:
        values = self.values(shard)
        if values is None:
            targets = out_offsets[positions].tolist()
            for target, start, stop in zip(targets, starts.tolist(), stops.tolist(), strict=True):
                if stop > start:
                    out[target : target + stop - start] = self.read_values(shard, start, stop)
            return
        # Byte slices of memoryviews: a third of the cost of numpy slicing per row.
        size = self.spec.row_bytes
        source = values.reshape(-1).view(np.uint8).data
        target = out.reshape(-1).view(np.uint8).data
        ends = (out_offsets[positions] + (stops - starts)) * size
        rows = zip(
            (out_offsets[positions] * size).tolist(), ends.tolist(),
            (starts * size).tolist(), (stops * size).tolist(), strict=True,
        )  # fmt: skip
        for begin, end, start, stop in rows:
            target[begin:end] = source[start:stop]

    def lengths(self) -> np.ndarray:
        """Every visible row's length, in row order (int64)."""
        parts = list(self.length_blocks(max(self.rows, 1)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def length_blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        """Every visible row's length, in row order, in new int64 arrays of at most
        ``block_rows`` (>= 1) rows each, one shard's offsets read at a time."""
        for shard in range(len(self._lengths)):
            offsets = self.offsets(shard)
            for start in range(0, len(offsets) - 1, block_rows):
                yield np.diff(offsets[start : start + block_rows + 1])

    def elements(self) -> int:
        """Elements of the visible rows."""
        return sum(
            int(self.offsets(shard)[-1]) if self._lengths[shard] < self._shards[shard].rows
            else self._shards[shard].files[self.name].nbytes // self.spec.row_bytes
            for shard in range(len(self._lengths))
        )  # fmt: skip

    def advise(self, indices: np.ndarray) -> None:
        """Ask the kernel to read the values of rows ``indices`` now (see
        :func:`memshard.pagecache.advise_will_need`); shards that cannot be mapped are left."""
        for shard, local, _ in project_indices(indices, self.table):
            values = self.values(shard)
            if values is None or not values.size:
                continue
            offsets = self.offsets(shard)
            rows = np.unique(local)
            starts, stops = offsets[rows], offsets[rows + 1]
            nonempty = stops > starts
            advise_ranges(values, starts[nonempty], stops[nonempty])


class _ShardFiles(NamedTuple):
    """A shard's offsets and values files of the field, and their mapping cache keys."""

    offsets: SegmentFile
    offsets_key: Hashable
    values: SegmentFile
    values_key: Hashable


def _positions(positions: Any, count: int) -> np.ndarray:
    if isinstance(positions, slice):
        return np.arange(*positions.indices(count))
    return np.asarray(positions)
