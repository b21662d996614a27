"""Validating rows given to the appender, before a single byte is written.

:func:`validated_batch` turns ``{field: values}`` into C-contiguous arrays of the field
dtypes, all with the same number of rows, or raises a typed error naming the field. Bool
values come out as the bytes 00 and 01 only, whatever bytes the given array held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .dtypes import check_storable
from .errors import ArrayConversionError, BatchError, CastError, LabelError
from .manifest import FieldSpec


def validated_batch(
    values: Any,
    specs: Mapping[str, FieldSpec],
    labels: Mapping[str, tuple[str, ...]],
    *,
    where: str,
    single_row: bool,
) -> dict[str, np.ndarray]:
    """Check and convert one row (``single_row``) or a batch stacked along axis 0.

    Raises:
        BatchError: not a mapping, missing or extra fields, ragged or wrongly shaped values,
            fields with different row counts.
        ArrayConversionError: a value whose own conversion to an array fails (a torch
            tensor that requires grad); also a ``RuntimeError``.
        CastError: values the field dtype cannot hold (see :func:`memshard.dtypes.check_storable`),
            or floats that overflow a narrower float field.
        LabelError: label values outside the field's vocabulary.
    """
    _check_keys(values, specs, where)
    arrays = {}
    for name, spec in specs.items():
        array = _as_array(values[name], f"{where}: field {name!r}")
        arrays[name] = array.reshape((1, *array.shape)) if single_row else array
        _check_shape(arrays[name], spec, f"{where}: field {name!r}", single_row)
    lengths = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise BatchError(f"{where}: fields have different row counts: {lengths}")
    return {
        name: _converted(arrays[name], spec, labels.get(name), f"{where}: field {name!r}")
        for name, spec in specs.items()
    }


def _check_keys(values: Any, specs: Mapping[str, FieldSpec], where: str) -> None:
    if not isinstance(values, Mapping):
        raise BatchError(
            f"{where}: expected a mapping of field -> values, got {type(values).__name__}"
        )
    missing = [name for name in specs if name not in values]
    extra = [name for name in values if name not in specs]
    if missing or extra:
        raise BatchError(
            f"{where}: batch fields do not match the dataset: missing {missing}, unexpected {extra}"
        )


def _as_array(value: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"{where}: not an array of numbers ({exc})") from None
    except RuntimeError as exc:
        # The value's own __array__ failed: torch refuses a tensor that requires grad.
        raise ArrayConversionError(
            f"{where}: a {type(value).__name__} cannot be converted to an array ({exc})"
        ) from None


def _check_shape(array: np.ndarray, spec: FieldSpec, where: str, single_row: bool) -> None:
    if single_row and array.shape[1:] != spec.shape:
        raise BatchError(f"{where}: got shape {array.shape[1:]} for one row, expected {spec.shape}")
    if array.ndim == 0 or array.shape[1:] != spec.shape:
        expected = "(rows" + "".join(f", {dim}" for dim in spec.shape) + ")"
        raise BatchError(f"{where}: got shape {array.shape} for a batch, expected {expected}")


def _converted(
    array: np.ndarray, spec: FieldSpec, vocabulary: tuple[str, ...] | None, where: str
) -> np.ndarray:
    dtype = spec.numpy_dtype
    check_storable(array, dtype, where=where)
    if vocabulary is not None and array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= len(vocabulary):
            raise LabelError(
                f"{where}: label values in [{low}, {high}] outside the vocabulary of "
                f"{len(vocabulary)} labels (valid: 0..{len(vocabulary) - 1})"
            )
    try:
        with np.errstate(over="raise", invalid="raise"):
            converted = np.ascontiguousarray(array, dtype=dtype)
    except FloatingPointError:
        raise CastError(f"{where}: values overflow the field dtype {dtype}") from None
    return _canonical_bools(converted) if dtype.kind == "b" else converted


def _canonical_bools(array: np.ndarray) -> np.ndarray:
    """``array`` with every true element stored as the byte 01, as the spec requires.

    A numpy bool array viewed from other bytes (``np.frombuffer(b"\\x02", dtype=bool)``)
    holds them verbatim and calls any nonzero byte true; copying it keeps the bytes.
    """
    as_bytes = array.view(np.uint8)
    if as_bytes.size and int(as_bytes.max()) > 1:
        canonical: np.ndarray = as_bytes != 0
        return canonical
    return array
