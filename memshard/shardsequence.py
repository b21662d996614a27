"""Writing rows into a sequence of shards: the one mechanism the appender and part writers share.

A :class:`ShardSequence` appends validated rows to the files of its open shard (one per
field, and a ragged field's offsets file), rolls to a new shard when the open one holds
``shard_rows`` rows or, in a dataset with ragged fields, when the next row would take its data
past ``shard_bytes``, and seals the full one: final header, checksum, read-only mode, and an
``fsync`` deferred to the next :meth:`ShardSequence.sync_sealed` (see
:class:`~memshard.durable.DeferredSync`). It keeps at most
:data:`~memshard.shardwriter.MAX_OPEN_SHARD_FILES` descriptors open, whatever the number of
fields.

It never publishes anything: its owner (:class:`~memshard.appender.Appender`,
:class:`~memshard.partwriter.PartWriter`) takes the sealed shards' records and the open
shard's state, and decides what a commit or a part record states. Errors are the file
system's own (``OSError``); the owner turns them into its typed failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .blockcodec import BlockCodec
from .blockwriter import BlockWriter
from .durable import DeferredSync
from .manifest import FieldSpec, ShardFile, offsets_path, offsets_record
from .ragged import Ragged
from .shardwriter import DescriptorBudget, ShardFileWriter

#: What a writer is given for one field, validated: rows of a fixed field, or a ragged
#: field's :class:`~memshard.ragged.Ragged` batch (C-contiguous values, offsets from 0).
Rows = np.ndarray | Ragged


@dataclass(frozen=True)
class SealedShard:
    """A shard sealed by the sequence: its first row (counted as the sequence counts), its
    rows, and each field's file record with its checksum."""

    row_offset: int
    rows: int
    files: dict[str, ShardFile]


@dataclass
class OpenShard:
    """The shard rows are being appended to: its position ``index``, first row, rows so far;
    each field's (values) file, each ragged or compressed field's offsets file, each
    uncompressed ragged field's elements so far, and each compressed field's block writer."""

    index: int
    row_offset: int
    rows: int
    files: dict[str, ShardFileWriter] = field(default_factory=dict)
    offsets: dict[str, ShardFileWriter] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, BlockWriter] = field(default_factory=dict)

    def writers(self) -> list[ShardFileWriter]:
        """Every file of the shard."""
        return [*self.files.values(), *self.offsets.values()]

    def stored(self, name: str) -> int:
        """The leading dimension of field ``name``'s values file so far: rows, elements (a
        ragged field) or bytes of frames (a compressed field)."""
        blocks = self.blocks.get(name)
        if blocks is not None:
            return blocks.stored
        return self.elements.get(name, self.rows)

    def data_bytes(self, specs: dict[str, FieldSpec]) -> int:
        """Bytes of data in the shard so far, a compressed field's counted uncompressed."""
        total = 0
        for name, spec in specs.items():
            if spec.ragged:
                blocks = self.blocks.get(name)
                elements = blocks.elements if blocks is not None else self.elements[name]
                total += elements * spec.row_bytes
            else:
                total += self.rows * spec.row_bytes
            if spec.has_offsets:
                total += (self.rows + 1) * spec.offsets.row_bytes
        return total

    def flush_blocks(self) -> None:
        """Write every compressed field's pending rows as a block."""
        for blocks in self.blocks.values():
            blocks.flush()


