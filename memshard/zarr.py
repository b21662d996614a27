"""zarr stores (format 2 and 3) as a conversion source and an export target. The only module
importing zarr.

Use :func:`memshard.from_zarr` and :func:`memshard.to_zarr`; this module supplies the source
plan (:func:`plan`), the per-process reader and the export.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .convert import require
from .errors import SourceError
from .progress import progress_bar
from .reader import Dataset
from .smallfile import open_regular
from .sources import (
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

zarr = require("zarr", "zarr")

#: Attribute holding a field's label vocabulary, written by :func:`export`.
LABELS_ATTRIBUTE = "labels"
#: Target size of a chunk written by :func:`export`.
EXPORT_CHUNK_BYTES = 4 << 20
#: Metadata files whose size and time identify a store for a resumed conversion.
_METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def plan(
    src: str | os.PathLike[str],
    fields: Mapping[str, str] | None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_attr: str | None = "labels",
) -> SourcePlan:
    """Describe the conversion of the zarr store ``src`` (see :func:`memshard.from_zarr`).

    ``src`` may hold a group (arrays at any depth are found) or a single array.

    Raises:
        SourceError: ``src`` is missing or not a zarr store, or nothing in it can be taken.
        UnsupportedSourceError: a requested array holds data memshard cannot store.
    """
    location = os.path.abspath(os.fspath(src))
    node = _open_node(location)
    if isinstance(node, zarr.Array):
        arrays = [_describe(_single_name(location), node)]
        root_attrs: dict[str, Any] = {}
        left_out: list[str] = []
    else:
        arrays = [
            _describe(path, member)
            for path, member in node.members(max_depth=None)
            if isinstance(member, zarr.Array)
        ]
        root_attrs, left_out = json_attrs_of(dict(node.attrs))
    return plan_source(
        Catalogue("zarr", location, arrays, root_attrs, left_out),
        fields,
        labels=labels,
        label_attr=label_attr,
        identity=lambda chosen: _identity(location, [field.origin for field in chosen.values()]),
        opener=lambda origins: ZarrOpener(location, origins),
    )


def _single_name(location: str) -> str:
    name = os.path.basename(location.rstrip("/"))
    return name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name or "x"


def _open_node(location: str) -> Any:
    if not os.path.exists(location):
        raise SourceError(f"{location}: no such zarr store")
    for name in _METADATA_FILES:  # zarr would wait forever on a FIFO in their place
        where = os.path.join(location, name)
        if os.path.lexists(where):
            os.close(open_regular(where, what="zarr metadata", error=SourceError,
                                  follow_symlinks=True))  # fmt: skip
    try:
        return zarr.open(store=location, mode="r")
    except Exception as exc:  # zarr raises many types for a store it cannot read
        raise SourceError(f"{location}: not a readable zarr store ({exc})") from None


def _describe(path: str, array: Any) -> ArrayInfo:
    dtype = array.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind == "T":
        return ArrayInfo(path, tuple(array.shape), None, problem=f"string dtype {dtype}")
    problem = array_problem(tuple(array.shape), dtype)
    block = array.shards or array.chunks
    attrs, _ = json_attrs_of(dict(array.attrs))
    return ArrayInfo(
        origin=path,
        shape=tuple(array.shape),
        dtype=stored_dtype(dtype) if problem is None else None,
        chunk_rows=block[0] if block else 1,
        attrs=attrs,
        problem=problem,
    )


def _identity(location: str, origins: list[str]) -> dict[str, Any]:
    """Sizes and times of the store's metadata files: enough to notice a rewritten store
    without listing its (possibly millions of) chunk files."""
    seen: dict[str, list[int]] = {}
    for directory in ["", *origins]:
        for name in _METADATA_FILES:
            relative = os.path.join(directory, name) if directory else name
            where = os.path.join(location, relative)
            if os.path.isfile(where):
                status = os.stat(where)
                seen[relative] = [status.st_size, status.st_mtime_ns]
    return {"metadata": seen}


@dataclass(frozen=True)
class ZarrOpener:
    """Opens the store in the calling process (picklable)."""

    location: str
    origins: dict[str, str]

    def __call__(self) -> ZarrReader:
        node = zarr.open(store=self.location, mode="r")
        if isinstance(node, zarr.Array):
            return ZarrReader(dict.fromkeys(self.origins, node))
        return ZarrReader({name: node[path] for name, path in self.origins.items()})


class ZarrReader:
    """Reads blocks of rows; numpy converts big-endian values while copying into ``out``."""

    def __init__(self, arrays: dict[str, Any]) -> None:
        self._arrays = arrays

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``."""
        if stop > start:
            out[...] = self._arrays[name][start:stop]

    def close(self) -> None:
        """Nothing to release: zarr holds no open files between reads."""


def export(
    dataset: Dataset,
    dst: str | os.PathLike[str],
    *,
    fields: Sequence[str] | None = None,
    zarr_format: int = 3,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write ``dataset`` to the zarr directory store ``dst`` (see :func:`memshard.to_zarr`)."""
    target, temporary, names = export_plan(dataset, dst, fields, overwrite)
    total = sum(dataset[name].nbytes for name in names)
    try:
        group = zarr.open_group(temporary, mode="w-", zarr_format=zarr_format)
        group.attrs.update(dataset.attrs)
        with progress_bar(total, desc=os.path.basename(target), enabled=progress) as bar:
            for name in names:
                _export_field(dataset, name, group, bar.update)
        _replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _replace(temporary: str, target: str) -> None:
    if os.path.lexists(target):
        old = f"{temporary}-old"
        os.rename(target, old)
        os.rename(temporary, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temporary, target)


def _export_field(dataset: Dataset, name: str, group: Any, report: Any) -> None:
    column = dataset[name]
    rows = len(column)
    row_bytes = max(1, column.dtype.itemsize * int(np.prod(column.shape[1:])))
    chunk_rows = max(1, min(rows, EXPORT_CHUNK_BYTES // row_bytes))
    target = group.create_array(
        name, shape=column.shape, dtype=column.dtype, chunks=(chunk_rows, *column.shape[1:])
    )
    if column.labels is not None:
        target.attrs[LABELS_ATTRIBUTE] = list(column.labels)
    for start, stop in block_ranges(0, rows, chunk_rows * max(1, (16 << 20) // EXPORT_CHUNK_BYTES)):
        target[start:stop] = column[start:stop]
        report((stop - start) * row_bytes)
