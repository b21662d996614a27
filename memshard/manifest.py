"""The manifest: schema (pydantic), strict JSON load and deterministic dump.

``manifest.json`` is the single source of truth of a dataset: which fields exist, which shard
files hold which rows, and how many rows are committed. The rules enforced here are the ones
``spec/FORMAT.md`` lists under "Manifest" and "What makes a dataset invalid".
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from typing import Any, Literal, cast

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import npyheader
from .checksum import CHECKSUM_PATTERN, StreamingChecksum
from .codecs import CODEC_NAMES, MAX_BLOCK_BYTES, MIN_BLOCK_BYTES, codec_parameters
from .dtypes import SUPPORTED_DESCRS
from .errors import (
    ManifestError,
    ManifestTooLargeError,
    MemshardError,
    SchemaError,
    UnsupportedVersionError,
)
from .layout import FIELD_NAME_PATTERN, SHARD_PATH_PATTERN, is_safe_shard_path
from .smallfile import open_regular, read_small_file

FORMAT_NAME: Literal["memshard"] = "memshard"
#: The format version this library writes; it reads every ``1.x`` and ``2.x``. Version 1.1
#: added ``prefix_checksum`` to the files of the unsealed shard; 2.0 moved the sealed shards
#: from the manifest into the shard table (:mod:`memshard.shardtable`); 2.1 added ragged
#: (variable-length) fields; 2.2 compressed fields.
FORMAT_VERSION = "2.2"
FORMAT_MAJOR, FORMAT_MINOR = (int(part) for part in FORMAT_VERSION.split("."))
#: The newest minor version this library implements of each major version it reads.
KNOWN_MINORS = {1: 1, 2: 2}
#: The first version whose unsealed shard files carry ``prefix_checksum``.
PREFIX_CHECKSUM_VERSION = (1, 1)
#: The first major version with a shard table.
TABLE_MAJOR = 2
#: The first version with ragged fields (``kind: "ragged"``, ``shard_bytes``).
RAGGED_VERSION = (2, 1)
#: The first version with compressed fields (``codec``).
CODEC_VERSION = (2, 2)
#: What the offsets file of a ragged or compressed field holds: int64 values, ``rows + 1``
#: of them (two per row, of a compressed ragged field).
OFFSETS_DTYPE = "<i8"
#: The dtype of a compressed field's values file: the bytes of its blocks.
BLOCKS_DTYPE = "|u1"
#: The suffix that turns a ragged field's values file name into its offsets file name.
OFFSETS_SUFFIX = ".offsets.npy"
VERSION_PATTERN = re.compile(r"[0-9]{1,4}\.[0-9]{1,4}", re.ASCII)
#: A manifest larger than this is refused before it is parsed.
MAX_MANIFEST_BYTES = 256 << 20
#: Most dimensions a sample may have (numpy allows 64 in all, one is the row axis).
MAX_SAMPLE_NDIM = 32
#: Largest row count, row offset or byte size the manifest may state.
MAX_COUNT = 2**62
#: Most labels in one vocabulary.
MAX_LABELS = 1 << 24
#: How many validation problems an error message lists.
MAX_REPORTED_PROBLEMS = 5

Count = Field(ge=0, le=MAX_COUNT)
#: The top-level member holding the manifest's own checksum (section 6.5 of the spec).
CHECKSUM_KEY = "checksum"
#: How a manifest with a checksum ends: the checksum value, quoted, then a newline, ``}`` and a
#: newline. The checksum covers every byte before the value's opening quote.
_CHECKSUM_TAIL = re.compile(rb'"(xxh3_64:[0-9a-f]{16})"\n\}\n')
_CHECKSUM_TAIL_BYTES = 29


class StrictModel(BaseModel):
    """Frozen, strict (no coercion), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _is_none(value: Any) -> bool:
    return value is None


def _kind_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(
        {
            "description": "how the field's rows are stored: 'fixed' (the default) or, from "
            "format 2.1, 'ragged' (spec section 6.3.7)",
            "enum": ["fixed", "ragged"],
            "type": "string",
        }
    )


def _codec_schema(schema: dict[str, Any]) -> None:
    schema.pop("default", None)
    schema["description"] = (
        "how the field's data is compressed: left out (no compression, the default) or, from "
        "format 2.2, the codec (spec sections 5.7 and 6.3.7)"
    )


