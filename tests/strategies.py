"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from memshard.dtypes import SUPPORTED_DESCRS

#: The ``width`` in bits hypothesis draws floats of, by the byte size of one float.
_FLOAT_BITS: dict[int, Literal[16, 32, 64]] = {2: 16, 4: 32, 8: 64}

#: Every dtype a field may have.
dtypes = st.sampled_from(sorted(SUPPORTED_DESCRS)).map(np.dtype)

#: Sample shapes from 0-d to 4-d with small dimensions.
sample_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=4).map(tuple)


@st.composite
def shard_sizes(draw: st.DrawFn, max_rows: int = 40) -> list[int]:
    """Row counts of consecutive shards (each >= 1), possibly none."""
    return draw(st.lists(st.integers(1, 9), min_size=0, max_size=max_rows // 5 + 1))


def values_of(dtype: np.dtype[Any], shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``dtype`` and ``shape``, without NaN so that equality is meaningful."""
    return npst.arrays(dtype, shape, elements=_elements(dtype))


def _elements(dtype: np.dtype[Any]) -> st.SearchStrategy[Any] | None:
    if dtype.kind == "f":
        return st.floats(-1e4, 1e4, width=_FLOAT_BITS[dtype.itemsize])
    if dtype.kind == "c":
        part = st.floats(-1e4, 1e4, width=_FLOAT_BITS[dtype.itemsize // 2])
        return st.builds(complex, part, part)
    return None


def _int_index(length: int) -> st.SearchStrategy[int]:
    # Mostly in range, sometimes just outside, so that IndexError paths are exercised.
    return st.integers(-length - 2, length + 1)


def _slice(length: int) -> st.SearchStrategy[slice]:
    bound = st.none() | st.integers(-length - 3, length + 3)
    step = st.none() | st.integers(-4, 4).filter(lambda s: s != 0)
    return st.builds(slice, bound, bound, step)


def _int_array(length: int) -> st.SearchStrategy[np.ndarray]:
    shapes = npst.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=6)
    return npst.arrays(np.int64, shapes, elements=st.integers(-length - 1, length))


def _bool_mask(length: int) -> st.SearchStrategy[np.ndarray]:
    sizes = st.sampled_from([length, length, length, max(length - 1, 0), length + 1])
    return sizes.flatmap(lambda n: npst.arrays(np.bool_, (n,)))


def _trailing_item(dim: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        _int_index(dim),
        _slice(dim),
        st.lists(st.integers(-dim, dim - 1), min_size=1, max_size=3),
        st.none(),
    )


@st.composite
def index_keys(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    """Any key numpy accepts (or rejects) on an array of ``shape``: ints, slices, integer and
    boolean arrays, lists, ``None``, ``...`` and tuples of them."""
    length = shape[0]
    first = draw(
        st.one_of(
            _int_index(length),
            _slice(length),
            _int_array(length),
            _bool_mask(length),
            st.lists(_int_index(length), max_size=5),
            st.just(Ellipsis),
            st.builds(np.int64, _int_index(length)),
        )
    )
    if not draw(st.booleans()):
        return first
    trailing = [draw(_trailing_item(dim)) for dim in shape[1:]]
    trailing = trailing[: draw(st.integers(0, len(trailing)))]
    items = [first, *trailing]
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), None)
    if draw(st.booleans()) and not any(item is Ellipsis for item in items):
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    return tuple(items)


#: Integers outside the int64 range numpy indexes with, on either side of it.
huge_ints = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 2**64 - 1, 2**64, -(2**64)]),
    st.integers(min_value=2**63),
    st.integers(max_value=-(2**63) - 1),
)


def row_keys(length: int) -> st.SearchStrategy[Any]:
    """An int or a slice for a column of ``length`` rows, including every kind numpy refuses:
    ints outside int64 (``OverflowError`` or ``IndexError``), a step of 0 (``ValueError``),
    a bound that is not an integer (``TypeError``); and huge bounds and steps, which numpy
    clips."""
    any_int = st.one_of(_int_index(length), huge_ints, st.integers(-(2**63), 2**63 - 1))
    bound = st.one_of(
        st.none(),
        st.integers(-length - 3, length + 3),
        any_int,
        st.builds(np.int64, st.integers(-length - 3, length + 3)),
    )
    step = st.one_of(st.none(), st.integers(-4, 4), any_int)
    odd_bound = st.sampled_from([1.5, "1", np.float64(1.0)])
    return st.one_of(
        any_int,
        st.builds(slice, bound, bound, step),
        st.builds(slice, bound, odd_bound, step),
    )


@st.composite
def mutations_of(draw: st.DrawFn, valid: bytes, tokens: Sequence[bytes], max_insert: int) -> bytes:
    """``valid`` with one to four random edits: a bit flip, truncation, insertion of random
    bytes, deletion, or a span replaced by one of ``tokens`` (syntax a parser cares about)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "delete"]))
        position = draw(st.integers(0, len(data)))
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=max_insert))
        elif kind == "splice":
            end = draw(st.integers(position, min(len(data), position + 12)))
            data[position:end] = draw(st.sampled_from(list(tokens)))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, max_insert))]
    return bytes(data)


#: Trailing shapes of ragged rows, including one with no elements per entry.
ragged_tails = st.sampled_from([(), (3,), (2, 2), (0,)])


@st.composite
def ragged_rows(
    draw: st.DrawFn,
    dtype: np.dtype[Any] | None = None,
    tail: tuple[int, ...] | None = None,
    max_rows: int = 8,
) -> tuple[list[np.ndarray], np.dtype[Any], tuple[int, ...]]:
    """``(rows, dtype, tail)``: up to ``max_rows`` arrays of ``dtype`` and shapes
    ``(n, *tail)``, ``n`` from 0 to 5 (empty rows included); ``dtype`` and ``tail`` are drawn
    when None."""
    dtype = draw(dtypes) if dtype is None else dtype
    tail = draw(ragged_tails) if tail is None else tail
    lengths = draw(st.lists(st.integers(0, 5), max_size=max_rows))
    return [draw(values_of(dtype, (n, *tail))) for n in lengths], dtype, tail
