"""Rows of a variable-length dataset as h5py hands them over, and back: pure, no I/O.

h5py reads a variable-length dataset as an object array of arrays, one per row, and writes
one from such an array. :func:`packed_rows` packs what it read into a ragged field's
``(values, offsets)`` as its :class:`VlenLayout` says (the elements' byte order, the rows'
trailing shape); :func:`object_rows` unpacks a :class:`~memshard.ragged.Ragged` batch for a
write. :mod:`memshard.hdf5`, the only module that imports h5py, finds the layout and does the
reading and writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SourceError
from .ragged import Ragged
from .sources import stored_dtype

#: Attribute of a variable-length dataset whose rows are ``(n, *tail)`` arrays stored
#: flattened: the tail, as a list of integers. ``memshard.to_hdf5`` writes it (h5py cannot
#: write rows of HDF5 array elements) and ``memshard.from_hdf5`` reads it.
TAIL_ATTRIBUTE = "memshard_tail"


@dataclass(frozen=True)
class VlenLayout:
    """How the rows of a variable-length dataset of numbers are read.

    ``element`` is the dtype of the elements as the file stores them, ``tail`` the shape of a
    row after its first axis: the shape of an HDF5 array element, or the
    :data:`TAIL_ATTRIBUTE` of rows stored ``flattened``. ``raw`` says that h5py returns the
    elements' stored bytes labelled with the native dtype (see
    :func:`memshard.hdf5.vlen_byte_order`).
    """

    element: np.dtype[Any]
    tail: tuple[int, ...]
    flattened: bool = False
    raw: bool = False

    @property
    def stored(self) -> np.dtype[Any]:
        """The dtype memshard stores."""
        stored = stored_dtype(self.element)
        assert stored is not None  # a layout is only made for elements memshard stores
        return stored


def declared_tail(value: Any) -> tuple[int, ...] | None:
    """The tail a :data:`TAIL_ATTRIBUTE` value gives, if it is a list of integers >= 1.

    Example:
        >>> declared_tail(np.array([3])), declared_tail([2, 0]), declared_tail("3")
        ((3,), None, None)
    """
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu" or bool((array < 1).any()):
        return None
    return tuple(int(size) for size in array)


def packed_rows(
    rows: np.ndarray, layout: VlenLayout, *, where: str, first_row: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows h5py read from a variable-length dataset (an object array of arrays), packed:
    ``(values, offsets)`` with values in the stored dtype and of shape ``(elements, *tail)``.

    Raises:
        SourceError: a row of a dataset stored flattened does not hold whole elements of its
            tail (``where`` and the row, ``first_row`` being the first of ``rows``, are named).

    Example:
        >>> rows = np.empty(3, dtype=object)
        >>> rows[:] = [np.arange(6), np.arange(0), np.arange(3)]
        >>> values, offsets = packed_rows(rows, VlenLayout(np.dtype("<i8"), (3,), flattened=True),
        ...                               where="f.h5: /strokes", first_row=0)
        >>> values.shape, offsets.tolist()
        ((3, 3), [0, 2, 2, 3])
    """
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    filled = [row for row in rows if len(row)]
    if filled:
        values = np.concatenate(filled)
        if layout.raw:  # the stored bytes, labelled native: read them in the stored order
            values = values.view(values.dtype.newbyteorder("S"))
    else:
        values = np.empty((0,) if layout.flattened else (0, *layout.tail), layout.stored)
    if layout.flattened:
        size = math.prod(layout.tail)
        uneven = np.flatnonzero(lengths % size)
        if uneven.size:
            row = int(uneven[0])
            raise SourceError(
                f"{where}: row {first_row + row} holds {int(lengths[row])} elements, not a "
                f"whole number of elements of shape {layout.tail} (its attribute "
                f"{TAIL_ATTRIBUTE})"
            )
        values = values.reshape((-1, *layout.tail))
        lengths //= size
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return values.astype(layout.stored, copy=False), offsets


def object_rows(batch: Ragged, *, flatten: bool) -> np.ndarray:
    """The rows of ``batch`` as the object array h5py writes to a variable-length dataset
    (filled row by row: numpy would make rows of one length a 2-d array), each flattened
    with ``flatten``."""
    rows = np.empty(len(batch), dtype=object)
    for index, row in enumerate(batch):
        rows[index] = row.reshape(-1) if flatten else row
    return rows