class Codec(StrictModel):
    """A compressed field's codec: its ``name`` (one of
    :data:`~memshard.codecs.CODEC_NAMES`), its parameters ``params`` (all of them, checked),
    and the uncompressed bytes a block of rows aims at, ``block_bytes`` (spec section 5.7)."""

    name: str = Field(json_schema_extra={"enum": list(CODEC_NAMES)})
    params: dict[str, int | str]
    block_bytes: int = Field(ge=MIN_BLOCK_BYTES, le=MAX_BLOCK_BYTES)

    @field_validator("name", mode="before")
    @classmethod
    def _known_name(cls, value: Any) -> Any:
        if value not in CODEC_NAMES:
            raise ValueError(
                f"codec {value!r:.60} is not one this reader knows ({', '.join(CODEC_NAMES)}); "
                "it needs a newer memshard"
            )
        return value

    @model_validator(mode="after")
    def _known_params(self) -> Codec:
        try:
            complete = codec_parameters(self.name, self.params, where="codec")
        except SchemaError as exc:
            raise ValueError(str(exc).removeprefix("codec: ")) from None
        if complete != self.params:
            raise ValueError(f"codec {self.name!r}: params must state every parameter: {complete}")
        return self


class FieldSpec(StrictModel):
    """A field: the dtype (numpy descr) and the shape of one sample.

    A ragged field (``kind == "ragged"``) has rows of varying length along their first axis;
    ``shape`` is then the fixed *tail* after it (``()`` for rows of shape ``(n,)``), and
    :attr:`row_bytes` the bytes of one element, one step along the varying axis.
    """

    dtype: str = Field(json_schema_extra={"enum": cast(Any, sorted(SUPPORTED_DESCRS))})
    shape: tuple[int, ...] = Field(
        max_length=MAX_SAMPLE_NDIM, json_schema_extra={"items": {"type": "integer", "minimum": 1}}
    )

    # Keys every format 2 reader knows, so that a later minor version can give a field another
    # layout and be refused clearly by readers that cannot read it, never misread (spec
    # section 6.3.7). Left out when they hold the only value this version knows.
    kind: Literal["fixed", "ragged"] = Field(
        default="fixed",
        exclude_if=lambda value: value == "fixed",
        json_schema_extra=_kind_schema,
        repr=False,
    )
    codec: Codec | None = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_codec_schema, repr=False
    )

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: Any) -> Any:
        if value not in ("fixed", "ragged"):
            raise ValueError(
                f"field kind {value!r:.40} is not one this reader knows ('fixed', 'ragged'); it "
                "needs a newer memshard"
            )
        return value

    @field_validator("codec", mode="before")
    @classmethod
    def _known_codec(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            if value["name"] not in CODEC_NAMES:
                raise ValueError(
                    f"codec {value['name']!r:.60} is not one this reader knows "
                    f"({', '.join(CODEC_NAMES)}); it needs a newer memshard"
                )
        elif value is not None and not isinstance(value, Codec):
            raise ValueError(
                f"codec {value!r:.60} is not one this reader knows (an object naming one of "
                f"{', '.join(CODEC_NAMES)}); it needs a newer memshard"
            )
        return value

    @field_validator("dtype")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in SUPPORTED_DESCRS:
            raise ValueError(
                f"dtype {value!r} is not supported; expected one of {sorted(SUPPORTED_DESCRS)}"
            )
        return value

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(dim < 1 or dim > MAX_COUNT for dim in value):
            raise ValueError(
                f"sample shape {list(value)} must have dimensions from 1 to {MAX_COUNT}"
            )
        return value

    # Plain properties over cached module functions, not cached_property: a cached value in
    # the instance would take part in model equality.
    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The dtype as a :class:`numpy.dtype`."""
        return _numpy_dtype(self.dtype)

    @property
    def ragged(self) -> bool:
        """Whether the field's rows vary in length (``kind == "ragged"``)."""
        return self.kind == "ragged"

    @property
    def row_bytes(self) -> int:
        """Bytes one sample occupies; of a ragged field, bytes of one element of a row."""
        return _numpy_dtype(self.dtype).itemsize * math.prod(self.shape)

    @property
    def compressed(self) -> bool:
        """Whether the field's rows are stored compressed, in blocks (``codec`` is set)."""
        return self.codec is not None

    @property
    def has_offsets(self) -> bool:
        """Whether each shard has an offsets file of this field (ragged or compressed)."""
        return self.kind == "ragged" or self.codec is not None

    @property
    def values(self) -> FieldSpec:
        """What the field's values file holds, as a fixed field's rows: a compressed field's
        holds bytes (its blocks), a ragged field's rows of one element each; a plain fixed
        field is its own."""
        if self.codec is not None:
            return _values_spec(BLOCKS_DTYPE, ())
        return self if self.kind != "ragged" else _values_spec(self.dtype, self.shape)

    @property
    def element(self) -> FieldSpec:
        """What one row (fixed field) or one element (ragged field) is when read: the field
        without compression (``kind`` fixed)."""
        return _values_spec(self.dtype, self.shape)

    @property
    def offsets(self) -> FieldSpec:
        """What the field's offsets file holds (:attr:`has_offsets` fields): ``rows + 1``
        int64 values, or pairs of them for a compressed ragged field (element and block
        ends; spec section 5.7)."""
        both = self.codec is not None and self.kind == "ragged"
        return _values_spec(OFFSETS_DTYPE, (2,) if both else ())

    @property
    def data_offset(self) -> int:
        """Where the data starts in every values file of this field."""
        values = self.values
        return _data_offset(values.dtype, values.shape)


@lru_cache(maxsize=256)
def _numpy_dtype(descr: str) -> np.dtype[Any]:
    return np.dtype(descr)


@lru_cache(maxsize=256)
def _values_spec(dtype: str, shape: tuple[int, ...]) -> FieldSpec:
    return FieldSpec(dtype=dtype, shape=shape)


@lru_cache(maxsize=256)
def _data_offset(descr: str, shape: tuple[int, ...]) -> int:
    return npyheader.data_offset(np.dtype(descr), shape)


def _prefix_checksum_schema(schema: dict[str, Any]) -> None:
    """A string when present; never null (absent instead)."""
    schema.clear()
    schema.update(
        {
            "description": "xxh3-64 of the committed bytes of a file of the unsealed shard "
            "(format 1.1; spec section 6.3.10)",
            "pattern": f"^{CHECKSUM_PATTERN.pattern}$",
            "type": "string",
        }
    )


def _offsets_checksum_schema(schema: dict[str, Any]) -> None:
    """A string when present; never null (absent instead)."""
    schema.clear()
    schema.update(
        {
            "description": "xxh3-64 of a ragged field's offsets file: of all its data in a "
            "sealed shard (offsets_checksum), of its committed bytes in the unsealed one "
            "(offsets_prefix_checksum); format 2.1, spec section 6.3.10",
            "pattern": f"^{CHECKSUM_PATTERN.pattern}$",
            "type": "string",
        }
    )


def offsets_path(values_path: str) -> str:
    """The offsets file of the ragged field whose values file is ``values_path``.

    Example:
        >>> offsets_path("shards/5f0c-00000003.tokens.npy")
        'shards/5f0c-00000003.tokens.offsets.npy'
    """
    return values_path.removesuffix(".npy") + OFFSETS_SUFFIX


def offsets_record(file: ShardFile, spec: FieldSpec, rows: int, *, sealed: bool) -> ShardFile:
    """The record of the offsets file beside ``file``, the values file of field ``spec``
    (ragged or compressed) in a shard of ``rows`` rows, as of any shard file (its checksum, or
    its prefix checksum)."""
    prefix = None if sealed else file.offsets_prefix_checksum
    offsets = spec.offsets
    return ShardFile(
        path=file.offsets_path,
        data_offset=offsets.data_offset,
        nbytes=(rows + 1) * offsets.row_bytes,
        checksum=file.offsets_checksum if sealed else None,
        **({} if prefix is None else {"prefix_checksum": prefix}),
    )


def shard_files(
    spec: FieldSpec, file: ShardFile, rows: int, *, sealed: bool
) -> list[tuple[FieldSpec, ShardFile, int]]:
    """Each file a field has in a shard of ``rows`` rows: ``(what it holds, its record, its
    leading dimension)``; a ragged or compressed field's values file, then its offsets
    file."""
    if not spec.has_offsets:
        return [(spec, file, rows)]
    return [
        (spec.values, file, file.nbytes // spec.values.row_bytes),
        (spec.offsets, offsets_record(file, spec, rows, sealed=sealed), rows + 1),
    ]


class ShardFile(StrictModel):
    """One field's file within a shard."""

    path: str = Field(json_schema_extra={"pattern": f"^{SHARD_PATH_PATTERN.pattern}$"})
    data_offset: int = Field(ge=npyheader.DATA_ALIGN, le=npyheader.MAX_DATA_OFFSET)
    nbytes: int = Count
    checksum: str | None = Field(
        json_schema_extra={
            "anyOf": [
                {"type": "string", "pattern": f"^{CHECKSUM_PATTERN.pattern}$"},
                {"type": "null"},
            ]
        }
    )

    @field_validator("path")
    @classmethod
    def _inside_dataset(cls, value: str) -> str:
        if not is_safe_shard_path(value):
            raise ValueError(
                f"shard path {value!r} must be a plain file name under shards/ ending in .npy "
                "(no absolute paths, '..', backslashes or NUL)"
            )
        return value

    # Left out when absent, so that a sealed file (and any file of a version 1.0 manifest) is
    # written exactly as version 1.0 wrote it.
    prefix_checksum: str | None = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_prefix_checksum_schema
    )

    # A ragged field's offsets file (the values file's path, ``.npy`` replaced by
    # ``.offsets.npy``) has checksums of its own; left out for a fixed field's file.
    offsets_checksum: str | None = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_offsets_checksum_schema
    )
    offsets_prefix_checksum: str | None = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_offsets_checksum_schema
    )

    @property
    def offsets_path(self) -> str:
        """The path of a ragged field's offsets file beside this values file."""
        return offsets_path(self.path)

    @field_validator("checksum", "prefix_checksum", "offsets_checksum", "offsets_prefix_checksum")
    @classmethod
    def _checksum_form(cls, value: str | None) -> str | None:
        if value is not None and not CHECKSUM_PATTERN.fullmatch(value):
            raise ValueError(f"checksum {value!r} is not of the form 'xxh3_64:<16 hex digits>'")
        return value

    @field_validator(
        "prefix_checksum", "offsets_checksum", "offsets_prefix_checksum", mode="before"
    )
    @classmethod
    def _present_means_a_string(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must be a checksum string when present (leave the key out, not null)")
        return value


class Shard(StrictModel):
    """A run of consecutive rows stored as one file per field."""

    row_offset: int = Count
    rows: int = Field(ge=1, le=MAX_COUNT)
    sealed: bool
    files: dict[str, ShardFile]


class TableRef(StrictModel):
    """What a format 2 manifest states of the shard table: how many records are committed,
    the rows they hold, and the chain value of the last one (null when there is none)."""

    records: int = Count
    rows: int = Count
    chain: str | None = Field(
        json_schema_extra={
            "anyOf": [
                {"type": "string", "pattern": f"^{CHECKSUM_PATTERN.pattern}$"},
                {"type": "null"},
            ]
        }
    )

    @field_validator("chain")
    @classmethod
    def _chain_form(cls, value: str | None) -> str | None:
        if value is not None and not CHECKSUM_PATTERN.fullmatch(value):
            raise ValueError(f"chain {value!r} is not of the form 'xxh3_64:<16 hex digits>'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TableRef:
        if (self.records == 0) != (self.chain is None) or (self.records == 0) != (self.rows == 0):
            raise ValueError(
                "records, rows and chain must be 0, 0 and null together (an empty table)"
            )
        return self


def _table_schema(schema: dict[str, Any]) -> None:
    """An object when present; never null (absent instead, in format 1)."""
    (reference,) = [option for option in schema.pop("anyOf") if "$ref" in option]
    schema.pop("default", None)
    schema.update(reference)
    schema["description"] = "the shard table (format 2; spec section 6.6); absent in format 1"


def _shard_bytes_schema(schema: dict[str, Any]) -> None:
    """An integer when present; never null (absent instead)."""
    schema.clear()
    schema.update(
        {
            "description": "bytes of data at which a shard rolls over; present exactly when a "
            "field is ragged (format 2.1; spec section 6.3.13)",
            "maximum": MAX_COUNT,
            "minimum": 1,
            "type": "integer",
        }
    )


class Manifest(StrictModel):
    """The whole manifest. Construct through :func:`loads` or :func:`load` to get typed errors."""

    format: Literal["memshard"]
    version: str = Field(pattern=r"^[0-9]{1,4}\.[0-9]{1,4}$")
    uuid: str = Field(pattern=r"^[0-9a-f]{32}$")
    generation: int = Count
    rows: int = Count
    shard_rows: int = Field(ge=1, le=MAX_COUNT)
    fields: dict[str, FieldSpec] = Field(
        min_length=1,
        json_schema_extra={"propertyNames": {"pattern": f"^{FIELD_NAME_PATTERN.pattern}$"}},
    )
    labels: dict[str, tuple[str, ...]]
    attrs: dict[str, Any]
    #: Format 2.1, with ragged fields only: the bytes of data at which a shard rolls over,
    #: which their writers need since a shard's rows vary in size. Left out otherwise.
    shard_bytes: int | None = Field(
        default=None, ge=1, le=MAX_COUNT, exclude_if=_is_none, json_schema_extra=_shard_bytes_schema
    )
    #: Format 2: the sealed shards, in the shard table. Left out in format 1.
    table: TableRef | None = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_table_schema
    )
    #: Format 1: every shard. Format 2: the shards after the table's (the unsealed last one).
    shards: tuple[Shard, ...]

    @field_validator("fields")
    @classmethod
    def _field_names(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        for name in value:
            if not FIELD_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"field name {name!r} is invalid")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        _check_labels(self)
        _check_field_keys(self)
        _check_shards(self)
        return self


def _check_labels(manifest: Manifest) -> None:
    for name, vocabulary in manifest.labels.items():
        spec = manifest.fields.get(name)
        if spec is None:
            raise ValueError(f"labels.{name}: no field named {name!r}")
        if spec.numpy_dtype.kind not in "iu":
            raise ValueError(f"labels.{name}: field dtype {spec.dtype!r} is not an integer dtype")
        if spec.ragged:
            # Writers check appended values against a vocabulary only in fixed fields.
            raise ValueError(f"labels.{name}: the field is ragged; labels need a fixed field")
        if len(vocabulary) > MAX_LABELS:
            raise ValueError(f"labels.{name}: {len(vocabulary)} labels, at most {MAX_LABELS}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"labels.{name}: labels are not unique")


def version_numbers(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a ``"MAJOR.MINOR"`` version string."""
    major, minor = version.split(".")
    return int(major), int(minor)


def is_newer_version(version: str) -> bool:
    """Whether ``version`` is newer than this library knows of its major version (or of a
    newer major), which it must then not rewrite (spec section 3); an older version is written
    back as :data:`FORMAT_VERSION` (upgraded)."""
    major, minor = version_numbers(version)
    return major > FORMAT_MAJOR or minor > KNOWN_MINORS.get(major, FORMAT_MINOR)


def _check_field_keys(manifest: Manifest) -> None:
    """``kind`` and ``codec`` came in format 2.0 (a 1.x manifest must not have them), ragged
    fields and ``shard_bytes`` in 2.1, codecs in 2.2; ``shard_bytes`` is there exactly when a
    field is ragged."""
    version = version_numbers(manifest.version)
    ragged = [name for name, spec in manifest.fields.items() if spec.ragged]
    if version[0] < TABLE_MAJOR:
        for name, spec in manifest.fields.items():
            for key in sorted({"kind", "codec"} & spec.model_fields_set):
                raise ValueError(f"fields.{name}.{key}: not a key of format version 1.x")
    if ragged and version < RAGGED_VERSION:
        raise ValueError(
            f"fields.{ragged[0]}.kind: 'ragged' came in format version 2.1, the manifest "
            f"states {manifest.version}"
        )
    compressed = [name for name, spec in manifest.fields.items() if spec.compressed]
    if compressed and version < CODEC_VERSION:
        raise ValueError(
            f"fields.{compressed[0]}.codec: compression came in format version 2.2, the "
            f"manifest states {manifest.version}"
        )
    if ragged and manifest.shard_bytes is None:
        raise ValueError(f"shard_bytes: required when a field is ragged ({ragged[0]!r} is)")
    if not ragged and manifest.shard_bytes is not None:
        raise ValueError("shard_bytes: only a dataset with a ragged field has it")


def _check_table(manifest: Manifest) -> int:
    """The table must be present exactly in format 2; return the rows it holds."""
    major = version_numbers(manifest.version)[0]
    if major >= TABLE_MAJOR and manifest.table is None:
        raise ValueError(f"table: required from format version {TABLE_MAJOR}.0")
    if major < TABLE_MAJOR and manifest.table is not None:
        raise ValueError(f"table: not a key of format version {major}.x")
    if manifest.table is None:
        return 0
    for position, shard in enumerate(manifest.shards):
        if shard.sealed:
            raise ValueError(
                f"shards[{position}].sealed is true; from format version {TABLE_MAJOR}.0 a "
                "sealed shard belongs in the shard table"
            )
    return manifest.table.rows


def _check_shards(manifest: Manifest) -> None:
    expected_offset = _check_table(manifest)
    has_prefix_checksums = version_numbers(manifest.version) >= PREFIX_CHECKSUM_VERSION
    seen_paths: set[str] = set()
    last = len(manifest.shards) - 1
    for position, shard in enumerate(manifest.shards):
        where = f"shards[{position}]"
        if shard.row_offset != expected_offset:
            raise ValueError(
                f"{where}.row_offset is {shard.row_offset}, expected {expected_offset} "
                "(shards must cover the rows in order with no gap or overlap)"
            )
        expected_offset += shard.rows
        if not shard.sealed and position != last:
            raise ValueError(f"{where}.sealed is false, but only the last shard may be unsealed")
        if not shard.sealed and shard.rows > manifest.shard_rows:
            raise ValueError(
                f"{where}.rows is {shard.rows}, more than shard_rows ({manifest.shard_rows}) "
                "in an unsealed shard"
            )
        if shard.files.keys() != manifest.fields.keys():
            raise ValueError(
                f"{where}.files has fields {sorted(shard.files)}, "
                f"expected {sorted(manifest.fields)}"
            )
        for name, file in shard.files.items():
            spec = manifest.fields[name]
            check_file_record(f"{where}.files.{name}", file, spec, shard)
            _check_prefix_checksum(f"{where}.files.{name}", file, shard, has_prefix_checksums)
            paths = {f"{where}.files.{name}.path": file.path}
            if spec.has_offsets:  # its offsets file's path is used too, and must be no other's
                paths[f"{where}.files.{name}.path (its offsets file)"] = file.offsets_path
            for key, path in paths.items():
                if path in seen_paths:
                    raise ValueError(f"{key} {path!r} is used twice")
                seen_paths.add(path)
    if expected_offset != manifest.rows:
        raise ValueError(f"rows is {manifest.rows}, but the shards hold {expected_offset} rows")


def check_file_record(where: str, file: ShardFile, spec: FieldSpec, shard: Shard) -> None:
    """Check one file record of ``shard`` against its field (raise ``ValueError``); only the
    shard's ``rows`` and ``sealed`` are used."""
    if file.data_offset != spec.data_offset:
        raise ValueError(
            f"{where}.data_offset is {file.data_offset}, expected {spec.data_offset} "
            f"for dtype {spec.dtype!r} and shape {list(spec.shape)}"
        )
    _check_offsets_keys(where, file, spec, shard)
    if spec.has_offsets:
        if not is_safe_shard_path(file.offsets_path):
            raise ValueError(
                f"{where}.path {file.path!r}: the path of its offsets file, "
                f"{file.offsets_path!r}, is not a valid shard path (too long)"
            )
        if file.nbytes % spec.values.row_bytes:
            raise ValueError(
                f"{where}.nbytes is {file.nbytes}, not a whole number of elements of "
                f"{spec.values.row_bytes} bytes"
            )
    elif file.nbytes != shard.rows * spec.row_bytes:
        raise ValueError(
            f"{where}.nbytes is {file.nbytes}, expected {shard.rows * spec.row_bytes} "
            f"({shard.rows} rows of {spec.row_bytes} bytes)"
        )
    if shard.sealed and file.checksum is None:
        raise ValueError(f"{where}.checksum is missing on a sealed shard")
    if not shard.sealed and file.checksum is not None:
        raise ValueError(f"{where}.checksum must be null on an unsealed shard")


def _check_offsets_keys(where: str, file: ShardFile, spec: FieldSpec, shard: Shard) -> None:
    """A ragged or compressed field's file states its offsets file's checksum (sealed) or
    prefix checksum (unsealed); a plain fixed field's states neither."""
    wanted = "offsets_checksum" if shard.sealed else "offsets_prefix_checksum"
    for key in ("offsets_checksum", "offsets_prefix_checksum"):
        present = getattr(file, key) is not None
        if present and (not spec.has_offsets or key != wanted):
            what = "this shard's file" if spec.has_offsets else "an uncompressed fixed field's file"
            raise ValueError(f"{where}.{key}: not a key of {what}")
        if not present and spec.has_offsets and key == wanted:
            why = "ragged" if spec.ragged else "compressed"
            raise ValueError(f"{where}.{key} is missing (the field is {why})")


def _check_prefix_checksum(where: str, file: ShardFile, shard: Shard, expected: bool) -> None:
    if file.prefix_checksum is not None and not expected:
        raise ValueError(
            f"{where}.prefix_checksum: not a key of format version 1.0 (it came in 1.1)"
        )
    if shard.sealed and file.prefix_checksum is not None:
        raise ValueError(f"{where}.prefix_checksum must be left out on a sealed shard")
    if not shard.sealed and expected and file.prefix_checksum is None:
        raise ValueError(
            f"{where}.prefix_checksum is missing on an unsealed shard (required from format "
            "version 1.1)"
        )


def refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook`` for memshard's JSON documents (manifests, part
    records): an object with two members of one name is refused (``ValueError``)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes, *, where: str) -> Manifest:
    """Parse and validate manifest bytes.

    The JSON must be strict: UTF-8, no duplicate keys, no ``NaN``/``Infinity`` literals. A
    manifest of an unknown major version is refused before anything else is checked; one of a
    newer minor version is read with the keys this library does not know ignored.

    Parameters:
        data: the content of ``manifest.json``.
        where: the path named in error messages.

    Raises:
        ManifestError: naming ``where`` and the offending key.
        UnsupportedVersionError: the major version is neither ``1`` nor ``2``.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestTooLargeError(
            f"{where}: {len(data):,} bytes, more than the {MAX_MANIFEST_BYTES:,} allowed"
        )
    try:
        raw = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=refuse_duplicate_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{where}: not strict JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: the top level must be an object, got {type(raw).__name__}")
    newer = _check_version(raw, where)
    if CHECKSUM_KEY in raw:
        _check_own_checksum(data, raw.pop(CHECKSUM_KEY), where)
        data = json.dumps(raw).encode("utf-8")
    if newer:
        data = json.dumps(_known_keys_only(raw)).encode("utf-8")
    try:
        return Manifest.model_validate_json(data, strict=True)
    except ValidationError as exc:
        raise ManifestError(f"{where}: {describe_validation_error(exc)}") from None


def own_checksum(prefix: bytes) -> str:
    """The manifest checksum for the bytes before the checksum value (see :func:`dumps`)."""
    state = StreamingChecksum()
    state.update(prefix)
    return state.digest()


def _check_own_checksum(data: bytes, recorded: Any, where: str) -> None:
    """The manifest's bytes must end with the recorded checksum and hash to it."""
    tail = _checksum_tail(data)
    if not isinstance(recorded, str) or tail is None or tail.group(1).decode() != recorded:
        raise ManifestError(
            f"{where}: checksum: must be the last member, written as "
            f'"checksum": "xxh3_64:<16 hex digits>" followed by a newline, }} and a newline '
            f"(got {recorded!r:.80})"
        )
    actual = own_checksum(data[: tail.start()])
    if actual != recorded:
        raise ManifestError(
            f"{where}: checksum: the manifest's bytes hash to {actual}, it records {recorded} "
            "(the manifest is corrupt)"
        )


def change_token(path: str) -> tuple[object, ...] | None:
    """What identifies the content of the manifest file at ``path``, cheaply: its size and
    its own checksum (the last bytes of the file), or, for a manifest without one, its inode,
    times and size. ``None`` when it cannot be read (the caller loads it to get the error).

    Unlike times, the checksum changes with every commit even on a file system with coarse
    timestamps that reuses inode numbers.
    """
    try:
        fd = open_regular(path, what="the manifest", error=ManifestError)
    except (OSError, MemshardError):  # a link, a FIFO, a directory: load() says which
        return None
    try:
        info = os.fstat(fd)
        if info.st_size >= _CHECKSUM_TAIL_BYTES:
            tail = os.pread(fd, _CHECKSUM_TAIL_BYTES, info.st_size - _CHECKSUM_TAIL_BYTES)
            if _CHECKSUM_TAIL.fullmatch(tail):
                return ("checksum", info.st_size, tail)
        return ("stat", info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)


def has_own_checksum(data: bytes) -> bool:
    """Whether manifest bytes end with a checksum member (what :func:`dumps` writes)."""
    return _checksum_tail(data) is not None


def _checksum_tail(data: bytes) -> re.Match[bytes] | None:
    """The checksum member's value and the end of the file, if that is how ``data`` ends."""
    return _CHECKSUM_TAIL.fullmatch(data, max(0, len(data) - _CHECKSUM_TAIL_BYTES))


def _check_version(raw: dict[str, Any], where: str) -> bool:
    """Refuse an unknown major version; return whether the minor version is newer than ours."""
    version = raw.get("version")
    if raw.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where}: format: expected {FORMAT_NAME!r}, got {raw.get('format')!r}")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ManifestError(f"{where}: version: expected 'MAJOR.MINOR', got {version!r}")
    major, minor = version_numbers(version)
    if major not in KNOWN_MINORS:
        readable = " and ".join(f"{known}.x" for known in KNOWN_MINORS)
        raise UnsupportedVersionError(
            f"{where}: version: format version {version} is not supported "
            f"(this library reads {readable})"
        )
    return minor > KNOWN_MINORS[major]


