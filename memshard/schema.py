"""Turning what a user passes to :func:`memshard.create` into manifest entries.

Every check here runs before anything is written, and raises :class:`SchemaError` (or its
subclass :class:`UnsupportedDtypeError`) naming the field or key at fault.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .codecs import (
    DEFAULT_BLOCK_BYTES,
    MAX_BLOCK_BYTES,
    MIN_BLOCK_BYTES,
    codec_parameters,
    parse_codec,
)
from .dtypes import canonical_dtype
from .errors import SchemaError, UnsupportedDtypeError
from .layout import check_field_name
from .manifest import MAX_COUNT, MAX_LABELS, MAX_SAMPLE_NDIM, Codec, FieldSpec, Manifest
from .npyheader import DATA_ALIGN, HUGE_PAGE
from .progress import format_bytes
from .ragged import NUMBER_KINDS

#: A shard rolls over once its rows reach this many bytes (all fields together).
DEFAULT_SHARD_BYTES = 256 << 20
#: Bytes of one entry of a ragged field's offsets file (int64).
OFFSET_BYTES = 8
#: Largest sample, in bytes, one field may have.
MAX_ROW_BYTES = 1 << 40
#: Deepest nesting of user attributes.
MAX_ATTRS_DEPTH = 64


def field_specs(fields: Mapping[str, Any]) -> dict[str, FieldSpec]:
    """Validate ``{name: (dtype, sample_shape)}`` and return manifest field specs.

    ``sample_shape`` is a tuple of positive ints (``()`` for scalars); an int means ``(int,)``.
    A shape whose first dimension is ``None``, ``(None, *tail)``, declares a ragged field: rows
    of any length along that axis, of fixed shape ``tail`` after it (numbers only: booleans,
    integers, floats, complex).

    A third member, ``(dtype, sample_shape, options)``, compresses the field (fixed or ragged):
    ``options`` is ``{"codec": name, **params}`` with the codec's parameters (see
    :mod:`memshard.codecs`; ``"codec": "zstd:9"`` also works), and optionally
    ``"block_bytes"``, the uncompressed bytes a block of rows aims at
    (:data:`~memshard.codecs.DEFAULT_BLOCK_BYTES`).

    Example:
        >>> field_specs({"x": ("float32", (3, 4)), "y": ("int64", ())})["x"]
        FieldSpec(dtype='<f4', shape=(3, 4))
        >>> field_specs({"tokens": ("int32", (None,))})["tokens"].ragged
        True
        >>> field_specs({"img": ("uint8", (64, 64), {"codec": "zstd"})})["img"].codec.params
        {'level': 3}
    """
    if not isinstance(fields, Mapping) or not fields:
        raise SchemaError(
            f"fields must be a non-empty mapping of name -> (dtype, shape), got {fields!r:.200}"
        )
    specs = {}
    for name, definition in fields.items():
        check_field_name(name)
        try:
            dtype_spec, shape_spec, *rest = definition
            options = rest.pop() if len(rest) == 1 else None
        except (TypeError, ValueError):
            raise SchemaError(
                f"field {name!r}: expected (dtype, sample_shape) or (dtype, sample_shape, "
                f"options), got {definition!r:.200}"
            ) from None
        if rest:
            raise SchemaError(
                f"field {name!r}: expected (dtype, sample_shape) or (dtype, sample_shape, "
                f"options), got {len(rest) + 3} members"
            )
        if dtype_spec is None:  # np.dtype(None) would silently mean float64
            raise SchemaError(f"field {name!r}: the dtype is missing (None)")
        dtype = canonical_dtype(dtype_spec, where=f"field {name!r}")
        ragged = _declares_ragged(shape_spec)
        shape = _sample_shape(name, shape_spec[1:] if ragged else shape_spec)
        if dtype.itemsize * math.prod(shape) > MAX_ROW_BYTES:
            raise SchemaError(
                f"field {name!r}: a sample of shape {shape} and dtype {dtype} exceeds "
                f"{MAX_ROW_BYTES} bytes"
            )
        if ragged and dtype.kind not in NUMBER_KINDS:
            raise UnsupportedDtypeError(
                f"field {name!r}: a ragged field holds numbers (booleans, integers, floats, "
                f"complex), not dtype {dtype}"
            )
        codec = None if options is None else field_codec(name, options)
        specs[name] = FieldSpec(
            dtype=dtype.str, shape=shape, kind="ragged" if ragged else "fixed", codec=codec
        )
    return specs


def field_codec(name: str, options: Any) -> Codec:
    """The codec that the options of field ``name`` (``{"codec": ..., **params,
    "block_bytes": ...}``) ask for.

    Raises:
        SchemaError: no codec named, an unknown codec or parameter, or a value out of range.
    """
    where = f"field {name!r}"
    if not isinstance(options, Mapping) or "codec" not in options:
        raise SchemaError(
            f"{where}: the third member must be a mapping naming a codec, e.g. "
            f"{{'codec': 'zstd', 'level': 3}}; got {options!r:.100}"
        )
    given = dict(options)
    codec = given.pop("codec")
    block_bytes = given.pop("block_bytes", DEFAULT_BLOCK_BYTES)
    if isinstance(codec, str) and ":" in codec:
        codec, parsed = parse_codec(codec, where=where)
        given = {**parsed, **given}
    params = codec_parameters(codec, given, where=where)
    if (
        isinstance(block_bytes, bool)
        or not isinstance(block_bytes, int)
        or not MIN_BLOCK_BYTES <= block_bytes <= MAX_BLOCK_BYTES
    ):
        raise SchemaError(
            f"{where}: block_bytes must be an integer from {MIN_BLOCK_BYTES} to "
            f"{MAX_BLOCK_BYTES}, got {block_bytes!r:.40}"
        )
    return Codec(name=codec, params=params, block_bytes=block_bytes)


#: What a conversion's ``codecs=`` argument may be: one codec for every field (its text form
#: ``"zstd:3"``, its options ``{"codec": "zstd", "level": 3}``, a manifest
#: :class:`~memshard.manifest.Codec`, or ``"none"``), or ``{field: one of those or None}``.
CodecChoice = str | Mapping[str, Any] | Codec | None
#: The text that asks for no compression, wherever a codec is named.
NO_CODEC = "none"


def chosen_codecs(codecs: CodecChoice, names: Sequence[str]) -> dict[str, Codec | None]:
    """The codec ``codecs`` asks for each field of ``names`` that it names: every one of them
    for one codec for all fields, only the keys of a ``{field: codec}`` mapping otherwise
    (``None`` or ``"none"`` there: uncompressed). The caller decides what the fields left out
    get (a conversion: no compression; a recompression: the codec they have).

    A mapping whose ``"codec"`` is text is the options of one codec for all fields, so a
    field named ``codec`` is compressed alone with ``{"codec": {"codec": "zstd"}}``.

    Example:
        >>> chosen_codecs("zstd:9", ["x", "y"])["y"].params
        {'level': 9}
        >>> chosen_codecs({"x": "lz4", "y": None}, ["x", "y", "z"])["y"] is None
        True
        >>> sorted(chosen_codecs({"x": "lz4"}, ["x", "y"]))
        ['x']

    Raises:
        SchemaError: a field that is not one of ``names``, an unknown codec or parameter, or a
            value out of range (naming the field).
    """
    if codecs is None:
        return {}
    if not isinstance(codecs, Mapping) or isinstance(codecs.get("codec"), str):
        return {name: _codec_of(name, codecs) for name in names}
    unknown = [name for name in codecs if name not in names]
    if unknown:
        raise SchemaError(
            f"codecs: no field {unknown[0]!r:.80}; the fields are {', '.join(names)} (one "
            "codec for all fields is its text, e.g. 'zstd:3', or its options, "
            "{'codec': 'zstd', 'level': 3})"
        )
    return {name: _codec_of(name, choice) for name, choice in codecs.items()}


def _codec_of(name: str, choice: Any) -> Codec | None:
    """The codec that ``choice`` (see :data:`CodecChoice`) names for field ``name``."""
    if choice is None or choice == NO_CODEC:
        return None
    if isinstance(choice, Codec):
        return choice
    if isinstance(choice, str):
        return field_codec(name, {"codec": choice})
    if isinstance(choice, Mapping):
        return field_codec(name, choice)
    raise SchemaError(
        f"field {name!r}: a codec is its text ('zstd:3'), its options "
        f"({{'codec': 'zstd', 'level': 3}}) or None, not {type(choice).__name__}"
    )


def codec_options(codec: Codec) -> dict[str, Any]:
    """The options that declare ``codec`` as the third member of a field's declaration.

    Example:
        >>> codec_options(field_codec("x", {"codec": "zstd:9"}))
        {'codec': 'zstd', 'level': 9, 'block_bytes': 65536}
    """
    return {"codec": codec.name, **codec.params, "block_bytes": codec.block_bytes}


def describe_codec(codec: Codec | None) -> str:
    """A codec in words, its parameters and block size included; ``none`` without one.

    Example:
        >>> describe_codec(field_codec("x", {"codec": "blosc:lz4:5"}))
        'blosc cname=lz4 clevel=5 shuffle=byte, 64.0 KiB blocks'
        >>> describe_codec(None)
        'none'
    """
    if codec is None:
        return NO_CODEC
    params = "".join(f" {key}={value}" for key, value in codec.params.items())
    return f"{codec.name}{params}, {format_bytes(codec.block_bytes)} blocks"


def _declares_ragged(shape: Any) -> bool:
    """Whether ``shape`` is ``(None, *tail)``; a ``None`` elsewhere is refused by
    :func:`_sample_shape`."""
    return (
        isinstance(shape, Sequence)
        and not isinstance(shape, (str, bytes))
        and len(shape) > 0
        and shape[0] is None
    )


def _sample_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        shape = (shape,)
    if any(dim is None for dim in shape):
        raise SchemaError(
            f"field {name!r}: sample shape {tuple(shape)!r}: only the first axis may vary "
            "(None); the others must be fixed"
        )
    if any(isinstance(dim, (bool, np.bool_)) for dim in shape):
        raise SchemaError(f"field {name!r}: sample shape {shape!r} must hold integers, not bools")
    try:
        dims = tuple(operator.index(dim) for dim in shape)
    except TypeError:
        raise SchemaError(f"field {name!r}: sample shape {shape!r} must hold integers") from None
    if len(dims) > MAX_SAMPLE_NDIM or any(not 1 <= dim <= MAX_ROW_BYTES for dim in dims):
        raise SchemaError(
            f"field {name!r}: sample shape {dims} must have at most {MAX_SAMPLE_NDIM} "
            f"dimensions, each from 1 to {MAX_ROW_BYTES}"
        )
    return dims


def label_vocabularies(
    labels: Mapping[str, Iterable[str]] | None, specs: Mapping[str, FieldSpec]
) -> dict[str, tuple[str, ...]]:
    """Validate ``{field: [label, ...]}``: integer fields, unique string labels."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise SchemaError(
            f"labels must be a mapping of field -> labels, got {type(labels).__name__}"
        )
    vocabularies: dict[str, tuple[str, ...]] = {}
    for name, vocabulary in labels.items():
        if name not in specs:
            raise SchemaError(f"labels: no field named {name!r}; fields are {list(specs)}")
        if specs[name].ragged:
            raise SchemaError(f"labels: field {name!r} is ragged; labels need a fixed field")
        if specs[name].numpy_dtype.kind not in "iu":
            raise SchemaError(
                f"labels: field {name!r} has dtype {specs[name].dtype!r}; labels need an "
                "integer field"
            )
        vocabularies[name] = _vocabulary(name, vocabulary)
    return vocabularies


