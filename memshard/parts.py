"""Parts: rows written by many processes at once, committed to one dataset in one step.

A *part* is a run of rows that one process writes on its own (:func:`write_part`): into shard
files of its own, named after the part, then a *part record* ``parts/PART.json`` that lists
them. Nothing a part writer does is visible to readers. :func:`commit_parts` appends finished
parts to the manifest in one atomic commit, in a deterministic order; their shard files are
adopted where they are, never copied. A part whose writer failed or was killed has no record
and can never be committed; :func:`discard_parts` removes its remains. The protocol is
specified in ``spec/PARTS.md``.

Part writers need no lock on the dataset, only read access to its manifest and write access
to ``shards/`` and ``parts/``, so they may run on any number of hosts that share the
directory. Only :func:`commit_parts` and :func:`discard_parts` take the dataset's write lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
from pydantic import Field, ValidationError, model_validator

from . import manifest as manifest_io
from .appender import Appender, append
from .batch import validated_batch
from .checksum import checksum_of_file
from .durable import DeferredSync, fsync_directory, write_file_durably
from .errors import (
    AppenderClosedError,
    ArgumentError,
    ChecksumError,
    DatasetNotFoundError,
    MemshardError,
    PartCommittedError,
    PartError,
    PartIncompleteError,
    UnsupportedVersionError,
    WriteFailedError,
)
from .handles import FileLock, OwnedFd
from .layout import MANIFEST_NAME, PARTS_DIR, SHARDS_DIR, shard_file_name
from .manifest import (
    FORMAT_VERSION,
    MAX_COUNT,
    MAX_MANIFEST_BYTES,
    FieldSpec,
    Shard,
    ShardFile,
    _Strict,
)
from .shardwriter import WRITE_BUFFER_BYTES, DescriptorBudget, ShardFileWriter
from .smallfile import read_small_file

PART_FORMAT: Literal["memshard-part"] = "memshard-part"
#: A part's id: ``p-GROUP-NONCE``. The group lets :func:`discard_parts` find every part of one
#: job, also those killed before writing a record; the nonce makes every attempt unique.
PART_ID_PATTERN = re.compile(r"p-[a-z0-9]{1,32}-[0-9a-f]{16}")
GROUP_PATTERN = re.compile(r"[a-z0-9]{1,32}")
DEFAULT_GROUP = "part"
#: Names a part's files: its shard files in ``shards/`` and its entries in ``parts/``.
_PART_SHARD_FILE = re.compile(rf"({PART_ID_PATTERN.pattern})-[0-9]{{8}}\.[A-Za-z0-9_\-]+\.npy")
_PART_ENTRY = re.compile(rf"\.?({PART_ID_PATTERN.pattern})\.(?:json|lock)(?:\.tmp)?")
_RECORD_TAIL = re.compile(rb'"(xxh3_64:[0-9a-f]{16})"\}\n\Z')
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: What orders parts: an int, a string, or a tuple of them (a block index).
PartKey = Union[int, str, tuple[Union[int, str], ...], None]  # noqa: UP007 - pydantic, py3.10


class PartShard(_Strict):
    """One sealed shard of a part: its rows and one file per field."""

    rows: int = Field(ge=1, le=MAX_COUNT)
    files: dict[str, ShardFile]


class Part(_Strict):
    """A finished part, as its record ``parts/ID.json`` states it.

    Returned by :meth:`PartWriter.close` and given to :func:`commit_parts`; small and
    picklable, so a worker can send it to whoever commits.
    """

    format: Literal["memshard-part"]
    version: str = Field(pattern=r"^[0-9]{1,4}\.[0-9]{1,4}$")
    dataset: str = Field(pattern=r"^[0-9a-f]{32}$")
    id: str = Field(pattern=f"^{PART_ID_PATTERN.pattern}$")
    key: PartKey
    rows: int = Field(ge=0, le=MAX_COUNT)
    fields: dict[str, FieldSpec] = Field(min_length=1)
    shards: tuple[PartShard, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Part:
        if self.rows != sum(shard.rows for shard in self.shards):
            raise ValueError(f"rows {self.rows} is not the sum of the shards' rows")
        for index, shard in enumerate(self.shards):
            if list(shard.files) != list(self.fields):
                raise ValueError(f"shards[{index}].files must name the fields {list(self.fields)}")
            for name, file in shard.files.items():
                spec = self.fields[name]
                where = f"shards[{index}].files.{name}"
                if file.path != shard_file_name(self.id, index, name):
                    raise ValueError(f"{where}.path {file.path!r} is not this part's file")
                if (
                    file.data_offset != spec.data_offset
                    or file.nbytes != shard.rows * spec.row_bytes
                ):
                    raise ValueError(f"{where}: data_offset or nbytes does not match the field")
                if file.checksum is None or file.prefix_checksum is not None:
                    raise ValueError(f"{where}: a sealed file needs a checksum, no prefix_checksum")
        return self


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
        )

    def start(self, *, key: PartKey = None, group: str = DEFAULT_GROUP) -> PartWriter:
        """Start a new part; see :func:`write_part`."""
        return PartWriter._start(self, _checked_key(key), new_part_id(group))


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
        ArgumentError: a bad ``key`` or ``group``.
        WriteFailedError: ``parts/`` or the part's files cannot be created.
        DatasetNotFoundError, ManifestError, UnsupportedVersionError: see :meth:`PartTarget.of`.
    """
    target = dataset if isinstance(dataset, PartTarget) else PartTarget.of(dataset)
    return target.start(key=key, group=group)


