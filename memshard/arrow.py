"""Apache Arrow tables and Parquet files as conversion sources. The only module importing pyarrow.

Use :func:`memshard.from_arrow` and :func:`memshard.from_parquet`; this module supplies the
source plans (:func:`plan_table`, :func:`plan_parquet`) and the readers.

Each column becomes a field; a column's Arrow type gives the field's dtype and sample shape:

- ``bool``, ``int8``-``int64``, ``uint8``-``uint64``, ``float16``/``32``/``64``: one value
  per row, sample shape ``()``;
- ``fixed_size_list<T>[n]``: shape ``(n,)``, nested fixed-size lists add axes
  (``fixed_size_list<fixed_size_list<T>[3]>[2]`` is ``(2, 3)``);
- the canonical ``arrow.fixed_shape_tensor`` extension type: its logical shape, axis ``i``
  being axis ``permutation[i]`` of the stored ``shape``, as the Arrow specification defines
  it (pyarrow 26's ``FixedShapeTensorArray.to_numpy_ndarray`` departs from it for
  permutations that are not their own inverse);
- ``list<E>`` and ``large_list<E>`` of any of those element types ``E``: a ragged field,
  ``(None, *shape of E)`` (``list<fixed_size_list<int16>[3]>`` is ``(None, 3)``), read as
  packed values and offsets.

Any other type (strings, binary, structs, maps, dictionaries, temporal and decimal types,
lists of lists, list views, other extension types) is refused when requested and left out
otherwise, with an :class:`~memshard.errors.UnsupportedSourceError` naming the column.
memshard stores no missing values: a column taken that holds a null (a null row, or a null
element of a row) is refused, naming the column and the first row with a null, before
anything is written when the source tells (an in-memory table; a Parquet file whose
statistics count nulls in a fixed column: those of a list column count empty lists too, so
they are not used), else when that row is read.

A Parquet source is one file, a directory of ``.parquet`` files, or a list of files, taken
one after the other as one table (their schemas must agree). It is read in batches of rows,
row group by row group, so memory holds about one read block per field whatever the files'
size; conversion workers each open the files themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dependencies import require
from .errors import MemshardError, SourceError, UnsupportedSourceError
from .sources import (
    ArrayInfo,
    SourceField,
    SourcePlan,
    block_rows_for,
    check_fields,
    plan_labels,
    select_fields,
    stored_dtype,
)

pa = require("pyarrow", "arrow")
pq = require("pyarrow.parquet", "arrow")

#: The location recorded for an in-memory table.
MEMORY = "<memory>"
#: The file name suffix of the Parquet files taken from a directory.
PARQUET_SUFFIX = ".parquet"
#: Bytes of a Parquet file read at once: pages are decoded as they stream in, so a column
#: chunk of a large row group is never held whole.
PARQUET_BUFFER_BYTES = 1 << 20
#: The Arrow types a column may have, for error messages.
SUPPORTED_TYPES = (
    "columns of bool, int8-64, uint8-64, float16/32/64, fixed_size_list of those (nested for "
    "more axes), the arrow.fixed_shape_tensor extension type, and list or large_list of any "
    "of those (ragged fields)"
)
#: What to do about nulls, for error messages.
NULL_ADVICE = (
    "memshard stores no missing values: fill them (pyarrow.compute.fill_null) or drop those "
    "rows first"
)


@dataclass(frozen=True)
class ColumnLayout:
    """How the values of the column ``column`` become a field's rows.

    ``physical`` is the shape of a row's values as stored (the fixed-size list sizes, or a
    tensor's ``shape``); ``axes`` reorders it into the field's sample shape (a tensor's
    ``permutation``), ``None`` when it needs no reordering. A ``ragged`` column's rows are
    lists whose elements have that layout.
    """

    column: str
    dtype: np.dtype[Any]
    physical: tuple[int, ...]
    axes: tuple[int, ...] | None = None
    ragged: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """The field's sample shape (of a ragged field, the shape of an element: its tail)."""
        if self.axes is None:
            return self.physical
        return tuple(self.physical[axis] for axis in self.axes)


