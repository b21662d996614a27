"""The formats the suite compares, one module each; :func:`peers` lists them in table order."""

from __future__ import annotations

import os

from ..core import Workload
from .base import Format, Reader, Unavailable, byte_view
from .hdf5_file import Hdf5Format
from .lmdb_rows import LmdbFormat
from .memshard_dataset import MemshardFormat
from .numpy_peers import FilesFormat, MemmapFormat, RamFormat
from .redis_rows import RedisFormat
from .zarr_array import ZarrFormat

__all__ = ["Format", "Reader", "Unavailable", "byte_view", "peers", "BASELINE", "MEMSHARD"]

#: The format every ratio is taken against.
BASELINE = MemmapFormat.name
MEMSHARD = MemshardFormat.name


def peers(scratch: str, workload: Workload) -> list[Format]:
    """memshard and every peer, each in its own folder of ``scratch``, in table order."""

    def folder(name: str) -> str:
        return os.path.join(scratch, f"{workload.name}-{name}")

    return [
        MemshardFormat(folder("memshard"), workload),
        RamFormat(folder("ram"), workload),
        MemmapFormat(folder("memmap"), workload),
        Hdf5Format(folder("h5-contiguous"), workload, chunked=False),
        Hdf5Format(folder("h5-chunked"), workload, chunked=True),
        ZarrFormat(folder("zarr"), workload),
        LmdbFormat(folder("lmdb"), workload),
        RedisFormat(folder("redis"), workload),
        FilesFormat(folder("npy-files"), workload),
    ]