def new_part_id(group: str = DEFAULT_GROUP) -> str:
    """A fresh part id in ``group``.

    Raises:
        ArgumentError: ``group`` is not 1-32 characters from ``[a-z0-9]``.
    """
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group):
        raise ArgumentError(f"group must be 1-32 characters from [a-z0-9], got {group!r}")
    return f"p-{group}-{secrets.token_hex(8)}"


class PartWriter:
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
        self._shards: list[PartShard] = []
        self._open: dict[str, ShardFileWriter] = {}
        self._open_rows = 0
        self._rows = 0
        self._syncs = DeferredSync()
        self._budget = DescriptorBudget()
        self._failure: str | None = None
        self._part: Part | None = None

    @classmethod
    def _start(cls, target: PartTarget, key: PartKey, part_id: str) -> PartWriter:
        parts = os.path.join(target.root, PARTS_DIR)
        try:
            os.makedirs(parts, exist_ok=True)
            lock = _create_lock(parts, part_id)
        except OSError as exc:
            raise WriteFailedError(
                exc.errno, f"{parts}: cannot start part {part_id} ({exc.strerror or exc})"
            ) from exc
        return cls(target, part_id, key, lock)

    @property
    def rows(self) -> int:
        """Rows written to this part so far."""
        return self._rows

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
        self._guarded(self._syncs.sync_all)
        self._syncs.shutdown()
        part = Part(
            format=PART_FORMAT,
            version=FORMAT_VERSION,
            dataset=self.target.uuid,
            id=self.id,
            key=self.key,
            rows=self._rows,
            fields=self.target.fields,
            shards=tuple(self._shards),
        )
        self._guarded(self._publish, part)
        self._part = part
        self._release()
        return part

    def abort(self) -> None:
        """Stop and delete what the part wrote. Does nothing after :meth:`close`."""
        if self._lock is None or os.getpid() != self._pid:
            return
        names = [file.path for shard in self._shards for file in shard.files.values()]
        names += [file.path for file in self._open.values()]
        for file in self._open.values():
            file.close()
        self._open = {}
        self._syncs.shutdown()
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.target.root, name))
        self._release()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None and os.getpid() == self._pid:
            warnings.warn(
                f"{self.target.root}: part {self.id} dropped without close(); it is discarded",
                ResourceWarning,
                stacklevel=1,
            )
            self.abort()

    def __repr__(self) -> str:
        return f"<memshard.PartWriter {self.id} of {self.target.root!r} rows={self._rows}>"

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise AppenderClosedError(f"part {self.id} belongs to process {self._pid}")
        if self._failure is not None:
            raise AppenderClosedError(f"part {self.id} failed earlier ({self._failure})")
        if self._lock is None:
            raise AppenderClosedError(f"part {self.id} is closed")

    def _validated(self, values: Any, *, single_row: bool) -> dict[str, np.ndarray]:
        where = f"{self.target.root} (part {self.id})"
        return validated_batch(
            values, self.target.fields, self.target.labels, where=where, single_row=single_row
        )

    def _write(self, arrays: dict[str, np.ndarray]) -> None:
        count = next(iter(arrays.values())).shape[0]
        done = 0
        while done < count:
            if not self._open:
                self._guarded(self._start_shard)
            take = min(self.target.shard_rows - self._open_rows, count - done)
            for name, array in arrays.items():
                rows = array[done : done + take]
                self._guarded(self._open[name].write, memoryview(rows.data).cast("B"))
            self._open_rows += take
            self._rows += take
            done += take
            if self._open_rows == self.target.shard_rows:
                self._guarded(self._seal_open_shard)
        if sum(array.nbytes for array in arrays.values()) >= WRITE_BUFFER_BYTES:
            # Bulk writes: start writeback now, so that close() does not wait for all of it.
            for file in self._open.values():
                self._guarded(file.start_writeback)

    def _start_shard(self) -> None:
        index = len(self._shards)
        try:
            for name, spec in self.target.fields.items():
                relpath = shard_file_name(self.id, index, name)
                self._open[name] = ShardFileWriter.create(
                    self.target.root, relpath, spec, self._budget
                )
        except BaseException:
            for file in self._open.values():
                file.close()
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.target.root, file.path))
            self._open = {}
            raise

    def _seal_open_shard(self) -> None:
        if not self._open:
            return
        files, rows = self._open, self._open_rows
        self._open, self._open_rows = {}, 0
        records = {}
        for name, file in files.items():
            file.seal(rows)
            spec = self.target.fields[name]
            records[name] = ShardFile(
                path=file.path,
                data_offset=spec.data_offset,
                nbytes=rows * spec.row_bytes,
                checksum=file.checksum.digest(),
            )
        self._syncs.add([file.full_path for file in files.values()])
        self._shards.append(PartShard(rows=rows, files=records))

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
            for file in self._open.values():
                file.release_descriptor()
            self._syncs.shutdown()
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


