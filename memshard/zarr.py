"""zarr stores (format 2 and 3) as a conversion source and an export target. The only module
importing zarr.

Use :func:`memshard.from_zarr` and :func:`memshard.to_zarr`; this module supplies the source
plan (:func:`plan`), the per-process reader and the export.

Stores written by other tools hold arrays zarr-python 3 cannot open (a zarr-python 2 string
array whose ``fill_value`` is ``0``, a data type or codec it does not know) or read (a codec
whose package is not installed, a damaged chunk). The group is walked node by node, so such an
array is left out of an automatic selection, or refused when requested, with a
:class:`~memshard.errors.SourceError` naming the store, the array, the chunk and what to
install; no zarr exception reaches the caller.

Variable-length arrays are not converted: zarr-python 3 has no data type for the object
arrays that zarr-python 2 stored them as (numcodecs codec ``vlen-array``), and the zarr v3
specification none for variable-length numbers, so such an array is refused by name
(:func:`vlen_array_refusal`) and a ragged field is never exported (:func:`export`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import zarrstore
from .codecs import BLOSC_SHUFFLES
from .dependencies import require
from .errors import SchemaError, SourceError, UnsupportedSourceError
from .exportcodec import Compression, CompressionChoice, chosen_compressions
from .progress import progress_bar
from .reader import Dataset
from .sources import (
    ArrayInfo,
    Catalogue,
    SourcePlan,
    array_problem,
    block_ranges,
    check_fields,
    export_plan,
    json_attrs_of,
    plan_source,
    source_errors,
    stored_dtype,
)

zarr = require("zarr", "zarr")

#: Attribute holding a field's label vocabulary, written by :func:`export`.
LABELS_ATTRIBUTE = "labels"
#: Target size of a chunk written by :func:`export`.
EXPORT_CHUNK_BYTES = 4 << 20


def plan(
    src: str | os.PathLike[str],
    fields: Mapping[str, str] | None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_attr: str | None = "labels",
) -> SourcePlan:
    """Describe the conversion of the zarr store ``src`` (see :func:`memshard.from_zarr`).

    ``src`` may hold a group (arrays at any depth are found) or a single array. Without
    ``fields``, an array that zarr cannot open or whose first chunk it cannot read is left out
    and listed in ``skipped``; with ``fields``, only the arrays requested are opened.

    Raises:
        SourceError: ``src`` is missing or not a zarr store, a requested array is missing or
            cannot be read, or nothing in it can be taken.
        UnsupportedSourceError: a requested array holds data memshard cannot store, or needs
            a codec that is not installed (the message says what to install).
    """
    location = os.path.abspath(os.fspath(src))
    check_fields(fields, location)
    store = _Store(location)
    if _open_node_kind(location) == "array":
        paths = {_single_name(location): ""}
        root_attrs: dict[str, Any] = {}
        left_out: list[str] = []
    else:
        paths = _requested_paths(location, fields)
        root_attrs, left_out = json_attrs_of(_group_attrs(location))

    def available() -> list[str]:
        return list(paths) if "" in paths.values() else list(_requested_paths(location, None))

    arrays = [store.describe(origin, path) for origin, path in paths.items()]
    catalogue = Catalogue("zarr", location, arrays, root_attrs, left_out, available)
    return plan_source(
        catalogue,
        fields,
        labels=labels,
        label_attr=label_attr,
        identity=lambda chosen: zarrstore.identity(
            location, [field.origin for field in chosen.values()]
        ),
        opener=lambda origins: ZarrOpener(location, {n: paths[o] for n, o in origins.items()}),
        probe=lambda origin: store.check_readable(paths[origin]),
    )


def _single_name(location: str) -> str:
    name = os.path.basename(location.rstrip("/"))
    return name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name or "x"


def _open_node_kind(location: str) -> str:
    """``"array"`` or ``"group"``: what the store at ``location`` holds at its root.

    Raises:
        SourceError: nothing is there, or no zarr metadata.
    """
    if not os.path.exists(location):
        raise SourceError(f"{location}: no such zarr store")
    if not os.path.isdir(location):
        raise SourceError(f"{location}: not a zarr store (not a directory)")
    kind = zarrstore.node_kind(location)
    if kind is None:
        raise SourceError(
            f"{location}: not a zarr store (no zarr.json, .zarray or .zgroup in the directory)"
        )
    return kind


def _requested_paths(location: str, fields: Mapping[str, str] | None) -> dict[str, str]:
    """``{origin: path in the store}`` of every array of the group at ``location`` (found by
    walking its groups; none is opened), or of those ``fields`` requests that exist."""
    if fields is None:
        with source_errors(location, "cannot list the store's arrays"):
            found = zarrstore.array_paths(location)
        return {path: path for path in found}
    paths = {}
    for requested in fields.values():
        path = str(requested).strip("/")
        inside = path and ".." not in path.split("/")
        if inside and zarrstore.node_kind(os.path.join(location, path)) == "array":
            paths[path] = path
    return paths


def _group_attrs(location: str) -> dict[str, Any]:
    """The attributes of the group at the store's root (its consolidated metadata, which
    describes every array and fails on any one zarr cannot read, is not used)."""
    with source_errors(location, "not a readable zarr store"), _quiet_zarr():
        group = zarr.open_group(store=location, mode="r", use_consolidated=False)
        return dict(group.attrs)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence zarr's warning that numcodecs codecs are not part of the zarr 3 specification:
    it concerns writing portable stores, and memshard only reads them. (``catch_warnings``
    changes the process's filters for the duration, a short metadata read.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        yield


def _open_array(location: str, path: str) -> Any:
    with _quiet_zarr():
        return zarr.open_array(store=location, path=path, mode="r")


class _Store:
    """The arrays of one store opened while planning (each once)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._arrays: dict[str, Any] = {}

    def describe(self, origin: str, path: str) -> ArrayInfo:
        """The array at ``path``, taken as ``origin``; one memshard must not read (a pickle
        codec) or zarr cannot open gets a problem."""
        metadata = zarrstore.raw_metadata(self.location, path)
        if "pickle" in zarrstore.codec_ids(metadata):
            return ArrayInfo(origin, (), None, problem=zarrstore.PICKLE_REFUSAL)
        try:
            array = self._arrays[path] = _open_array(self.location, path)
        except Exception as exc:  # zarr raises many types for metadata it cannot read
            return _unopenable(origin, metadata, exc)
        try:
            return _describe(origin, array)
        except Exception as exc:
            return ArrayInfo(origin, (), None, unreadable=f"cannot be described ({exc})")

    def check_readable(self, path: str) -> None:
        """Read the first element of the array at ``path``, which decodes its first chunk.

        Raises:
            UnsupportedSourceError: a codec of the array is not installed.
            SourceError: the chunk cannot be read.
        """
        array = self._arrays[path]
        if array.size == 0:
            return
        try:
            array[(0,) * array.ndim]
        except Exception as exc:  # zarr and the codecs raise many types for a bad chunk
            missing = _missing_codec(exc)
            if missing is not None:
                raise UnsupportedSourceError(missing) from exc
            raise SourceError(
                f"its first chunk ({_chunk_key(array, path, 0)}) cannot be read "
                f"({type(exc).__name__}: {exc}); the store may be damaged"
            ) from exc


