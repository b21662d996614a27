"""The part record: what a finished part states (``parts/ID.json``), its codec, and the names
of a part's files.

A record is a JSON object on one line ending with its own checksum, like a manifest
(``spec/PARTS.md``, "The record"). :func:`load_part` reads one through the hardened reader of
small files; a missing record is a part still being written or never finished
(:class:`~memshard.errors.PartIncompleteError`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from typing import Any, Literal, Union

import numpy as np
from pydantic import Field, ValidationError, model_validator

from . import manifest as manifest_io
from .errors import (
    ArgumentError,
    MemshardError,
    PartError,
    PartIncompleteError,
)
from .handles import FileLock
from .layout import PARTS_DIR, shard_file_name
from .manifest import (
    MAX_COUNT,
    MAX_MANIFEST_BYTES,
    OFFSETS_SUFFIX,
    FieldSpec,
    Shard,
    ShardFile,
    StrictModel,
    check_file_record,
)
from .smallfile import read_small_file

PART_FORMAT: Literal["memshard-part"] = "memshard-part"
#: A part's id: ``p-GROUP-NONCE``. The group lets :func:`discard_parts` find every part of one
#: job, also those killed before writing a record; the nonce makes every attempt unique.
PART_ID_PATTERN = re.compile(r"p-[a-z0-9]{1,32}-[0-9a-f]{16}")
GROUP_PATTERN = re.compile(r"[a-z0-9]{1,32}")
DEFAULT_GROUP = "part"
#: Names a part's files: its shard files in ``shards/`` (a ragged field's offsets files too)
#: and its entries in ``parts/``.
PART_SHARD_FILE = re.compile(
    rf"({PART_ID_PATTERN.pattern})-[0-9]{{8}}\.[A-Za-z0-9_\-]+(?:{re.escape(OFFSETS_SUFFIX)}|\.npy)"
)
PART_ENTRY = re.compile(rf"\.?({PART_ID_PATTERN.pattern})\.(?:json|lock)(?:\.tmp)?")
_RECORD_TAIL = re.compile(rb'"(xxh3_64:[0-9a-f]{16})"\}\n\Z')

#: What orders parts: an int, a string, or a tuple of them (a block index).
PartKey = Union[int, str, tuple[Union[int, str], ...], None]  # noqa: UP007 - pydantic, py3.10


class PartShard(StrictModel):
    """One sealed shard of a part: its rows and one file per field."""

    rows: int = Field(ge=1, le=MAX_COUNT)
    files: dict[str, ShardFile]


class Part(StrictModel):
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
                sealed = Shard(row_offset=0, rows=shard.rows, sealed=True, files=shard.files)
                check_file_record(where, file, spec, sealed)
                if file.checksum is None or file.prefix_checksum is not None:
                    raise ValueError(f"{where}: a sealed file needs a checksum, no prefix_checksum")
        return self


def new_part_id(group: str = DEFAULT_GROUP) -> str:
    """A fresh part id in ``group``.

    Raises:
        PartError: ``group`` is not 1-32 characters from ``[a-z0-9]``.
    """
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group):
        raise PartError(f"group must be 1-32 characters from [a-z0-9], got {group!r}")
    return f"p-{group}-{secrets.token_hex(8)}"


def checked_key(key: Any) -> PartKey:
    """``key`` as a part record stores it: an int, a string, a tuple of them, or None."""
    if key is None or isinstance(key, str):
        return key
    if is_plain_int(key):
        return int(key)
    if isinstance(key, (tuple, list)) and all(isinstance(i, str) or is_plain_int(i) for i in key):
        return tuple(item if isinstance(item, str) else int(item) for item in key)
    raise ArgumentError(f"a part key must be an int, a str or a tuple of them, got {key!r:.80}")


def is_plain_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=manifest_io.refuse_duplicate_keys)
        if not isinstance(raw, dict):
            raise ValueError("the top level is not an object")
        raw.pop("checksum", None)
        return Part.model_validate_json(json.dumps(raw), strict=True)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = (
            manifest_io.describe_validation_error(exc)
            if isinstance(exc, ValidationError)
            else str(exc)
        )
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
            if lock_is_held(root, part_id)
            else ("was never finished: its writer failed, was killed or did not close it")
        )
        raise PartIncompleteError(f"{where}: no such record; part {part_id} {state}") from None
    except (NotADirectoryError, IsADirectoryError) as exc:
        raise PartError(f"{where}: cannot open the part record ({exc.strerror})") from None
    part = loads_part(data, where=where)
    if part.id != part_id:
        raise PartError(f"{where}: holds the record of part {part.id}")
    return part


def lock_is_held(root: str, part_id: str) -> bool:
    try:
        lock = FileLock.acquire(os.path.join(root, PARTS_DIR, f"{part_id}.lock"), create=False)
    except (OSError, MemshardError):
        return False
    if lock is None:
        return True
    lock.release()
    return False