def _checked_key(key: Any) -> PartKey:
    """``key`` as a part record stores it: an int, a string, a tuple of them, or None."""
    if key is None or isinstance(key, str):
        return key
    if _is_int(key):
        return int(key)
    if isinstance(key, (tuple, list)) and all(isinstance(i, str) or _is_int(i) for i in key):
        return tuple(item if isinstance(item, str) else int(item) for item in key)
    raise ArgumentError(f"a part key must be an int, a str or a tuple of them, got {key!r:.80}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# -- records ---------------------------------------------------------------------------------


def dumps_part(part: Part) -> bytes:
    """The bytes of a part record: the JSON of ``part`` ending with its own checksum, as a
    manifest does (spec/FORMAT.md section 6.5)."""
    body = json.dumps(part.model_dump(mode="json"), ensure_ascii=False, allow_nan=False)
    prefix = (body[:-1] + ', "checksum": ').encode("utf-8")
    return prefix + f'"{manifest_io.own_checksum(prefix)}"}}\n'.encode()


def loads_part(data: bytes, *, where: str) -> Part:
    """Parse and check a part record.

    Raises:
        PartError: not strict JSON, a checksum that does not match, or invalid content.
    """
    tail = _RECORD_TAIL.search(data)
    if tail is None:
        raise PartError(f"{where}: not a part record (it must end with its checksum)")
    if manifest_io.own_checksum(data[: tail.start()]) != tail.group(1).decode():
        raise PartError(f"{where}: the record's checksum does not match (the record is corrupt)")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=manifest_io._refuse_duplicate_keys)
        if not isinstance(raw, dict):
            raise ValueError("the top level is not an object")
        raw.pop("checksum", None)
        return Part.model_validate_json(json.dumps(raw), strict=True)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = manifest_io._describe(exc) if isinstance(exc, ValidationError) else str(exc)
        raise PartError(f"{where}: not a valid part record ({detail})") from None


