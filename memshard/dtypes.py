"""Which dtypes a field may have, and which values may be stored in it.

A field's dtype is one of :data:`SUPPORTED_DESCRS`: booleans, integers, floats and complex
numbers, stored little-endian. Its canonical spelling is numpy's ``descr`` (``"<f4"``).
Values given to a writer become arrays through :func:`as_array` and are converted to the
field dtype by :func:`stored_array`, under the rule of :func:`check_storable`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ArrayConversionError, BatchError, CastError, UnsupportedDtypeError

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


def as_array(value: Any, *, where: str) -> np.ndarray:
    """``value`` as a numpy array (a view where numpy can give one).

    Raises:
        BatchError: ``value`` is not an array of numbers (a ragged nested list, ...).
        ArrayConversionError: the value's own conversion to an array fails (a torch tensor
            that requires grad); also a ``RuntimeError``.
    """
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"{where}: not an array of numbers ({exc})") from None
    except RuntimeError as exc:
        # The value's own __array__ failed: torch refuses a tensor that requires grad.
        raise ArrayConversionError(
            f"{where}: a {type(value).__name__} cannot be converted to an array ({exc})"
        ) from None


def stored_array(array: np.ndarray, dtype: np.dtype[Any], *, where: str) -> np.ndarray:
    """``array`` as a C-contiguous array of ``dtype``, as a field stores it: checked by
    :func:`check_storable`, with every true bool stored as the byte 01. No copy when ``array``
    is already that.

    Raises:
        CastError: values ``dtype`` cannot hold (see :func:`check_storable`), or floats that
            overflow a narrower float dtype.
    """
    check_storable(array, dtype, where=where)
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