def _unopenable(origin: str, metadata: dict[str, Any], exc: Exception) -> ArrayInfo:
    """The array (of raw ``metadata``) that zarr cannot open, and why: variable-length rows, a
    data type memshard refuses anyway, a codec that is not installed, or zarr's own reason."""
    vlen = vlen_array_refusal(metadata)
    if vlen is not None:
        return ArrayInfo(origin, (), None, unreadable=vlen)
    refused = zarrstore.refused_type(metadata)
    if refused is not None:
        return ArrayInfo(origin, (), None, problem=refused)
    missing = _missing_codec(exc)
    if missing is not None:
        return ArrayInfo(origin, (), None, unreadable=missing)
    reason = f"zarr {zarr.__version__} cannot open it ({type(exc).__name__}: {exc})"
    return ArrayInfo(origin, (), None, unreadable=reason)


def vlen_array_refusal(metadata: dict[str, Any]) -> str | None:
    """Why an array whose codecs include numcodecs' ``vlen-array`` (variable-length rows,
    stored by zarr-python 2 as an object array) is not converted; ``None`` for another."""
    if "vlen-array" not in zarrstore.codec_ids(metadata):
        return None
    configs = [metadata.get("compressor"), *(metadata.get("filters") or [])]
    element = next(
        (c.get("dtype") for c in configs if isinstance(c, dict) and c.get("id") == "vlen-array"),
        None,
    )
    rows = f"rows of {element}" if isinstance(element, str) else "rows"
    return (
        f"variable-length {rows} (numcodecs codec 'vlen-array'), which zarr-python "
        f"{zarr.__version__} cannot read: it has no data type for object arrays. Read the "
        "rows with zarr-python 2 and pass them to memshard.from_numpy as a list of arrays "
        "(a ragged field)"
    )


