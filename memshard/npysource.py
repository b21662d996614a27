"""NumPy arrays, ``.npy`` files and lists of arrays as a conversion source (see
:func:`memshard.from_numpy`).

Files are never loaded whole and never unpickled: an ``.npy`` file of object dtype is refused.
A file in C order (every file ``numpy.save`` writes from an ordinary array) is read with
``pread`` into the caller's buffer, so a file truncated while it is converted gives a typed
error; a memory mapping would kill the process with ``SIGBUS``. A Fortran-ordered file is
copied out of a memory mapping. In-memory arrays are read by the converting process's threads
only.

A list or tuple of arrays, or a one-dimensional object array of arrays, is a ragged field: each
array is a row of shape ``(n, *tail)``, ``n`` varying. The rows are checked while planning
(:class:`RowList`): at least one dimension each, one trailing shape and one dtype of numbers
for all (a row with no elements may have any dtype, and shape ``(0,)`` whatever the tail, as
``[]`` gives), each refusal naming the field and the row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SourceError, UnsupportedSourceError
from .handles import OwnedFd
from .ragged import NUMBER_KINDS
from .smallfile import open_regular
from .sources import (
    SUPPORTED_KINDS,
    ArrayInfo,
    SourcePlan,
    array_problem,
    describe_dtype_problem,
    plan_labels,
    select_fields,
    stored_dtype,
)

MEMORY = "<memory>"
NPY_MAGIC = b"\x93NUMPY"


def plan(src: Any, *, labels: Mapping[str, Sequence[str]] | None = None) -> SourcePlan:
    """Describe the conversion of ``src``: an array, a ``.npy`` path, a list of arrays (a
    ragged field), or ``{field: any of those}``.

    Raises:
        SourceError: a file is missing or not an ``.npy`` file, lengths disagree, or a list's
            rows disagree in trailing shape or dtype (naming the field and the row).
        UnsupportedSourceError: an array memshard cannot store (object, string, structured,
            0-d), or a row of a list that holds no numbers.
    """
    named = _named_inputs(src)
    arrays: dict[str, np.ndarray | RowList] = {}
    files: dict[str, str] = {}
    infos = []
    for name, value in named.items():
        if _is_row_list(value):
            row_list = arrays[name] = RowList.of(name, value)
            infos.append(row_list.info(name))
            continue
        if isinstance(value, (str, os.PathLike)):
            files[name] = os.path.abspath(os.fspath(value))
            array = _map_file(files[name])
        elif isinstance(value, np.ndarray):
            array = arrays[name] = value
        else:
            raise SourceError(
                f"field {name!r}: expected a numpy array, a .npy path or a list of arrays (the "
                f"rows of a ragged field), got {type(value).__name__}"
            )
        problem = array_problem(array.shape, array.dtype)
        infos.append(
            ArrayInfo(
                origin=files.get(name, name),
                shape=array.shape,
                dtype=stored_dtype(array.dtype) if problem is None else None,
                problem=problem,
            )
        )
    requested = {name: files.get(name, name) for name in named}
    location = _location(files) if len(files) == len(named) else MEMORY
    chosen, rows, _ = select_fields(infos, requested, location=location)
    return SourcePlan(
        kind="numpy",
        location=location,
        rows=rows,
        fields=chosen,
        attrs={},
        labels=plan_labels(chosen, labels, None),
        identity=_identity(files),
        opener=NpyOpener(files, arrays),
        in_memory=bool(arrays),
    )


def _is_row_list(value: Any) -> bool:
    """Whether ``value`` is the rows of a ragged field: a list, a tuple or a 1-d object array."""
    if isinstance(value, np.ndarray):
        return value.dtype.hasobject and value.ndim == 1 and value.dtype.fields is None
    return isinstance(value, (list, tuple))


class RowList:
    """The rows of a ragged field given as a list of arrays, checked; read packed.

    ``rows`` are the arrays as given (converted by ``np.asarray``), ``dtype`` the stored dtype
    and ``tail`` the shape of a row after its first axis.
    """

    def __init__(self, rows: list[np.ndarray], dtype: np.dtype[Any], tail: tuple[int, ...]):
        self.rows = rows
        self.dtype = dtype
        self.tail = tail
        self.lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))

    @classmethod
    def of(cls, name: str, value: Any) -> RowList:
        """Check the rows of field ``name`` (see the module docstring).

        Raises:
            SourceError: no rows, a row that is no array or a scalar, or rows whose trailing
                shapes or dtypes differ (naming the field and both rows).
            UnsupportedSourceError: a row of something other than numbers.
        """
        where = f"field {name!r}"
        if len(value) == 0:
            raise SourceError(
                f"{where}: an empty list of rows, which says nothing of their dtype; pass "
                "at least one row"
            )
        if isinstance(value, np.ndarray):
            _check_object_rows(where, value)
        rows = [_row_array(where, index, row) for index, row in enumerate(value)]
        shaped = [index for index, row in enumerate(rows) if row.shape != (0,)]
        model = shaped[0] if shaped else 0
        tail = rows[model].shape[1:]
        filled = [index for index, row in enumerate(rows) if row.size]
        typed = filled[0] if filled else model
        dtype = rows[typed].dtype
        for index in shaped:
            if rows[index].shape[1:] != tail:
                raise SourceError(
                    f"{where}: row {index} has shape {rows[index].shape} and row {model} "
                    f"{rows[model].shape}: the rows of a ragged field vary only along their "
                    "first axis"
                )
        for index in filled:
            if stored_dtype(rows[index].dtype) != stored_dtype(dtype):
                raise SourceError(
                    f"{where}: row {index} has dtype {rows[index].dtype} and row {typed} "
                    f"{dtype}: give every row of a ragged field the same dtype"
                )
        stored = stored_dtype(dtype)
        if stored is None or dtype.kind not in NUMBER_KINDS:
            raise UnsupportedSourceError(
                f"{where}: row {typed} holds {describe_dtype_problem(dtype)}; the rows of a "
                "ragged field hold numbers (bool, integers, floats, complex)"
            )
        if any(size == 0 for size in tail):
            shape = ", ".join(["n", *map(str, tail)])
            raise UnsupportedSourceError(f"{where}: rows of shape ({shape}) hold no elements")
        return cls(rows, stored, tail)

    def info(self, origin: str) -> ArrayInfo:
        """The rows described as a ragged source array."""
        rows = len(self.rows)
        return ArrayInfo(
            origin=origin,
            shape=(rows, *self.tail),
            dtype=self.dtype,
            ragged=True,
            elements_per_row=float(self.lengths.sum()) / rows,
        )

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop``, packed: ``(values, offsets)``."""
        lengths = self.lengths[start:stop]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.empty((int(offsets[-1]), *self.tail), dtype=self.dtype)
        filled = [row for row in self.rows[start:stop] if row.size]
        if filled:
            np.concatenate(filled, out=values, casting="equiv")
        return values, offsets