class _Refused(Exception):
    """A column type memshard cannot store, and why (internal to this module)."""


def _layout(column: str, arrow_type: Any) -> ColumnLayout:
    """The layout of a column of ``arrow_type``; raises :class:`_Refused` saying what the
    column holds if memshard cannot store it."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        element = _typed_layout(column, arrow_type.value_type)
        layout = ColumnLayout(column, element.dtype, element.physical, element.axes, True)
    else:
        layout = _typed_layout(column, arrow_type)
    if 0 in layout.shape:
        raise _Refused(f"samples of shape {layout.shape}, which hold no elements")
    return layout


def _typed_layout(column: str, arrow_type: Any) -> ColumnLayout:
    if isinstance(arrow_type, pa.FixedShapeTensorType):
        dtype = _value_dtype(arrow_type.value_type)
        permutation = arrow_type.permutation
        axes = None
        if permutation is not None and list(permutation) != sorted(permutation):
            axes = tuple(int(axis) for axis in permutation)
        return ColumnLayout(column, dtype, tuple(int(n) for n in arrow_type.shape), axes)
    if isinstance(arrow_type, pa.BaseExtensionType):
        raise _Refused(f"values of the extension type {arrow_type.extension_name}")
    sizes: list[int] = []
    inner = arrow_type
    while pa.types.is_fixed_size_list(inner):
        sizes.append(inner.list_size)
        inner = inner.value_type
    return ColumnLayout(column, _value_dtype(inner), tuple(sizes))


def _value_dtype(value_type: Any) -> np.dtype[Any]:
    """The NumPy dtype of a column's innermost values, of ``value_type``; raises
    :class:`_Refused` if there is none memshard stores."""
    if pa.types.is_boolean(value_type):
        return np.dtype(bool)
    if pa.types.is_integer(value_type) or pa.types.is_floating(value_type):
        dtype = stored_dtype(np.dtype(value_type.to_pandas_dtype()))
        if dtype is not None:
            return dtype
    raise _Refused(_type_problem(value_type))


def _type_problem(value_type: Any) -> str:
    """What values of a type memshard refuses are, in words."""
    types = pa.types
    if types.is_string(value_type) or types.is_large_string(value_type):
        return "text"
    if types.is_binary(value_type) or types.is_large_binary(value_type):
        return "binary data"
    if types.is_dictionary(value_type):
        return "dictionary-encoded (categorical) values"
    if types.is_struct(value_type):
        return "structs (take their children as columns of their own: Table.flatten)"
    if types.is_list(value_type) or types.is_large_list(value_type):
        return "lists of lists (only a row's first axis may vary)"
    if types.is_null(value_type):
        return "nulls only"
    return "values that are not numbers memshard stores"


# -- values ------------------------------------------------------------------------------------


def fill(out: np.ndarray, values: Any, layout: ColumnLayout, *, first_row: int, where: str) -> None:
    """Copy the column piece ``values`` (a pyarrow ``ChunkedArray`` or ``Array`` of
    ``len(out)`` rows, the first being source row ``first_row``) into ``out``.

    Raises:
        UnsupportedSourceError: a value is null (the message names ``where``, the column and
            the row).
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    done = 0
    for chunk in chunks:
        rows = len(chunk)
        if rows:
            out[done : done + rows] = row_values(
                chunk, layout, first_row=first_row + done, where=where
            )
        done += rows


def row_values(array: Any, layout: ColumnLayout, *, first_row: int, where: str) -> np.ndarray:
    """The rows of the pyarrow ``array`` as a NumPy array of the field's sample shape (a view
    of the Arrow buffers where possible: every type but ``bool``).

    Raises:
        UnsupportedSourceError: a value is null.
    """
    row = null_row(array)
    if row is not None:
        raise UnsupportedSourceError(
            f"{where}: column {layout.column!r} holds a null at row {first_row + row}; "
            f"{NULL_ADVICE}"
        )
    *_, (flat, _) = _levels(array)
    values: np.ndarray = flat.to_numpy(zero_copy_only=False)
    shaped = values.reshape(len(array), *layout.physical)
    if layout.axes is not None:
        shaped = shaped.transpose(0, *(axis + 1 for axis in layout.axes))
    return shaped


