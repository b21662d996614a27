"""Regenerate the generated parts of the memshard format specification.

``spec/manifest.schema.json`` is the JSON Schema of the manifest model, and the blocks of
``spec/FORMAT.md`` between ``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->``
(the dtype table, the limits table and the three worked examples) are rendered from the library's
own pieces, so the specification cannot drift from the code without a test noticing.

Usage::

    python spec/generate.py          rewrite whatever is stale
    python spec/generate.py --check  say what is stale, write nothing, exit 1 if anything is

The worked examples are built in memory from ``npyheader.header_bytes``,
``checksum.StreamingChecksum``, ``shardtable.encode``, the ``Manifest`` model and
``manifest.dumps``; nothing is written to disk except the two spec files. The one with a ragged
field (section 11.2) splits its rows into shards by the rule of section 5.6, and the one with
a compressed field (section 11.3) its rows into blocks by the rule of section 5.7, with frames
made by zstandard itself; both computed here independently of the writer, whose output
``tests/test_spec.py`` compares with them.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import zstandard

from memshard import (
    checksum,
    codecs,
    dtypes,
    durable,
    layout,
    manifest,
    npyheader,
    schema,
    shardtable,
)
from memshard.checksum import StreamingChecksum
from memshard.manifest import (
    Codec,
    FieldSpec,
    Manifest,
    Shard,
    ShardFile,
    TableRef,
    offsets_path,
)

SPEC_DIR = Path(__file__).resolve().parent
FORMAT_FILE = "FORMAT.md"
SCHEMA_FILE = "manifest.schema.json"
BLOCK_PATTERN = re.compile(r"<!-- BEGIN GENERATED: ([a-z0-9-]+) -->\n")

#: The worked example of section 11.1: fixed, so that its bytes (and checksums) never change.
EXAMPLE_UUID = "0123456789abcdef0123456789abcdef"
EXAMPLE_GENERATION = 1
EXAMPLE_SHARD_ROWS = 2
EXAMPLE_FIELDS = {
    "x": FieldSpec(dtype="<f4", shape=(2,)),
    "y": FieldSpec(dtype="<i8", shape=()),
}
EXAMPLE_LABELS: dict[str, tuple[str, ...]] = {"y": ("cat", "dog")}
EXAMPLE_ATTRS: dict[str, Any] = {"source": "worked example"}
EXAMPLE_VALUES: dict[str, tuple[Any, ...]] = {
    "x": ((0.0, 0.5), (1.0, 1.5), (2.0, 2.5)),
    "y": (1, 0, 1),
}

#: The worked example of section 11.2: a ragged field beside a fixed one, in shards that roll
#: on their size (``shard_bytes``), committed once before the writer closes, so that its last
#: shard is unsealed. Row 1 is empty.
RAGGED_UUID = "00112233445566778899aabbccddeeff"
RAGGED_GENERATION = 1
RAGGED_SHARD_BYTES = 64
RAGGED_FIELDS = {
    "tokens": FieldSpec(dtype="<i4", shape=(), kind="ragged"),
    "y": FieldSpec(dtype="<i8", shape=()),
}
RAGGED_ATTRS: dict[str, Any] = {"source": "ragged example"}
RAGGED_VALUES: dict[str, tuple[Any, ...]] = {
    "tokens": ((5, 6, 7, 8), (), (9, 10)),
    "y": (1, 0, 1),
}

#: The worked example of section 11.3: a field compressed with zstd beside a fixed field, one
#: shard of 5 rows written by two commits (``COMPRESSED_COMMITS``: the first commits rows 0-2,
#: closing commits rows 3-4 and seals the shard), so in two blocks, since a commit ends a
#: block. No byte of block 0 repeats, so zstd cannot shrink it and it is stored as it is;
#: block 1 is zeros, which zstd shrinks to a frame (whose compressed block's bytes are
#: libzstd's choice: ``constraints.txt`` pins the zstandard that CI generates them with).
COMPRESSED_UUID = "fedcba9876543210fedcba9876543210"
COMPRESSED_SHARD_BYTES = 256
COMPRESSED_FIELDS = {
    "img": FieldSpec(
        dtype="|u1",
        shape=(4, 4),
        codec=Codec(name="zstd", params={"level": 3}, block_bytes=1024),
    ),
    "y": FieldSpec(dtype="<i8", shape=()),
}
COMPRESSED_ATTRS: dict[str, Any] = {"source": "compressed example"}
COMPRESSED_COMMITS = (3, 5)
COMPRESSED_VALUES: dict[str, tuple[Any, ...]] = {
    "img": tuple(
        tuple(
            tuple(16 * row + 4 * line + column if row < 3 else 0 for column in range(4))
            for line in range(4)
        )
        for row in range(5)
    ),
    "y": (3, 1, 4, 1, 5),
}
#: zstd's frame magic number, and the types of its blocks (RFC 8878, section 3.1.1.2).
ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK_TYPES = ("raw", "RLE", "compressed", "reserved")

#: The named constants the specification refers to: (module, name, meaning).
LIMITS: tuple[tuple[ModuleType, str, str], ...] = (
    (manifest, "MAX_MANIFEST_BYTES", "largest `manifest.json`, in bytes"),
    (manifest, "MAX_COUNT", "largest row count, row offset, generation, byte size or dimension"),
    (manifest, "MAX_SAMPLE_NDIM", "most dimensions of one sample"),
    (manifest, "MAX_LABELS", "most labels in one vocabulary"),
    (
        manifest,
        "OFFSETS_SUFFIX",
        "replaces `.npy` in the offsets file of a ragged (2.1) or compressed (2.2) field",
    ),
    (layout, "MAX_FIELD_NAME", "longest field name, in characters"),
    (layout, "FIELD_NAME_PATTERN", "a field name (whole string)"),
    (layout, "SHARD_PATH_PATTERN", "a shard path in the manifest (whole string)"),
    (checksum, "CHECKSUM_PATTERN", "a checksum (whole string)"),
    (npyheader, "MAGIC", "first bytes of every shard file"),
    (npyheader, "DATA_ALIGN", "the data offset is a multiple of this (a memory page)"),
    (npyheader, "ROW_DIGITS_RESERVED", "digits of row count every header has room for"),
    (npyheader, "MAX_HEADER_SIZE", "largest header length (NPY 1.0 stores it as `uint16`)"),
    (npyheader, "MAX_DATA_OFFSET", "largest data offset the manifest may state"),
    (layout, "MANIFEST_NAME", "the committed manifest"),
    (layout, "LOCK_NAME", "the writer's lock file"),
    (layout, "SHARDS_DIR", "the directory holding the shard files"),
    (layout, "MANIFEST_TEMP_PREFIX", "prefix of a temporary manifest"),
    (schema, "MAX_ROW_BYTES", "largest sample of one field, in bytes (writer)"),
    (schema, "MAX_ATTRS_DEPTH", "deepest nesting of `attrs` a writer accepts"),
    (npyheader, "HUGE_PAGE", "full shards hold whole huge pages of the widest field (writer)"),
    (durable, "MAX_DEFERRED_FILES", "sealed files a writer keeps unsynced until the commit"),
    (shardtable, "TABLE_NAME", "the shard table (format 2)"),
    (shardtable, "STEM_BYTES", "bytes of a shard's file stem in a shard table record"),
    (shardtable, "STEM_PATTERN", "a shard's file stem (whole string)"),
    (codecs, "MIN_BLOCK_BYTES", "smallest `block_bytes` of a compressed field (2.2)"),
    (codecs, "MAX_BLOCK_BYTES", "largest `block_bytes` of a compressed field (2.2)"),
    (codecs, "DEFAULT_BLOCK_BYTES", "the `block_bytes` a writer uses unless told (2.2)"),
)
#: Order of dtype kinds in the dtype table: bool, signed, unsigned, float, complex.
KIND_ORDER = "biufc"

#: What a ragged field's offsets file holds (int64, rows + 1).
OFFSETS = FieldSpec(dtype="<i8", shape=())


class SpecError(Exception):
    """``FORMAT.md`` does not have the generated blocks this script expects."""


class Example(NamedTuple):
    """A worked example: its manifest, its sealed shards (the records of its shard table)
    and the content of each file, by path (the shard table's too)."""

    manifest: Manifest
    shards: tuple[Shard, ...]
    files: dict[str, bytes]


class Update(NamedTuple):
    """A spec file whose committed content differs from what the generator produces."""

    path: Path
    text: str
    reasons: list[str]


# -- the worked example ---------------------------------------------------------------------
def shard_file(spec: FieldSpec, values: Any) -> tuple[bytes, str]:
    """The bytes of a sealed shard file holding ``values`` (rows of ``spec``), and its checksum.

    Example:
        >>> content, digest = shard_file(FieldSpec(dtype="<i8", shape=()), [7])
        >>> len(content), content[-8:], digest
        (4104, b'\\x07\\x00\\x00\\x00\\x00\\x00\\x00\\x00', 'xxh3_64:81671e58d6b596af')
    """
    rows = np.asarray(values, dtype=spec.numpy_dtype)
    if rows.shape[1:] != spec.shape:
        raise ValueError(f"rows of shape {rows.shape[1:]} do not match {spec.shape}")
    data = rows.tobytes(order="C")
    state = StreamingChecksum()
    state.update(data)
    header = npyheader.header_bytes(spec.numpy_dtype, spec.shape, len(rows))
    return header + data, state.digest()


def example_shard(index: int, start: int, stop: int) -> tuple[Shard, dict[str, bytes]]:
    """Shard ``index`` of the worked example (rows ``start:stop``) and its files' bytes."""
    records = {}
    files = {}
    for name, spec in EXAMPLE_FIELDS.items():
        path = layout.shard_file_name(EXAMPLE_UUID[:12], index, name)
        content, digest = shard_file(spec, EXAMPLE_VALUES[name][start:stop])
        files[path] = content
        records[name] = ShardFile(
            path=path,
            data_offset=spec.data_offset,
            nbytes=len(content) - spec.data_offset,
            checksum=digest,
        )
    return Shard(row_offset=start, rows=stop - start, sealed=True, files=records), files


def build_example() -> Example:
    """The worked example: every row written, every shard sealed, committed once."""
    rows = len(EXAMPLE_VALUES["y"])
    shards = []
    files: dict[str, bytes] = {}
    for index, start in enumerate(range(0, rows, EXAMPLE_SHARD_ROWS)):
        shard, contents = example_shard(index, start, min(start + EXAMPLE_SHARD_ROWS, rows))
        shards.append(shard)
        files.update(contents)
    records = example_records(shards)
    files[shardtable.TABLE_NAME] = table_file(records)
    document = Manifest(
        format=manifest.FORMAT_NAME,
        version=manifest.FORMAT_VERSION,
        uuid=EXAMPLE_UUID,
        generation=EXAMPLE_GENERATION,
        rows=rows,
        shard_rows=EXAMPLE_SHARD_ROWS,
        fields=EXAMPLE_FIELDS,
        labels=EXAMPLE_LABELS,
        attrs=EXAMPLE_ATTRS,
        table=TableRef(
            records=len(records),
            rows=rows,
            chain=shardtable.format_chain(int(records[-1]["chain"])),
        ),
        shards=(),
    )
    return Example(document, tuple(shards), files)


def example_records(shards: Sequence[Shard]) -> np.ndarray:
    """The shard table records of the example's sealed shards."""
    seed = shardtable.chain_seed(EXAMPLE_UUID)
    return shardtable.encode(shards, EXAMPLE_FIELDS, seed, where="example")


def table_records(example: Example) -> np.ndarray:
    """The shard table records of ``example``'s sealed shards, chained from its uuid."""
    seed = shardtable.chain_seed(example.manifest.uuid)
    return shardtable.encode(example.shards, example.manifest.fields, seed, where="example")


def table_file(records: np.ndarray) -> bytes:
    """The bytes of a shard table holding ``records``."""
    return npyheader.header_bytes(records.dtype, (), len(records)) + records.tobytes()


def table_dictionary(example: Example) -> str:
    """The header dictionary of the example's shard table, without its padding."""
    content = example.files[shardtable.TABLE_NAME]
    return content[npyheader.PREAMBLE_SIZE :].split(b"\n", 1)[0].rstrip().decode("ascii")


def records_table(example: Example) -> str:
    """The markdown table of the example's shard table records, one row per record; the
    members of ragged fields (format 2.1) only when it has some."""
    records = table_records(example)
    fields = example.manifest.fields
    ragged = shardtable.ragged_fields(fields)

    def hexes(values: Any) -> str:
        return ", ".join(f"`{int(value):016x}`" for value in values)

    rows = []
    for index, record in enumerate(records):
        cells: list[Any] = [
            index,
            int(record["row_offset"]),
            int(record["rows"]),
            f"`{bytes(record['stem']).rstrip(bytes(1)).decode()}`",
            hexes(record["checksums"]),
        ]
        if ragged:
            cells += [", ".join(str(int(v)) for v in record["elements"])]
            cells += [hexes(record["offsets_checksums"])]
        rows.append((*cells, f"`{int(record['chain']):016x}`"))
    header = ["Record", "`row_offset`", "`rows`", "`stem`", f"`checksums` ({', '.join(fields)})"]
    align = ["---:", "---:", "---:", "---", "---"]
    if ragged:
        header += [
            f"`elements` ({', '.join(ragged)})",
            f"`offsets_checksums` ({', '.join(ragged)})",
        ]
        align += ["---:", "---"]
    return table([*header, "`chain`"], [*align, "---"], rows)


def unsealed_last_shard() -> Shard:
    """The worked example's last shard as a commit before ``close()`` records it: unsealed,
    each file with the ``prefix_checksum`` of its committed rows instead of a ``checksum``."""
    rows = len(EXAMPLE_VALUES["y"])
    start = (rows - 1) // EXAMPLE_SHARD_ROWS * EXAMPLE_SHARD_ROWS
    sealed, _ = example_shard(start // EXAMPLE_SHARD_ROWS, start, rows)
    files = {
        name: ShardFile(
            path=file.path,
            data_offset=file.data_offset,
            nbytes=file.nbytes,
            checksum=None,
            prefix_checksum=file.checksum,
        )
        for name, file in sealed.files.items()
    }
    return Shard(row_offset=sealed.row_offset, rows=sealed.rows, sealed=False, files=files)


def ragged_data_bytes(start: int, stop: int) -> int:
    """Bytes of data of a shard of the ragged example holding rows ``start:stop``, as section
    5.6 counts them: each fixed field's rows, each ragged field's elements and its
    ``rows + 1`` offsets."""
    total = 0
    for name, spec in RAGGED_FIELDS.items():
        if spec.ragged:
            elements = sum(len(row) for row in RAGGED_VALUES[name][start:stop])
            total += elements * spec.row_bytes + (stop - start + 1) * OFFSETS.row_bytes
        else:
            total += (stop - start) * spec.row_bytes
    return total


def ragged_shard_rows() -> int:
    """The ragged example's ``shard_rows``, as ``memshard.create`` derives it from
    ``shard_bytes``."""
    return schema.rows_per_shard(RAGGED_FIELDS, RAGGED_SHARD_BYTES)


def ragged_bounds() -> list[tuple[int, int]]:
    """``(start, stop)`` of each shard of the ragged example: a shard takes rows until it
    holds ``shard_rows`` or the next row would take its data past ``shard_bytes``, and holds
    at least one (section 5.6)."""
    rows, most = len(RAGGED_VALUES["y"]), ragged_shard_rows()
    bounds, start = [], 0
    while start < rows:
        stop = start + 1
        while (
            stop < rows
            and stop - start < most
            and ragged_data_bytes(start, stop + 1) <= RAGGED_SHARD_BYTES
        ):
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def file_checksums(digest: str, *, sealed: bool, offsets: str | None = None) -> dict[str, Any]:
    """The checksum members of a file record: ``checksum`` (and ``offsets_checksum``) in a
    sealed shard, ``prefix_checksum`` (and ``offsets_prefix_checksum``) in the unsealed one."""
    if sealed:
        members = {"checksum": digest, "offsets_checksum": offsets}
    else:
        members = {"checksum": None, "prefix_checksum": digest, "offsets_prefix_checksum": offsets}
    return {key: value for key, value in members.items() if value is not None or key == "checksum"}


def ragged_shard(
    index: int, start: int, stop: int, *, sealed: bool
) -> tuple[Shard, dict[str, bytes]]:
    """Shard ``index`` of the ragged example (rows ``start:stop``) and its files' bytes: a
    values file and an offsets file for ``tokens``, one file for ``y``."""
    records = {}
    files = {}
    for name, spec in RAGGED_FIELDS.items():
        path = layout.shard_file_name(RAGGED_UUID[:12], index, name)
        rows = RAGGED_VALUES[name][start:stop]
        if not spec.ragged:
            files[path], digest = shard_file(spec, rows)
            nbytes, extra = len(rows) * spec.row_bytes, file_checksums(digest, sealed=sealed)
        else:
            arrays = [np.asarray(row, spec.numpy_dtype).reshape((-1, *spec.shape)) for row in rows]
            ends = np.cumsum([0, *(len(array) for array in arrays)])
            files[path], digest = shard_file(spec.values, np.concatenate(arrays))
            files[offsets_path(path)], offsets = shard_file(OFFSETS, ends)
            nbytes = int(ends[-1]) * spec.row_bytes
            extra = file_checksums(digest, sealed=sealed, offsets=offsets)
        records[name] = ShardFile(path=path, data_offset=spec.data_offset, nbytes=nbytes, **extra)
    return Shard(row_offset=start, rows=stop - start, sealed=sealed, files=records), files


def build_ragged_example() -> Example:
    """The ragged example: every row written, committed once; every shard but the last
    sealed (a record of the table), the last one unsealed (in the manifest's ``shards``)."""
    bounds = ragged_bounds()
    shards = []
    files: dict[str, bytes] = {}
    for index, (start, stop) in enumerate(bounds):
        shard, contents = ragged_shard(index, start, stop, sealed=index < len(bounds) - 1)
        shards.append(shard)
        files.update(contents)
    sealed, unsealed = tuple(shards[:-1]), shards[-1]
    seed = shardtable.chain_seed(RAGGED_UUID)
    records = shardtable.encode(sealed, RAGGED_FIELDS, seed, where="example")
    files[shardtable.TABLE_NAME] = table_file(records)
    document = Manifest(
        format=manifest.FORMAT_NAME,
        version=manifest.FORMAT_VERSION,
        uuid=RAGGED_UUID,
        generation=RAGGED_GENERATION,
        rows=unsealed.row_offset + unsealed.rows,
        shard_rows=ragged_shard_rows(),
        fields=RAGGED_FIELDS,
        labels={},
        attrs=RAGGED_ATTRS,
        shard_bytes=RAGGED_SHARD_BYTES,
        table=TableRef(
            records=len(records),
            rows=unsealed.row_offset,
            chain=shardtable.format_chain(int(records[-1]["chain"])) if len(records) else None,
        ),
        shards=(unsealed,),
    )
    return Example(document, sealed, files)


def compressed_frame(block: bytes) -> bytes:
    """The zstd frame of ``block`` as section 5.7 says a writer makes it: with its content size
    and a content checksum, at the field's level (zstandard, not the library's writer)."""
    codec = COMPRESSED_FIELDS["img"].codec
    assert codec is not None
    compressor = zstandard.ZstdCompressor(
        level=codec.params["level"], write_content_size=True, write_checksum=True
    )
    frame: bytes = compressor.compress(block)
    return frame


def stored_form(block: bytes) -> bytes:
    """What section 5.7 has a writer put in the values file for ``block``: its frame, or the
    block itself (a stored block) when the frame would take more than 7/8 of its bytes."""
    frame = compressed_frame(block)
    return block if len(frame) * 8 > len(block) * 7 else frame


def compressed_blocks() -> list[tuple[int, int]]:
    """``(first, stop)`` rows of each block of the compressed example: within each commit's
    rows, as many rows as fit ``block_bytes`` (section 5.7); a commit ends a block."""
    spec = COMPRESSED_FIELDS["img"]
    assert spec.codec is not None
    per_block = max(1, spec.codec.block_bytes // spec.row_bytes)
    blocks, start = [], 0
    for stop in COMPRESSED_COMMITS:
        blocks += [(first, min(first + per_block, stop)) for first in range(start, stop, per_block)]
        start = stop
    return blocks


def build_compressed_example() -> Example:
    """The compressed example once closed: its one shard sealed, a record of the table; the
    values file of ``img`` holds a frame per block, its offsets file each row's block end."""
    rows = COMPRESSED_COMMITS[-1]
    files: dict[str, bytes] = {}
    records = {}
    for name, spec in COMPRESSED_FIELDS.items():
        path = layout.shard_file_name(COMPRESSED_UUID[:12], 0, name)
        values = np.asarray(COMPRESSED_VALUES[name], dtype=spec.numpy_dtype)
        if spec.codec is None:
            files[path], digest = shard_file(spec, values)
            records[name] = ShardFile(
                path=path, data_offset=spec.data_offset, nbytes=values.nbytes, checksum=digest
            )
            continue
        frames, ends = [], [0] * (rows + 1)
        for first, stop in compressed_blocks():
            frames.append(stored_form(values[first:stop].tobytes()))
            ends[first + 1 : stop + 1] = [sum(map(len, frames))] * (stop - first)
        stored = np.frombuffer(b"".join(frames), dtype=np.uint8)
        files[path], digest = shard_file(spec.values, stored)
        files[offsets_path(path)], offsets = shard_file(spec.offsets, ends)
        records[name] = ShardFile(
            path=path, data_offset=spec.data_offset, nbytes=stored.size, checksum=digest,
            offsets_checksum=offsets,
        )  # fmt: skip
    shard = Shard(row_offset=0, rows=rows, sealed=True, files=records)
    seed = shardtable.chain_seed(COMPRESSED_UUID)
    table_records = shardtable.encode([shard], COMPRESSED_FIELDS, seed, where="example")
    files[shardtable.TABLE_NAME] = table_file(table_records)
    document = Manifest(
        format=manifest.FORMAT_NAME,
        version=manifest.FORMAT_VERSION,
        uuid=COMPRESSED_UUID,
        generation=len(COMPRESSED_COMMITS),
        rows=rows,
        shard_rows=schema.rows_per_shard(COMPRESSED_FIELDS, COMPRESSED_SHARD_BYTES),
        fields=COMPRESSED_FIELDS,
        labels={},
        attrs=COMPRESSED_ATTRS,
        table=TableRef(
            records=1, rows=rows, chain=shardtable.format_chain(int(table_records[-1]["chain"]))
        ),
        shards=(),
    )
    return Example(document, (shard,), files)


def frame_rows(frame: bytes, at: int, first: int, stop: int) -> list[tuple[int, int, str, str]]:
    """``(offset, size, bytes, meaning)`` of each part of the zstd frame of rows ``first`` to
    ``stop - 1``, which starts at file offset ``at`` (RFC 8878: magic number, frame header,
    blocks, content checksum).

    Raises:
        SpecError: the frame is not laid out as the example's prose says (single segment,
            no dictionary, a checksum).
    """
    (magic,) = np.frombuffer(frame[:4], dtype="<u4").tolist()
    descriptor = frame[4]
    size_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    if magic != ZSTD_MAGIC or not single or descriptor & 0x03 or not descriptor & 0x04:
        raise SpecError(f"the example's frame has descriptor {descriptor:#04x}, not 0x24-like")
    field_size = (1, 2, 4, 8)[size_flag]
    content = int.from_bytes(frame[5 : 5 + field_size], "little") + (256 if field_size == 2 else 0)
    what = f"rows {first} to {stop - 1}" if stop - first > 1 else f"row {first}"
    rows = [
        (at, 4, spaced_hex(frame[:4]), f"zstd magic number `{ZSTD_MAGIC:#010x}`, little-endian"),
        (at + 4, 1, f"{descriptor:02x}", "frame header descriptor: a single segment, a "
         f"{field_size}-byte content size, a content checksum, no dictionary"),
        (at + 5, field_size, spaced_hex(frame[5 : 5 + field_size]),
         f"`Frame_Content_Size` = {content}: the block's uncompressed bytes ({what})"),
    ]  # fmt: skip
    offset = 5 + field_size
    while True:
        header = int.from_bytes(frame[offset : offset + 3], "little")
        last, kind, size = header & 1, ZSTD_BLOCK_TYPES[(header >> 1) & 3], header >> 3
        stored = 1 if kind == "RLE" else size
        state = "the last block" if last else "a block"
        rows.append((at + offset, 3, spaced_hex(frame[offset : offset + 3]),
                     f"block header: {state}, {kind}, {size} bytes"))  # fmt: skip
        data = frame[offset + 3 : offset + 3 + stored]
        meaning = (
            f"{what} compressed: literals and sequences (RFC 8878, section 3.1.1.3), the "
            "compressor's choice of bytes"
            if kind == "compressed"
            else f"the {size} bytes of {what}, stored {kind}"
        )
        rows.append((at + offset + 3, stored, shortened_hex(data), meaning))
        offset += 3 + stored
        if last:
            break
    checksum = frame[offset : offset + 4]
    rows.append((at + offset, 4, spaced_hex(checksum), "content checksum: the low 4 bytes of the "
                 "XXH64 (seed 0) of the uncompressed bytes, little-endian"))  # fmt: skip
    if offset + 4 != len(frame):
        raise SpecError(f"the example's frame has {len(frame) - offset - 4} bytes after it")
    return rows


def compressed_layout_tables(example: Example) -> tuple[str, str]:
    """The layout tables of the values file (its blocks: stored, or frames) and of the offsets
    file (its block ends) of ``img`` in the compressed example's shard."""
    spec = example.manifest.fields["img"]
    file = example.shards[0].files["img"]
    content = example.files[file.path]
    offsets = example.files[file.offsets_path]
    ends = np.frombuffer(offsets[spec.offsets.data_offset :], dtype="<i8").tolist()
    rows = header_rows(spec.values, content)
    for number, (first, stop) in enumerate(compressed_blocks()):
        start, end = ends[first], ends[stop]
        data = content[spec.data_offset + start : spec.data_offset + end]
        if len(data) == (stop - first) * spec.row_bytes:  # a stored block
            frame = compressed_frame(data)
            rows.append((spec.data_offset + start, len(data), shortened_hex(data),
                         f"block {number}: the {len(data)} bytes of rows {first} to {stop - 1}, "
                         f"stored as they are: a zstd frame of them takes {len(frame)} bytes, "
                         f"more than 7/8 of {len(data)}"))  # fmt: skip
            continue
        rows += frame_rows(data, spec.data_offset + start, first, stop)
    entries = header_rows(spec.offsets, offsets)
    for entry, end in enumerate(ends):
        at = spec.offsets.data_offset + entry * 8
        meaning = f"`ends[{entry}]` = {end}"
        meaning += f": row {entry - 1}'s block ends at byte {end}" if entry else ": always 0"
        entries.append((at, 8, spaced_hex(offsets[at : at + 8]), meaning))
    return layout_markdown(rows), layout_markdown(entries)


def compressed_files_table(example: Example) -> str:
    """Every file of the compressed example: path, size, the shape its header states, its
    data as ``numpy.load`` reads it."""
    rows = []
    for path, content in example.files.items():
        array = np.load(io.BytesIO(content))
        if path == shardtable.TABLE_NAME:
            data = "the record below"
        elif array.dtype == np.uint8:
            data = f"{array.size} bytes: block 0 stored, then block 1's zstd frame"
        else:
            data = f"`{array.tolist()}`"
        rows.append((f"`{path}`", len(content), f"`{array.shape}`", data))
    return table(("Path", "Size", "Shape", "Data"), ("---", "---:", "---", "---"), rows)


def shard_line(shard: Shard) -> str:
    """``shard`` as :func:`memshard.manifest.dumps` writes it, on one line (section 6.2)."""
    return json.dumps(shard.model_dump(mode="json"), ensure_ascii=False, allow_nan=False) + "\n"


# -- rendering ------------------------------------------------------------------------------
def hexdump_line(offset: int, chunk: bytes) -> str:
    """One line of ``xxd`` output: offset, up to 16 bytes in groups of two, printable ASCII."""
    groups = " ".join(chunk[i : i + 2].hex() for i in range(0, len(chunk), 2))
    text = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
    return f"{offset:08x}: {groups:<39}  {text}\n"


def hexdump(data: bytes) -> str:
    """``data`` as ``xxd`` prints it, with each run of lines equal to the line before shown as
    one ``*`` line, as ``hexdump`` does. The last line is always shown.

    Example:
        >>> print(hexdump(b"\\x93NUMPY" + bytes(57) + b"\\n"), end="")
        00000000: 934e 554d 5059 0000 0000 0000 0000 0000  .NUMPY..........
        00000010: 0000 0000 0000 0000 0000 0000 0000 0000  ................
        *
        00000030: 0000 0000 0000 0000 0000 0000 0000 000a  ................
    """
    lines = []
    previous = None
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        last = offset + 16 >= len(data)
        if chunk == previous and not last:
            if lines[-1] != "*\n":
                lines.append("*\n")
            continue
        lines.append(hexdump_line(offset, chunk))
        previous = chunk
    return "".join(lines)


def shortened_hex(data: bytes) -> str:
    """Bytes as :func:`spaced_hex` shows them, the middle of more than 8 left out."""
    return (
        f"{spaced_hex(data[:4])} … {spaced_hex(data[-1:])}" if len(data) > 8 else spaced_hex(data)
    )


def spaced_hex(data: bytes) -> str:
    """Bytes as space-separated hex pairs, for the layout table."""
    return " ".join(f"{byte:02x}" for byte in data)


def layout_rows(spec: FieldSpec, content: bytes) -> list[tuple[int, int, str, str]]:
    """``(offset, size, bytes, meaning)`` for each part of one shard file."""
    rows = header_rows(spec, content)
    for row in range((len(content) - spec.data_offset) // spec.row_bytes):
        start = spec.data_offset + row * spec.row_bytes
        data = content[start : start + spec.row_bytes]
        values = np.frombuffer(data, dtype=spec.numpy_dtype).tolist()
        rows.append((start, spec.row_bytes, spaced_hex(data), f"row {row}: `{values}`"))
    return rows


def header_rows(spec: FieldSpec, content: bytes) -> list[tuple[int, int, str, str]]:
    """``(offset, size, bytes, meaning)`` for each part of one shard file's header."""
    preamble = npyheader.PREAMBLE_SIZE
    body = content[preamble : spec.data_offset].decode("ascii")
    dictionary = body.rstrip(" \n")
    padding = len(body) - len(dictionary) - 1
    magic, version = len(npyheader.MAGIC), len(npyheader.VERSION)
    rows = [
        (0, magic, spaced_hex(content[:magic]), "magic `\\x93NUMPY`"),
        (magic, version, spaced_hex(content[magic : preamble - 2]), "NPY format version 1.0"),
        (
            preamble - 2,
            2,
            spaced_hex(content[preamble - 2 : preamble]),
            f"header length {len(body)}, little-endian `uint16` (data offset minus {preamble})",
        ),
        (preamble, len(dictionary), f"`{dictionary}`", "the header dictionary"),
        (preamble + len(dictionary), padding, "20 ... 20", f"{padding} spaces"),
        (spec.data_offset - 1, 1, "0a", "newline: the header ends here"),
    ]
    return rows


def ragged_layout_tables(example: Example, name: str) -> tuple[str, str]:
    """The layout tables of the values file and of the offsets file of ragged field ``name``
    in the example's first shard."""
    file = example.shards[0].files[name]
    offsets = example.files[file.offsets_path]
    ends = np.frombuffer(offsets[OFFSETS.data_offset :], dtype=OFFSETS.numpy_dtype)
    spec = example.manifest.fields[name]
    values = values_rows(spec, example.files[file.path], ends.tolist())
    return layout_markdown(values), layout_markdown(offsets_rows(offsets, ends.tolist()))


def values_rows(
    spec: FieldSpec, content: bytes, ends: list[int]
) -> list[tuple[int, int, str, str]]:
    """``(offset, size, bytes, meaning)`` for the header of a ragged field's values file,
    then for the elements of each row (``ends``: the shard's offsets)."""
    rows = header_rows(spec.values, content)
    for row, (first, last) in enumerate(itertools.pairwise(ends)):
        start = spec.data_offset + first * spec.row_bytes
        data = content[start : spec.data_offset + last * spec.row_bytes]
        shown = np.frombuffer(data, dtype=spec.numpy_dtype).reshape((-1, *spec.shape)).tolist()
        where = f"elements {first} to {last - 1}" if last > first else "no element"
        rows.append((start, len(data), spaced_hex(data) or "—", f"row {row}, {where}: `{shown}`"))
    return rows


def offsets_rows(content: bytes, ends: list[int]) -> list[tuple[int, int, str, str]]:
    """``(offset, size, bytes, meaning)`` for the header of a ragged field's offsets file,
    then for each offset (``ends``): where it starts or ends a row."""
    spec = OFFSETS
    rows = header_rows(spec, content)
    last = len(ends) - 1
    for entry, end in enumerate(ends):
        start = spec.data_offset + entry * spec.row_bytes
        data = content[start : start + spec.row_bytes]
        marks = [f"row {entry - 1} ends"] if entry else []
        marks += [f"row {entry} starts"] if entry < last else []
        meaning = f"`offsets[{entry}]` = {end}: {' and '.join(marks)} at element {end}"
        if entry == last:
            meaning += f", the end of the shard's {end} elements"
        rows.append((start, len(data), spaced_hex(data), meaning))
    return rows


def table(header: Sequence[str], align: Sequence[str], rows: list[tuple[Any, ...]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` inside a cell is escaped, as GFM requires.

    Example:
        >>> print(table(["descr"], ["---"], [("`|b1`",)]), end="")
        | descr |
        | --- |
        | `\\|b1` |
    """
    lines = [header, align, *([str(cell).replace("|", "\\|") for cell in row] for row in rows)]
    return "".join(f"| {' | '.join(line)} |\n" for line in lines)


def layout_table(spec: FieldSpec, content: bytes) -> str:
    """The markdown table explaining every byte range of one shard file."""
    return layout_markdown(layout_rows(spec, content))


def layout_markdown(rows: list[tuple[int, int, str, str]]) -> str:
    """A layout table: ``(offset, size, bytes, meaning)`` rows as markdown."""
    return table(("Offset", "Size", "Bytes", "Meaning"), ("---:", "---:", "---", "---"), rows)


def files_table(example: Example) -> str:
    """The markdown table of the example's shard files: path, size and values."""
    rows = []
    for shard in example.shards:
        for name, record in shard.files.items():
            spec = example.manifest.fields[name]
            content = example.files[record.path]
            values = np.frombuffer(content[record.data_offset :], dtype=spec.numpy_dtype)
            shown = values.reshape((shard.rows, *spec.shape)).tolist()
            rows.append((f"`{record.path}`", len(content), f"`{shown}`"))
    return table(("Path", "Size", "Rows (values)"), ("---", "---:", "---"), rows)


def ragged_files_table(example: Example) -> str:
    """The markdown table of every file of the ragged example: path, size, the shape its
    header states and its data, as ``numpy.load`` reads them."""
    rows = []
    for path, content in example.files.items():
        array = np.load(io.BytesIO(content))
        data = f"`{array.tolist()}`" if path != shardtable.TABLE_NAME else "the records below"
        rows.append((f"`{path}`", len(content), f"`{array.shape}`", data))
    return table(("Path", "Size", "Shape", "Data"), ("---", "---:", "---", "---"), rows)


def dtype_table() -> str:
    """The markdown table of :data:`memshard.dtypes.SUPPORTED_DESCRS`."""
    found = sorted(
        (np.dtype(descr) for descr in dtypes.SUPPORTED_DESCRS),
        key=lambda dtype: (KIND_ORDER.index(dtype.kind), dtype.itemsize),
    )
    rows = [(f"`{dtype.str}`", f"`{dtype.name}`", dtype.itemsize) for dtype in found]
    return table(
        ("`dtype` (descr)", "numpy name", "Bytes per element"), ("---", "---", "---:"), rows
    )


def show_value(value: Any) -> str:
    """A constant as the limits table shows it (powers of two spelled out).

    Example:
        >>> show_value(1 << 20), show_value("shards")
        ('1048576 (2^20)', '`shards`')
    """
    if isinstance(value, re.Pattern):
        return f"`{value.pattern}`"
    if isinstance(value, bytes):
        return f"`{value!r}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, int) and value >= 1024 and value & (value - 1) == 0:
        return f"{value} (2^{value.bit_length() - 1})"
    return str(value)


def limits_table() -> str:
    """The markdown table of the named constants the specification relies on."""
    rows = [
        (f"`{module.__name__}.{name}`", show_value(getattr(module, name)), meaning)
        for module, name, meaning in LIMITS
    ]
    properties = manifest.json_schema()["properties"]
    for key in ("version", "uuid"):
        rows.append(
            (f"`Manifest.{key}` pattern", f"`{properties[key]['pattern']}`", f"the `{key}` key")
        )
    return table(("Constant", "Value", "Meaning"), ("---", "---", "---"), rows)


def fenced(language: str, text: str) -> str:
    """``text`` (ending in a newline) as a fenced markdown code block."""
    return f"```{language}\n{text}```\n"


def generated_blocks() -> dict[str, str]:
    """Every generated block of ``FORMAT.md``, by name."""
    example = build_example()
    first = example.shards[0].files["x"]
    content = example.files[first.path]
    ragged = build_ragged_example()
    values_layout, offsets_layout = ragged_layout_tables(ragged, "tokens")
    compressed = build_compressed_example()
    frames_layout, ends_layout = compressed_layout_tables(compressed)
    frames_file = compressed.shards[0].files["img"]
    frames = compressed.files[frames_file.path][frames_file.data_offset :]
    return {
        "dtypes": dtype_table(),
        "limits": limits_table(),
        "example-files": files_table(example),
        "shard-hexdump": fenced("text", hexdump(content)),
        "shard-layout": layout_table(example.manifest.fields["x"], content),
        "manifest": fenced("json", manifest.dumps(example.manifest).decode("utf-8")),
        "unsealed-shard": fenced("json", shard_line(unsealed_last_shard())),
        "table-header": fenced("text", table_dictionary(example) + "\n"),
        "table-records": records_table(example),
        "ragged-files": ragged_files_table(ragged),
        "ragged-values-layout": values_layout,
        "ragged-offsets-layout": offsets_layout,
        "ragged-table-header": fenced("text", table_dictionary(ragged) + "\n"),
        "ragged-table-records": records_table(ragged),
        "ragged-manifest": fenced("json", manifest.dumps(ragged.manifest).decode("utf-8")),
        "compressed-files": compressed_files_table(compressed),
        "compressed-frames-hexdump": fenced("text", hexdump(frames)),
        "compressed-frames-layout": frames_layout,
        "compressed-offsets-layout": ends_layout,
        "compressed-table-records": records_table(compressed),
        "compressed-manifest": fenced("json", manifest.dumps(compressed.manifest).decode("utf-8")),
    }


def schema_text() -> str:
    """The content of ``manifest.schema.json``."""
    return json.dumps(manifest.json_schema(), indent=2, sort_keys=True) + "\n"


# -- the blocks of FORMAT.md ----------------------------------------------------------------
def markers(name: str) -> tuple[str, str]:
    """The begin and end marker lines of block ``name``."""
    return f"<!-- BEGIN GENERATED: {name} -->\n", f"<!-- END GENERATED: {name} -->"


def block_span(text: str, name: str) -> tuple[int, int]:
    """Where the body of block ``name`` starts and ends in ``text``.

    Raises:
        SpecError: the block's markers are missing, repeated or out of order.
    """
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SpecError(f"{FORMAT_FILE}: expected one {begin.strip()!r} and one {end!r}")
    start = text.index(begin) + len(begin)
    stop = text.index(end)
    if stop < start:
        raise SpecError(f"{FORMAT_FILE}: {end!r} comes before {begin.strip()!r}")
    return start, stop


def block_body(text: str, name: str) -> str:
    """The current content of block ``name`` in ``text``."""
    start, stop = block_span(text, name)
    return text[start:stop]


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with the body of every block replaced by ``blocks[name]``.

    Raises:
        SpecError: ``text`` has a block the generator does not know, or lacks one it does.
    """
    found = set(BLOCK_PATTERN.findall(text))
    if found != set(blocks):
        raise SpecError(
            f"{FORMAT_FILE}: generated blocks {sorted(found)} do not match the generator's "
            f"{sorted(blocks)}"
        )
    for name, body in blocks.items():
        start, stop = block_span(text, name)
        text = text[:start] + body + text[stop:]
    return text


# -- checking and writing -------------------------------------------------------------------
def read_text(path: Path) -> str | None:
    """The content of ``path`` with line endings untouched, or None if it does not exist."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def schema_update(spec_dir: Path) -> Update | None:
    """The update ``manifest.schema.json`` needs, if it is stale."""
    path = spec_dir / SCHEMA_FILE
    current, fresh = read_text(path), schema_text()
    if current == fresh:
        return None
    reason = "missing" if current is None else "differs from memshard.manifest.json_schema()"
    return Update(path, fresh, [reason])


def format_update(spec_dir: Path) -> Update | None:
    """The update ``FORMAT.md`` needs, if any generated block is stale.

    Raises:
        SpecError: ``FORMAT.md`` is missing or its markers are broken.
    """
    path = spec_dir / FORMAT_FILE
    current = read_text(path)
    if current is None:
        raise SpecError(f"{path}: missing; it is written by hand, only its blocks are generated")
    blocks = generated_blocks()
    fresh = replace_blocks(current, blocks)
    stale = [name for name, body in blocks.items() if block_body(current, name) != body]
    if not stale:
        return None
    return Update(path, fresh, [f"generated block {name!r} is out of date" for name in stale])


def stale_files(spec_dir: Path) -> list[Update]:
    """Every spec file under ``spec_dir`` whose generated content is out of date."""
    updates = (schema_update(spec_dir), format_update(spec_dir))
    return [update for update in updates if update is not None]


def write_updates(updates: Sequence[Update]) -> None:
    """Write each update's new content and say so."""
    for update in updates:
        with open(update.path, "w", encoding="utf-8", newline="") as handle:
            handle.write(update.text)
        print(f"wrote {os.path.relpath(update.path)} ({'; '.join(update.reasons)})")


def report_stale(updates: Sequence[Update]) -> int:
    """Print what is stale; return the exit status of ``--check``."""
    for update in updates:
        for reason in update.reasons:
            print(f"stale: {os.path.relpath(update.path)}: {reason}", file=sys.stderr)
    if updates:
        print("run: python spec/generate.py", file=sys.stderr)
    return 1 if updates else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Regenerate the generated parts of spec/.")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything is stale"
    )
    arguments = parser.parse_args(argv)
    try:
        updates = stale_files(SPEC_DIR)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if arguments.check:
        return report_stale(updates)
    write_updates(updates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