def _known_keys_only(raw: dict[str, Any]) -> dict[str, Any]:
    """Drop the keys a newer minor version added, which this reader may ignore."""

    def known(model: type[BaseModel], value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {key: item for key, item in value.items() if key in model.model_fields}

    def each(model: type[BaseModel], mapping: Any) -> Any:
        if not isinstance(mapping, dict):
            return mapping
        return {key: known(model, item) for key, item in mapping.items()}

    def shard(value: Any) -> Any:
        value = known(Shard, value)
        if isinstance(value, dict) and "files" in value:
            value["files"] = each(ShardFile, value["files"])
        return value

    result: dict[str, Any] = known(Manifest, raw)
    if "table" in result:
        result["table"] = known(TableRef, result["table"])
    if "fields" in result:
        result["fields"] = each(FieldSpec, result["fields"])
    if isinstance(result.get("shards"), list):
        result["shards"] = [shard(value) for value in result["shards"]]
    return result


def describe_validation_error(exc: ValidationError) -> str:
    """The first problems pydantic found, as ``key.path: message``, for an error message."""
    problems = []
    for error in exc.errors()[:MAX_REPORTED_PROBLEMS]:
        location = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".")
        message = error["msg"].removeprefix("Value error, ")
        received = "" if error["type"] == "value_error" else f" (got {error['input']!r:.80})"
        problems.append(f"{location}: {message}{received}" if location else message)
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more problems" if more > 0 else "")


