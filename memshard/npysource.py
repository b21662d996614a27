"""NumPy arrays and ``.npy`` files as a conversion source (see :func:`memshard.from_numpy`).

Files are memory-mapped, never loaded, and never unpickled: an ``.npy`` file of object dtype
is refused. In-memory arrays are read by the converting process's threads only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SourceError, UnsupportedSourceError
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
    """Maps the files in the calling process; in-memory arrays travel only within it."""

    files: dict[str, str]
    arrays: dict[str, np.ndarray]

    def __call__(self) -> NpyReader:
        mapped = {name: _map_file(path) for name, path in self.files.items()}
        return NpyReader({**mapped, **self.arrays})

    def __reduce__(self) -> Any:
        if self.arrays:
            raise TypeError("in-memory arrays are converted by threads, never sent to processes")
        return (NpyOpener, (self.files, {}))


class NpyReader:
    """Copies rows out of the arrays (memory-mapped for files)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``."""
        out[...] = self._arrays[name][start:stop]

    def close(self) -> None:
        """Drop the mappings."""
        self._arrays = {}