def _levels(array: Any) -> list[tuple[Any, int]]:
    """Each level of ``array``'s fixed-size lists, outermost first, down to its values, with
    how many entries of that level one row holds."""
    level = array.storage if isinstance(array, pa.ExtensionArray) else array
    per_row = 1
    levels = [(level, per_row)]
    while pa.types.is_fixed_size_list(level.type):
        per_row *= level.type.list_size
        level = level.flatten()  # the values of this slice only (it minds the offset)
        levels.append((level, per_row))
    return levels


def null_row(array: Any) -> int | None:
    """The first row of the pyarrow ``array`` (or ``ChunkedArray``) holding a null at any
    level, or ``None``."""
    if isinstance(array, pa.ChunkedArray):
        start = 0
        for chunk in array.chunks:
            row = null_row(chunk)
            if row is not None:
                return start + row
            start += len(chunk)
        return None
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _list_null_row(array)
    rows = []
    for level, per_row in _levels(array):
        if level.null_count:
            rows.append(_first_null(level) // per_row)
    return min(rows, default=None)


def _first_null(array: Any) -> int:
    return int(np.argmax(array.is_null().to_numpy(zero_copy_only=False)))


def _list_null_row(array: Any) -> int | None:
    """:func:`null_row` of a list array: a null row, or a row with a null element."""
    rows = [_first_null(array)] if array.null_count else []
    offsets, elements = _list_parts(array)
    element = null_row(elements)
    if element is not None:
        rows.append(int(np.searchsorted(offsets, element, side="right")) - 1)
    return min(rows, default=None)


def _list_parts(array: Any) -> tuple[np.ndarray, Any]:
    """The offsets (int64, from 0) and the elements of the rows of the list ``array``.

    ``array.values`` is the whole child array, before a slice's start and after its end too;
    ``array.offsets`` are the slice's, counted in that child."""
    offsets = np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    return offsets - first, array.values.slice(first, last - first)


def packed(
    values: Any, layout: ColumnLayout, *, first_row: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the list column piece ``values`` (a ``ChunkedArray`` or ``Array``, the
    first row being source row ``first_row``) packed: ``(values, offsets)`` as
    :meth:`memshard.sources.RaggedSourceReader.read_ragged` returns them (the values a view
    of the Arrow buffers where possible, when the piece is one chunk).

    Raises:
        UnsupportedSourceError: a row or an element is null.
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    row = null_row(values)
    if row is not None:
        raise UnsupportedSourceError(
            f"{where}: column {layout.column!r} holds a null at row {first_row + row}; "
            f"{NULL_ADVICE}"
        )
    element = ColumnLayout(layout.column, layout.dtype, layout.physical, layout.axes)
    parts = [_list_parts(chunk) for chunk in chunks if len(chunk)]
    arrays = [row_values(items, element, first_row=0, where=where) for _, items in parts]
    if not parts:
        return np.empty((0, *layout.shape), layout.dtype), np.zeros(1, np.int64)
    if len(parts) == 1:
        return arrays[0], parts[0][0]
    bases = np.cumsum([0] + [len(array) for array in arrays[:-1]], dtype=np.int64)
    ends = [offsets[1:] + base for (offsets, _), base in zip(parts, bases, strict=True)]
    return np.concatenate(arrays), np.concatenate([np.zeros(1, np.int64), *ends])


# -- choosing the columns ----------------------------------------------------------------------


#: ``(layout) -> mean elements of a row`` of a list column (an estimate, to size reads).
MeanLength = Callable[[ColumnLayout], float]


def _describe(
    column: str, arrow_type: Any, rows: int, chunk_rows: int, mean_length: MeanLength
) -> ArrayInfo:
    """The column as an :class:`ArrayInfo` (with a problem if memshard cannot store it)."""
    try:
        layout = _layout(column, arrow_type)
    except _Refused as exc:
        problem = f"column {column!r} holds {exc} (type {arrow_type})"
        return ArrayInfo(column, (rows,), None, problem=problem)
    attrs: dict[str, Any] = {"arrow_type": str(arrow_type)}
    if isinstance(arrow_type, pa.FixedShapeTensorType) and arrow_type.dim_names:
        attrs["dim_names"] = [str(name) for name in arrow_type.dim_names]
    return ArrayInfo(
        column,
        (rows, *layout.shape),
        layout.dtype,
        chunk_rows,
        attrs=attrs,
        ragged=layout.ragged,
        elements_per_row=mean_length(layout) if layout.ragged else 1.0,
    )


def _choose(
    schema: Any,
    rows: int,
    chunk_rows: int,
    fields: Mapping[str, str] | None,
    location: str,
    mean_length: MeanLength,
) -> tuple[dict[str, SourceField], dict[str, ColumnLayout], dict[str, str]]:
    """The fields taken from the columns of ``schema``: ``(fields, layouts, skipped)``.

    Raises:
        SourceError, UnsupportedSourceError: see :func:`memshard.sources.select_fields`.
    """
    check_fields(fields, location)
    names = list(schema.names)
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise SourceError(f"{location}: the columns {repeated} appear more than once")
    arrays = [_describe(f.name, f.type, rows, chunk_rows, mean_length) for f in schema]
    _refuse_unsupported(arrays, fields, location)
    chosen, _, skipped = select_fields(arrays, fields, location=location, available=lambda: names)
    layouts = {
        name: _layout(source.origin, schema.field(source.origin).type)
        for name, source in chosen.items()
    }
    return chosen, layouts, skipped


def _refuse_unsupported(
    arrays: list[ArrayInfo], fields: Mapping[str, str] | None, location: str
) -> None:
    """Refuse a requested column memshard cannot store, or, without ``fields``, a source
    without any column it can (in words of Arrow types, where :func:`select_fields` would
    speak of NumPy's).

    Raises:
        UnsupportedSourceError: a requested column cannot be stored.
        SourceError: no column can be stored.
    """
    problems = {info.origin: info.problem for info in arrays if info.problem is not None}
    if fields is not None:
        for name, column in fields.items():
            if problems.get(column) is not None:
                raise UnsupportedSourceError(
                    f"{location}: field {name!r}: {problems[column]}; memshard takes "
                    f"{SUPPORTED_TYPES}"
                )
    elif len(problems) == len(arrays):
        found = "; ".join(problems.values()) or "no columns"
        raise SourceError(
            f"{location}: nothing to convert ({found}); memshard takes {SUPPORTED_TYPES}"
        )


def _refuse_found_null(location: str, name: str, column: str, row: int) -> UnsupportedSourceError:
    return UnsupportedSourceError(
        f"{location}: field {name!r}: column {column!r} holds a null at row {row}; {NULL_ADVICE}"
    )


# -- in-memory tables --------------------------------------------------------------------------


def as_table(src: Any) -> Any:
    """``src`` as a ``pyarrow.Table``: a table, a record batch, a record batch reader (read
    whole) or a sequence of record batches of one schema.

    Raises:
        SourceError: ``src`` is something else, or its batches disagree on the schema.
    """
    if isinstance(src, pa.Table):
        return src
    if isinstance(src, pa.RecordBatch):
        return pa.Table.from_batches([src])
    try:
        if isinstance(src, pa.RecordBatchReader):
            return src.read_all()
        if isinstance(src, Sequence) and src and all(isinstance(b, pa.RecordBatch) for b in src):
            return pa.Table.from_batches(list(src))
    except pa.ArrowException as exc:
        raise SourceError(f"from_arrow: the record batches cannot form one table ({exc})") from exc
    raise SourceError(
        "from_arrow: expected a pyarrow Table, RecordBatch, RecordBatchReader or a non-empty "
        f"list of RecordBatches, got {type(src).__name__}"
    )


def plan_table(
    src: Any,
    fields: Mapping[str, str] | None = None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> SourcePlan:
    """Describe the conversion of the in-memory Arrow data ``src`` (see :func:`as_table`).

    Raises:
        SourceError: ``src`` is not Arrow data, a requested column is missing, or no column
            can be taken.
        UnsupportedSourceError: a requested column's type cannot be stored, or a column taken
            holds a null (the message names the column and the first row with one).
    """
    table = as_table(src)
    chosen, layouts, skipped = _choose(
        table.schema, table.num_rows, 1, fields, MEMORY, lambda layout: _mean_length(table, layout)
    )
    for name, layout in layouts.items():
        row = null_row(table.column(layout.column))
        if row is not None:
            raise _refuse_found_null(MEMORY, name, layout.column, row)
    return SourcePlan(
        kind="arrow",
        location=MEMORY,
        rows=table.num_rows,
        fields=chosen,
        attrs={},
        labels=plan_labels(chosen, labels, None),
        identity={},
        opener=TableOpener(table, layouts),
        in_memory=True,
        skipped=skipped,
    )


def _mean_length(table: Any, layout: ColumnLayout) -> float:
    """Mean elements of a row of the list column of ``table`` that ``layout`` describes."""
    elements = 0
    for chunk in table.column(layout.column).chunks:
        if len(chunk):
            elements += int(chunk.offsets[-1].as_py()) - int(chunk.offsets[0].as_py())
    rows: int = table.num_rows
    return elements / max(1, rows)


@dataclass(frozen=True)
class TableOpener:
    """Hands out readers of an in-memory table (read by threads of this process only)."""

    table: Any
    layouts: dict[str, ColumnLayout]

    def __call__(self) -> TableReader:
        """A reader of the table."""
        return TableReader(self.table, self.layouts)

    def __reduce__(self) -> Any:
        raise TypeError("an in-memory table is converted by threads, never sent to processes")


class TableReader:
    """Copies rows of an in-memory table's columns (thread-safe: slices are new objects)."""

    def __init__(self, table: Any, layouts: dict[str, ColumnLayout]) -> None:
        self._table = table
        self._layouts = layouts

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            UnsupportedSourceError: a value is null.
        """
        layout = self._layouts[name]
        piece = self._table.column(layout.column).slice(start, stop - start)
        fill(out, piece, layout, first_row=start, where=f"{MEMORY}: rows {start}:{stop}")

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the ragged field ``name``, packed (see :func:`packed`).

        Raises:
            UnsupportedSourceError: a row or an element is null.
        """
        layout = self._layouts[name]
        piece = self._table.column(layout.column).slice(start, stop - start)
        return packed(piece, layout, first_row=start, where=f"{MEMORY}: rows {start}:{stop}")

    def close(self) -> None:
        """Nothing to release."""


# -- Parquet files -----------------------------------------------------------------------------


def parquet_files(src: Any) -> tuple[str, list[str]]:
    """The location and the files of the Parquet source ``src``: a file, a directory (its
    ``.parquet`` files, in name order, but for those whose name starts with ``.`` or ``_``;
    subdirectories are not searched), or a list of files.

    Raises:
        SourceError: something named is missing or not a regular file, a directory holds no
            ``.parquet`` file, or the list is empty.
    """
    if isinstance(src, (str, os.PathLike)):
        location = os.path.abspath(os.fspath(src))
        if os.path.isdir(location):
            names = sorted(n for n in os.listdir(location) if _is_data_file(n))
            if not names:
                raise SourceError(f"{location}: a directory without {PARQUET_SUFFIX} files")
            return location, [_regular(os.path.join(location, name)) for name in names]
        return location, [_regular(location)]
    if isinstance(src, Sequence) and src and all(isinstance(p, (str, os.PathLike)) for p in src):
        files = [_regular(os.path.abspath(os.fspath(path))) for path in src]
        location = files[0] if len(files) == 1 else os.path.commonpath(files)
        return location, files
    raise SourceError(
        "from_parquet: expected a Parquet file, a directory of them or a non-empty list of "
        f"files, got {src!r:.100}"
    )


def _is_data_file(name: str) -> bool:
    """Whether a directory entry is a Parquet file of the table: hidden and ``_``-prefixed
    names (``_metadata``, a writer's temporary files) are not, as for pyarrow's datasets."""
    return name.endswith(PARQUET_SUFFIX) and not name.startswith((".", "_"))


def _regular(path: str) -> str:
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise SourceError(f"{path}: not a regular file")
    return path


def _open_parquet(path: str) -> Any:
    """``pyarrow.parquet.ParquetFile`` of ``path``.

    Raises:
        SourceError: it cannot be opened or is not a Parquet file.
    """
    try:
        # pyarrow pre-buffers every row group asked for by default: the whole file, for a
        # conversion that reads all of them.
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    """pyarrow's message for ``exc`` on one line (it often spans several)."""
    return " ".join(str(exc).split())


def plan_parquet(
    src: Any,
    fields: Mapping[str, str] | None = None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> SourcePlan:
    """Describe the conversion of the Parquet file(s) ``src`` (see :func:`parquet_files`).

    Raises:
        SourceError: a file is missing or not Parquet, the files' schemas differ, a requested
            column is missing, or no column can be taken.
        UnsupportedSourceError: a requested column's type cannot be stored, or a column taken
            holds a null that the files' statistics count (the message names the column and
            the first row with one).
    """
    location, files = parquet_files(src)
    schema, groups = _footers(files)
    rows = sum(sum(sizes) for sizes in groups)
    chunk_rows = max((size for sizes in groups for size in sizes), default=1)
    chosen, layouts, skipped = _choose(
        schema, rows, max(1, chunk_rows), fields, location,
        lambda layout: _mean_parquet_length(files, schema, layout, rows),
    )  # fmt: skip
    _refuse_counted_nulls(files, schema, groups, layouts)
    batch_rows = min(
        (block_rows_for(source.chunk_rows, source.row_bytes) for source in chosen.values()),
        default=1,
    )
    return SourcePlan(
        kind="parquet",
        location=location,
        rows=rows,
        fields=chosen,
        attrs={},
        labels=plan_labels(chosen, labels, None),
        identity=_identity(location, files),
        opener=ParquetOpener(tuple(files), layouts, tuple(groups), batch_rows),
        skipped=skipped,
    )


def _footers(files: list[str]) -> tuple[Any, list[tuple[int, ...]]]:
    """The schema the files share, and the rows of each row group of each file.

    Raises:
        SourceError: a file is not Parquet, or its schema differs from the first file's.
    """
    schema = None
    groups: list[tuple[int, ...]] = []
    for path in files:
        with _open_parquet(path) as handle:
            metadata = handle.metadata
            groups.append(
                tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
            )
            here = handle.schema_arrow
        if schema is None:
            schema = here
        elif not here.equals(schema, check_metadata=False):
            raise SourceError(
                f"{path}: its columns differ from those of {files[0]} "
                f"({_schema_difference(schema, here)}); the files must share one schema"
            )
    return schema, groups


def _schema_difference(first: Any, other: Any) -> str:
    if first.names != other.names:
        return f"{first.names} there, {other.names} here"
    for a, b in zip(first, other, strict=True):
        if not a.equals(b):
            return f"column {a.name!r}: {a.type} there, {b.type} here"
    return "field metadata differs"


def _identity(location: str, files: list[str]) -> dict[str, Any]:
    """Each file's name (relative to the location's directory), size and modification time."""
    base = os.path.dirname(location) if location in files else location
    listed = []
    for path in files:
        status = os.stat(path)
        listed.append([os.path.relpath(path, base), status.st_size, status.st_mtime_ns])
    return {"files": listed}


def _leaf_counts(schema: Any) -> dict[str, int]:
    """``{column: index of its first Parquet leaf column}``: where its statistics are."""
    first: dict[str, int] = {}
    index = 0
    for field in schema:
        first[field.name] = index
        index += _leaves(field.type)
    return first


def _leaves(arrow_type: Any) -> int:
    if isinstance(arrow_type, pa.BaseExtensionType):
        return _leaves(arrow_type.storage_type)
    if pa.types.is_struct(arrow_type):
        return sum(_leaves(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_map(arrow_type):
        return _leaves(arrow_type.key_type) + _leaves(arrow_type.item_type)
    if hasattr(arrow_type, "value_type") and not pa.types.is_dictionary(arrow_type):
        return _leaves(arrow_type.value_type)
    return 1


def _refuse_counted_nulls(
    files: list[str], schema: Any, groups: list[tuple[int, ...]], layouts: dict[str, ColumnLayout]
) -> None:
    """Refuse a fixed column taken whose statistics count a null in some row group; that row
    group is read to find the first row. A null in a group without statistics, or in a list
    column (whose statistics count empty lists as nulls too), is found by the reader, when
    its row is read.

    Raises:
        UnsupportedSourceError: a null was found.
    """
    leaves = _leaf_counts(schema)
    fixed = {name: layout for name, layout in layouts.items() if not layout.ragged}
    before = 0
    for path, sizes in zip(files, groups, strict=True):
        with _open_parquet(path) as handle:
            for group, size in enumerate(sizes):
                metadata = handle.metadata.row_group(group)
                for name, layout in fixed.items():
                    statistics = metadata.column(leaves[layout.column]).statistics
                    counted = statistics is not None and statistics.has_null_count
                    if counted and statistics.null_count > 0:
                        row = _null_row_in_group(handle, group, layout.column)
                        if row is not None:
                            raise _refuse_found_null(path, name, layout.column, before + row)
                before += size


def _mean_parquet_length(files: list[str], schema: Any, layout: ColumnLayout, rows: int) -> float:
    """Mean elements of a row of the list column ``layout`` describes, from the files' footers
    (the values of its leaf column, one per empty list too, over the elements' size)."""
    leaf = _leaf_counts(schema)[layout.column]
    values = 0
    for path in files:
        with _open_parquet(path) as handle:
            metadata = handle.metadata
            for group in range(metadata.num_row_groups):
                values += metadata.row_group(group).column(leaf).num_values
    return values / max(1, int(np.prod(layout.physical))) / max(1, rows)


def _null_row_in_group(handle: Any, group: int, column: str) -> int | None:
    """The first row of row group ``group`` whose ``column`` holds a null, read in batches."""
    start = 0
    for batch in handle.iter_batches(row_groups=[group], columns=[column]):
        row = null_row(batch.column(0))
        if row is not None:
            return start + row
        start += batch.num_rows
    return None


@dataclass(frozen=True)
class ParquetOpener:
    """Opens the files in the calling process, one at a time (picklable: a worker calls it
    after spawn). ``groups`` holds the rows of each row group of each file when the
    conversion was planned; ``batch_rows`` the rows of a batch read at once."""

    files: tuple[str, ...]
    layouts: dict[str, ColumnLayout]
    groups: tuple[tuple[int, ...], ...]
    batch_rows: int

    def __call__(self) -> ParquetReader:
        """A reader of the files (each is opened when its rows are first read)."""
        return ParquetReader(self)


class ParquetReader:
    """Reads the columns taken, batch by batch, from the row group holding the first row
    asked for onwards; a read of the rows that follow the last one read continues where it
    stopped, another starts again from that row's group. Memory holds the batches covering
    the rows of one read.

    Every failure is a :class:`SourceError` naming the file, the columns and the rows.
    """

    def __init__(self, opener: ParquetOpener) -> None:
        self._opener = opener
        self._columns = list(dict.fromkeys(layout.column for layout in opener.layouts.values()))
        sizes = [size for group in opener.groups for size in group]
        self._group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._file_of_group = np.repeat(
            np.arange(len(opener.files)), [len(group) for group in opener.groups]
        )
        self._batches: Generator[Any, None, None] | None = None
        self._held: list[Any] = []
        self._held_start = 0
        self._held_stop = 0
        self._path = opener.files[0] if opener.files else ""

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            SourceError: the rows cannot be read (a damaged file, or one changed since the
                conversion was planned).
            UnsupportedSourceError: a value is null.
        """
        if stop <= start:
            return
        layout = self._opener.layouts[name]
        piece = self._piece(layout, start, stop)
        fill(out, piece, layout, first_row=start, where=f"{self._path}: rows {start}:{stop}")

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the ragged field ``name``, packed (see :func:`packed`).

        Raises:
            SourceError, UnsupportedSourceError: as :meth:`read`.
        """
        layout = self._opener.layouts[name]
        piece = self._piece(layout, start, stop)
        return packed(piece, layout, first_row=start, where=f"{self._path}: rows {start}:{stop}")

    def _piece(self, layout: ColumnLayout, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of the column ``layout`` describes (a ``ChunkedArray``).

        Raises:
            SourceError: the rows cannot be read.
        """
        try:
            self._hold(start, stop)
            table = pa.Table.from_batches(self._held)
            return table.column(layout.column).slice(start - self._held_start, stop - start)
        except MemshardError:
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
            self._release()
            columns = ", ".join(repr(column) for column in self._columns)
            raise SourceError(
                f"{self._path}: rows {start}:{stop} of the columns {columns} cannot be read "
                f"({type(exc).__name__}: {_one_line(exc)}); the file may be damaged"
            ) from exc

    def _hold(self, start: int, stop: int) -> None:
        """Make the held batches cover rows ``start:stop`` (and nothing before ``start``)."""
        if self._batches is None or not self._held_start <= start <= self._held_stop:
            self._seek(start)
        self._drop_before(start)
        while self._held_stop < stop:
            assert self._batches is not None
            batch = next(self._batches, None)
            if batch is None:
                raise SourceError(
                    f"{self._path}: the files end at row {self._held_stop}, before row {stop}; "
                    "they changed since the conversion was planned"
                )
            self._held.append(batch)
            self._held_stop += batch.num_rows

    def _drop_before(self, start: int) -> None:
        while self._held and self._held_start + self._held[0].num_rows <= start:
            self._held_start += self._held.pop(0).num_rows
        if self._held and self._held_start < start:
            self._held[0] = self._held[0].slice(start - self._held_start)
            self._held_start = start

    def _seek(self, start: int) -> None:
        self._release()
        self._batches = self._batches_from(start)
        self._held_start = self._held_stop = start

    def _batches_from(self, start: int) -> Generator[Any, None, None]:
        """The batches of rows ``start`` onwards, opening each file in turn."""
        group = int(np.searchsorted(self._group_starts, start, side="right")) - 1
        group = min(group, len(self._file_of_group) - 1)
        if group < 0:
            return
        skip = start - int(self._group_starts[group])
        first_file = int(self._file_of_group[group])
        first_group = group - int(np.searchsorted(self._file_of_group, first_file))
        for index in range(first_file, len(self._opener.files)):
            groups = range(
                first_group if index == first_file else 0, len(self._opener.groups[index])
            )
            for batch in self._file_batches(index, groups):
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                yield batch.slice(skip) if skip else batch
                skip = 0

    def _file_batches(self, index: int, groups: range) -> Generator[Any, None, None]:
        path = self._path = self._opener.files[index]
        with _open_parquet(path) as handle:
            metadata = handle.metadata
            found = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
            if found != self._opener.groups[index]:
                raise SourceError(
                    f"{path}: its row groups changed since the conversion was planned "
                    f"({len(found)} groups of {sum(found)} rows now)"
                )
            yield from handle.iter_batches(
                batch_size=self._opener.batch_rows, row_groups=list(groups), columns=self._columns
            )

    def _release(self) -> None:
        if self._batches is not None:
            self._batches.close()
        self._batches = None
        self._held = []

    def close(self) -> None:
        """Close the file being read."""
        self._release()
