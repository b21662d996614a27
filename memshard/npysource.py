"""NumPy arrays and ``.npy`` files as a conversion source (see :func:`memshard.from_numpy`).

Files are never loaded whole and never unpickled: an ``.npy`` file of object dtype is refused.
A file in C order (every file ``numpy.save`` writes from an ordinary array) is read with
``pread`` into the caller's buffer, so a file truncated while it is converted gives a typed
error; a memory mapping would kill the process with ``SIGBUS``. A Fortran-ordered file is
copied out of a memory mapping. In-memory arrays are read by the converting process's threads
only.
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
from .smallfile import open_regular
from .sources import (
    ArrayInfo,
    SourcePlan,
    array_problem,
    plan_labels,
    select_fields,
    stored_dtype,
)

MEMORY = "<memory>"
NPY_MAGIC = b"\x93NUMPY"


def plan(src: Any, *, labels: Mapping[str, Sequence[str]] | None = None) -> SourcePlan:
    """Describe the conversion of ``src``: an array, a ``.npy`` path, or ``{field: either}``.

    Raises:
        SourceError: a file is missing or not an ``.npy`` file, or lengths disagree.
        UnsupportedSourceError: an array memshard cannot store (object, string, structured,
            0-d).
    """
    named = _named_inputs(src)
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    infos = []
    for name, value in named.items():
        if isinstance(value, (str, os.PathLike)):
            files[name] = os.path.abspath(os.fspath(value))
            array = _map_file(files[name])
        elif isinstance(value, np.ndarray):
            array = arrays[name] = value
        else:
            raise SourceError(
                f"field {name!r}: expected a numpy array or a .npy path, got {type(value).__name__}"
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
    arrays: dict[str, np.ndarray]

    def __call__(self) -> NpyReader:
        """Open the files.

        Raises:
            SourceError: a file is gone or no longer a readable ``.npy`` file.
        """
        opened: dict[str, NpyFile | np.ndarray] = {}
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
    """Copies rows out of the files and in-memory arrays."""

    def __init__(self, sources: Mapping[str, NpyFile | np.ndarray]) -> None:
        self._sources = dict(sources)

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            SourceError: a file ends before those rows or cannot be read.
        """
        source = self._sources[name]
        if isinstance(source, NpyFile):
            source.read(start, stop, out)
        else:
            out[...] = source[start:stop]

    def close(self) -> None:
        """Close the files."""
        for source in self._sources.values():
            if isinstance(source, NpyFile):
                source.close()
        self._sources = {}