def load_part(root: str, part_id: str) -> Part:
    """The record of part ``part_id`` of the dataset at ``root``.

    Raises:
        PartIncompleteError: there is no record (the part is being written, failed or died).
        PartError: the record is damaged, is not this part's, is too large, or is not a
            regular file (a FIFO, a socket, a device: see :mod:`memshard.smallfile`).
        UnsafePathError: the record is a symbolic link.
        ReadFailedError: the record cannot be read (no permission, an I/O error).
    """
    where = os.path.join(root, PARTS_DIR, f"{part_id}.json")
    try:
        data = read_small_file(where, what="the part record", limit=MAX_MANIFEST_BYTES,
                               error=PartError)  # fmt: skip
    except FileNotFoundError:
        state = (
            "is still being written"
            if _lock_is_held(root, part_id)
            else ("was never finished: its writer failed, was killed or did not close it")
        )
        raise PartIncompleteError(f"{where}: no such record; part {part_id} {state}") from None
    except (NotADirectoryError, IsADirectoryError) as exc:
        raise PartError(f"{where}: cannot open the part record ({exc.strerror})") from None
    part = loads_part(data, where=where)
    if part.id != part_id:
        raise PartError(f"{where}: holds the record of part {part.id}")
    return part


def _lock_is_held(root: str, part_id: str) -> bool:
    try:
        lock = FileLock.acquire(os.path.join(root, PARTS_DIR, f"{part_id}.lock"), create=False)
    except (OSError, MemshardError):
        return False
    if lock is None:
        return True
    lock.release()
    return False


# -- committing ------------------------------------------------------------------------------

Order = Union[Literal["key", "given"], Callable[[Part], Any]]  # noqa: UP007


def commit_parts(
    dataset: str | os.PathLike[str] | Appender,
    parts: Iterable[Part | str],
    *,
    order: Order = "key",
    verify: bool = False,
) -> dict[str, range]:
    """Append finished parts to the dataset in one atomic commit.

    The parts' shards follow the rows committed so far, part after part in the order
    ``order`` gives: ``"key"`` (the default) sorts by each part's key, which must be set,
    distinct and of one kind; ``"given"`` keeps the order of ``parts``; a function is used as
    the sort key. The order never depends on which part finished first. Either every part is
    committed or, on any error, none.

    Parameters:
        dataset: the dataset's path, or an open :class:`Appender` of it (whose rows must all
            be committed or sealed); with a path, the dataset's write lock is taken for the
            commit, so it waits for no one and fails if an appender holds it.
        parts: :class:`Part` records (from :meth:`PartWriter.close`) or part ids.
        verify: also read every file back and compare it with its checksum.

    Returns:
        For each part id, in commit order, the rows it now occupies.

    Raises:
        PartIncompleteError: a part has no record (still being written, failed or killed).
        PartCommittedError: a part was committed already.
        PartError: a damaged record, a record of another dataset or schema, a part given twice,
            keys that cannot be ordered, or a :class:`Part` that differs from its record.
        ShardMissingError, ShardSizeError, ShardHeaderError, ChecksumError: a part's file does
            not match its record.
        DatasetLockedError: another appender holds the dataset.
        WriteFailedError: the commit failed; the dataset is as before.
    """
    if isinstance(dataset, Appender):
        return _commit(dataset, list(parts), order, verify)
    with append(dataset) as appender:
        return _commit(appender, list(parts), order, verify)


