"""HDF5 files as a conversion source and an export target. The only module importing h5py.

Use :func:`memshard.from_hdf5` and :func:`memshard.to_hdf5`; this module supplies the
source plan (:func:`plan`), the per-process reader and the export.

Files written by other tools are often compressed with filters that HDF5 itself lacks (blosc,
lz4, zstd, bitshuffle: PyTables, detector data). They are loaded from ``hdf5plugin`` when it
is installed (the ``hdf5`` extra), or from ``HDF5_PLUGIN_PATH``. A dataset whose filter is
missing, whose HDF5 type NumPy cannot hold, or which cannot be read is left out of an
automatic selection, or refused when requested, with a :class:`~memshard.errors.SourceError`
naming the file, the dataset and what to install; no h5py exception reaches the caller.

A variable-length dataset of numbers (``h5py.vlen_dtype(np.int32)``, PyTables' ``VLArray``)
with one dimension becomes a ragged field: rows of shape ``(n,)``, or ``(n, *tail)`` when its
elements are HDF5 arrays of shape ``tail`` (a ``VLArray`` of a shaped atom) or when it carries
the attribute :data:`TAIL_ATTRIBUTE` that :func:`export` writes (h5py cannot write variable-
length rows of arrays, so an export stores a row of shape ``(n, *tail)`` flattened). Its mean
row length is estimated from :data:`SAMPLE_RUNS` runs of rows read while planning.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codecs import BLOSC_SHUFFLES
from .dependencies import install_hint, require
from .errors import SourceError, UnsupportedSourceError
from .exportcodec import EXPORT_ONLY, Compression, CompressionChoice, chosen_compressions
from .progress import progress_bar
from .ragged import NUMBER_KINDS, Ragged
from .reader import Dataset
from .sources import (
    MAX_BLOCK_BYTES,
    ArrayInfo,
    Catalogue,
    SourcePlan,
    array_problem,
    block_ranges,
    check_fields,
    describe_dtype_problem,
    export_plan,
    json_attrs_of,
    plan_source,
    sample_ranges,
    source_errors,
    stored_dtype,
)
from .vlenrows import TAIL_ATTRIBUTE, VlenLayout, declared_tail, object_rows, packed_rows

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
#: Rows are exported in blocks of about this size.
EXPORT_BLOCK_BYTES = 8 << 20
#: Bytes a variable-length dataset's chunk stores per row (a global heap reference: the rows'
#: elements live in the file's global heap, not in the chunks).
VLEN_REFERENCE_BYTES = 16
#: The mean row length of a variable-length dataset is measured on this many runs of rows,
#: spread evenly over it ...
SAMPLE_RUNS = 16
#: ... of this many rows each.
SAMPLE_RUN_ROWS = 64
#: The filters ``hdf5plugin`` provides, by their registered HDF5 filter id.
HDF5PLUGIN_FILTERS = {
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32017: "sz",
    32018: "fcidecomp",
    32024: "sz3",
    32026: "blosc2",
    32028: "sperr",
    32033: "htj2k",
    307: "bzip2",
}
#: Where the registered HDF5 filters are listed, with a plugin for each.
FILTER_REGISTRY = "https://github.com/HDFGroup/hdf5_plugins"


def _load_hdf5plugin() -> bool:
    """Import ``hdf5plugin``, which registers its filters with HDF5; whether it is there."""
    try:
        importlib.import_module("hdf5plugin")
    except ImportError:
        return False
    return True


#: Whether the filters of ``hdf5plugin`` are registered in this process. Conversion workers
#: import this module too (to unpickle the opener), so they load the same filters.
HDF5PLUGIN_LOADED = _load_hdf5plugin()

_TYPE_CLASSES = {
    h5py.h5t.INTEGER: "integer",
    h5py.h5t.FLOAT: "floating-point",
    h5py.h5t.TIME: "time",
    h5py.h5t.STRING: "string",
    h5py.h5t.BITFIELD: "bitfield",
    h5py.h5t.OPAQUE: "opaque",
    h5py.h5t.COMPOUND: "compound",
    h5py.h5t.REFERENCE: "reference",
    h5py.h5t.ENUM: "enumeration",
    h5py.h5t.VLEN: "variable-length",
    h5py.h5t.ARRAY: "array",
}


def plan(
    src: str | os.PathLike[str],
    fields: Mapping[str, str] | None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_attr: str | None = "labels",
) -> SourcePlan:
    """Describe the conversion of the HDF5 file ``src`` (see :func:`memshard.from_hdf5`).

    Without ``fields``, every dataset is described and those that cannot be (an HDF5 type
    NumPy has no dtype for, a missing filter, an unreadable first chunk) are left out and
    listed in ``skipped``; with ``fields``, only the datasets requested are opened.

    Raises:
        SourceError: ``src`` is missing or not an HDF5 file, a requested dataset is missing
            or cannot be read, or nothing in it can be taken.
        UnsupportedSourceError: a requested dataset holds data memshard cannot store, or is
            compressed with a filter that is not available (the message says what to
            install).
    """
    location = os.path.abspath(os.fspath(src))
    check_fields(fields, location)
    with _open_file(location) as handle:
        with source_errors(location, "cannot read the file's structure"):
            arrays = _catalogue(handle, fields)
            root_attrs, left_out = _attributes(handle)
        catalogue = Catalogue(
            "hdf5",
            location,
            arrays,
            root_attrs,
            left_out,
            available=lambda: _dataset_paths(handle, location),
        )
        return plan_source(
            catalogue,
            fields,
            labels=labels,
            label_attr=label_attr,
            identity=lambda _: _identity(location),
            opener=lambda origins: Hdf5Opener(
                location, origins, _cache_bytes(arrays, origins), _identity(location)["size"]
            ),
            probe=lambda origin: _probe(handle, origin),
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


def _catalogue(handle: Any, fields: Mapping[str, str] | None) -> list[ArrayInfo]:
    """Every dataset of the file described; with ``fields``, only those requested."""
    if fields is None:
        found = [_describe_at(handle, "/" + name) for name in _names(handle)]
    else:
        found = [_describe_at(handle, "/" + str(path).strip("/"), True) for path in fields.values()]
    return [info for info in found if info is not None]


def _names(handle: Any) -> list[str]:
    """The path of every object in the file, each hard-linked object once, without opening
    any (h5py's ``visititems`` opens each, and one it cannot open would stop the visit)."""
    names: list[str] = []
    handle.visit(names.append)
    return names


def _dataset_paths(handle: Any, location: str) -> list[str]:
    """The path of every dataset, for a message; none is opened."""
    with source_errors(location, "cannot list the file's datasets"):
        return [
            "/" + name for name in _names(handle) if handle.get(name, getclass=True) is h5py.Dataset
        ]


def _describe_at(handle: Any, origin: str, requested: bool = False) -> ArrayInfo | None:
    """The dataset at ``origin`` described (``None`` for something else, or, when
    ``requested``, nothing there: a soft link is followed, a dangling one is nothing)."""
    try:
        node = handle.get(origin) if requested else handle[origin]
    except KeyError:  # a dangling soft or external link
        return None
    except Exception as exc:  # an object this HDF5 library cannot open
        return ArrayInfo(origin, (), None, unreadable=f"cannot be opened ({exc})")
    if not isinstance(node, h5py.Dataset):
        return None
    try:
        return _describe(node, origin)
    except Exception as exc:  # h5py raises many types for what it cannot describe
        return ArrayInfo(origin, (), None, unreadable=f"cannot be described ({exc})")


def _describe(dataset: Any, origin: str) -> ArrayInfo:
    attrs, _ = _attributes(dataset)
    shape = dataset.shape
    if shape is None:
        return ArrayInfo(origin, (), None, problem="an empty (null dataspace) dataset")
    try:
        dtype = dataset.dtype
    except (TypeError, ValueError) as exc:  # an HDF5 type with no NumPy equivalent
        return ArrayInfo(origin, tuple(shape), None, problem=_type_problem(dataset, exc))
    element = h5py.check_vlen_dtype(dtype)
    if isinstance(element, np.dtype):  # not a string: str or bytes
        return _describe_vlen(dataset, origin, attrs)
    problem = array_problem(shape, dtype)
    if problem is None and h5py.check_dtype(ref=dtype) is not None:
        problem = "reference data"
    chunks = dataset.chunks
    return ArrayInfo(
        origin=origin,
        shape=tuple(shape),
        dtype=stored_dtype(dtype) if problem is None else None,
        chunk_rows=chunks[0] if chunks else 1,
        chunk_bytes=math.prod(chunks) * dtype.itemsize if chunks else 0,
        attrs=attrs,
        problem=problem,
    )


def vlen_layout(dataset: Any) -> VlenLayout | str:
    """The layout of the variable-length ``dataset``, or why it cannot be a ragged field."""
    element = h5py.check_vlen_dtype(dataset.dtype)
    tail: tuple[int, ...] = ()
    if element.subdtype is not None:
        element, tail = element.subdtype
    if dataset.ndim != 1:
        return (
            f"a variable-length dataset of shape {dataset.shape}: only one-dimensional ones "
            "become ragged fields"
        )
    if stored_dtype(element) is None or element.kind not in NUMBER_KINDS:
        return f"variable-length rows of {describe_dtype_problem(element)}"
    if any(size == 0 for size in tail):
        return f"variable-length rows of elements of shape {tail}, which hold no elements"
    order = vlen_byte_order() if element.byteorder == _FOREIGN else "converted"
    if order == "unknown":
        return (
            f"variable-length rows of {element.str}: h5py {h5py.__version__} reads elements "
            "stored in the other byte order in a way memshard cannot tell"
        )
    layout = VlenLayout(element, tuple(tail), raw=order == "raw")
    declared = dataset.attrs.get(TAIL_ATTRIBUTE)
    if declared is None or tail:
        return layout
    flat = declared_tail(declared)
    if flat is None:
        return f"its attribute {TAIL_ATTRIBUTE} ({declared!r:.60}) is not a list of integers >= 1"
    return VlenLayout(element, flat, flattened=True, raw=layout.raw)


#: The byte order a dtype other than this machine's is marked with.
_FOREIGN = ">" if sys.byteorder == "little" else "<"


@functools.cache
def vlen_byte_order() -> str:
    """How this h5py reads a variable-length dataset whose elements are stored in the
    non-native byte order: ``"converted"`` (their values), ``"raw"`` (their stored bytes
    under the native dtype: h5py 3.16 does this, so PyTables' big-endian ``VLArray`` reads as
    garbage) or ``"unknown"``. Found once per process on a file in memory, whose bytes are
    checked to hold the elements in the order the file declares."""
    values = np.array([0x01020304, 0x05060708], dtype=np.int32)
    foreign = values.dtype.newbyteorder("S")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        dataset = handle.create_dataset("v", shape=(1,), dtype=h5py.vlen_dtype(foreign))
        dataset[0] = values
        handle.flush()
        row = np.asarray(dataset[0])
    if buffer.getvalue().find(values.astype(foreign).tobytes()) < 0 or row.shape != (2,):
        return "unknown"
    if np.array_equal(row, values):
        return "converted"
    if np.array_equal(row.view(row.dtype.newbyteorder("S")), values):
        return "raw"
    return "unknown"


def _describe_vlen(dataset: Any, origin: str, attrs: dict[str, Any]) -> ArrayInfo:
    """A variable-length dataset described as a ragged array (or refused with the reason)."""
    layout = vlen_layout(dataset)
    if isinstance(layout, str):
        return ArrayInfo(origin, tuple(dataset.shape), None, attrs=attrs, problem=layout)
    chunks = dataset.chunks
    return ArrayInfo(
        origin=origin,
        shape=(dataset.shape[0], *layout.tail),
        dtype=layout.stored,
        chunk_rows=chunks[0] if chunks else 1,
        chunk_bytes=chunks[0] * VLEN_REFERENCE_BYTES if chunks else 0,
        attrs=attrs,
        ragged=True,
        elements_per_row=_mean_length(dataset, layout),
    )


def _mean_length(dataset: Any, layout: VlenLayout) -> float:
    """The mean row length of a variable-length dataset, measured on runs of rows spread over
    it; 1 if they cannot be read (the probe of the plan then says why)."""
    try:
        if _missing_filters(dataset):
            return 1.0
        rows = elements = 0
        for start, stop in sample_ranges(dataset.shape[0], SAMPLE_RUNS, SAMPLE_RUN_ROWS):
            lengths = [len(row) for row in dataset[start:stop]]
            rows, elements = rows + len(lengths), elements + sum(lengths)
    except Exception:  # h5py raises many types for a damaged file
        return 1.0
    per_element = math.prod(layout.tail) if layout.flattened else 1
    return elements / per_element / rows if rows else 0.0


def _type_problem(dataset: Any, exc: Exception) -> str:
    """The HDF5 type of ``dataset`` in words: quad-precision floats, time types..."""
    try:
        hdf5_type = dataset.id.get_type()
        kind = _TYPE_CLASSES.get(hdf5_type.get_class(), "unknown")
        size = hdf5_type.get_size()
    except Exception:  # the type cannot even be inspected
        return f"an HDF5 type h5py cannot read ({exc})"
    return f"an HDF5 {kind} type of {size} bytes, which NumPy has no dtype for ({exc})"


def _probe(handle: Any, origin: str) -> None:
    """:func:`check_readable` for the dataset at ``origin``."""
    try:
        dataset = handle[origin]
    except Exception as exc:  # described a moment ago; h5py raises many types
        raise SourceError(f"it cannot be opened ({type(exc).__name__}: {exc})") from exc
    check_readable(dataset)


def check_readable(dataset: Any) -> None:
    """Check that ``dataset`` can be read here: every filter of its pipeline is available,
    and its first stored chunk decodes (a single element is read).

    Raises:
        UnsupportedSourceError: a filter is not available (the message says what to install).
        SourceError: the first chunk cannot be read (the file is damaged).
    """
    try:
        missing = _missing_filters(dataset)
        first = None if missing else _first_stored_element(dataset)
        if first is not None:
            dataset[first]
    except Exception as exc:  # h5py and the filters raise many types for a damaged chunk
        raise SourceError(
            f"its first chunk cannot be read ({type(exc).__name__}: {exc}); the file may be damaged"
        ) from exc
    if missing:
        raise UnsupportedSourceError(_filter_advice(missing))


def _first_stored_element(dataset: Any) -> tuple[int, ...] | None:
    """The index of the first element of the first chunk written (of the dataset, if it is
    not chunked); ``None`` if it holds no element or no chunk is written."""
    if dataset.size == 0:
        return None
    rank: int = dataset.ndim
    if dataset.chunks is None:
        return (0,) * rank
    try:
        info = dataset.id.get_chunk_info(0)
    except ValueError:  # no chunk is written: every value is the fill value
        return None
    return tuple(int(index) for index in info.chunk_offset)


def _missing_filters(dataset: Any) -> list[tuple[int, str]]:
    """The filters of ``dataset``'s pipeline that HDF5 cannot load, as ``(id, name)``."""
    properties = dataset.id.get_create_plist()
    missing = []
    for index in range(properties.get_nfilters()):
        code, _flags, _values, stored_name = properties.get_filter(index)
        if not h5py.h5z.filter_avail(code):
            text = stored_name.decode("utf-8", "replace").split(";")[0].strip()
            missing.append((code, HDF5PLUGIN_FILTERS.get(code, text or "unnamed")))
    return missing


def _filter_advice(missing: list[tuple[int, str]]) -> str:
    """Which filters are missing and how to get them."""
    named = ", ".join(f"{name} (HDF5 filter {code})" for code, name in missing)
    if not HDF5PLUGIN_LOADED and all(code in HDF5PLUGIN_FILTERS for code, _ in missing):
        fix = (
            "install hdf5plugin, which memshard loads by itself: "
            "pip install hdf5plugin (or pip install 'memshard[hdf5]')"
        )
    else:
        fix = (
            "install an HDF5 plugin for it and point HDF5_PLUGIN_PATH at its directory "
            f"(plugins for the registered filters: {FILTER_REGISTRY})"
        )
    return f"it is compressed with {named}, which this HDF5 library cannot load: {fix}"


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
    """Opens the file in the calling process (picklable: a worker calls it after spawn).

    ``size`` is the file's size when the conversion was planned: a file found shorter
    while it is read was truncated, and its reads cannot be trusted.
    """

    location: str
    origins: dict[str, str]
    cache_bytes: int = 0
    size: int = 0

    def __call__(self) -> Hdf5Reader:
        """Open the file and the datasets.

        Raises:
            SourceError: the file cannot be opened (gone, truncated) or a dataset is gone.
        """
        try:
            handle = h5py.File(self.location, "r", rdcc_nbytes=self.cache_bytes)
        except Exception as exc:  # h5py raises OSError for most, others for a damaged file
            raise SourceError(f"{self.location}: cannot open as HDF5 ({exc})") from exc
        try:
            datasets = {name: handle[path] for name, path in self.origins.items()}
            found = {
                name: vlen_layout(dataset)
                for name, dataset in datasets.items()
                if isinstance(h5py.check_vlen_dtype(dataset.dtype), np.dtype)
            }
        except Exception as exc:
            handle.close()
            paths = ", ".join(self.origins.values())
            raise SourceError(
                f"{self.location}: a dataset of the conversion ({paths}) cannot be opened any "
                f"more ({exc}); the file changed since the conversion was planned"
            ) from exc
        layouts = {name: layout for name, layout in found.items() if not isinstance(layout, str)}
        for name, layout in found.items():
            if isinstance(layout, str):
                handle.close()
                raise SourceError(
                    f"{self.location}: dataset {self.origins[name]!r}: {layout}; the file "
                    "changed since the conversion was planned"
                )
        return Hdf5Reader(handle, datasets, self, layouts)


class Hdf5Reader:
    """Reads blocks of rows straight into the caller's buffer; HDF5 converts the byte order.
    Reads the rows of a variable-length dataset as h5py returns them (one array each) and
    packs them (:meth:`read_ragged`).

    Every failure is a :class:`SourceError` naming the file, the dataset and the rows.
    """

    def __init__(
        self,
        handle: Any,
        datasets: dict[str, Any],
        opener: Hdf5Opener,
        layouts: dict[str, VlenLayout] | None = None,
    ) -> None:
        self._handle = handle
        self._datasets = datasets
        self._opener = opener
        self._layouts = layouts or {}
        self._fd: int = handle.id.get_vfd_handle()

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            SourceError: the rows cannot be read, or the file was truncated meanwhile (past
                its end HDF5 reads zeros, so a read that succeeds is checked too).
            UnsupportedSourceError: a filter of the dataset is not available here.
        """
        if stop <= start:
            return
        try:
            self._datasets[name].read_direct(out, np.s_[start:stop])
        except Exception as exc:  # h5py and the filters raise OSError, ValueError, ...
            raise self._failure(name, start, stop, exc) from exc
        truncated = self._truncation()
        if truncated is not None:
            raise SourceError(f"{self._where(name, start, stop)}: {truncated}")

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the variable-length field ``name``, packed as
        ``(values, offsets)`` (see :class:`memshard.sources.RaggedSourceReader`).

        Raises:
            SourceError: as :meth:`read`; or a row of a dataset stored flattened does not
                hold whole elements of its tail.
            UnsupportedSourceError: a filter of the dataset is not available here.
        """
        try:
            rows = self._datasets[name][start:stop]
        except Exception as exc:  # h5py and the filters raise OSError, ValueError, ...
            raise self._failure(name, start, stop, exc) from exc
        truncated = self._truncation()
        if truncated is not None:
            raise SourceError(f"{self._where(name, start, stop)}: {truncated}")
        where = self._where(name, start, stop)
        return packed_rows(rows, self._layouts[name], where=where, first_row=start)

    def _where(self, name: str, start: int, stop: int) -> str:
        origin = self._opener.origins[name]
        return f"{self._opener.location}: dataset {origin!r}, block of rows {start}:{stop}"

    def _truncation(self) -> str | None:
        size = os.fstat(self._fd).st_size
        if size >= self._opener.size:
            return None
        return (
            f"the file was truncated while being converted (now {size:,} bytes, "
            f"{self._opener.size:,} when the conversion began); convert a complete copy"
        )

    def _failure(self, name: str, start: int, stop: int, exc: Exception) -> SourceError:
        where = self._where(name, start, stop)
        truncated = self._truncation()
        if truncated is not None:
            return SourceError(f"{where}: {truncated}")
        try:
            missing = _missing_filters(self._datasets[name])
        except Exception:  # the pipeline cannot be inspected: report the read error
            missing = []
        if missing:
            return UnsupportedSourceError(f"{where}: {_filter_advice(missing)}")
        return SourceError(
            f"{where}: cannot be read ({type(exc).__name__}: {exc}); the file may be damaged"
        )

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def export(
    dataset: Dataset,
    dst: str | os.PathLike[str],
    *,
    fields: Sequence[str] | None = None,
    compression: CompressionChoice = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write ``dataset`` to the HDF5 file ``dst`` (see :func:`memshard.to_hdf5`): a dataset
    per field, a variable-length one for a ragged field (:func:`_export_ragged`), compressed
    as :func:`memshard.exportcodec.chosen_compressions` says (:func:`_filter`).

    Raises:
        SchemaError: a compression named that this HDF5 cannot write (zstd, lz4 or blosc
            without ``hdf5plugin``).
    """
    target, temporary, names = export_plan(dataset, dst, fields, overwrite)
    specs = dataset.manifest.fields
    # A ragged field's codec is not mirrored: a variable-length dataset's chunks hold the
    # references to its rows (its rows live in the file's heap), and only they compress.
    codecs = {name: None if specs[name].ragged else specs[name].codec for name in names}
    compressions = chosen_compressions(compression, codecs, refusal=_refusal)
    total = sum(dataset[name].nbytes for name in names)
    try:
        with (
            h5py.File(temporary, "w") as handle,
            progress_bar(total, desc=os.path.basename(target), enabled=progress) as bar,
        ):
            handle.attrs[ATTRS_ATTRIBUTE] = json.dumps(dataset.attrs)
            for name in names:
                _export_field(dataset, name, handle, _filter(compressions[name]), bar.update)
        os.replace(temporary, target)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _refusal(name: str, compression: Compression) -> str | None:
    """Why the file cannot be written with ``compression``: its filter is a plugin and
    ``hdf5plugin`` is missing."""
    if compression.name in EXPORT_ONLY or HDF5PLUGIN_LOADED:
        return None
    return f"{compression.name} is an HDF5 plugin filter; {install_hint('hdf5plugin', 'hdf5')}"


def _filter(compression: Compression | None) -> dict[str, Any]:
    """The keyword arguments of ``h5py``'s ``create_dataset`` that compress with
    ``compression`` (none for ``None``)."""
    if compression is None:
        return {}
    params = compression.params
    if compression.name == "gzip":
        return {"compression": "gzip", "compression_opts": params["level"]}
    if compression.name == "lzf":
        return {"compression": "lzf"}
    plugins = importlib.import_module("hdf5plugin")
    if compression.name == "zstd":
        return dict(plugins.Zstd(clevel=params["level"]))
    if compression.name == "lz4":
        return dict(plugins.LZ4())
    shuffle = BLOSC_SHUFFLES[params["shuffle"]]
    return dict(plugins.Blosc(cname=params["cname"], clevel=params["clevel"], shuffle=shuffle))


def _export_field(
    dataset: Dataset, name: str, handle: Any, compression: dict[str, Any], report: Any
) -> None:
    if dataset.manifest.fields[name].ragged:
        _export_ragged(dataset, name, handle, compression, report)
        return
    column = dataset[name]
    rows = len(column)
    row_bytes = max(1, column.dtype.itemsize * int(np.prod(column.shape[1:])))
    chunk_rows = max(1, min(rows, EXPORT_CHUNK_BYTES // row_bytes))
    target = handle.create_dataset(
        name,
        shape=column.shape,
        dtype=column.dtype,
        chunks=(chunk_rows, *column.shape[1:]) if rows else None,
        **(compression if rows else {}),
    )
    if column.labels is not None:
        target.attrs[LABELS_ATTRIBUTE] = np.array(column.labels, dtype=h5py.string_dtype())
    block = chunk_rows * max(1, EXPORT_BLOCK_BYTES // (chunk_rows * row_bytes))
    for start, stop in block_ranges(0, rows, block):
        target[start:stop] = column[start:stop]
        report((stop - start) * row_bytes)


def _export_ragged(
    dataset: Dataset, name: str, handle: Any, compression: dict[str, Any], report: Any
) -> None:
    """Write the ragged field ``name`` as a one-dimensional variable-length dataset of its
    dtype. h5py cannot write rows of HDF5 array elements, so rows of a field with a tail are
    written flattened (``n * prod(tail)`` elements) and the tail recorded in the attribute
    :data:`TAIL_ATTRIBUTE`, which :func:`plan` reads back."""
    spec = dataset.manifest.fields[name]
    column = dataset[name]
    rows = len(column)
    chunk_rows = max(1, min(rows, EXPORT_CHUNK_BYTES // VLEN_REFERENCE_BYTES))
    target = handle.create_dataset(
        name,
        shape=(rows,),
        dtype=h5py.vlen_dtype(spec.numpy_dtype),
        chunks=(chunk_rows,) if rows else None,
        **(compression if rows else {}),
    )
    if spec.shape:
        target.attrs[TAIL_ATTRIBUTE] = np.array(spec.shape, dtype=np.int64)
    row_bytes = max(1, column.nbytes // max(1, rows))  # a row of the mean length
    block = max(1, EXPORT_BLOCK_BYTES // row_bytes)
    for start, stop in block_ranges(0, rows, block):
        batch: Ragged = column[start:stop]
        # Not target[start:stop] = ...: h5py takes an object array of rows of one length
        # for a 2-d array and refuses it.
        objects = object_rows(batch, flatten=bool(spec.shape))
        target.write_direct(objects, dest_sel=np.s_[start:stop])
        report(batch.values.nbytes)
