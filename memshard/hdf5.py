"""HDF5 files as a conversion source and an export target. The only module importing h5py.

Use :func:`memshard.from_hdf5` and :func:`memshard.to_hdf5`; this module supplies the
source plan (:func:`plan`), the per-process reader and the export.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .convert import require
from .errors import SourceError
from .progress import progress_bar
from .reader import Dataset
from .sources import (
    MAX_BLOCK_BYTES,
    ArrayInfo,
    Catalogue,
    SourcePlan,
    array_problem,
    block_ranges,
    export_plan,
    json_attrs_of,
    plan_source,
    stored_dtype,
)

h5py = require("h5py", "hdf5")

#: Root attribute :func:`export` writes the manifest attributes to, as JSON text.
ATTRS_ATTRIBUTE = "memshard_attrs"
#: Attribute holding a field's label vocabulary, written by :func:`export`.
LABELS_ATTRIBUTE = "labels"
#: Largest HDF5 chunk cache per dataset while converting. Reads cover whole chunks, which
#: HDF5 then copies straight into the buffer, so the cache is only sized (up to this) for
#: chunks larger than a read block; a cache holding whole chunks would halve the read speed.
MAX_CHUNK_CACHE_BYTES = 256 << 20
#: Target size of a chunk written by :func:`export`.
EXPORT_CHUNK_BYTES = 1 << 20


def plan(
    src: str | os.PathLike[str],
    fields: Mapping[str, str] | None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_attr: str | None = "labels",
) -> SourcePlan:
    """Describe the conversion of the HDF5 file ``src`` (see :func:`memshard.from_hdf5`).

    Raises:
        SourceError: ``src`` is missing or not an HDF5 file, or nothing in it can be taken.
        UnsupportedSourceError: a requested dataset holds data memshard cannot store.
    """
    location = os.path.abspath(os.fspath(src))
    with _open_file(location) as handle:
        arrays = _arrays_in(handle) + _linked_arrays(handle, fields)
        root_attrs, left_out = _attributes(handle)
    return plan_source(
        Catalogue("hdf5", location, arrays, root_attrs, left_out),
        fields,
        labels=labels,
        label_attr=label_attr,
        identity=lambda _: _identity(location),
        opener=lambda origins: Hdf5Opener(location, origins, _cache_bytes(arrays, origins)),
    )


def _cache_bytes(arrays: list[ArrayInfo], origins: dict[str, str]) -> int:
    """0 when every chunk is read whole; else room for the largest chunk (bounded)."""
    largest = max(
        (info.chunk_bytes for info in arrays if info.origin in origins.values()), default=0
    )
    return 0 if largest <= MAX_BLOCK_BYTES else min(largest, MAX_CHUNK_CACHE_BYTES)


def _open_file(location: str) -> Any:
    if not os.path.exists(location):
        raise SourceError(f"{location}: no such file")
    try:
        if not h5py.is_hdf5(location):
            raise SourceError(f"{location}: not an HDF5 file")
        return h5py.File(location, "r")
    except OSError as exc:
        raise SourceError(f"{location}: cannot open as HDF5 ({exc})") from None


def _identity(location: str) -> dict[str, Any]:
    status = os.stat(location)
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _arrays_in(handle: Any) -> list[ArrayInfo]:
    found: list[ArrayInfo] = []

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            found.append(_describe(node))

    handle.visititems(visit)
    return found


def _linked_arrays(handle: Any, fields: Mapping[str, str] | None) -> list[ArrayInfo]:
    """Requested datasets under the path asked for: a soft link, or another name of a
    hard-linked dataset, which a traversal visits only once and under one name."""
    found = []
    for path in (fields or {}).values():
        origin = "/" + str(path).strip("/")
        try:
            node = handle.get(origin)
        except (KeyError, OSError, ValueError):  # a dangling or external link
            continue
        if isinstance(node, h5py.Dataset):
            found.append(_describe(node, origin))
    return found


def _describe(dataset: Any, origin: str | None = None) -> ArrayInfo:
    origin = origin or dataset.name
    attrs, _ = _attributes(dataset)
    shape = dataset.shape
    if shape is None:
        return ArrayInfo(origin, (), None, problem="an empty (null dataspace) dataset")
    problem = array_problem(shape, dataset.dtype)
    if problem is None and h5py.check_dtype(ref=dataset.dtype) is not None:
        problem = "reference data"
    chunks = dataset.chunks
    return ArrayInfo(
        origin=origin,
        shape=tuple(shape),
        dtype=stored_dtype(dataset.dtype) if problem is None else None,
        chunk_rows=chunks[0] if chunks else 1,
        chunk_bytes=math.prod(chunks) * dataset.dtype.itemsize if chunks else 0,
        attrs=attrs,
        problem=problem,
    )


def _attributes(node: Any) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    unreadable: list[str] = []
    for key in node.attrs:
        try:
            values[key] = node.attrs[key]
        except (OSError, TypeError, ValueError):  # types h5py cannot read
            unreadable.append(key)
    embedded = values.pop(ATTRS_ATTRIBUTE, None)
    kept, left_out = json_attrs_of(values)
    if embedded is not None:
        kept.update(_embedded_attrs(embedded))
    return kept, unreadable + left_out


def _embedded_attrs(value: Any) -> dict[str, Any]:
    """The manifest attributes an export stored as JSON text (ignored if not such text)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        decoded = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