def _vocabulary(name: str, vocabulary: Any) -> tuple[str, ...]:
    if isinstance(vocabulary, (str, bytes)) or not isinstance(vocabulary, Iterable):
        raise SchemaError(f"labels: {name!r} must be a sequence of strings, got {vocabulary!r:.80}")
    entries = tuple(vocabulary)
    for entry in entries:
        if not isinstance(entry, str) or not _encodable(entry):
            raise SchemaError(f"labels: {name!r} holds {entry!r:.80}, not a UTF-8 string")
    if len(entries) > MAX_LABELS:
        raise SchemaError(f"labels: {name!r} has {len(entries)} labels, at most {MAX_LABELS}")
    if len(set(entries)) != len(entries):
        repeated = sorted({entry for entry in entries if entries.count(entry) > 1})
        raise SchemaError(f"labels: {name!r} repeats {repeated[:5]}; labels must be unique")
    return entries


def json_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate user attributes: JSON values with string keys, no NaN or Infinity, nested at
    most :data:`MAX_ATTRS_DEPTH` deep. Returned as JSON would read them back (tuples become
    lists)."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise SchemaError(f"attrs must be a mapping, got {type(attrs).__name__}")
    _check_json_value(attrs, "attrs", 0)
    result: dict[str, Any] = json.loads(json.dumps(dict(attrs)))
    return result


