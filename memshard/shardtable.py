"""The shard table of a format 2 dataset: one fixed-size binary record per sealed shard, in an
append-only ``.npy`` file (``shard_table.npy``), so that opening, refreshing and committing cost
the same whatever the number of shards (``spec/FORMAT.md``, section "Shard table").

A record holds the shard's first row, its row count, the stem of its file names (field ``f``
of the shard is ``shards/<stem>.<f>.npy``), the xxh3-64 of each field's data, for each ragged
field (format 2.1) its element count and the xxh3-64 of its offsets file
(``shards/<stem>.<f>.offsets.npy``), and a *chain*
value: the xxh3-64 of the record's other bytes, seeded with the previous record's chain (the
first record's seed comes from the dataset's uuid). The manifest states how many records are
committed and the chain of the last one, so checking that one value checks that the table is
this dataset's and holds every committed record; each record's own chain is checked when it is
first read (``verify`` checks them all).

A commit appends records after the committed ones and publishes a manifest counting them; a
crash in between leaves records that no manifest counts, which readers never look at and the
next writer overwrites.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

import numpy as np
import xxhash

from . import npyheader
from .checksum import ALGORITHM
from .durable import fsync_directory
from .errors import MemshardError, ShardTableError, UpgradeError
from .filemap import map_readonly
from .layout import SHARDS_DIR
from .manifest import (
    MAX_COUNT,
    FieldSpec,
    Manifest,
    Shard,
    ShardFile,
    TableRef,
    offsets_path,
)
from .smallfile import open_regular

#: The shard table's file, beside ``manifest.json``.
TABLE_NAME = "shard_table.npy"
#: Bytes of a stem in a record (ASCII, padded with NUL bytes).
STEM_BYTES = 64
#: A stem: the part of a shard's file names before the field name. No dot: the field follows
#: the first one.
STEM_PATTERN = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_\-]{{0,{STEM_BYTES - 1}}}", re.ASCII)
_CHAIN_BYTES = 8
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def record_dtype(fields: int, ragged: int = 0) -> np.dtype[Any]:
    """The dtype of a record of a dataset with ``fields`` fields of which ``ragged`` have an
    offsets file (ragged or compressed; packed, little-endian); without such fields, a format
    2.0 record."""
    members: list[tuple[Any, ...]] = [
        ("row_offset", "<i8"),
        ("rows", "<i8"),
        ("stem", f"S{STEM_BYTES}"),
        ("checksums", "<u8", (fields,)),
    ]
    if ragged:
        members += [("elements", "<i8", (ragged,)), ("offsets_checksums", "<u8", (ragged,))]
    return np.dtype([*members, ("chain", "<u8")])


def table_dtype(specs: Mapping[str, FieldSpec]) -> np.dtype[Any]:
    """The record dtype of a dataset with fields ``specs``."""
    return record_dtype(len(specs), len(ragged_fields(specs)))


def ragged_fields(specs: Mapping[str, FieldSpec]) -> list[str]:
    """The names of the fields with an offsets file (ragged or compressed), in field order
    (the order of the ``elements`` and ``offsets_checksums`` columns of a record)."""
    return [name for name, spec in specs.items() if spec.has_offsets]


def chain_seed(uuid: str) -> int:
    """The seed of the first record's chain: the first 16 hex digits of the dataset's uuid."""
    return int(uuid[:16], 16)


def chain_of(record: bytes, previous: int) -> int:
    """The chain value of a record whose bytes before its chain are ``record``."""
    return xxhash.xxh3_64_intdigest(record, seed=previous)


def format_chain(value: int) -> str:
    """A chain value as the manifest writes it."""
    return f"{ALGORITHM}:{value:016x}"


def stem_of(shard: Shard) -> str | None:
    """The stem of ``shard``'s file names, or None if they do not all follow
    ``shards/<stem>.<field>.npy`` with one stem (only such shards fit in a table)."""
    first = next(iter(shard.files.values())).path
    stem = first.removeprefix(f"{SHARDS_DIR}/").split(".", 1)[0]
    if not STEM_PATTERN.fullmatch(stem):
        return None
    for name, file in shard.files.items():
        if file.path != shard_path(stem, name):
            return None
    return stem


def shard_path(stem: str, field: str) -> str:
    """The manifest path of field ``field`` of the shard with stem ``stem``."""
    return f"{SHARDS_DIR}/{stem}.{field}.npy"


def _checksum_value(checksum: str | None) -> int:
    assert checksum is not None  # sealed shards always have one (manifest validation)
    return int(checksum.split(":", 1)[1], 16)


def encode(
    shards: Sequence[Shard], specs: Mapping[str, FieldSpec], previous: int, *, where: str
) -> np.ndarray:
    """The records of sealed ``shards``, chained after a record whose chain is ``previous``.

    Raises:
        UpgradeError: a shard's file names do not follow ``shards/<stem>.<field>.npy``.
    """
    fields = list(specs)
    ragged = ragged_fields(specs)
    records = np.zeros(len(shards), dtype=table_dtype(specs))
    for position, shard in enumerate(shards):
        stem = stem_of(shard)
        if stem is None or not shard.sealed:
            raise UpgradeError(
                f"{where}: the shard at row {shard.row_offset} is unsealed or its files "
                f"{sorted(f.path for f in shard.files.values())} are not named "
                "shards/<stem>.<field>.npy with one stem; it cannot go into a shard table"
            )
        record = records[position]
        record["row_offset"] = shard.row_offset
        record["rows"] = shard.rows
        record["stem"] = stem.encode("ascii")
        record["checksums"] = [_checksum_value(shard.files[name].checksum) for name in fields]
        if ragged:
            record["elements"] = [
                shard.files[name].nbytes // specs[name].values.row_bytes for name in ragged
            ]
            record["offsets_checksums"] = [
                _checksum_value(shard.files[name].offsets_checksum) for name in ragged
            ]
    if not len(shards):
        return records
    raw = records.view(np.uint8).reshape(len(shards), -1)
    body = records.dtype.itemsize - _CHAIN_BYTES
    for position in range(len(shards)):
        previous = chain_of(raw[position, :body].tobytes(), previous)
        records[position]["chain"] = previous
    return records


class ShardTable:
    """The committed records of a dataset's shard table, mapped read-only.

    Records are checked when first used (:meth:`shard`); :meth:`columns` checks that the rows
    of all records follow on, with numpy, once.
    """

    def __init__(self, root: str, manifest: Manifest, array: np.ndarray) -> None:
        self._root = root
        self._manifest = manifest
        self._array = array
        self._fields = tuple(manifest.fields)
        self._ragged = {name: i for i, name in enumerate(ragged_fields(manifest.fields))}
        self._checked: dict[int, Shard] = {}
        self._columns: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def empty(cls, root: str, manifest: Manifest) -> ShardTable:
        """The table of a manifest without one (format 1) or with no records."""
        return cls(root, manifest, np.zeros(0, dtype=table_dtype(manifest.fields)))

    @classmethod
    def open(cls, root: str, manifest: Manifest) -> ShardTable:
        """Map the records the format 2 ``manifest`` counts.

        Raises:
            ShardTableError: the file is missing, not a regular file, too short, has another
                header, or its last counted record's chain is not the manifest's.
        """
        ref = manifest.table
        if ref is None or ref.records == 0:
            return cls.empty(root, manifest)
        path = os.path.join(root, TABLE_NAME)
        dtype = table_dtype(manifest.fields)
        array = _map_records(path, dtype, ref.records)
        table = cls(root, manifest, array)
        last = int(array[ref.records - 1]["chain"])
        if format_chain(last) != ref.chain:
            raise ShardTableError(
                f"{path}: record {ref.records - 1} has chain {format_chain(last)}, the manifest "
                f"states {ref.chain} (the table is damaged or not this dataset's)"
            )
        return table

    def __len__(self) -> int:
        return len(self._array)

    def release(self) -> None:
        """Unmap the table, keeping a copy of its committed records in memory; used when its
        dataset is closed, after which none of its files may stay mapped."""
        self._array = self._array.copy()

    @property
    def path(self) -> str:
        """The table file's path."""
        return os.path.join(self._root, TABLE_NAME)

    def shard(self, index: int) -> Shard:
        """Record ``index`` as a manifest :class:`Shard`, checked against its neighbours.

        Raises:
            ShardTableError: the record's chain, row offset, row count or stem is wrong.
        """
        cached = self._checked.get(index)
        if cached is None:
            cached = self._checked[index] = self._decode(index)
        return cached

    def _decode(self, index: int) -> Shard:
        record = self._array[index]
        where = f"{self.path}: record {index}"
        previous = self._expected_chain_before(index)
        body = bytes(self._array[index : index + 1].view(np.uint8)[:-_CHAIN_BYTES])
        if chain_of(body, previous) != int(record["chain"]):
            raise ShardTableError(f"{where}: its chain does not match its bytes (damaged)")
        row_offset, rows = int(record["row_offset"]), int(record["rows"])
        expected_offset = 0
        if index > 0:
            before = self._array[index - 1]
            expected_offset = int(before["row_offset"]) + int(before["rows"])
        if row_offset != expected_offset or rows < 1:
            raise ShardTableError(
                f"{where}: rows {row_offset}..+{rows} do not follow row {expected_offset}"
            )
        raw_stem = bytes(record["stem"])
        stem = raw_stem.decode("ascii", errors="replace")
        if not STEM_PATTERN.fullmatch(stem) or len(raw_stem) > STEM_BYTES:
            raise ShardTableError(f"{where}: stem {raw_stem!r} is not a valid file stem")
        files = {
            name: self._sealed_file(record, stem, name, spec, position, where)
            for position, (name, spec) in enumerate(self._manifest.fields.items())
        }
        return Shard(row_offset=row_offset, rows=rows, sealed=True, files=files)

    def _sealed_file(
        self, record: Any, stem: str, name: str, spec: FieldSpec, position: int, where: str
    ) -> ShardFile:
        path = shard_path(stem, name)
        checksum = _format_checksum(int(record["checksums"][position]))
        ragged = self._ragged.get(name)
        count = int(record["rows"] if ragged is None else record["elements"][ragged])
        size = spec.values.row_bytes
        if not 0 <= count * size <= MAX_COUNT:
            what = "rows" if ragged is None else "elements"
            raise ShardTableError(
                f"{where}: field {name!r}: {count} {what} of {size} bytes, not from 0 "
                f"to {MAX_COUNT} bytes (damaged)"
            )
        if ragged is None:
            return ShardFile(
                path=path, data_offset=spec.data_offset, nbytes=count * size, checksum=checksum,
            )  # fmt: skip
        return ShardFile(
            path=path,
            data_offset=spec.data_offset,
            nbytes=count * size,
            checksum=checksum,
            offsets_checksum=_format_checksum(int(record["offsets_checksums"][ragged])),
        )

    def _expected_chain_before(self, index: int) -> int:
        if index == 0:
            return chain_seed(self._manifest.uuid)
        return int(self._array[index - 1]["chain"])

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """``(row_offsets, rows)`` of every record, as int64 arrays.

        Raises:
            ShardTableError: the records do not cover rows ``0..table.rows`` in order.
        """
        if self._columns is None:
            offsets = np.ascontiguousarray(self._array["row_offset"])
            rows = np.ascontiguousarray(self._array["rows"])
            expected = np.concatenate(([0], np.cumsum(rows)[:-1])) if len(rows) else rows
            total = self._manifest.table.rows if self._manifest.table else 0
            if len(rows) and (
                bool((rows < 1).any())
                or not np.array_equal(offsets, expected)
                or int(offsets[-1] + rows[-1]) != total
            ):
                wrong = np.flatnonzero((offsets != expected) | (rows < 1))
                bad = int(wrong[0]) if wrong.size else len(rows) - 1
                raise ShardTableError(
                    f"{self.path}: record {bad}: rows {int(offsets[bad])}..+{int(rows[bad])} "
                    f"do not follow the records before it; the records must cover rows 0 to "
                    f"{total} in order (damaged)"
                )
            self._columns = offsets, rows
        return self._columns

    def elements(self, name: str) -> np.ndarray:
        """The values file's leading dimension of field ``name`` (ragged: elements;
        compressed: bytes) in every record (unchecked: for sizes and progress, not for
        reading)."""
        return np.ascontiguousarray(self._array["elements"][:, self._ragged[name]], np.int64)

    def stems(self) -> list[str]:
        """The stem of every record (unchecked: for listing file names to keep)."""
        return [
            bytes(stem).rstrip(b"\0").decode("ascii", "replace") for stem in self._array["stem"]
        ]

    def checked_copy(self, index: int) -> Shard:
        """Record ``index`` checked as :meth:`shard` checks it, decoded anew and not kept (for
        one pass over every record, as ``verify`` makes).

        Raises:
            ShardTableError: see :meth:`shard`.
        """
        cached = self._checked.get(index)
        return cached if cached is not None else self._decode(index)