def load(path: str) -> Manifest:
    """Read and validate the manifest file at ``path`` (see :func:`loads`).

    The file itself must be a regular file, not a symbolic link (the dataset directory may be
    one), nor a FIFO, socket or device, which could block the reader or never end (see
    :mod:`memshard.smallfile`).

    Raises:
        FileNotFoundError, NotADirectoryError, IsADirectoryError: no manifest at ``path``.
        UnsafePathError: the manifest is a symbolic link.
        ManifestError: it is not a regular file, is larger than :data:`MAX_MANIFEST_BYTES`,
            or see :func:`loads`.
        ReadFailedError: it cannot be read (no permission, too many open files, I/O error).
    """
    data = read_small_file(
        path,
        what="the manifest",
        limit=MAX_MANIFEST_BYTES,
        error=ManifestError,
        too_large=ManifestTooLargeError,
    )
    return loads(data, where=path)


def dumps(manifest: Manifest) -> bytes:
    """The canonical bytes of ``manifest``: UTF-8 JSON, one top-level key per line and one shard
    per line, keys in schema order, then the manifest's own checksum as the last member: the
    xxh3-64 of every byte before the checksum value, so that any changed byte is detected.
    """

    def encode(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    content = manifest.model_dump(mode="json")
    shards = content.pop("shards")
    lines = [f" {encode(key)}: {encode(value)}," for key, value in content.items()]
    shard_lines = ",\n".join(f"  {encode(shard)}" for shard in shards)
    lines.append(f' "shards": [\n{shard_lines}\n ],' if shards else ' "shards": [],')
    prefix = ("{\n" + "\n".join(lines) + f"\n {encode(CHECKSUM_KEY)}: ").encode("utf-8")
    return prefix + f'"{own_checksum(prefix)}"\n}}\n'.encode()


def dumps_checked(manifest: Manifest, *, where: str) -> bytes:
    """:func:`dumps`, refusing a manifest that readers would refuse for its size.

    Raises:
        ManifestTooLargeError: the encoded manifest exceeds :data:`MAX_MANIFEST_BYTES`.
    """
    data = dumps(manifest)
    check_document_size(len(data), where=where, what="manifest")
    return data


def check_document_size(size: int, *, where: str, what: str) -> None:
    """Refuse a ``what`` (manifest or part record) of ``size`` bytes to write at ``where``.

    Raises:
        ManifestTooLargeError: ``size`` exceeds :data:`MAX_MANIFEST_BYTES`.
    """
    if size > MAX_MANIFEST_BYTES:
        raise ManifestTooLargeError(
            f"{where}: the {what} would be {size:,} bytes, more than the "
            f"{MAX_MANIFEST_BYTES:,} (MAX_MANIFEST_BYTES) a reader accepts; nothing was "
            "written. Keep large data out of attrs and labels, or use larger shards"
        )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest, as published in ``spec/manifest.schema.json``."""
    schema = Manifest.model_json_schema(mode="validation")
    schema["properties"][CHECKSUM_KEY] = {
        "description": "xxh3-64 of the manifest's bytes before this value (spec section 6.5)",
        "pattern": f"^{CHECKSUM_PATTERN.pattern}$",
        "type": "string",
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "memshard manifest, format version " + FORMAT_VERSION
    return schema