def _missing_codec(exc: BaseException) -> str | None:
    """What an exception says about a codec that is missing, in words with the remedy; ``None``
    if it says nothing of the kind. numcodecs raises its ``UnknownCodecError`` for a codec
    whose package is not installed, zarr its own for a codec name it has not registered."""
    if type(exc).__name__ != "UnknownCodecError":
        return None
    match = re.search(r"'+([^']+)'+", str(exc))
    codec = match.group(1) if match else str(exc)
    if type(exc).__module__.startswith("zarr"):
        return _unregistered_advice(codec)
    return zarrstore.codec_advice(codec)


def _unregistered_advice(codec: str) -> str:
    """That zarr-python has no codec named ``codec``, and what to do."""
    known = importlib.import_module("numcodecs.registry").codec_registry
    if codec in known or codec in zarrstore.NUMCODECS_EXTRAS:
        fix = (
            f"zarr-python names the numcodecs codec 'numcodecs.{codec}' (stores written by "
            "other implementations, such as the Rust zarrs library, may use the bare name); "
            f"naming it so in the array's zarr.json lets zarr-python read it"
        )
    else:
        fix = (
            "install the package that provides it and import it before converting, so that "
            "it registers the codec with zarr"
        )
    return f"zarr-python {zarr.__version__} has no codec named {codec!r}: {fix}"


