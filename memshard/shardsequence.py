"""Writing rows into a sequence of shards: the one mechanism the appender and part writers share.

A :class:`ShardSequence` appends validated rows to the files of its open shard (one per
field), rolls to a new shard when the open one holds ``shard_rows`` rows, and seals the full
one: final header, checksum, read-only mode, and an ``fsync`` deferred to the next
:meth:`ShardSequence.sync_sealed` (see :class:`~memshard.durable.DeferredSync`). It keeps at
most :data:`~memshard.shardwriter.MAX_OPEN_SHARD_FILES` descriptors open, whatever the number
of fields.

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

from .durable import DeferredSync
from .manifest import FieldSpec, ShardFile
from .shardwriter import DescriptorBudget, ShardFileWriter


@dataclass(frozen=True)
class SealedShard:
    """A shard sealed by the sequence: its first row (counted as the sequence counts), its
    rows, and each field's file record with its checksum."""

    row_offset: int
    rows: int
    files: dict[str, ShardFile]


@dataclass
class OpenShard:
    """The shard rows are being appended to: its position ``index``, first row, rows so far."""

    index: int
    row_offset: int
    rows: int
    files: dict[str, ShardFileWriter] = field(default_factory=dict)


class ShardSequence:
    """The shards one writer appends to, from row ``first_row`` and shard position
    ``next_index`` on.

    Parameters:
        root: the dataset directory.
        specs: the fields, in the order their files are written.
        shard_rows: rows a shard holds before the sequence rolls to the next.
        file_name: ``(index, field) -> path`` of a new shard file, relative to ``root``.
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
    ) -> None:
        self.root = root
        self.rows = first_row
        self.next_index = next_index
        self.open: OpenShard | None = None
        self.created_files = False
        self._specs = specs
        self._shard_rows = shard_rows
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
                shard.files[name] = ShardFileWriter.reopen(
                    self.root, files[name], spec, rows, self._budget
                )
        except BaseException:
            _close_all(shard)
            raise
        self.open = shard
        self.next_index = max(self.next_index, index + 1)
        return shard

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Append ``arrays`` (validated: every field, equal lengths), rolling and sealing."""
        count = next(iter(arrays.values())).shape[0]
        done = 0
        while done < count:
            shard = self.open if self.open is not None else self._start()
            take = min(self._shard_rows - shard.rows, count - done)
            for name, array in arrays.items():
                shard.files[name].write(memoryview(array[done : done + take].data).cast("B"))
            shard.rows += take
            self.rows += take
            done += take
            if shard.rows == self._shard_rows:
                self.seal_open()

    def seal_open(self) -> None:
        """Seal the open shard, if any; one without rows is deleted instead."""
        shard, self.open = self.open, None
        if shard is None:
            return
        if shard.rows == 0:
            for file in shard.files.values():
                file.close()
                os.unlink(file.full_path)
            return
        records = {}
        for name, file in shard.files.items():
            file.seal(shard.rows)
            records[name] = self._record(name, file, shard.rows, checksum=file.checksum.digest())
        self._syncs.add([file.full_path for file in shard.files.values()])
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
        for file in shard.files.values():
            file.write_header(shard.rows)
            file.sync()
        if shard.rows == 0:
            return None
        return {
            name: self._record(
                name, file, shard.rows, checksum=None, prefix_checksum=file.checksum.digest()
            )
            for name, file in shard.files.items()
        }

    def start_writeback(self) -> None:
        """Start writing the open shard's data to disk now (see
        :meth:`ShardFileWriter.start_writeback`)."""
        if self.open is not None:
            for file in self.open.files.values():
                file.start_writeback()

    def written_paths(self) -> list[str]:
        """Paths (relative to the root) of every file the sequence holds open or sealed since
        the last :meth:`take_sealed`."""
        paths = [file.path for shard in self._sealed for file in shard.files.values()]
        if self.open is not None:
            paths += [file.path for file in self.open.files.values()]
        return paths

    def release(self) -> None:
        """Close every descriptor and forget the deferred syncs; files stay as they are."""
        if self.open is not None:
            _close_all(self.open)
            self.open = None
        self._syncs.shutdown()

    def _start(self) -> OpenShard:
        shard = OpenShard(index=self.next_index, row_offset=self.rows, rows=0)
        try:
            for name, spec in self._specs.items():
                relpath = self._file_name(shard.index, name)
                shard.files[name] = ShardFileWriter.create(self.root, relpath, spec, self._budget)
                self.created_files = True
        except BaseException:
            for file in shard.files.values():
                file.close()
                with contextlib.suppress(OSError):
                    os.unlink(file.full_path)
            raise
        self.next_index += 1
        self.open = shard
        return shard

    def _record(self, name: str, file: ShardFileWriter, rows: int, **checksums: Any) -> ShardFile:
        spec = self._specs[name]
        return ShardFile(
            path=file.path, data_offset=spec.data_offset, nbytes=rows * spec.row_bytes, **checksums
        )


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


def _close_all(shard: OpenShard) -> None:
    for file in shard.files.values():
        with contextlib.suppress(OSError):
            file.close()
