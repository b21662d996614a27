"""Which dtypes a field may have, and which values may be stored in it.

A field's dtype is one of :data:`SUPPORTED_DESCRS`: booleans, integers, floats and complex
numbers, stored little-endian. Its canonical spelling is numpy's ``descr`` (``"<f4"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import CastError, UnsupportedDtypeError

#: Every dtype a field may have, as numpy ``descr`` strings (little-endian or byte-order free).
SUPPORTED_DESCRS: frozenset[str] = frozenset(
    {
        "|b1",
        "|i1",
        "<i2",
        "<i4",
        "<i8",
        "|u1",
        "<u2",
        "<u4",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
        "<c8",
        "<c16",
    }
)


def canonical_dtype(spec: Any, *, where: str) -> np.dtype[Any]:
    """Return the little-endian dtype a field stores for ``spec``.

    ``spec`` is anything :class:`numpy.dtype` accepts (``"float32"``, ``np.int64``, ``"<f4"``).
    Native and little-endian spellings are accepted; big-endian ones are not, because the
    stored bytes would not match the spelling.

    Raises:
        UnsupportedDtypeError: ``spec`` is not a dtype, or is object, structured, string,
            datetime, big-endian or extended precision. ``where`` names the field.

    Example:
        >>> canonical_dtype("float32", where="x").str
        '<f4'
    """
    try:
        dtype: np.dtype[Any] = np.dtype(spec)
    except (TypeError, ValueError) as exc:
        raise UnsupportedDtypeError(f"{where}: {spec!r} is not a dtype ({exc})") from None
    if dtype.byteorder == ">":
        raise UnsupportedDtypeError(
            f"{where}: big-endian dtype {dtype.str!r} is not supported; "
            f"use the little-endian {dtype.newbyteorder('<').str!r}"
        )
    if dtype.str not in SUPPORTED_DESCRS:
        raise UnsupportedDtypeError(
            f"{where}: dtype {dtype!s} ({dtype.str!r}) is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_DESCRS))}"
        )
    return dtype


def check_storable(values: np.ndarray, dtype: np.dtype[Any], *, where: str) -> None:
    """Raise unless every element of ``values`` can be stored as ``dtype`` without loss of kind.

    Allowed: every cast numpy calls ``same_kind`` (``float64`` into ``float32`` rounds as numpy
    does), and integer into integer of any size or sign when every value fits.
    Refused: float into an integer field, complex into a real field, numbers into a bool field,
    integers that overflow the field.

    Raises:
        CastError: naming ``where``, the source dtype and the field dtype.
    """
    source = values.dtype
    if source == dtype:
        return
    both_integer = source.kind in "iu" and dtype.kind in "iu"
    if not both_integer and not np.can_cast(source, dtype, casting="same_kind"):
        raise CastError(
            f"{where}: cannot store {source} values in a {dtype} field without losing "
            f"information (allowed: same-kind casts such as float64 into float32)"
        )
    if both_integer and not np.can_cast(source, dtype, casting="safe") and values.size:
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise CastError(
                f"{where}: values in [{low}, {high}] do not fit in a {dtype} field "
                f"(range [{info.min}, {info.max}])"
            )