def _check_object_rows(where: str, value: np.ndarray) -> None:
    """An object array is rows only if each element is an array (or a list, or a tuple).

    Raises:
        UnsupportedSourceError: naming the first element that is not.
    """
    for index, row in enumerate(value):
        if not isinstance(row, (np.ndarray, list, tuple)):
            raise UnsupportedSourceError(
                f"{where}: an object array whose row {index} holds {type(row).__name__}, not "
                f"an array; memshard takes {SUPPORTED_KINDS} (an object array of arrays, or a "
                "list of them, is taken as the rows of a ragged field)"
            )


def _row_array(where: str, index: int, row: Any) -> np.ndarray:
    """Row ``index`` as an array of at least one dimension.

    Raises:
        SourceError: numpy cannot make an array of it, or it is a scalar.
    """
    try:
        array = np.asarray(row)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SourceError(f"{where}: row {index} is no array of numbers ({exc})") from None
    if array.dtype.hasobject:
        raise UnsupportedSourceError(
            f"{where}: row {index} holds object data ({type(row).__name__}); the rows of a "
            "ragged field (a list or object array) are arrays of numbers"
        )
    if array.ndim == 0:
        raise SourceError(
            f"{where}: row {index} is a scalar ({row!r:.40}): a list is taken as the rows of "
            "a ragged field, each an array whose first axis is its length; pass "
            "np.asarray(...) for a field of one number per row"
        )
    return array


def _location(files: Mapping[str, str]) -> str:
    """The file, or the directory holding all the files."""
    paths = list(files.values())
    return paths[0] if len(paths) == 1 else os.path.commonpath(paths)


def _named_inputs(src: Any) -> dict[str, Any]:
    if isinstance(src, Mapping):
        if not src:
            raise SourceError("from_numpy: no arrays given")
        return dict(src)
    if isinstance(src, (str, os.PathLike)):
        stem = os.path.splitext(os.path.basename(os.fspath(src)))[0]
        from .sources import field_name_for

        return {field_name_for(stem): src}
    return {"x": src}


def _map_file(path: str) -> np.ndarray:
    try:
        fd = open_regular(path, what="the .npy file", error=SourceError, follow_symlinks=True)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise SourceError(f"{path}: no such .npy file") from None
    with os.fdopen(fd, "rb") as handle:
        if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise SourceError(f"{path}: not an .npy file (no NPY magic at its start)")
    try:
        array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc):
            raise UnsupportedSourceError(
                f"{path}: holds object data, which memshard never unpickles"
            ) from None
        if "mmap length is greater than file size" in str(exc):
            raise SourceError(
                f"{path}: the file is {os.path.getsize(path):,} bytes, shorter than its header "
                "says: it is truncated"
            ) from None
        raise SourceError(f"{path}: not a readable .npy file ({exc})") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise SourceError(f"{path}: not an .npy file (an .npz archive?)")
    return array


