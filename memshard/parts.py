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
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Union

from .appender import Appender, append
from .checksum import checksum_of_file
from .errors import (
    ArgumentError,
    ChecksumError,
    PartCommittedError,
    PartError,
    PartIncompleteError,
    WriteFailedError,
)
from .handles import FileLock, OwnedFd
from .layout import PARTS_DIR, SHARDS_DIR
from .manifest import Shard, shard_files
from .partrecord import (
    DEFAULT_GROUP,
    GROUP_PATTERN,
    PART_ENTRY,
    PART_FORMAT,
    PART_ID_PATTERN,
    PART_SHARD_FILE,
    Part,
    PartKey,
    PartShard,
    dumps_part,
    load_part,
    loads_part,
    new_part_id,
)
from .partwriter import PartTarget, PartWriter, write_part
from .schema import json_attrs

__all__ = [
    "DEFAULT_GROUP",
    "PART_FORMAT",
    "PART_ID_PATTERN",
    "Part",
    "PartKey",
    "PartShard",
    "PartTarget",
    "PartWriter",
    "commit_parts",
    "discard_parts",
    "dumps_part",
    "load_part",
    "loads_part",
    "new_part_id",
    "write_part",
]

# -- committing ------------------------------------------------------------------------------

Order = Union[Literal["key", "given"], Callable[[Part], Any]]  # noqa: UP007


def commit_parts(
    dataset: str | os.PathLike[str] | Appender,
    parts: Iterable[Part | str],
    *,
    order: Order = "key",
    verify: bool = False,
    attrs: Mapping[str, Any] | None = None,
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
        attrs: new attributes of the dataset, replacing the old ones whole, in the same
            commit (a job records there which of its parts are committed).

    Returns:
        For each part id, in commit order, the rows it now occupies.

    Raises:
        PartIncompleteError: a part has no record (still being written, failed or killed).
        PartCommittedError: a part was committed already.
        PartError: a damaged record, a record of another dataset or schema, a part given twice,
            keys that cannot be ordered, or a :class:`Part` that differs from its record.
        SchemaError: ``attrs`` that are not JSON.
        ShardMissingError, ShardSizeError, ShardHeaderError, ChecksumError: a part's file does
            not match its record.
        DatasetLockedError: another appender holds the dataset.
        WriteFailedError: the commit failed; the dataset is as before.
    """
    metadata = None if attrs is None else {"attrs": json_attrs(attrs)}
    if isinstance(dataset, Appender):
        return _commit(dataset, list(parts), order, verify, metadata)
    with append(dataset) as appender:
        return _commit(appender, list(parts), order, verify, metadata)


def _commit(
    appender: Appender,
    given: Sequence[Part | str],
    order: Order,
    verify: bool,
    metadata: dict[str, Any] | None,
) -> dict[str, range]:
    root = appender.path
    ids = [_part_id(part) for part in given]
    repeated = {part_id for part_id, count in Counter(ids).items() if count > 1}
    if repeated:
        raise PartError(f"{root}: parts given more than once: {sorted(repeated)}")
    committed = appender.shards.file_paths()
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
    appender.adopt_shards(shards, metadata=metadata)
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
    """Every file of the part (a ragged field's offsets file too) against its checksum."""
    files = [
        file
        for shard in record.shards
        for name, field_file in shard.files.items()
        for _, file, _ in shard_files(record.fields[name], field_file, shard.rows, sealed=True)
    ]
    for file in files:
        where = os.path.join(root, file.path)
        try:
            handle = OwnedFd.open(where, os.O_RDONLY | os.O_NOFOLLOW)
            with contextlib.closing(handle):
                state = checksum_of_file(handle.fileno(), file.data_offset, file.nbytes)
            actual = state.digest()
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
    named = appender.shards.file_paths()
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
    for directory, pattern in ((SHARDS_DIR, PART_SHARD_FILE), (PARTS_DIR, PART_ENTRY)):
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

    A writer creates its shard files only once its lock file is in place, and removes the lock
    file only when it has finished. So when there is no lock file, the files listed *before*
    looking for it belong to no live writer (a writer that starts meanwhile creates files this
    listing has not seen); when there is one, the files are listed once it is locked. The lock
    file is never created here (a lock of our own making would hide a writer's), and is
    removed only while locked here."""
    lock_path = os.path.join(root, PARTS_DIR, f"{part_id}.lock")
    listed_first = _files_of_parts(root).get(part_id, [])
    try:
        lock = FileLock.acquire(lock_path, create=False, wait=wait)
    except FileNotFoundError:
        lock, listed = None, listed_first
    else:
        if lock is None:
            return False
        listed = _files_of_parts(root).get(part_id, [])
    try:
        for path in listed:
            if path not in named and not path.endswith(".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, path))
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
    except OSError as exc:
        raise WriteFailedError(exc.errno, f"{root}: cannot discard part {part_id} ({exc})") from exc
    finally:
        if lock is not None:
            lock.release()
    return True
