"""Checking a dataset on disk: the manifest's own checksum, and every shard file's presence,
size, header, checksum and bool bytes.

:func:`verify` reads every committed data byte once and compares its xxh3-64 checksum with the
manifest: ``checksum`` for a sealed shard, ``prefix_checksum`` (format 1.1) for the unsealed
one. A manifest of format 1.0 records no checksum for the unsealed shard; its rows are then
checked for size and header only and listed in :attr:`VerifyReport.unchecked`, and the report
is not :attr:`~VerifyReport.ok`. Any byte of a bool field other than 00 and 01 is damage (spec
section 5.1). Problems are collected, not raised, so one report lists them all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import interrupt
from . import manifest as manifest_io
from .blockcodec import BlockCodec
from .blockindex import blocks_of
from .checksum import READ_CHUNK, StreamingChecksum
from .errors import (
    BlockError,
    ChecksumError,
    DatasetNotFoundError,
    ManifestError,
    MemshardError,
    ShardDataError,
    ShardTableError,
)
from .layout import MANIFEST_NAME, not_found, open_shard
from .manifest import FieldSpec, Manifest, Shard, ShardFile, shard_files
from .mappings import SegmentFile, check_shard_file
from .ragged import offsets_in_order
from .shardtable import TABLE_NAME, Shards
from .smallfile import read_small_file


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file (or manifest) and what is wrong with it."""

    path: str
    message: str
    error: type[MemshardError]


@dataclass(frozen=True)
class Unchecked:
    """Committed rows of one file whose data could not be checked against a checksum: those
    of the unsealed shard of a format 1.0 manifest, which records none for them."""

    path: str
    rows: range
    reason: str

    def describe(self) -> str:
        """One line for people: which rows, and why."""
        first, last = self.rows.start, self.rows.stop - 1
        span = f"row {first}" if first == last else f"rows {first} to {last}"
        return f"{span} ({len(self.rows)} rows) not checked: {self.reason}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    :attr:`ok` only when every committed byte was checked and found intact. A report is true
    exactly when :attr:`ok` is, so ``if ds.verify():`` passes only for such a dataset: a damaged
    one, or one with rows that could not be checked, gives a false report (never a truthy
    object that happens to hold problems).
    """

    path: str
    files: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    unchecked: list[Unchecked] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every committed byte was checked and nothing is wrong."""
        return not self.problems and not self.unchecked

    def __bool__(self) -> bool:
        """:attr:`ok`."""
        return self.ok

    def raise_first(self) -> None:
        """Raise the first problem as its typed error (nothing when no problem was found,
        even if rows were left unchecked)."""
        if self.problems:
            first = self.problems[0]
            raise first.error(f"{first.path}: {first.message}")


@interrupt.deferring
def verify_dataset(root: str, *, progress: bool | None = False) -> VerifyReport:
    """Check the dataset at ``root`` as it is on disk now: the manifest (strict parse and its
    own checksum, which must be present), then every file it names (see :func:`verify`).

    Raises:
        DatasetNotFoundError: ``root`` holds no ``manifest.json``.
        KeyboardInterrupt: Ctrl-C, taken between two blocks read (see
            :mod:`memshard.interrupt`).
    """
    from .progress import progress_bar

    where = os.path.join(root, MANIFEST_NAME)
    started = time.perf_counter()
    try:
        data = _read_manifest(root, where)
        manifest = manifest_io.loads(data, where=where)
        where = os.path.join(root, TABLE_NAME)
        shards = Shards.of(root, manifest)
    except MemshardError as exc:
        if isinstance(exc, DatasetNotFoundError):
            raise
        result = VerifyReport(path=root, seconds=time.perf_counter() - started)
        result.problems.append(Problem(where, _without_path(str(exc), where), type(exc)))
        return result
    with progress_bar(total_bytes(manifest, shards), desc="verify", enabled=progress) as bar:
        result = verify(root, manifest, shards, report=bar.update)
    where = os.path.join(root, MANIFEST_NAME)
    if not manifest_io.has_own_checksum(data):
        message = "has no checksum of its own, so damage to it cannot be detected"
        result.problems.insert(0, Problem(where, message, ManifestError))
    result.seconds = time.perf_counter() - started
    return result