class ShardSequence:
    """The shards one writer appends to, from row ``first_row`` and shard position
    ``next_index`` on.

    Parameters:
        root: the dataset directory.
        specs: the fields, in the order their files are written.
        shard_rows: rows a shard holds before the sequence rolls to the next.
        file_name: ``(index, field) -> path`` of a new shard file, relative to ``root``.
        shard_bytes: with ragged fields, the bytes of data (every file of the shard) a shard
            holds at most, unless its one row is larger.
    """

    def __init__(
        self,
        root: str,
        specs: dict[str, FieldSpec],
        shard_rows: int,
        file_name: Callable[[int, str], str],
        *,
        first_row: int = 0,
        next_index: int = 0,
        shard_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.rows = first_row
        self.next_index = next_index
        self.open: OpenShard | None = None
        self.created_files = False
        self._specs = specs
        self._shard_rows = shard_rows
        self._ragged = [name for name, spec in specs.items() if spec.ragged]
        if self._ragged and shard_bytes is None:
            raise ValueError("a sequence of shards with ragged fields needs shard_bytes")
        self._shard_bytes = shard_bytes or 0
        self._row_bytes = sum(s.row_bytes for s in specs.values() if not s.ragged) + sum(
            s.offsets.row_bytes for s in specs.values() if s.has_offsets
        )
        self._codecs = {
            name: BlockCodec.of(spec.codec.name, spec.codec.params, spec.numpy_dtype.itemsize)
            for name, spec in specs.items()
            if spec.codec is not None
        }
        self._file_name = file_name
        self._sealed: list[SealedShard] = []
        self._syncs = DeferredSync()
        self._budget = DescriptorBudget()

    def continue_shard(self, index: int, row_offset: int, files: dict[str, ShardFile]) -> OpenShard:
        """Make the unsealed shard at ``index`` (first row ``row_offset``, ending where the
        sequence's rows end) the open one, its files cut back to their committed rows.

        Returns:
            The open shard.

        Raises:
            ShardSizeError: a file is shorter than its committed rows.
            OSError: a file cannot be opened or cut.
        """
        rows = self.rows - row_offset
        shard = OpenShard(index=index, row_offset=row_offset, rows=rows)
        try:
            for name, spec in self._specs.items():
                file = files[name]
                count = file.nbytes // spec.values.row_bytes if spec.has_offsets else rows
                shard.files[name] = ShardFileWriter.reopen(
                    self.root, file, spec.values, count, self._budget
                )
                if not spec.has_offsets:
                    continue
                offsets = shard.offsets[name] = ShardFileWriter.reopen(
                    self.root, offsets_record(file, spec, rows, sealed=False), spec.offsets,
                    rows + 1, self._budget,
                )  # fmt: skip
                if spec.compressed:
                    elements = last_element_end(offsets) if spec.ragged else 0
                    shard.blocks[name] = self._block_writer(name, shard, stored=count)
                    shard.blocks[name].elements = elements
                else:
                    shard.elements[name] = count
        except BaseException:
            _close_all(shard)
            raise
        self.open = shard
        self.next_index = max(self.next_index, index + 1)
        return shard

    def write(self, arrays: dict[str, Rows]) -> None:
        """Append ``arrays`` (validated: every field, equal lengths), rolling and sealing."""
        count = len(next(iter(arrays.values())))
        done = 0
        while done < count:
            shard = self.open if self.open is not None else self._start()
            take = min(self._shard_rows - shard.rows, count - done)
            full = take < count - done or shard.rows + take == self._shard_rows
            if self._ragged:
                fitting = self._rows_that_fit(shard, arrays, done, take)
                full = full or fitting < take
                take = fitting
            for name, rows in arrays.items():
                if not take:
                    break
                if name in shard.blocks:
                    shard.blocks[name].write(rows, done, take)
                elif isinstance(rows, Ragged):
                    self._write_ragged(shard, name, rows, done, take)
                else:
                    shard.files[name].write(memoryview(rows[done : done + take].data).cast("B"))
            shard.rows += take
            self.rows += take
            done += take
            if full:
                self.seal_open()

    def _rows_that_fit(
        self, shard: OpenShard, arrays: dict[str, Rows], done: int, most: int
    ) -> int:
        """How many of the ``most`` rows from ``done`` on fit in the open shard's
        ``shard_bytes`` (one at least, if the shard is empty)."""
        steps = np.arange(1, most + 1, dtype=np.int64)
        added = steps * self._row_bytes
        for name in self._ragged:
            rows = arrays[name]
            assert isinstance(rows, Ragged)
            offsets = rows.offsets[done : done + most + 1]
            added += (offsets[1:] - offsets[0]) * self._specs[name].row_bytes
        room = self._shard_bytes - shard.data_bytes(self._specs)
        fitting = int(np.searchsorted(added, room, side="right"))
        return max(fitting, 1) if shard.rows == 0 else fitting

    def _write_ragged(
        self, shard: OpenShard, name: str, rows: Ragged, done: int, take: int
    ) -> None:
        """Append ``take`` rows of a ragged batch from row ``done``: their values, and their
        ends (counted from the shard's first element) to the offsets file."""
        offsets = rows.offsets[done : done + take + 1]
        first, end = int(offsets[0]), int(offsets[-1])
        values = rows.values[first:end]
        if values.size:
            shard.files[name].write(memoryview(values.data).cast("B"))
        ends = (offsets[1:] - first + shard.elements[name]).astype("<i8", copy=False)
        shard.offsets[name].write(memoryview(ends.data).cast("B"))
        shard.elements[name] += end - first

    def seal_open(self) -> None:
        """Seal the open shard, if any; one without rows is deleted instead."""
        shard, self.open = self.open, None
        if shard is None:
            return
        if shard.rows == 0:
            for file in shard.writers():
                file.close()
                os.unlink(file.full_path)
            return
        shard.flush_blocks()
        records = {}
        for name, file in shard.files.items():
            file.seal(shard.stored(name))
            offsets = shard.offsets.get(name)
            extra = {}
            if offsets is not None:
                offsets.seal(shard.rows + 1)
                extra["offsets_checksum"] = offsets.checksum.digest()
            records[name] = self._record(name, shard, checksum=file.checksum.digest(), **extra)
        self._syncs.add([file.full_path for file in shard.writers()])
        self._sealed.append(SealedShard(shard.row_offset, shard.rows, records))

    def take_sealed(self) -> list[SealedShard]:
        """The shards sealed since the last call, in order."""
        sealed, self._sealed = self._sealed, []
        return sealed

    def sync_sealed(self) -> None:
        """Make every sealed shard's files durable (raise the first ``OSError``)."""
        self._syncs.sync_all()

    def sync_open(self) -> dict[str, ShardFile] | None:
        """State the open shard's rows in its headers and make its files durable.

        Returns:
            Each field's file record with the ``prefix_checksum`` of its rows, or ``None``
            when no shard with rows is open.
        """
        shard = self.open
        if shard is None:
            return None
        shard.flush_blocks()
        for name, file in shard.files.items():
            file.write_header(shard.stored(name))
            file.sync()
        for file in shard.offsets.values():
            file.write_header(shard.rows + 1)
            file.sync()
        if shard.rows == 0:
            return None
        records = {}
        for name, file in shard.files.items():
            offsets = shard.offsets.get(name)
            extra = {}
            if offsets is not None:
                extra["offsets_prefix_checksum"] = offsets.checksum.digest()
            records[name] = self._record(
                name, shard, checksum=None, prefix_checksum=file.checksum.digest(), **extra
            )
        return records

    def start_writeback(self) -> None:
        """Start writing the open shard's data to disk now (see
        :meth:`ShardFileWriter.start_writeback`)."""
        if self.open is not None:
            for file in self.open.writers():
                file.start_writeback()

    def written_paths(self) -> list[str]:
        """Paths (relative to the root) of every file the sequence holds open or sealed since
        the last :meth:`take_sealed`."""
        paths = []
        for sealed in self._sealed:
            for file in sealed.files.values():
                paths.append(file.path)
                if file.offsets_checksum is not None:
                    paths.append(file.offsets_path)
        if self.open is not None:
            paths += [file.path for file in self.open.writers()]
        return paths

    def release(self) -> None:
        """Close every descriptor and forget the deferred syncs; files stay as they are."""
        if self.open is not None:
            _close_all(self.open)
            self.open = None
        self._budget.release_all()  # a shard whose sealing failed is no longer ``open``
        self._syncs.shutdown()

    def _start(self) -> OpenShard:
        shard = OpenShard(index=self.next_index, row_offset=self.rows, rows=0)
        try:
            for name, spec in self._specs.items():
                relpath = self._file_name(shard.index, name)
                shard.files[name] = ShardFileWriter.create(
                    self.root, relpath, spec.values, self._budget
                )
                self.created_files = True
                if not spec.has_offsets:
                    continue
                offsets = shard.offsets[name] = ShardFileWriter.create(
                    self.root, offsets_path(relpath), spec.offsets, self._budget
                )
                offsets.write(memoryview(np.zeros(spec.offsets.shape or 1, "<i8").data).cast("B"))
                if spec.compressed:
                    shard.blocks[name] = self._block_writer(name, shard, stored=0)
                else:
                    shard.elements[name] = 0
        except BaseException:
            for file in shard.writers():
                file.close()
                with contextlib.suppress(OSError):
                    os.unlink(file.full_path)
            raise
        self.next_index += 1
        self.open = shard
        return shard

    def _record(self, name: str, shard: OpenShard, **checksums: Any) -> ShardFile:
        spec = self._specs[name]
        return ShardFile(
            path=shard.files[name].path,
            data_offset=spec.data_offset,
            nbytes=shard.stored(name) * spec.values.row_bytes,
            **checksums,
        )

    def _block_writer(self, name: str, shard: OpenShard, *, stored: int) -> BlockWriter:
        spec = self._specs[name]
        assert spec.codec is not None
        return BlockWriter(
            self._codecs[name], spec.row_bytes, spec.codec.block_bytes, spec.ragged,
            shard.files[name], shard.offsets[name], stored=stored,
        )  # fmt: skip


_Writer = TypeVar("_Writer", bound="ClosedOnExit")


class ClosedOnExit:
    """What every writer does as a context manager: ``with writer:`` ends with :meth:`close`
    on a clean exit and with :meth:`abort` when the block raises."""

    def close(self) -> object:
        """Finish the writer's work (commit, publish)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Give the writer's work up."""
        raise NotImplementedError

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def last_element_end(offsets: ShardFileWriter) -> int:
    """The element end of the last committed row in a compressed ragged field's offsets file
    (the first of the last pair of int64 values), read from the file."""
    pair = os.pread(offsets.fileno(), 16, offsets.end - 16)
    return int(np.frombuffer(pair, dtype="<i8")[0])


def _close_all(shard: OpenShard) -> None:
    for file in shard.writers():
        with contextlib.suppress(OSError):
            file.close()
