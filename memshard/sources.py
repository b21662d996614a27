"""Conversion sources: arrays in another format that share their first axis, read in blocks.

A format module (:mod:`memshard.hdf5`, :mod:`memshard.zarr`, :mod:`memshard.npysource`)
describes the arrays it finds as :class:`ArrayInfo` (every array, or only those requested);
an array it cannot store gets a ``problem``, one it cannot open or read an ``unreadable``
reason, instead of failing the plan, so that one bad array never blocks a good one.
:func:`select_fields` then picks the fields, checks that memshard can store them and that
they agree on the row count; :func:`plan_source` has the module read the first chunk of each
chosen array (a missing filter or codec is found before anything is written) and returns a
:class:`SourcePlan`. The plan carries a picklable *opener*, so that each conversion worker
opens the source itself (an HDF5 handle must never cross a ``fork``).

A source may hold *ragged* arrays, whose rows vary in length along their first axis (HDF5
variable-length datasets, lists of arrays): the format module marks them ``ragged`` with an
estimate of their mean row length (:func:`sample_ranges` picks the rows to measure), and its
reader is a :class:`RaggedSourceReader`, which returns their rows packed instead of filling a
buffer. That is the whole extension a format needs for ragged fields: block sizes, parts and
progress are derived from the estimate (:attr:`SourceField.row_bytes`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .dtypes import SUPPORTED_DESCRS
from .errors import (
    DatasetExistsError,
    FieldNotFoundError,
    LabelError,
    MemshardError,
    SourceError,
    UnsupportedSourceError,
)
from .layout import FIELD_NAME_PATTERN, MAX_FIELD_NAME

#: A source block read at once stays near this size (whole source chunks, at least one row).
READ_BLOCK_BYTES = 8 << 20
#: A block never exceeds this size (at least one row), even when a source chunk is larger.
MAX_BLOCK_BYTES = 64 << 20
#: Attribute arrays and lists longer than this are not copied into the manifest.
MAX_ATTR_ELEMENTS = 4096
#: Attributes nested deeper than this are not copied (the manifest allows a little more).
MAX_ATTR_DEPTH = 32
#: The manifest attribute in which a conversion records its source (``spec/CONVERSION.md``).
SOURCE_ATTR = "memshard.source"
#: Bytes of one entry of a ragged field's offsets file.
OFFSET_BYTES = 8
#: What a conversion accepts, for error messages.
SUPPORTED_KINDS = (
    "numeric arrays of at least one dimension: bool, int8-64, uint8-64, float16/32/64, "
    "complex64/128, either byte order; and 1-d arrays of variable-length rows of those "
    "(ragged fields)"
)


@dataclass(frozen=True)
class ArrayInfo:
    """One array found in a source, whether or not memshard can store it.

    ``problem`` says why memshard cannot store it (its type or shape), ``unreadable`` why it
    cannot be opened or read here (a filter or codec that is not installed, damaged metadata
    or chunks); both are ``None`` for an array that can be converted.

    A ``ragged`` array's rows vary in length along their first axis: ``shape`` is
    ``(rows, *tail)`` and ``elements_per_row`` the mean length of a row (an estimate, which
    sizes the blocks read and the parts written).
    """

    origin: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any] | None
    chunk_rows: int = 1
    chunk_bytes: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    unreadable: str | None = None
    ragged: bool = False
    elements_per_row: float = 1.0

    @property
    def refusal(self) -> str | None:
        """Why the array cannot be converted (``None`` if it can)."""
        return self.problem or self.unreadable


@dataclass(frozen=True)
class SourceField:
    """A source array taken as a memshard field.

    A ``ragged`` field's rows vary in length along their first axis; ``shape`` is then the
    shape of one element, the *tail*, and ``elements_per_row`` the mean length of a row (an
    estimate: the source may only have sampled it).
    """

    origin: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    chunk_rows: int
    attrs: dict[str, Any]
    ragged: bool = False
    elements_per_row: float = 1.0

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row; of a ragged field, of a row of the mean length with its
        entry in the offsets file (an estimate)."""
        element = self.dtype.itemsize * math.prod(self.shape)
        if not self.ragged:
            return element
        return math.ceil(element * self.elements_per_row) + OFFSET_BYTES

    @property
    def declared_shape(self) -> tuple[int | None, ...]:
        """The sample shape as :func:`memshard.create` takes it (``(None, *tail)`` if
        ragged)."""
        return (None, *self.shape) if self.ragged else self.shape