def _check_json_value(value: Any, where: str, depth: int) -> None:
    if depth > MAX_ATTRS_DEPTH:
        raise SchemaError(f"{where}: nested deeper than {MAX_ATTRS_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise SchemaError(
                f"{where}: integer of {value.bit_length()} bits is outside the 64-bit range"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{where}: {value} is not valid JSON (NaN and Infinity are not)")
        return
    if isinstance(value, str):
        if not _encodable(value):
            raise SchemaError(f"{where}: {value!r:.80} is not valid UTF-8 text")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not _encodable(key):
                raise SchemaError(f"{where}: key {key!r:.80} is not a string")
            _check_json_value(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _check_json_value(item, f"{where}[{position}]", depth + 1)
        return
    raise SchemaError(f"{where}: a {type(value).__name__} is not JSON-representable")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def rows_per_shard(specs: Mapping[str, FieldSpec], shard_bytes: int) -> int:
    """How many rows fit in ``shard_bytes`` (at least one).

    ``shard_bytes`` is at most ``MAX_COUNT`` (the most rows a shard may hold), so that the
    count is one a manifest can state.

    The count is rounded down, when the shard is large enough, to a multiple of
    :func:`aligned_rows`: then every field of a full shard is a whole number of pages, so
    consecutive shards map back to back, and the widest field a whole number of huge pages, so
    the kernel can map it with 2 MiB entries.

    Example:
        >>> specs = field_specs({"x": ("float32", (128,))})
        >>> [rows_per_shard(specs, size) for size in (256 << 20, 1 << 20, 2048)]
        [524288, 2048, 4]
    """
    if (
        isinstance(shard_bytes, bool)
        or not isinstance(shard_bytes, int)
        or not 1 <= shard_bytes <= MAX_COUNT
    ):
        raise SchemaError(
            f"shard_bytes must be an integer from 1 to {MAX_COUNT}, got {shard_bytes!r:.80}"
        )
    rows = max(1, shard_bytes // sum(_bytes_per_row(spec) for spec in specs.values()))
    for unit in (aligned_rows(specs, HUGE_PAGE), aligned_rows(specs, 0)):
        if rows >= unit:
            return rows // unit * unit
    return rows


def shard_size_mismatch(manifest: Manifest, shard_bytes: int | None) -> str | None:
    """How the shards of ``manifest`` differ from those ``shard_bytes`` asks for, as a clause;
    ``None`` if they do not, or if no size is asked for."""
    if shard_bytes is None:
        return None
    if manifest.shard_bytes is not None:  # ragged fields: shards roll on their data size
        if manifest.shard_bytes == shard_bytes:
            return None
        return (
            f"writes shards of up to {format_bytes(manifest.shard_bytes)} "
            f"(shard_bytes={manifest.shard_bytes}), but shard_bytes={shard_bytes} asks for "
            f"{format_bytes(shard_bytes)}; leave shard_bytes out to keep the size of the "
            "first run"
        )
    asked = rows_per_shard(manifest.fields, shard_bytes)
    if asked == manifest.shard_rows:
        return None
    row_bytes = sum(spec.row_bytes for spec in manifest.fields.values())
    return (
        f"writes shards of {manifest.shard_rows:,} rows "
        f"({format_bytes(manifest.shard_rows * row_bytes)}), but shard_bytes={shard_bytes} "
        f"asks for {asked:,} rows ({format_bytes(asked * row_bytes)}); leave shard_bytes out "
        "to keep the size of the first run"
    )


def _bytes_per_row(spec: FieldSpec) -> int:
    """A fixed field's row (uncompressed), or a ragged field's entry in its offsets file (its
    values are counted as they come: see :class:`memshard.shardsequence.ShardSequence`)."""
    return spec.offsets.row_bytes if spec.ragged else spec.row_bytes


def aligned_rows(specs: Mapping[str, FieldSpec], huge_page: int) -> int:
    """The fewest rows that fill whole pages in every field and, if ``huge_page``, whole
    huge pages in the widest field."""
    sizes = [_bytes_per_row(spec) for spec in specs.values()]
    units = [DATA_ALIGN // math.gcd(size, DATA_ALIGN) for size in sizes]
    if huge_page:
        widest = max(sizes)
        units.append(huge_page // math.gcd(widest, huge_page))
    return math.lcm(*units)
