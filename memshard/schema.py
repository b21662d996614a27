"""Turning what a user passes to :func:`memshard.create` into manifest entries.

Every check here runs before anything is written, and raises :class:`SchemaError` (or its
subclass :class:`UnsupportedDtypeError`) naming the field or key at fault.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from .dtypes import canonical_dtype
from .errors import SchemaError
from .layout import check_field_name
from .manifest import MAX_LABELS, MAX_SAMPLE_NDIM, FieldSpec
from .npyheader import DATA_ALIGN

#: A shard rolls over once its rows reach this many bytes (all fields together).
DEFAULT_SHARD_BYTES = 256 << 20


def field_specs(fields: Mapping[str, Any]) -> dict[str, FieldSpec]:
    """Validate ``{name: (dtype, sample_shape)}`` and return manifest field specs.

    ``sample_shape`` is a tuple of positive ints (``()`` for scalars); an int means ``(int,)``.

    Example:
        >>> field_specs({"x": ("float32", (3, 4)), "y": ("int64", ())})["x"]
        FieldSpec(dtype='<f4', shape=(3, 4))
    """
    if not isinstance(fields, Mapping) or not fields:
        raise SchemaError(
            f"fields must be a non-empty mapping of name -> (dtype, shape), got {fields!r:.200}"
        )
    specs = {}
    for name, definition in fields.items():
        check_field_name(name)
        try:
            dtype_spec, shape_spec = definition
        except (TypeError, ValueError):
            raise SchemaError(
                f"field {name!r}: expected (dtype, sample_shape), got {definition!r:.200}"
            ) from None
        dtype = canonical_dtype(dtype_spec, where=f"field {name!r}")
        specs[name] = FieldSpec(dtype=dtype.str, shape=_sample_shape(name, shape_spec))
    return specs


def _sample_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        shape = (shape,)
    try:
        dims = tuple(operator.index(dim) for dim in shape)
    except TypeError:
        raise SchemaError(f"field {name!r}: sample shape {shape!r} must hold integers") from None
    if len(dims) > MAX_SAMPLE_NDIM or any(dim < 1 for dim in dims):
        raise SchemaError(
            f"field {name!r}: sample shape {dims} must have at most {MAX_SAMPLE_NDIM} "
            "dimensions, each >= 1"
        )
    return dims


def label_vocabularies(
    labels: Mapping[str, Sequence[str]] | None, specs: Mapping[str, FieldSpec]
) -> dict[str, tuple[str, ...]]:
    """Validate ``{field: [label, ...]}``: integer fields, unique string labels."""
    vocabularies: dict[str, tuple[str, ...]] = {}
    for name, vocabulary in (labels or {}).items():
        if name not in specs:
            raise SchemaError(f"labels: no field named {name!r}; fields are {list(specs)}")
        if specs[name].numpy_dtype.kind not in "iu":
            raise SchemaError(
                f"labels: field {name!r} has dtype {specs[name].dtype!r}; labels need an "
                "integer field"
            )
        if isinstance(vocabulary, (str, bytes)) or not all(isinstance(x, str) for x in vocabulary):
            raise SchemaError(f"labels: {name!r} must be a sequence of strings")
        entries = tuple(vocabulary)
        if len(set(entries)) != len(entries) or len(entries) > MAX_LABELS:
            raise SchemaError(f"labels: {name!r} must hold at most {MAX_LABELS} unique labels")
        vocabularies[name] = entries
    return vocabularies


def json_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate user attributes: strict JSON (string keys, no NaN), returned as parsed JSON."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise SchemaError(f"attrs must be a mapping, got {type(attrs).__name__}")
    try:
        text = json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"attrs must be JSON-representable without NaN/Infinity: {exc}") from None
    result: dict[str, Any] = json.loads(text)
    return result


def rows_per_shard(specs: Mapping[str, FieldSpec], shard_bytes: int) -> int:
    """How many rows fit in ``shard_bytes`` (at least one).

    When the shard holds at least :func:`page_rows` rows, the count is rounded down to a
    multiple of it, so that every field of a full shard is a whole number of pages and
    consecutive shards map back to back.

    Example:
        >>> specs = field_specs({"x": ("float32", (128,))})
        >>> rows_per_shard(specs, 1_000_000), rows_per_shard(specs, 2048)
        (1952, 4)
    """
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise SchemaError(f"shard_bytes must be a positive integer, got {shard_bytes!r}")
    rows = max(1, shard_bytes // sum(spec.row_bytes for spec in specs.values()))
    unit = page_rows(specs)
    return rows // unit * unit if rows >= unit else rows


def page_rows(specs: Mapping[str, FieldSpec]) -> int:
    """The fewest rows that fill a whole number of pages in every field."""
    units = [DATA_ALIGN // math.gcd(spec.row_bytes, DATA_ALIGN) for spec in specs.values()]
    return math.lcm(*units)