def _read_manifest(root: str, where: str) -> bytes:
    try:
        return read_small_file(
            where, what="the manifest", limit=manifest_io.MAX_MANIFEST_BYTES, error=ManifestError
        )
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(root) from None
    except IsADirectoryError:
        raise DatasetNotFoundError(f"{where}: is a directory, not a manifest") from None


def verify(
    root: str,
    manifest: Manifest,
    shards: Shards,
    *,
    report: Callable[[int], object] | None = None,
) -> VerifyReport:
    """Check every file of ``shards`` (the shards of ``manifest``) under ``root``;
    ``report(nbytes)`` after each block read (for a progress bar). A damaged record of the
    shard table is reported and its files skipped.

    Returns a report listing each damaged file in ``problems`` and, for a format 1.0 manifest
    with an unsealed shard, the rows no checksum covers in ``unchecked``.
    """
    result = VerifyReport(path=root)
    started = time.perf_counter()
    buffer = bytearray(READ_CHUNK)
    for shard in _readable(shards, result):
        for name, field_file in shard.files.items():
            declared = manifest.fields[name]
            files = shard_files(declared, field_file, shard.rows, sealed=shard.sealed)
            for spec, file, count in files:
                interrupt.check()
                result.files += 1
                problem = _check_file(root, spec, shard, file, count, buffer, result, report)
                if problem is None and declared.has_offsets and file.path != field_file.path:
                    problem = _check_offsets(root, shard, file, field_file, declared)
                    if problem is None and declared.compressed:
                        problem = _check_blocks(root, shard, file, field_file, declared)
                if problem is not None:
                    result.problems.append(problem)
                elif _expected_checksum(shard, file) is None:
                    result.unchecked.append(_unchecked(root, shard, file))
    result.seconds = time.perf_counter() - started
    return result


def _readable(shards: Shards, result: VerifyReport) -> Iterator[Shard]:
    """Every shard, each table record decoded once; a damaged record goes into ``result``."""
    tabled = len(shards.table)
    for position in range(len(shards)):
        if position >= tabled:
            yield shards[position]
            continue
        try:
            yield shards.table.checked_copy(position)
        except ShardTableError as exc:
            where = shards.table.path
            result.problems.append(Problem(where, _without_path(str(exc), where), ShardTableError))


def total_bytes(manifest: Manifest, shards: Shards) -> int:
    """Data bytes :func:`verify` reads (see :func:`_is_read`): every sealed file, and those
    files of the unsealed shard that have a checksum or hold bools."""
    try:
        _, rows = shards.table.columns()
    except ShardTableError:  # verify reports it; the bar is only a guide
        rows = np.zeros(0, dtype=np.int64)
    sealed = 0
    for name, spec in manifest.fields.items():
        if spec.has_offsets:
            elements = shards.table.elements(name)[: len(rows)]
            offsets = (int(rows.sum()) + len(rows)) * spec.offsets.row_bytes
            sealed += int(elements.sum()) * spec.values.row_bytes + offsets
        else:
            sealed += int(rows.sum()) * spec.row_bytes
    return sealed + sum(
        file.nbytes
        for shard in shards.tail
        for name, field_file in shard.files.items()
        for spec, file, _ in shard_files(
            manifest.fields[name], field_file, shard.rows, sealed=shard.sealed
        )
        if _is_read(spec, shard, file)
    )


def _expected_checksum(shard: Shard, file: ShardFile) -> str | None:
    """The checksum the manifest records for the committed data of ``file``: ``checksum`` of
    a sealed shard, ``prefix_checksum`` of the unsealed one (None in format 1.0)."""
    return file.checksum if shard.sealed else file.prefix_checksum