def _commit(
    appender: Appender, given: Sequence[Part | str], order: Order, verify: bool
) -> dict[str, range]:
    root = appender.path
    ids = [_part_id(part) for part in given]
    repeated = {part_id for part_id, count in Counter(ids).items() if count > 1}
    if repeated:
        raise PartError(f"{root}: parts given more than once: {sorted(repeated)}")
    committed = {file.path for shard in appender.manifest.shards for file in shard.files.values()}
    records = [_load_uncommitted(root, part_id, committed) for part_id in ids]
    for part, record in zip(given, records, strict=False):
        if isinstance(part, Part) and part != record:
            raise PartError(f"{root}: part {record.id} differs from its record on disk")
    for record in records:
        _check_belongs(root, appender, record, committed)
        if verify:
            _verify_files(root, record)
    shards, ranges, row = [], {}, appender.rows
    for record in _ordered(root, records, order):
        start = row
        for shard in record.shards:
            shards.append(Shard(row_offset=row, rows=shard.rows, sealed=True, files=shard.files))
            row += shard.rows
        ranges[record.id] = range(start, row)
    appender.adopt_shards(shards)
    for part_id in ranges:  # committed: the records have served (a leftover one is harmless)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(root, PARTS_DIR, f"{part_id}.json"))
    return ranges


def _load_uncommitted(root: str, part_id: str, committed: set[str]) -> Part:
    """The record of part ``part_id``; a commit deletes the record of each part it adopts, so
    a missing record of a part whose files the manifest names is :class:`PartCommittedError`,
    not "never finished"."""
    try:
        return load_part(root, part_id)
    except PartIncompleteError:
        prefix = f"{SHARDS_DIR}/{part_id}-"
        if any(path.startswith(prefix) for path in committed):
            raise PartCommittedError(
                f"{root}: part {part_id} is committed already; committing it again would "
                "repeat its rows"
            ) from None
        raise


def _part_id(part: Part | str) -> str:
    part_id = part.id if isinstance(part, Part) else part
    if not isinstance(part_id, str) or not PART_ID_PATTERN.fullmatch(part_id):
        raise PartError(f"{part_id!r:.80} is not a part id (p-GROUP-NONCE) or a Part")
    return part_id


def _check_belongs(root: str, appender: Appender, record: Part, committed: set[str]) -> None:
    where = os.path.join(root, PARTS_DIR, f"{record.id}.json")
    if record.dataset != appender.manifest.uuid:
        raise PartError(f"{where}: written for another dataset (uuid {record.dataset})")
    if record.fields != appender.fields:
        raise PartError(f"{where}: fields {record.fields} differ from the dataset's")
    shard_rows = appender.manifest.shard_rows
    for shard in record.shards:
        if shard.rows > shard_rows:
            raise PartError(f"{where}: a shard of {shard.rows} rows, more than {shard_rows}")
        if any(file.path in committed for file in shard.files.values()):
            raise PartCommittedError(f"{root}: part {record.id} is committed already")


def _verify_files(root: str, record: Part) -> None:
    for shard in record.shards:
        for file in shard.files.values():
            where = os.path.join(root, file.path)
            try:
                fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC)
                try:
                    actual = checksum_of_file(fd, file.data_offset, file.nbytes).digest()
                finally:
                    os.close(fd)
            except (OSError, EOFError):
                actual = "unreadable"
            if actual != file.checksum:
                raise ChecksumError(f"{where}: data {actual}, part record {file.checksum}")