def _identity(files: Mapping[str, str]) -> dict[str, Any]:
    stats = {name: os.stat(path) for name, path in files.items()}
    return {name: [status.st_size, status.st_mtime_ns] for name, status in stats.items()}


@dataclass(frozen=True)
class NpyOpener:
    """Opens the files in the calling process; in-memory arrays travel only within it."""

    files: dict[str, str]
    arrays: dict[str, np.ndarray | RowList]

    def __call__(self) -> NpyReader:
        """Open the files.

        Raises:
            SourceError: a file is gone or no longer a readable ``.npy`` file.
        """
        opened: dict[str, NpyFile | np.ndarray | RowList] = {}
        try:
            for name, path in self.files.items():
                opened[name] = NpyFile.open(path)
        except BaseException:
            NpyReader(opened).close()
            raise
        return NpyReader({**opened, **self.arrays})

    def __reduce__(self) -> Any:
        if self.arrays:
            raise TypeError("in-memory arrays are converted by threads, never sent to processes")
        return (NpyOpener, (self.files, {}))


class NpyFile:
    """An ``.npy`` file whose rows are read with ``pread`` (C order) or copied out of a
    memory mapping (Fortran order)."""

    def __init__(self, path: str, mapped: np.ndarray) -> None:
        self.path = path
        self.offset: int = getattr(mapped, "offset", 0)
        self.row_bytes = mapped.dtype.itemsize * math.prod(mapped.shape[1:])
        self.swap = mapped.dtype.str.startswith(">")  # memshard stores little-endian
        self._mapped = None if mapped.flags.c_contiguous else mapped
        self._handle: OwnedFd | None = None
        if self._mapped is None:
            fd = open_regular(path, what="the .npy file", error=SourceError, follow_symlinks=True)
            self._handle = OwnedFd(fd, path)

    @classmethod
    def open(cls, path: str) -> NpyFile:
        """Check the file's header (see :func:`plan`) and open it.

        Raises:
            SourceError: the file is gone or is no longer a readable ``.npy`` file.
        """
        return cls(path, _map_file(path))

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (in the stored dtype) with rows ``start:stop``.

        Raises:
            SourceError: the file ends before those rows (it was truncated) or reading failed.
        """
        if self._mapped is not None:
            out[...] = self._mapped[start:stop]
            return
        target = out if out.flags.c_contiguous else np.empty_like(out)
        wanted = (stop - start) * self.row_bytes
        buffer = target.reshape(-1).view(np.uint8).data[:wanted]
        where = self.offset + start * self.row_bytes
        done = 0
        while done < wanted:
            count = self._pread(buffer[done:], where + done, start, stop)
            if count == 0:
                raise SourceError(
                    f"{self.path}: rows {start}:{stop}: the file ends at byte {where + done:,}, "
                    f"before byte {where + wanted:,} that its header promises: it was "
                    "truncated (perhaps while being converted)"
                )
            done += count
        if self.swap:
            target.byteswap(inplace=True)
        if target is not out:
            out[...] = target

    def _pread(self, buffer: memoryview, offset: int, start: int, stop: int) -> int:
        assert self._handle is not None
        try:
            return os.preadv(self._handle.fileno(), [buffer], offset)
        except OSError as exc:
            raise SourceError(
                f"{self.path}: rows {start}:{stop}: cannot be read ({exc.strerror})"
            ) from exc

    def close(self) -> None:
        """Close the file (or drop the mapping)."""
        self._mapped = None
        if self._handle is not None:
            self._handle.close()


class NpyReader:
    """Copies rows out of the files and in-memory arrays; packs rows of lists of arrays."""

    def __init__(self, sources: Mapping[str, NpyFile | np.ndarray | RowList]) -> None:
        self._sources = dict(sources)

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            SourceError: a file ends before those rows or cannot be read.
        """
        source = self._sources[name]
        if isinstance(source, NpyFile):
            source.read(start, stop, out)
        elif isinstance(source, np.ndarray):
            out[...] = source[start:stop]
        else:
            raise TypeError(f"field {name!r} is ragged: read it with read_ragged")

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the ragged field ``name`` (a list of arrays), packed."""
        source = self._sources[name]
        if not isinstance(source, RowList):
            raise TypeError(f"field {name!r} is not ragged: read it with read")
        return source.read(start, stop)

    def close(self) -> None:
        """Close the files."""
        for source in self._sources.values():
            if isinstance(source, NpyFile):
                source.close()
        self._sources = {}