def _unchecked(root: str, shard: Shard, file: ShardFile) -> Unchecked:
    return Unchecked(
        os.path.join(root, file.path),
        range(shard.row_offset, shard.row_offset + shard.rows),
        "the unsealed shard of a format 1.0 manifest has no checksum (memshard.append(path)"
        ".close() seals it and records one of its data as it is now)",
    )


def _is_read(spec: FieldSpec, shard: Shard, file: ShardFile) -> bool:
    """Whether :func:`verify` reads the data of ``file``: to compare its checksum, or to
    check the bytes of a bool field."""
    return _expected_checksum(shard, file) is not None or spec.numpy_dtype.kind == "b"


@dataclass(frozen=True)
class _Scan:
    """What reading a file's committed data found: its checksum, and the first byte of a bool
    field that is neither 00 nor 01, as ``(offset from the data offset, value)``."""

    digest: str
    bad_bool: tuple[int, int] | None


def _check_file(
    root: str,
    spec: FieldSpec,
    shard: Shard,
    file: ShardFile,
    count: int,
    buffer: bytearray,
    result: VerifyReport,
    report: Callable[[int], object] | None,
) -> Problem | None:
    """Check one file of ``count`` rows (elements, for a ragged field's values file)."""
    where = os.path.join(root, file.path)
    try:
        check_shard_file(
            root,
            spec,
            SegmentFile(file=file, manifest_rows=count, sealed=shard.sealed, rows=count),
        )
    except MemshardError as exc:
        return Problem(where, _without_path(str(exc), where), type(exc))
    if not _is_read(spec, shard, file):
        return None
    fd = open_shard(root, file.path)
    try:
        is_bool = spec.numpy_dtype.kind == "b"
        scan = _scan(fd, file.data_offset, file.nbytes, is_bool, buffer, result, report)
    except OSError as exc:
        return Problem(where, f"cannot read ({exc.strerror})", ChecksumError)
    finally:
        os.close(fd)
    expected = _expected_checksum(shard, file)
    if expected is not None and scan.digest != expected:
        return Problem(
            where,
            f"data checksum is {scan.digest}, the manifest records {expected} (corrupt data)",
            ChecksumError,
        )
    if scan.bad_bool is not None:
        return _bad_bool(where, spec, shard, *scan.bad_bool)
    return None


def _check_offsets(
    root: str, shard: Shard, file: ShardFile, values: ShardFile, declared: FieldSpec
) -> Problem | None:
    """A ragged or compressed field's offsets, whose checksum matched, must also make sense:
    from 0, never decreasing, ending at the values' elements (a ragged field) or bytes of
    frames (a compressed one); a compressed ragged field's element ends from 0, never
    decreasing (a writer's bug, not a damaged byte)."""
    where = os.path.join(root, file.path)
    offsets = _read_offsets(root, file, declared)
    if isinstance(offsets, Problem):
        return offsets
    stored = values.nbytes // declared.values.row_bytes
    ends = offsets[:, -1] if offsets.ndim == 2 else offsets
    what = "bytes of frames" if declared.compressed else "elements"
    if ends.size != shard.rows + 1 or not offsets_in_order(ends, stored, whole=True):
        return Problem(
            where,
            f"the offsets must start at 0, never decrease and end at the {stored} {what} of "
            "the values file",
            ShardDataError,
        )
    if offsets.ndim == 2 and not offsets_in_order(offsets[:, 0], int(offsets[-1, 0]), whole=True):
        return Problem(where, "the element ends must start at 0 and never decrease", ShardDataError)
    return None


def _read_offsets(root: str, file: ShardFile, declared: FieldSpec) -> np.ndarray | Problem:
    fd = open_shard(root, file.path)
    try:
        data = os.pread(fd, file.nbytes, file.data_offset)
    except OSError as exc:
        where = os.path.join(root, file.path)
        return Problem(where, f"cannot read ({exc.strerror})", ChecksumError)
    finally:
        os.close(fd)
    return np.frombuffer(data, dtype="<i8").reshape(-1, *declared.offsets.shape)