def _chunk_key(array: Any, path: str, row: int) -> str:
    """The store key of the chunk (the shard, if sharded) holding ``row`` and the first
    element of each other axis, as ``"key ..."``; a placeholder if zarr cannot say."""
    block = array.shards or array.chunks
    coordinates = (row // block[0], *([0] * (array.ndim - 1)))
    try:
        key = array.metadata.encode_chunk_key(coordinates)
    except Exception:  # a metadata class without the method: name the position instead
        return f"chunk {coordinates}"
    stored = f"{path}/{key}" if path else key
    return f"key {stored!r}"


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


@dataclass(frozen=True)
class ZarrOpener:
    """Opens the arrays in the calling process (picklable). ``paths`` maps each field to its
    array's path in the store (``""``: the store is that array)."""

    location: str
    paths: dict[str, str]

    def __call__(self) -> ZarrReader:
        """Open the arrays.

        Raises:
            SourceError: an array cannot be opened (the store changed since it was planned).
        """
        arrays = {}
        for name, path in self.paths.items():
            try:
                arrays[name] = _open_array(self.location, path)
            except Exception as exc:  # zarr raises many types for a store it cannot read
                raise SourceError(
                    f"{_where(self.location, path)}: cannot be opened any more "
                    f"({type(exc).__name__}: {exc}); the store changed since it was planned"
                ) from exc
        return ZarrReader(self.location, arrays, self.paths)


def _where(location: str, path: str) -> str:
    return f"{location}: array {path!r}" if path else f"{location} (an array)"


class ZarrReader:
    """Reads blocks of rows; numpy converts big-endian values while copying into ``out``.

    Every failure is a :class:`SourceError` naming the store, the array and the chunk.
    """

    def __init__(self, location: str, arrays: dict[str, Any], paths: dict[str, str]) -> None:
        self._location = location
        self._arrays = arrays
        self._paths = paths

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            UnsupportedSourceError: a codec of the array is not installed here.
            SourceError: a chunk of those rows cannot be read (the message names it).
        """
        if stop <= start:
            return
        try:
            out[...] = self._arrays[name][start:stop]
        except Exception as exc:  # zarr and the codecs raise many types for a bad chunk
            raise self._failure(name, start, stop, exc) from exc

    def _failure(self, name: str, start: int, stop: int, exc: Exception) -> SourceError:
        path = self._paths[name]
        where = f"{_where(self._location, path)}, block of rows {start}:{stop}"
        missing = _missing_codec(exc)
        if missing is not None:
            return UnsupportedSourceError(f"{where}: {missing}")
        array = self._arrays[name]
        row, cause = _first_bad_chunk(array, start, stop, exc)
        return SourceError(
            f"{where}: the chunk at row {row} ({_chunk_key(array, path, row)}) cannot be read "
            f"({type(cause).__name__}: {cause}); the store may be damaged"
        )

    def close(self) -> None:
        """Nothing to release: zarr holds no open files between reads."""


def _first_bad_chunk(
    array: Any, start: int, stop: int, exc: Exception
) -> tuple[int, BaseException]:
    """The first row of the first chunk of rows ``start:stop`` that fails to read, with its
    error, found by reading chunk by chunk (after a failed read only); ``start`` and ``exc``
    if every chunk reads.

    A chunk counts as bad only if it fails twice in a row: a codec's first call after a
    failed decompression may fail once on intact data (seen with blosc), and the message
    must name the damaged chunk, not its neighbour."""
    step = (array.shards or array.chunks)[0]
    first = start - start % step
    for row in range(first, stop, step):
        rows = slice(max(row, start), min(row + step, stop))
        cause = _read_error(array, rows)
        if cause is not None and _read_error(array, rows) is not None:
            return rows.start, cause
    return start, exc


def _read_error(array: Any, rows: slice) -> BaseException | None:
    """What reading ``rows`` of ``array`` raises, or None."""
    try:
        array[rows]
    except Exception as cause:  # zarr and the codecs raise many types for a bad chunk
        return cause
    return None


def export(
    dataset: Dataset,
    dst: str | os.PathLike[str],
    *,
    fields: Sequence[str] | None = None,
    zarr_format: int = 3,
    compression: CompressionChoice = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write ``dataset`` to the zarr directory store ``dst`` (see :func:`memshard.to_zarr`),
    each array compressed as :func:`memshard.exportcodec.chosen_compressions` says
    (:func:`_compressors`).

    Raises:
        SchemaError: a field to export is ragged, or ``compression`` names lzf (nothing is
            written).
    """
    target, temporary, names = export_plan(dataset, dst, fields, overwrite)
    codecs = {name: dataset.manifest.fields[name].codec for name in names}
    compressions = chosen_compressions(compression, codecs, refusal=_refusal)
    ragged = [name for name in names if dataset.manifest.fields[name].ragged]
    if ragged:
        others = [name for name in names if name not in ragged]
        raise SchemaError(
            f"{dataset.path}: field {ragged[0]!r} is ragged, and zarr-python "
            f"{zarr.__version__} writes no variable-length arrays (zarr format 3 has no such "
            f"data type); export the other fields with fields={others!r}, or the ragged "
            "ones with memshard.to_hdf5 (variable-length datasets)"
        )
    total = sum(dataset[name].nbytes for name in names)
    try:
        group = zarr.open_group(temporary, mode="w-", zarr_format=zarr_format)
        group.attrs.update(dataset.attrs)
        with progress_bar(total, desc=os.path.basename(target), enabled=progress) as bar:
            for name in names:
                compressors = _compressors(compressions[name], zarr_format)
                _export_field(dataset, name, group, compressors, bar.update)
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


def _refusal(name: str, compression: Compression) -> str | None:
    """Why zarr cannot write ``compression``: lzf is no zarr codec."""
    if compression.name == "lzf":
        return "lzf is no zarr codec (zstd, blosc, lz4 and gzip are)"
    return None


def _compressors(compression: Compression | None, zarr_format: int) -> tuple[Any, ...]:
    """The ``compressors`` of an array compressed with ``compression``: the zarr v3 codecs
    (lz4 as blosc with lz4 and no shuffle: the specification has no lz4 codec), or numcodecs'
    codecs for zarr format 2."""
    if compression is None:
        return ()
    params = compression.params
    if zarr_format == 2:
        numcodecs = importlib.import_module("numcodecs")
        if compression.name == "blosc":
            shuffles = BLOSC_SHUFFLES[params["shuffle"]]
            return (numcodecs.Blosc(params["cname"], params["clevel"], shuffles),)
        made = {"zstd": numcodecs.Zstd, "lz4": numcodecs.LZ4, "gzip": numcodecs.GZip}
        return (made[compression.name](*params.values()),)
    codecs = importlib.import_module("zarr.codecs")
    if compression.name == "zstd":
        return (codecs.ZstdCodec(level=params["level"]),)
    if compression.name == "gzip":
        return (codecs.GzipCodec(level=params["level"]),)
    if compression.name == "lz4":
        return (codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),)
    shuffle = {"none": "noshuffle", "byte": "shuffle", "bit": "bitshuffle"}[params["shuffle"]]
    return (codecs.BloscCodec(cname=params["cname"], clevel=params["clevel"], shuffle=shuffle),)


def _export_field(
    dataset: Dataset, name: str, group: Any, compressors: tuple[Any, ...], report: Any
) -> None:
    column = dataset[name]
    rows = len(column)
    row_bytes = max(1, column.dtype.itemsize * int(np.prod(column.shape[1:])))
    chunk_rows = max(1, min(rows, EXPORT_CHUNK_BYTES // row_bytes))
    target = group.create_array(
        name,
        shape=column.shape,
        dtype=column.dtype,
        chunks=(chunk_rows, *column.shape[1:]),
        compressors=compressors,
    )
    if column.labels is not None:
        target.attrs[LABELS_ATTRIBUTE] = list(column.labels)
    for start, stop in block_ranges(0, rows, chunk_rows * max(1, (16 << 20) // EXPORT_CHUNK_BYTES)):
        target[start:stop] = column[start:stop]
        report((stop - start) * row_bytes)
