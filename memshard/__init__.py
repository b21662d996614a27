"""memshard: larger-than-RAM datasets of fixed-shape samples, as memory-mapped ``.npy`` shards.

Write with :func:`create` (or resume with :func:`append`), read with :func:`open`, change
attributes and label vocabularies with :func:`edit`; the format is specified in
``spec/FORMAT.md``.

This module re-exports the public API. Parallel writers write parts (:func:`write_part`) and
one process commits them (:func:`commit_parts`); :func:`build` runs a function of yours on
raw inputs in parallel and writes what it returns. It never imports torch, h5py, zarr,
pyarrow, Pillow or dask: those integrations live in their own modules.
"""

from __future__ import annotations

from . import errors
from .appender import Appender, append, create, upgrade
from .building import BuildReport, build
from .convert import (
    from_arrow,
    from_hdf5,
    from_image_folder,
    from_numpy,
    from_parquet,
    from_zarr,
    recompress,
    to_hdf5,
    to_zarr,
)
from .errors import MemshardError
from .manifest import FORMAT_VERSION
from .metadata import edit
from .parts import Part, PartWriter, commit_parts, discard_parts, write_part
from .reader import Column, Dataset, FieldInfo, open  # noqa: A004
from .schema import DEFAULT_SHARD_BYTES

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "FORMAT_VERSION",
    "Appender",
    "BuildReport",
    "Column",
    "Dataset",
    "FieldInfo",
    "MemshardError",
    "Part",
    "PartWriter",
    "append",
    "build",
    "commit_parts",
    "create",
    "discard_parts",
    "edit",
    "errors",
    "from_arrow",
    "from_hdf5",
    "from_image_folder",
    "from_numpy",
    "from_parquet",
    "from_zarr",
    "open",
    "recompress",
    "to_hdf5",
    "to_zarr",
    "upgrade",
    "write_part",
]