def _ordered(root: str, records: list[Part], order: Order) -> list[Part]:
    if order == "given":
        return records
    if order == "key":
        keys = [record.key for record in records]
        if any(key is None for key in keys):
            raise PartError(f"{root}: order='key' needs every part to have a key")
        if len({type(key) for key in keys}) > 1 or len(set(keys)) < len(keys):
            raise PartError(f"{root}: part keys must be distinct and of one kind, got {keys}")
        return sorted(records, key=lambda record: record.key)  # type: ignore[arg-type,return-value]
    if callable(order):
        try:
            return sorted(records, key=order)
        except TypeError as exc:
            raise PartError(
                f"{root}: the order function's keys cannot be compared ({exc})"
            ) from None
    raise ArgumentError(f"order must be 'key', 'given' or a function, got {order!r}")


# -- discarding ------------------------------------------------------------------------------


def discard_parts(
    dataset: str | os.PathLike[str] | Appender,
    parts: Iterable[Part | str] | None = None,
    *,
    group: str | None = None,
    wait: bool = False,
) -> list[str]:
    """Delete uncommitted parts: their shard files, records and locks.

    Removes the parts named in ``parts``, or every part of ``group``, or, with neither, every
    part. Finished parts are deleted as well as the remains of failed ones. A part whose writer
    still holds its lock is left alone or, with ``wait``, deleted once its writer has finished
    or died. No file the manifest names is ever deleted.

    Returns:
        The ids of the parts removed.

    Raises:
        PartError: a bad part id or group.
        DatasetLockedError: another appender holds the dataset.
    """
    if isinstance(dataset, Appender):
        return _discard(dataset, parts, group, wait)
    with append(dataset) as appender:
        return _discard(appender, parts, group, wait)


def _discard(
    appender: Appender, parts: Iterable[Part | str] | None, group: str | None, wait: bool
) -> list[str]:
    root = appender.path
    wanted = None if parts is None else {_part_id(part) for part in parts}
    if group is not None and not (isinstance(group, str) and GROUP_PATTERN.fullmatch(group)):
        raise PartError(f"group must be 1-32 characters from [a-z0-9], got {group!r}")
    named = {file.path for shard in appender.manifest.shards for file in shard.files.values()}
    found = _files_of_parts(root)
    removed = []
    for part_id, files in sorted(found.items()):
        if wanted is not None and part_id not in wanted:
            continue
        if group is not None and not part_id.startswith(f"p-{group}-"):
            continue
        leftovers = [path for path in files if path not in named]
        if leftovers and _remove_part(root, part_id, named, wait):
            removed.append(part_id)
    return removed


def _files_of_parts(root: str) -> dict[str, list[str]]:
    """Every part id seen in ``shards/`` or ``parts/``, with its files (dataset-relative)."""
    found: dict[str, list[str]] = {}
    for directory, pattern in ((SHARDS_DIR, _PART_SHARD_FILE), (PARTS_DIR, _PART_ENTRY)):
        try:
            entries = os.listdir(os.path.join(root, directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            match = pattern.fullmatch(entry)
            if match:
                found.setdefault(match.group(1), []).append(f"{directory}/{entry}")
    return found


def _remove_part(root: str, part_id: str, named: set[str], wait: bool) -> bool:
    """Delete the files of a part that the manifest does not name, unless its writer is alive
    (holds the part's lock), or, with ``wait``, once it is not.

    A writer creates its shard files only once its lock is in place and removes the lock
    only when it has finished, so a part without a lock file has no live writer. The lock
    file is never created here: a lock of our own making would hide a writer's."""
    lock_path = os.path.join(root, PARTS_DIR, f"{part_id}.lock")
    try:
        lock = FileLock.acquire(lock_path, create=False, wait=wait)
    except FileNotFoundError:
        lock = None
    else:
        if lock is None:
            return False
    # Listed under the lock: a writer that held it may have published more files meanwhile.
    files = [path for path in _files_of_parts(root).get(part_id, []) if path not in named]
    try:
        for path in files:
            if not path.endswith(".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise WriteFailedError(
                exc.errno, f"{root}: cannot discard part {part_id} ({exc})"
            ) from exc
    finally:
        if lock is not None:
            lock.release()
    return True