@dataclass(frozen=True)
class Hdf5Opener:
    """Opens the file in the calling process (picklable: a worker calls it after spawn)."""

    location: str
    origins: dict[str, str]
    cache_bytes: int = 0

    def __call__(self) -> Hdf5Reader:
        handle = h5py.File(self.location, "r", rdcc_nbytes=self.cache_bytes)
        return Hdf5Reader(handle, {name: handle[path] for name, path in self.origins.items()})


class Hdf5Reader:
    """Reads blocks of rows straight into the caller's buffer; HDF5 converts the byte order."""

    def __init__(self, handle: Any, datasets: dict[str, Any]) -> None:
        self._handle = handle
        self._datasets = datasets

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``."""
        if stop > start:
            self._datasets[name].read_direct(out, np.s_[start:stop])

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def export(
    dataset: Dataset,
    dst: str | os.PathLike[str],
    *,
    fields: Sequence[str] | None = None,
    compression: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write ``dataset`` to the HDF5 file ``dst`` (see :func:`memshard.to_hdf5`)."""
    target, temporary, names = export_plan(dataset, dst, fields, overwrite)
    total = sum(dataset[name].nbytes for name in names)
    try:
        with (
            h5py.File(temporary, "w") as handle,
            progress_bar(total, desc=os.path.basename(target), enabled=progress) as bar,
        ):
            handle.attrs[ATTRS_ATTRIBUTE] = json.dumps(dataset.attrs)
            for name in names:
                _export_field(dataset, name, handle, compression, bar.update)
        os.replace(temporary, target)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _export_field(
    dataset: Dataset, name: str, handle: Any, compression: str | None, report: Any
) -> None:
    column = dataset[name]
    rows = len(column)
    row_bytes = max(1, column.dtype.itemsize * int(np.prod(column.shape[1:])))
    chunk_rows = max(1, min(rows, EXPORT_CHUNK_BYTES // row_bytes))
    target = handle.create_dataset(
        name,
        shape=column.shape,
        dtype=column.dtype,
        chunks=(chunk_rows, *column.shape[1:]) if rows else None,
        compression=compression if rows else None,
    )
    if column.labels is not None:
        target.attrs[LABELS_ATTRIBUTE] = np.array(column.labels, dtype=h5py.string_dtype())
    block = chunk_rows * max(1, (8 << 20) // (chunk_rows * row_bytes))
    for start, stop in block_ranges(0, rows, block):
        target[start:stop] = column[start:stop]
        report((stop - start) * row_bytes)