def _check_blocks(
    root: str, shard: Shard, offsets_file: ShardFile, values: ShardFile, declared: FieldSpec
) -> Problem | None:
    """Every block of a compressed field's shard, whose frames matched their checksum, must
    decompress to exactly its rows' bytes (and hold only 00 and 01 in a bool field)."""
    assert declared.codec is not None
    offsets = _read_offsets(root, offsets_file, declared)
    if isinstance(offsets, Problem):
        return offsets
    codec = BlockCodec.of(declared.codec.name, declared.codec.params, declared.numpy_dtype.itemsize)
    blocks = blocks_of(offsets[:, 1] if offsets.ndim == 2 else offsets)
    if offsets.ndim == 2:
        bounds = offsets[:, 0] * declared.row_bytes
        firsts, stops = bounds[blocks.first_rows], bounds[blocks.stop_rows]
    else:
        firsts = blocks.first_rows * declared.row_bytes
        stops = blocks.stop_rows * declared.row_bytes
    where = os.path.join(root, values.path)
    fd = open_shard(root, values.path)
    try:
        for block in range(len(blocks.first_rows)):
            interrupt.check()
            start, stop = int(blocks.byte_starts[block]), int(blocks.byte_ends[block])
            frame = memoryview(os.pread(fd, stop - start, values.data_offset + start))
            size = int(stops[block] - firsts[block])
            first_row = shard.row_offset + int(blocks.first_rows[block])
            where_block = f"block {block} (from row {first_row})"
            problem = codec.claim_problem(frame, size)  # before allocating the block's size
            if problem is not None:
                raise BlockError(f"{where_block}: {problem}")
            data = np.empty(size, dtype=np.uint8)
            codec.decompress_into(frame, data.data, where=where_block)
            if declared.numpy_dtype.kind == "b" and bool((data > 1).any()):
                return Problem(
                    where,
                    f"block {block} (from row {first_row}) holds a byte other than 00 or 01 in a "
                    "bool field",
                    ShardDataError,
                )
    except BlockError as exc:
        return Problem(where, str(exc), BlockError)
    except OSError as exc:
        return Problem(where, f"cannot read ({exc.strerror})", ChecksumError)
    finally:
        os.close(fd)
    return None


def _bad_bool(where: str, spec: FieldSpec, shard: Shard, offset: int, value: int) -> Problem:
    local = offset // spec.row_bytes
    return Problem(
        where,
        f"row {shard.row_offset + local} (row {local} of the shard, data byte {offset}) holds "
        f"the byte {value:02x} in a bool field; a bool element must be 00 or 01",
        ShardDataError,
    )


def _scan(
    fd: int,
    start: int,
    nbytes: int,
    check_bools: bool,
    buffer: bytearray,
    result: VerifyReport,
    report: Callable[[int], object] | None,
) -> _Scan:
    state = StreamingChecksum()
    bad_bool = None
    view = memoryview(buffer)
    offset, end = start, start + nbytes
    while offset < end:
        interrupt.check()
        got = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if got == 0:
            break
        state.update(view[:got])
        if check_bools and bad_bool is None:
            bad_bool = _first_bad_bool(view[:got], offset - start)
        offset += got
        result.bytes_hashed += got
        if report is not None:
            report(got)
    return _Scan(state.digest(), bad_bool)


def _first_bad_bool(chunk: memoryview, position: int) -> tuple[int, int] | None:
    """The first byte of ``chunk`` (which starts ``position`` bytes into the data) that is
    neither 00 nor 01, with its position in the data."""
    values = np.frombuffer(chunk, dtype=np.uint8)
    if not values.size or int(values.max()) <= 1:
        return None
    first = int(np.argmax(values > 1))
    return position + first, int(values[first])


def _without_path(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
