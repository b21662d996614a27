"""Validating rows given to the appender, before a single byte is written.

:func:`validated_batch` turns ``{field: values}`` into C-contiguous arrays of the field
dtypes, all with the same number of rows, or raises a typed error naming the field. Bool
values come out as the bytes 00 and 01 only, whatever bytes the given array held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .dtypes import as_array, stored_array
from .errors import BatchError, LabelError
from .manifest import FieldSpec
from .ragged import Ragged, pack_rows


def validated_batch(
    values: Any,
    specs: Mapping[str, FieldSpec],
    labels: Mapping[str, tuple[str, ...]],
    *,
    where: str,
    single_row: bool,
) -> dict[str, Any]:
    """Check and convert one row (``single_row``) or a batch stacked along axis 0.

    Raises:
        BatchError: not a mapping, missing or extra fields, ragged or wrongly shaped values,
            fields with different row counts.
        ArrayConversionError: a value whose own conversion to an array fails (a torch
            tensor that requires grad); also a ``RuntimeError``.
        CastError: values the field dtype cannot hold (see :func:`memshard.dtypes.stored_array`),
            or floats that overflow a narrower float field.
        LabelError: label values outside the field's vocabulary.
    """
    _check_keys(values, specs, where)
    arrays: dict[str, np.ndarray] = {}
    packed: dict[str, Ragged] = {}
    for name, spec in specs.items():
        if spec.ragged:
            packed[name] = _ragged_rows(values[name], spec, f"{where}: field {name!r}", single_row)
            continue
        array = as_array(values[name], where=f"{where}: field {name!r}")
        arrays[name] = array.reshape((1, *array.shape)) if single_row else array
        _check_shape(arrays[name], spec, f"{where}: field {name!r}", single_row)
    lengths = {name: array.shape[0] for name, array in arrays.items()}
    lengths.update({name: len(rows) for name, rows in packed.items()})
    if len(set(lengths.values())) > 1:
        raise BatchError(f"{where}: fields have different row counts: {lengths}")
    return {
        name: packed[name]
        if spec.ragged
        else _converted(arrays[name], spec, labels.get(name), f"{where}: field {name!r}")
        for name, spec in specs.items()
    }


def _ragged_rows(value: Any, spec: FieldSpec, where: str, single_row: bool) -> Ragged:
    """A ragged field's rows as a packed batch (see :func:`memshard.ragged.pack_rows`); one
    row is an array of shape ``(n, *tail)``."""
    if single_row:
        row = as_array(value, where=where)
        if row.ndim != len(spec.shape) + 1 and row.shape != (0,):
            raise BatchError(
                f"{where}: got shape {row.shape} for one row, expected "
                f"({', '.join(['n', *map(str, spec.shape)])})"
            )
        value = [row]
    values, offsets = pack_rows(value, dtype=spec.numpy_dtype, tail=spec.shape, where=where)
    return Ragged._of(np.ascontiguousarray(values), offsets)


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


def _check_shape(array: np.ndarray, spec: FieldSpec, where: str, single_row: bool) -> None:
    if single_row and array.shape[1:] != spec.shape:
        raise BatchError(f"{where}: got shape {array.shape[1:]} for one row, expected {spec.shape}")
    if array.ndim == 0 or array.shape[1:] != spec.shape:
        expected = "(rows" + "".join(f", {dim}" for dim in spec.shape) + ")"
        raise BatchError(f"{where}: got shape {array.shape} for a batch, expected {expected}")


def _converted(
    array: np.ndarray, spec: FieldSpec, vocabulary: tuple[str, ...] | None, where: str
) -> np.ndarray:
    converted = stored_array(array, spec.numpy_dtype, where=where)
    if vocabulary is not None and converted.size:
        low, high = int(converted.min()), int(converted.max())
        if low < 0 or high >= len(vocabulary):
            raise LabelError(
                f"{where}: label values in [{low}, {high}] outside the vocabulary of "
                f"{len(vocabulary)} labels (valid: 0..{len(vocabulary) - 1})"
            )
    return converted