def _format_checksum(value: int) -> str:
    return f"{ALGORITHM}:{value:016x}"


def _map_records(path: str, dtype: np.dtype[Any], records: int) -> np.ndarray:
    try:
        fd = open_regular(path, what="the shard table", error=ShardTableError)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ShardTableError(f"{path}: the shard table is missing") from None
    try:
        offset = npyheader.data_offset(dtype, ())
        size = os.fstat(fd).st_size
        needed = offset + records * dtype.itemsize
        if size < needed:
            raise ShardTableError(
                f"{path}: {size} bytes, the manifest's {records} records need {needed} (truncated)"
            )
        header = os.pread(fd, offset, 0)
        try:
            header_rows = npyheader.rows_in_header(header, dtype, (), where=path)
        except MemshardError as exc:
            raise ShardTableError(str(exc)) from None
        if header_rows < records:
            raise ShardTableError(
                f"{path}: the header states {header_rows} records, the manifest {records}"
            )
        region = map_readonly(fd, needed, path)
    finally:
        os.close(fd)
    array: np.ndarray = np.ndarray((records,), dtype=dtype, buffer=region, offset=offset)
    return array


class Shards(Sequence[Shard]):
    """Every committed shard of a dataset in row order: the shard table's records, then the
    shards the manifest lists after them. Records become :class:`Shard` objects only when
    indexed, so a dataset of 100,000 shards opens without building 100,000 objects."""

    def __init__(
        self, table: ShardTable, tail: tuple[Shard, ...], count: int | None = None
    ) -> None:
        self.table = table
        self.tail = tail
        self._count = len(table) + len(tail) if count is None else count

    @classmethod
    def of(cls, root: str, manifest: Manifest) -> Shards:
        """The shards of ``manifest`` (format 1: all in the manifest; 2: table, then tail).

        Raises:
            ShardTableError: see :meth:`ShardTable.open`.
        """
        return cls(ShardTable.open(root, manifest), manifest.shards)

    def first_rows(self, rows: int) -> Shards:
        """The shards holding rows ``0..rows`` (the last one may hold more)."""
        offsets, _ = self.columns()
        return Shards(self.table, self.tail, int(np.searchsorted(offsets, rows, side="left")))

    def __len__(self) -> int:
        return self._count

    @property
    def sealed(self) -> int:
        """How many of the shards are sealed."""
        return min(self._count, len(self.table)) + sum(
            shard.sealed for shard in self.tail[: max(0, self._count - len(self.table))]
        )

    @overload
    def __getitem__(self, index: int) -> Shard: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Shard]: ...
    def __getitem__(self, index: int | slice) -> Shard | Sequence[Shard]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"shard index {index} out of range for {len(self)} shards")
        tabled = len(self.table)
        return self.table.shard(position) if position < tabled else self.tail[position - tabled]

    def __iter__(self) -> Iterator[Shard]:
        for position in range(len(self)):
            yield self[position]

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """``(row_offsets, rows)`` of every shard, as int64 arrays."""
        offsets, rows = self.table.columns()
        if self.tail:
            offsets = np.concatenate((offsets, [shard.row_offset for shard in self.tail]))
            rows = np.concatenate((rows, [shard.rows for shard in self.tail]))
        return offsets[: self._count].astype(np.int64), rows[: self._count].astype(np.int64)

    def file_paths(self) -> set[str]:
        """The manifest path of every file of every shard."""
        fields = list(self.table._fields)
        ragged = list(self.table._ragged)
        paths = {shard_path(stem, name) for stem in self.table.stems() for name in fields}
        paths.update(
            offsets_path(shard_path(stem, name)) for stem in self.table.stems() for name in ragged
        )
        for shard in self.tail:
            for file in shard.files.values():
                paths.add(file.path)
                if file.offsets_prefix_checksum is not None or file.offsets_checksum is not None:
                    paths.add(file.offsets_path)
        return paths


