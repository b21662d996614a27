"""Writing a part: :func:`write_part` and the :class:`PartWriter`.

A part writer holds only its own lock (``parts/ID.lock``), writes shard files of its own
through a :class:`~memshard.shardsequence.ShardSequence`, and publishes its record when it
closes; it never touches the manifest (``spec/PARTS.md``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import manifest as manifest_io
from .batch import validated_batch
from .durable import fsync_directory, write_file_durably
from .errors import (
    AppenderClosedError,
    DatasetNotFoundError,
    UnsupportedVersionError,
    WriteFailedError,
)
from .handles import FileLock, OwnedFd
from .layout import MANIFEST_NAME, PARTS_DIR, SHARDS_DIR, shard_file_name
from .manifest import (
    FORMAT_VERSION,
    FieldSpec,
)
from .partrecord import (
    DEFAULT_GROUP,
    PART_FORMAT,
    Part,
    PartKey,
    PartShard,
    checked_key,
    dumps_part,
    new_part_id,
)
from .shardsequence import ClosedOnExit, Rows, ShardSequence
from .shardwriter import WRITE_BUFFER_BYTES


@dataclass(frozen=True)
class PartTarget:
    """The dataset parts are written for: what a part writer needs of its manifest.

    Read it once (:meth:`of`) and send it to the workers, which then start parts without
    reading the manifest again. Picklable.
    """

    root: str
    uuid: str
    fields: dict[str, FieldSpec]
    labels: dict[str, tuple[str, ...]]
    shard_rows: int
    shard_bytes: int | None = None

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> PartTarget:
        """The target for the dataset at ``path``, from its manifest.

        Raises:
            DatasetNotFoundError: no dataset at ``path``.
            UnsupportedVersionError: the dataset is of a newer format version than this library
                writes.
            ManifestError: the manifest is damaged.
        """
        root = os.path.abspath(os.fspath(path))
        if not os.path.isfile(os.path.join(root, MANIFEST_NAME)):
            raise DatasetNotFoundError(f"{root}: no memshard dataset here (no manifest.json)")
        manifest = manifest_io.load(os.path.join(root, MANIFEST_NAME))
        if manifest_io.is_newer_version(manifest.version):
            raise UnsupportedVersionError(
                f"{root}: written in format version {manifest.version}; this library writes "
                f"{FORMAT_VERSION} and cannot add parts to it"
            )
        return cls(
            root=root,
            uuid=manifest.uuid,
            fields=dict(manifest.fields),
            labels=dict(manifest.labels),
            shard_rows=manifest.shard_rows,
            shard_bytes=manifest.shard_bytes,
        )

    def start(self, *, key: PartKey = None, group: str = DEFAULT_GROUP) -> PartWriter:
        """Start a new part; see :func:`write_part`."""
        return PartWriter._start(self, checked_key(key), new_part_id(group))


def write_part(
    dataset: str | os.PathLike[str] | PartTarget, *, key: PartKey = None, group: str = DEFAULT_GROUP
) -> PartWriter:
    """Start writing a new part of the dataset at ``dataset`` (a path or a :class:`PartTarget`).

    Any number of parts may be written at once, by any processes on any hosts sharing the
    directory; none takes the dataset's lock. Use the writer as a context manager: a clean exit
    closes it (publishing the part's record), an exception aborts it.

    Parameters:
        key: what :func:`commit_parts` orders parts by (``order="key"``): an int, a string or
            a tuple of them, e.g. a block index.
        group: 1-32 characters from ``[a-z0-9]``, part of the part's id, so that
            :func:`discard_parts` can remove every part of one job.

    Raises:
        ArgumentError: a bad ``key``.
        PartError: a bad ``group``.
        WriteFailedError: ``parts/`` or the part's files cannot be created.
        DatasetNotFoundError, ManifestError, UnsupportedVersionError: see :meth:`PartTarget.of`.
    """
    target = dataset if isinstance(dataset, PartTarget) else PartTarget.of(dataset)
    return target.start(key=key, group=group)


class PartWriter(ClosedOnExit):
    """Writes the rows of one part. Obtain from :func:`write_part`.

    Rows are validated as :meth:`memshard.Appender.extend` validates them and stored in shards
    of at most the dataset's ``shard_rows`` rows. :meth:`close` seals and syncs them and
    publishes the record; until then the part does not exist for :func:`commit_parts`.
    The writer belongs to the process that started it.
    """

    def __init__(self, target: PartTarget, part_id: str, key: PartKey, lock: FileLock) -> None:
        self.target = target
        self.id = part_id
        self.key = key
        self._lock: FileLock | None = lock
        self._pid = os.getpid()
        self._shards = ShardSequence(
            target.root,
            target.fields,
            target.shard_rows,
            lambda index, name: shard_file_name(part_id, index, name),
            shard_bytes=target.shard_bytes,
        )
        self._failure: str | None = None
        self._part: Part | None = None

    @classmethod
    def _start(cls, target: PartTarget, key: PartKey, part_id: str) -> PartWriter:
        parts = os.path.join(target.root, PARTS_DIR)
        try:
            # mkdir, not makedirs: a part never recreates a dataset directory removed meanwhile
            # (the staging dataset of a failed from_dask, while its blocks still run).
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts)
            lock = _create_lock(parts, part_id)
        except OSError as exc:
            raise WriteFailedError(
                exc.errno, f"{parts}: cannot start part {part_id} ({exc.strerror or exc})"
            ) from exc
        return cls(target, part_id, key, lock)

    @property
    def rows(self) -> int:
        """Rows written to this part so far."""
        return self._shards.rows

    @property
    def part(self) -> Part | None:
        """The part's record once :meth:`close` has published it, else None."""
        return self._part

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row; see :meth:`memshard.Appender.append`."""
        self._check_usable()
        self._write(self._validated(row, single_row=True))

    def extend(self, batch: Mapping[str, Any]) -> None:
        """Append rows stacked along axis 0; see :meth:`memshard.Appender.extend`."""
        self._check_usable()
        self._write(self._validated(batch, single_row=False))

    def close(self) -> Part:
        """Seal and ``fsync`` the part's shards, then publish its record durably.

        Returns the record, which :func:`commit_parts` takes. Idempotent.

        Raises:
            WriteFailedError: a write or ``fsync`` failed; the part is not published.
        """
        if self._part is not None:
            return self._part
        self._check_usable()
        self._guarded(self._seal_open_shard)
        self._guarded(self._shards.sync_sealed)
        sealed = self._shards.take_sealed()
        self._shards.release()
        part = Part(
            format=PART_FORMAT,
            version=FORMAT_VERSION,
            dataset=self.target.uuid,
            id=self.id,
            key=self.key,
            rows=self.rows,
            fields=self.target.fields,
            shards=tuple(PartShard(rows=shard.rows, files=shard.files) for shard in sealed),
        )
        self._guarded(self._publish, part)
        self._part = part
        self._release()
        return part

    def abort(self) -> None:
        """Stop and delete what the part wrote. Does nothing after :meth:`close`."""
        if self._lock is None or os.getpid() != self._pid:
            return
        names = self._shards.written_paths()
        self._shards.release()
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.target.root, name))
        self._release()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None and os.getpid() == self._pid:
            warnings.warn(
                f"{self.target.root}: part {self.id} dropped without close(); it is discarded",
                ResourceWarning,
                stacklevel=1,
            )
            self.abort()

    def __repr__(self) -> str:
        return f"<memshard.PartWriter {self.id} of {self.target.root!r} rows={self.rows}>"

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise AppenderClosedError(f"part {self.id} belongs to process {self._pid}")
        if self._failure is not None:
            raise AppenderClosedError(f"part {self.id} failed earlier ({self._failure})")
        if self._lock is None:
            raise AppenderClosedError(f"part {self.id} is closed")

    def _validated(self, values: Any, *, single_row: bool) -> dict[str, Rows]:
        where = f"{self.target.root} (part {self.id})"
        return validated_batch(
            values, self.target.fields, self.target.labels, where=where, single_row=single_row
        )

    def _write(self, arrays: dict[str, Rows]) -> None:
        self._guarded(self._shards.write, arrays)
        if sum(_nbytes(rows) for rows in arrays.values()) >= WRITE_BUFFER_BYTES:
            # Bulk writes: start writeback now, so that close() does not wait for all of it.
            self._guarded(self._shards.start_writeback)

    def _seal_open_shard(self) -> None:
        self._shards.seal_open()

    def _publish(self, part: Part) -> None:
        """The shard files and their names are durable; then the record appears atomically."""
        if part.shards:
            fsync_directory(os.path.join(self.target.root, SHARDS_DIR))
        parts = os.path.join(self.target.root, PARTS_DIR)
        data = dumps_part(part)
        manifest_io.check_document_size(len(data), where=parts, what=f"record of part {self.id}")
        temporary = os.path.join(parts, f".{self.id}.json.tmp")
        write_file_durably(temporary, data)
        os.rename(temporary, os.path.join(parts, f"{self.id}.json"))
        fsync_directory(parts)

    def _guarded(self, operation: Any, *args: Any) -> Any:
        try:
            return operation(*args)
        except OSError as exc:
            # Descriptors go at once; the lock stays until abort() has deleted the files.
            self._failure = f"{type(exc).__name__}: {exc}"
            self._shards.release()
            if isinstance(exc, WriteFailedError):
                raise
            raise WriteFailedError(
                exc.errno, f"{self.target.root}: part {self.id}: write failed ({exc})"
            ) from exc

    def _release(self) -> None:
        """Give up the part's lock; its lock file goes first, so nobody locks a stale one."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.target.root, PARTS_DIR, f"{self.id}.lock"))
        self._lock.release()
        self._lock = None


#: How often a part writer tries again to put its lock in place when a concurrent
#: :func:`discard_parts` removed the temporary lock file first.
LOCK_ATTEMPTS = 8


def _create_lock(parts: str, part_id: str) -> FileLock:
    """Create and lock ``parts/ID.lock``: locked under a temporary name first, then renamed, so
    that whoever finds the lock file finds it locked while the writer lives.

    A discard may remove the temporary file in the instant between its creation and its
    ``flock``; the rename then fails with ``ENOENT`` and the writer starts again."""
    temporary = os.path.join(parts, f".{part_id}.lock.tmp")
    for _ in range(LOCK_ATTEMPTS):
        handle = OwnedFd.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, os.path.join(parts, f"{part_id}.lock"))
        except FileNotFoundError:
            handle.close()
            continue
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return FileLock(handle, os.path.join(parts, f"{part_id}.lock"))
    raise OSError(errno.EAGAIN, f"the lock of part {part_id} was removed {LOCK_ATTEMPTS} times")


def _nbytes(rows: Rows) -> int:
    """Bytes of data in a validated field's rows (a ragged field's values)."""
    return rows.nbytes if isinstance(rows, np.ndarray) else rows.values.nbytes