class SourceReader(Protocol):
    """An open source: fills caller buffers with rows of one field.

    A source with ragged fields is also a :class:`RaggedSourceReader`; ``read`` is never
    called for a ragged field.
    """

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy rows ``start:stop`` of field ``name`` into ``out`` (``stop - start`` rows, the
        field's stored dtype)."""

    def close(self) -> None:
        """Release the source."""


@runtime_checkable
class RaggedSourceReader(SourceReader, Protocol):
    """An open source with ragged fields: it also hands out their rows, packed.

    A ragged field's rows cannot be read into a buffer the caller sizes (their lengths are
    only known once read), so the source returns them: ``(values, offsets)`` as
    :mod:`memshard.ragged` packs rows. The caller checks them (:class:`memshard.ragged.Ragged`
    and the row count) before writing anything.
    """

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the ragged field ``name``, packed: ``(values, offsets)``,
        the values of shape ``(elements, *tail)`` in the field's stored dtype, the offsets
        int64, ``stop - start + 1`` of them from 0 to ``elements``.

        Raises:
            SourceError: the rows cannot be read (naming the source, the array, the rows).
        """


Opener = Callable[[], SourceReader]


@dataclass(frozen=True)
class SourcePlan:
    """What a conversion reads: the fields, their row count and how to open the source.

    ``identity`` describes the source files (sizes, modification times) so that a resumed
    conversion can tell that the source is the one it started from. ``in_memory`` sources can
    only be read by threads of this process, never by worker processes. ``upstream`` is the
    record of the conversion that made a source that is a memshard dataset, kept in the new
    record.
    """

    kind: str
    location: str
    rows: int
    fields: dict[str, SourceField]
    attrs: dict[str, Any]
    labels: dict[str, list[str]]
    identity: dict[str, Any]
    opener: Opener
    in_memory: bool = False
    skipped: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, Any] | None = None


#: Reads the first chunk of the array at an origin; raises :class:`SourceError` (or
#: :class:`UnsupportedSourceError`) saying why it cannot, in words that name neither the
#: source nor the array (the caller adds them).
Probe = Callable[[str], None]


@dataclass(frozen=True)
class Catalogue:
    """What a format module found in a source, before the fields are chosen.

    ``arrays`` holds every array of the source, or, when fields are requested, only those
    (found under the paths requested); ``available`` lists the paths of every array, for the
    message about a requested one that does not exist.
    """

    kind: str
    location: str
    arrays: list[ArrayInfo]
    attrs: dict[str, Any]
    left_out_attrs: list[str]
    available: Callable[[], list[str]] | None = None


def plan_source(
    catalogue: Catalogue,
    fields: Mapping[str, str] | None,
    *,
    labels: Mapping[str, Sequence[str]] | None,
    label_attr: str | None,
    identity: Callable[[dict[str, SourceField]], dict[str, Any]],
    opener: Callable[[dict[str, str]], Opener],
    probe: Probe | None = None,
) -> SourcePlan:
    """Choose the fields (:func:`select_fields`) and labels, and assemble the plan.

    ``identity`` describes the source given the chosen fields; ``opener`` makes the opener
    given ``{field name: array origin}``; ``probe`` reads the first chunk of each chosen
    array (see :func:`_choose_readable`).

    Raises:
        SourceError, UnsupportedSourceError: as :func:`select_fields`, or a requested array
            cannot be read (its message names the source, the field and the array).
    """
    location = catalogue.location
    chosen, rows, skipped = _choose_readable(catalogue, fields, probe)
    for name in catalogue.left_out_attrs:
        skipped[f"{location}:{name}"] = "attribute not representable in JSON"
    return SourcePlan(
        kind=catalogue.kind,
        location=location,
        rows=rows,
        fields=chosen,
        attrs=catalogue.attrs,
        labels=plan_labels(chosen, labels, label_attr),
        identity=identity(chosen),
        opener=opener({name: field.origin for name, field in chosen.items()}),
        skipped=skipped,
    )


def _choose_readable(
    catalogue: Catalogue, requested: Mapping[str, str] | None, probe: Probe | None
) -> tuple[dict[str, SourceField], int, dict[str, str]]:
    """:func:`select_fields`, keeping only arrays whose first chunk ``probe`` can read.

    An array the probe fails on is refused when requested; otherwise it is left out with the
    reason, and the fields are chosen again from the others (each array is probed once).

    Raises:
        SourceError, UnsupportedSourceError: see :func:`select_fields`; or the probe failed
            on a requested array (the error the probe raised, naming the source and field).
    """
    location = catalogue.location
    arrays = list(catalogue.arrays)
    readable: set[str] = set()
    while True:
        chosen, rows, skipped = select_fields(
            arrays, requested, location=location, available=catalogue.available
        )
        unreadable: dict[str, str] = {}
        for name, source in chosen.items():
            if probe is None or source.origin in readable:
                continue
            try:
                probe(source.origin)
            except SourceError as exc:
                if requested is not None:
                    raise type(exc)(f"{location}: field {name!r} ({source.origin}): {exc}") from exc
                unreadable[source.origin] = str(exc)
            else:
                readable.add(source.origin)
        if not unreadable:
            return chosen, rows, skipped
        arrays = [
            replace(info, unreadable=unreadable[info.origin]) if info.origin in unreadable else info
            for info in arrays
        ]


def stored_dtype(dtype: np.dtype[Any]) -> np.dtype[Any] | None:
    """The little-endian dtype memshard stores for a source ``dtype``; ``None`` if none.

    Example:
        >>> stored_dtype(np.dtype(">f2")).str
        '<f2'
        >>> stored_dtype(np.dtype("S8")) is None
        True
    """
    if dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        return None
    little = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    return little if little.str in SUPPORTED_DESCRS else None


def describe_dtype_problem(dtype: np.dtype[Any]) -> str:
    """Why a dtype cannot be stored, in words."""
    if dtype.fields is not None:
        return f"compound dtype {dtype}"
    if dtype.hasobject:
        return "object, variable-length or reference data"
    if dtype.kind in "SUa":
        return f"string dtype {dtype}"
    return f"dtype {dtype}"


def select_fields(
    arrays: Sequence[ArrayInfo],
    requested: Mapping[str, str] | None,
    *,
    location: str,
    available: Callable[[], list[str]] | None = None,
) -> tuple[dict[str, SourceField], int, dict[str, str]]:
    """Pick the fields of a conversion: ``(fields, rows, skipped)``.

    With ``requested`` (``{field name: array origin}``), exactly those arrays are taken; each
    must exist, be storable and have the same first-axis length. Without it, every storable
    array whose first axis has the dataset's length is taken, the length being the one shared
    by the most arrays (the larger on a tie); fields are named after the array's path.
    ``skipped`` maps each array left out to the reason. ``available`` lists every array's
    path for the message about a missing one (default: the origins of ``arrays``).

    Raises:
        SourceError: a requested array is missing, lengths disagree, or nothing is storable.
        UnsupportedSourceError: a requested array cannot be stored (names what can).
    """
    by_origin = {info.origin: info for info in arrays}
    if requested is not None:
        return _requested_fields(by_origin, requested, location, available)
    usable = [info for info in arrays if info.refusal is None]
    skipped = {info.origin: info.refusal for info in arrays if info.refusal is not None}
    if not usable:
        found = "; ".join(f"{origin}: {why}" for origin, why in skipped.items()) or "no arrays"
        raise SourceError(
            f"{location}: nothing to convert ({found}); memshard takes {SUPPORTED_KINDS}"
        )
    counts = Counter(info.shape[0] for info in usable)
    rows = max(counts, key=lambda length: (counts[length], length))
    fields: dict[str, SourceField] = {}
    names: dict[str, str] = {}
    for info in usable:
        if info.shape[0] != rows:
            skipped[info.origin] = f"first axis has {info.shape[0]} rows, not {rows}"
            continue
        name = field_name_for(info.origin)
        if name in names:
            raise SourceError(
                f"{location}: arrays {names[name]!r} and {info.origin!r} would both become "
                f"field {name!r}; name the fields explicitly"
            )
        names[name] = info.origin
        fields[name] = _source_field(info)
    return fields, rows, skipped


def _requested_fields(
    by_origin: Mapping[str, ArrayInfo],
    requested: Mapping[str, str],
    location: str,
    available: Callable[[], list[str]] | None,
) -> tuple[dict[str, SourceField], int, dict[str, str]]:
    check_fields(requested, location)
    fields: dict[str, SourceField] = {}
    lengths: dict[str, int] = {}
    for name, origin in requested.items():
        info = by_origin.get(_normalise_origin(origin, by_origin))
        if info is None:
            found = available() if available is not None else list(by_origin)
            listed = ", ".join(sorted(found)) or "none"
            raise SourceError(
                f"{location}: field {name!r}: no array {origin!r} (arrays found: {listed})"
            )
        if info.problem is not None:
            raise UnsupportedSourceError(
                f"{location}: field {name!r} ({info.origin}): {info.problem}; "
                f"memshard takes {SUPPORTED_KINDS}"
            )
        if info.unreadable is not None:
            raise UnsupportedSourceError(
                f"{location}: field {name!r} ({info.origin}): {info.unreadable}"
            )
        fields[name] = _source_field(info)
        lengths[name] = info.shape[0]
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}: {rows}" for name, rows in lengths.items())
        raise SourceError(f"{location}: fields have different row counts ({detail})")
    return fields, next(iter(lengths.values())), {}


def check_fields(requested: Mapping[str, str] | None, location: str) -> None:
    """Check that fields requested are given as a non-empty mapping (``None``: not requested).

    Raises:
        SourceError: ``requested`` is something else.
    """
    if requested is not None and (not isinstance(requested, Mapping) or not requested):
        raise SourceError(f"{location}: fields must be a non-empty mapping of name -> array path")


def _normalise_origin(origin: str, by_origin: Mapping[str, ArrayInfo]) -> str:
    if origin in by_origin:
        return origin
    stripped = origin.strip("/")
    for candidate in (stripped, "/" + stripped):
        if candidate in by_origin:
            return candidate
    return origin


def _source_field(info: ArrayInfo) -> SourceField:
    assert info.dtype is not None  # arrays refused never get here
    return SourceField(
        origin=info.origin,
        dtype=info.dtype,
        shape=info.shape[1:],
        chunk_rows=max(1, info.chunk_rows),
        attrs=info.attrs,
        ragged=info.ragged,
        elements_per_row=info.elements_per_row,
    )


def array_problem(shape: tuple[int, ...], dtype: np.dtype[Any]) -> str | None:
    """Why an array of ``shape`` and source ``dtype`` cannot become a field, or ``None``."""
    if stored_dtype(dtype) is None:
        return describe_dtype_problem(dtype)
    if len(shape) == 0:
        return "a scalar (0-d) array has no rows"
    if any(size == 0 for size in shape[1:]):
        return f"samples of shape {shape[1:]} hold no elements"
    return None


def field_name_for(origin: str) -> str:
    """A field name for the array at ``origin``: its path with separators turned into ``_``.

    Example:
        >>> field_name_for("/train/images")
        'train_images'
        >>> field_name_for("3d data.npy")
        '_3d_data'
    """
    stem = origin.strip("/")
    stem = stem[: -len(".npy")] if stem.endswith(".npy") else stem
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", stem) or "x"
    if not FIELD_NAME_PATTERN.fullmatch(name[:1]):
        name = "_" + name
    return name[:MAX_FIELD_NAME]


def json_attrs_of(items: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The attributes that JSON can represent, converted, and the names of the others.

    Numbers, booleans, text (bytes decoded as UTF-8), and arrays, lists and mappings of them
    (up to :data:`MAX_ATTR_ELEMENTS` elements each) are kept; NaN, infinities and anything
    else are left out and named.

    Example:
        >>> json_attrs_of({"a": np.float32(0.5), "b": b"hi", "c": float("nan")})
        ({'a': 0.5, 'b': 'hi'}, ['c'])
    """
    kept: dict[str, Any] = {}
    left_out: list[str] = []
    for key, value in items.items():
        converted = _json_value(value)
        if converted is _UNREPRESENTABLE:
            left_out.append(str(key))
        else:
            kept[str(key)] = converted
    return kept, left_out


_UNREPRESENTABLE = object()


def _json_value(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON would hold it, or ``_UNREPRESENTABLE``. Lists and mappings are
    converted element by element, so mixed and ragged lists keep their values."""
    if depth > MAX_ATTR_DEPTH:
        return _UNREPRESENTABLE
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return _UNREPRESENTABLE
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        if value.size > MAX_ATTR_ELEMENTS or value.dtype.kind not in "biufSUO":
            return _UNREPRESENTABLE
        return _json_value(value.tolist(), depth)
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ATTR_ELEMENTS:
            return _UNREPRESENTABLE
        items = [_json_value(item, depth + 1) for item in value]
        return _UNREPRESENTABLE if any(item is _UNREPRESENTABLE for item in items) else items
    if isinstance(value, Mapping):
        converted = {str(key): _json_value(item, depth + 1) for key, item in value.items()}
        if any(item is _UNREPRESENTABLE for item in converted.values()):
            return _UNREPRESENTABLE
        return converted
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int)):
        return value if -(2**63) <= value < 2**64 else _UNREPRESENTABLE
    if isinstance(value, float):
        return value if math.isfinite(value) else _UNREPRESENTABLE
    return _UNREPRESENTABLE


def vocabulary_from_attr(value: Any) -> list[str] | None:
    """A label vocabulary from an attribute value: a 1-d sequence of text, else ``None``."""
    converted = _json_value(value)
    if isinstance(converted, list) and converted and all(isinstance(v, str) for v in converted):
        return converted
    return None


def plan_labels(
    fields: Mapping[str, SourceField],
    labels: Mapping[str, Sequence[str]] | None,
    label_attr: str | None,
) -> dict[str, list[str]]:
    """Label vocabularies: those given explicitly, then, for fixed integer fields without one,
    a vocabulary stored in the array attribute ``label_attr``."""
    chosen = {name: list(vocab) for name, vocab in (labels or {}).items()}
    if label_attr:
        for name, spec in fields.items():
            if name in chosen or spec.ragged or spec.dtype.kind not in "iu":
                continue
            vocab = vocabulary_from_attr(spec.attrs.get(label_attr))
            if vocab is not None:
                chosen[name] = vocab
    return chosen


def block_rows_for(chunk_rows: int, row_bytes: int) -> int:
    """Rows per read block: whole source chunks, about :data:`READ_BLOCK_BYTES` in all; a
    chunk larger than :data:`MAX_BLOCK_BYTES` is read in parts of at most that size (or one
    row), so memory stays bounded whatever the source's chunking.

    Example:
        >>> block_rows_for(chunk_rows=100, row_bytes=1024)
        8100
        >>> block_rows_for(chunk_rows=1000, row_bytes=1 << 20)
        64
    """
    chunk_bytes = max(1, chunk_rows * row_bytes)
    if chunk_bytes > MAX_BLOCK_BYTES:
        return max(1, MAX_BLOCK_BYTES // max(1, row_bytes))
    if chunk_bytes >= READ_BLOCK_BYTES:
        return chunk_rows
    return chunk_rows * max(1, READ_BLOCK_BYTES // chunk_bytes)


def sample_ranges(rows: int, runs: int, run_rows: int) -> list[tuple[int, int]]:
    """Up to ``runs`` runs of ``run_rows`` consecutive rows spread evenly over ``rows`` rows
    (all of them, if that is fewer), in order and disjoint: the rows a source reads to
    estimate a ragged array's mean row length.

    Example:
        >>> sample_ranges(1000, runs=4, run_rows=10)
        [(0, 10), (250, 260), (500, 510), (750, 760)]
        >>> sample_ranges(25, runs=4, run_rows=10)
        [(0, 25)]
    """
    if rows <= runs * run_rows:
        return [(0, rows)] if rows else []
    step = rows // runs
    return [(index * step, index * step + run_rows) for index in range(runs)]


def block_ranges(start: int, stop: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """Split rows ``start:stop`` into ranges whose inner edges are multiples of ``block_rows``.

    Example:
        >>> list(block_ranges(5, 25, 10))
        [(5, 10), (10, 20), (20, 25)]
    """
    begin = start
    while begin < stop:
        end = min(stop, (begin // block_rows + 1) * block_rows)
        yield begin, end
        begin = end


def export_plan(
    dataset: Any, dst: str | os.PathLike[str], fields: Sequence[str] | None, overwrite: bool
) -> tuple[str, str, list[str]]:
    """Where and what to export ``dataset`` (a :class:`memshard.Dataset`) to: the target path,
    a temporary name next to it (renamed to the target once written), and the fields.

    Raises:
        DatasetExistsError: ``dst`` exists and ``overwrite`` is false.
        FieldNotFoundError: a requested field does not exist.
    """
    target = os.path.abspath(os.fspath(dst))
    if os.path.lexists(target) and not overwrite:
        raise DatasetExistsError(f"{target}: already exists (pass overwrite=True to replace it)")
    names = list(dataset.fields) if fields is None else list(fields)
    for name in names:
        if name not in dataset.fields:
            raise FieldNotFoundError(
                f"{dataset.path}: no field {name!r} (fields: {', '.join(dataset.fields)})"
            )
    return target, f"{target}.memshard-tmp-{uuid.uuid4().hex[:12]}", names


def check_label_range(values: np.ndarray, vocabulary_size: int, *, where: str, start: int) -> None:
    """Raise :class:`LabelError` unless every value indexes the vocabulary."""
    if values.size == 0:
        return
    flat = values.reshape(-1)
    bad = np.flatnonzero((flat < 0) | (flat >= vocabulary_size))
    if bad.size:
        row = start + int(bad[0]) // (values.size // values.shape[0])
        raise LabelError(
            f"{where}: row {row} holds label {flat[bad[0]]}, outside the vocabulary "
            f"of {vocabulary_size} labels"
        )


@contextlib.contextmanager
def source_errors(location: str, doing: str) -> Iterator[None]:
    """Turn whatever a format library raises while reading ``location`` (h5py and zarr raise
    ``OSError``, ``KeyError``, ``ValueError``, ``RuntimeError``, ...) into a
    :class:`SourceError` naming the source and what was being done; memshard's own errors
    pass through."""
    try:
        yield
    except MemshardError:
        raise
    except Exception as exc:
        raise SourceError(f"{location}: {doing} ({type(exc).__name__}: {exc})") from exc