def empty_table(specs: Mapping[str, FieldSpec]) -> bytes:
    """The bytes of a shard table with no record, for a dataset of fields ``specs``."""
    return npyheader.header_bytes(table_dtype(specs), (), 0)


class TableWriter:
    """Appends records to a dataset's shard table after the committed ones; a writer's only
    way to change the table. Used under the dataset's write lock."""

    def __init__(self, root: str, manifest: Manifest) -> None:
        self._root = root
        self._specs = dict(manifest.fields)
        self._dtype = table_dtype(self._specs)
        ref = manifest.table
        self.records = 0 if ref is None else ref.records
        self.rows = 0 if ref is None else ref.rows
        self._chain = chain_seed(manifest.uuid)
        if ref is not None and ref.chain is not None:
            self._chain = int(ref.chain.split(":", 1)[1], 16)

    @property
    def path(self) -> str:
        """The table file's path."""
        return os.path.join(self._root, TABLE_NAME)

    def ref(self) -> TableRef:
        """What a manifest states of the records written so far."""
        chain = format_chain(self._chain) if self.records else None
        return TableRef(records=self.records, rows=self.rows, chain=chain)

    def prepare(self, shards: Sequence[Shard]) -> PendingRecords:
        """The records of sealed ``shards``, to follow the committed ones, and what a manifest
        will state once they are written; nothing is written yet, so a commit can check the
        manifest it will publish first.

        Raises:
            UpgradeError: see :func:`encode`.
        """
        records = encode(shards, self._specs, self._chain, where=self._root)
        if not len(records):
            return PendingRecords(records, self.ref())
        last = records[-1]
        ref = TableRef(
            records=self.records + len(records),
            rows=int(last["row_offset"] + last["rows"]),
            chain=format_chain(int(last["chain"])),
        )
        return PendingRecords(records, ref)

    def append_records(self, pending: PendingRecords) -> None:
        """Write ``pending`` (from :meth:`prepare`) after the committed records, durably;
        bytes after them (records no manifest counted) are cut off.

        Raises:
            OSError: writing or syncing failed; the committed records are untouched.
        """
        records = pending.records
        if not len(records):
            return
        offset = npyheader.data_offset(self._dtype, ())
        created = not os.path.lexists(self.path)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _CLOEXEC
        fd = os.open(self.path, flags, 0o644)
        try:
            start = offset + self.records * self._dtype.itemsize
            _write_all(fd, records.tobytes(), start)
            os.ftruncate(fd, start + records.nbytes)
            _write_all(fd, npyheader.header_bytes(self._dtype, (), pending.ref.records), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(self._root)
        self.records, self.rows = pending.ref.records, pending.ref.rows
        self._chain = int(records[-1]["chain"])


class PendingRecords(NamedTuple):
    """Records prepared for the shard table, and the manifest's ``table`` once written."""

    records: np.ndarray
    ref: TableRef


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
