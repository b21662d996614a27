"""What a build's function returns for one input, turned into rows (no I/O).

``fn(input)`` returns one of:

- a **mapping** ``{field: value}``: one row, or a batch of rows stacked along a first axis.
  With the fields known (declared, or inferred from the first output), every value says which
  it is: a value with the dimensions of one row of its field (``len(shape)``, plus one for a
  ragged field) is one row; with one dimension more, a batch (a ragged field's batch may also
  be a list of rows or a :class:`~memshard.ragged.Ragged`). A mapping whose values say both
  is refused (:func:`is_one_row`);
- any other **iterable** (a list, a generator): rows, each one mapping of one row. An empty
  iterable is an input without rows.

Anything else (``None``, a string, an array) is refused. Every row of an input is checked
against the fields (:func:`input_rows`) before any of them is written, so that an input
whose output is bad leaves nothing.

Without declared fields they are inferred from the first output that holds a row
(:func:`infer_fields`): a mapping returned is taken as one row, unless it cannot tell (every
value has a first axis, all of one length: as much a batch as a row), which needs ``fields=``;
rows yielded are rows, and a field whose rows differ in length along their first axis (and
only there) is ragged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .batch import validated_batch
from .dtypes import as_array
from .errors import BatchError, BuildFieldsError
from .manifest import FieldSpec
from .ragged import Ragged

#: What a build's function returned for one input: a mapping (a row or a batch), or the
#: rows of an iterable.
Output = Mapping[str, Any] | list[Mapping[str, Any]]


def collect(output: Any, *, where: str) -> Output:
    """The output of ``fn`` for one input: a mapping as it is, an iterable's rows as a list.

    Raises:
        BatchError: ``output`` is neither, or an iterable yields something other than a
            mapping (``where`` names the input).
    """
    if isinstance(output, Mapping):
        return output
    if output is None or isinstance(output, (str, bytes, np.ndarray)):
        raise BatchError(
            f"{where}: fn returned {_kind(output)}; it must return a mapping of field -> value "
            "(one row, or a batch) or an iterable of such mappings (rows)"
        )
    if not isinstance(output, Iterable):
        raise BatchError(
            f"{where}: fn returned {_kind(output)}, not a mapping of field -> value or an "
            "iterable of them"
        )
    rows = []
    for number, row in enumerate(output):
        if not isinstance(row, Mapping):
            raise BatchError(
                f"{where}: item {number} of what fn returned is {_kind(row)}, not a mapping "
                "of field -> value (one row)"
            )
        rows.append(row)
    return rows


def has_rows(output: Output) -> bool:
    """Whether ``output`` holds a row to infer fields from (a mapping always may)."""
    return isinstance(output, Mapping) or len(output) > 0


def infer_fields(output: Output, *, where: str) -> dict[str, tuple[np.dtype[Any], tuple[Any, ...]]]:
    """The fields ``{name: (dtype, shape)}`` of the rows of ``output`` (see the module
    docstring), as :func:`memshard.create` takes them; a ragged field's shape is
    ``(None, *tail)``.

    Example:
        >>> rows = [{"x": np.zeros((2, 3), "f4"), "y": 1}, {"x": np.zeros((5, 3), "f4"), "y": 2}]
        >>> infer_fields(rows, where="input 0")
        {'x': (dtype('float32'), (None, 3)), 'y': (dtype('int64'), ())}

    Raises:
        BuildFieldsError: a mapping that may be a batch, rows with different fields, a field
            whose rows differ in more than their length, no rows.
        BatchError: a value that is not an array of numbers.
    """
    rows = [output] if isinstance(output, Mapping) else output
    if not rows:
        raise BuildFieldsError(f"{where}: fn gave no rows to infer the fields from")
    if isinstance(output, Mapping):
        _check_is_a_row(output, where)
    names = list(rows[0])
    for number, row in enumerate(rows):
        if set(row) != set(names):
            raise BuildFieldsError(
                f"{where}: row {number} has the fields {sorted(row)}, row 0 {sorted(names)}"
            )
    fields = {}
    for name in names:
        arrays = [as_array(row[name], where=f"{where}: field {name!r}") for row in rows]
        fields[name] = (np.result_type(*arrays), _shape_of(name, arrays, where))
    return fields


def _check_is_a_row(values: Mapping[str, Any], where: str) -> None:
    """A mapping is a row unless every value has a first axis, all of one length."""
    arrays = {
        name: as_array(value, where=f"{where}: field {name!r}") for name, value in values.items()
    }
    if not arrays or any(array.ndim == 0 for array in arrays.values()):
        return
    lengths = {array.shape[0] for array in arrays.values()}
    if len(lengths) > 1:
        return
    as_row = {name: (str(array.dtype), array.shape) for name, array in arrays.items()}
    as_batch = {name: (str(array.dtype), array.shape[1:]) for name, array in arrays.items()}
    raise BuildFieldsError(
        f"{where}: fn returned a mapping whose values all have a first axis of length "
        f"{lengths.pop()}: it may be one row or a batch of rows, so declare the fields: "
        f"fields={as_row} for one row, fields={as_batch} for a batch"
    )


def _shape_of(name: str, arrays: list[np.ndarray], where: str) -> tuple[Any, ...]:
    """The shape of a field whose rows are ``arrays``: theirs if they agree, ``(None, *tail)``
    if they differ only in length."""
    shapes = {array.shape for array in arrays}
    if len(shapes) == 1:
        return shapes.pop()
    tails = {shape[1:] for shape in shapes}
    if all(len(shape) >= 1 for shape in shapes) and len(tails) == 1:
        return (None, *tails.pop())
    raise BuildFieldsError(
        f"{where}: the rows of field {name!r} have the shapes {sorted(shapes)}; rows may differ "
        "only in their length (the first axis), which makes a ragged field"
    )


def is_one_row(values: Mapping[str, Any], specs: Mapping[str, FieldSpec], *, where: str) -> bool:
    """Whether ``values`` is one row (else a batch) of the fields ``specs``: by the dimensions
    of each value (see the module docstring). Values of neither dimension count for nothing
    (their shape is then refused when the row is checked).

    Example:
        >>> from memshard.schema import field_specs
        >>> specs = field_specs({"x": ("f4", (3,)), "y": ("i8", ())})
        >>> is_one_row({"x": [1, 2, 3], "y": 0}, specs, where="input 0")
        True
        >>> is_one_row({"x": [[1, 2, 3]], "y": [0]}, specs, where="input 0")
        False

    Raises:
        BatchError: some values have the dimensions of one row, others of a batch.
    """
    rows, batches = [], []
    for name, spec in specs.items():
        if name not in values:
            continue
        depth = len(spec.shape) + (1 if spec.ragged else 0)
        found = _dimensions(values[name], spec)
        if found == depth:
            rows.append(name)
        elif found == depth + 1:
            batches.append(name)
    if rows and batches:
        raise BatchError(
            f"{where}: fn returned a mapping that is neither one row nor a batch: fields "
            f"{rows} have the dimensions of one row, fields {batches} of a batch"
        )
    return not batches


def _dimensions(value: Any, spec: FieldSpec) -> int | None:
    """The dimensions of ``value``; a ragged field's batch given as packed rows or as rows of
    different lengths counts as one more than a row; ``None`` if there is no telling."""
    depth = len(spec.shape) + 1
    if isinstance(value, Ragged | Mapping):
        return depth + 1 if spec.ragged else None
    ndim = getattr(value, "ndim", None)
    if isinstance(ndim, int):
        return ndim
    try:
        return int(np.ndim(value))
    except ValueError:  # nested lists of different lengths: rows of a ragged field
        return depth + 1 if spec.ragged else None


def input_rows(
    output: Output,
    specs: Mapping[str, FieldSpec],
    labels: Mapping[str, tuple[str, ...]],
    *,
    where: str,
) -> tuple[dict[str, Any] | None, int]:
    """Every row of one input's ``output``, checked against the fields, as one batch for
    :meth:`memshard.PartWriter.extend`, and their number; ``(None, 0)`` for no rows.

    Raises:
        BatchError, CastError, LabelError: a row that does not match the fields (see
            :func:`memshard.batch.validated_batch`; ``where`` names the input).
    """
    if isinstance(output, Mapping):
        single = is_one_row(output, specs, where=where)
        batch = validated_batch(output, specs, labels, where=where, single_row=single)
        return batch, _count(batch)
    rows = [
        validated_batch(row, specs, labels, where=f"{where}, row {number}", single_row=True)
        for number, row in enumerate(output)
    ]
    if not rows:
        return None, 0
    if len(rows) == 1:
        return rows[0], 1
    return {
        name: [row[name].values for row in rows]
        if spec.ragged
        else np.concatenate([row[name] for row in rows])
        for name, spec in specs.items()
    }, len(rows)


def batch_bytes(batch: Mapping[str, Any]) -> int:
    """Bytes of data of a batch :func:`input_rows` returned."""
    total = 0
    for value in batch.values():
        if isinstance(value, Ragged):
            total += value.values.nbytes
        elif isinstance(value, list):
            total += sum(row.nbytes for row in value)
        else:
            total += value.nbytes
    return int(total)


def _count(batch: Mapping[str, Any]) -> int:
    first = next(iter(batch.values()))
    return len(first)


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    return f"a {type(value).__name__}"
