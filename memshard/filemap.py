"""Mapping a file read-only without keeping its descriptor open.

Python's :class:`mmap.mmap` keeps a duplicate of the file's descriptor for as long as the
mapping lives; a reader that maps thousands of shard files (or keeps the shard table mapped
for the life of a dataset) must not hold a descriptor for each. Here an anonymous read-only
reservation is made with :mod:`mmap` (it gives numpy a buffer with the right lifetime) and the
file is mapped over it with libc's ``mmap(MAP_FIXED)``, after which the descriptor can be
closed: unmapping the reservation unmaps the file.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from typing import Any

import numpy as np

#: Whether files can be mapped over a reservation here (libc ``mmap`` with ``MAP_FIXED``).
FIXED_MAPPINGS = sys.platform in ("linux", "darwin")
MAP_FIXED = 0x10  # the same value on Linux and macOS


def _libc_mmap() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.mmap
    function.restype = ctypes.c_void_p
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    return function


_LIBC_MMAP: Any = _libc_mmap() if FIXED_MAPPINGS else None


def map_over(address: int, length: int, fd: int, offset: int, where: str) -> None:
    """Map ``length`` bytes of ``fd`` from ``offset`` read-only at ``address``, replacing what
    is mapped there (a reservation of this process).

    Raises:
        OSError: the kernel refused, naming ``where``.
    """
    mapped = _LIBC_MMAP(address, length, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, offset)
    if mapped != address:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap of {where} failed: {os.strerror(error)}")


def map_readonly(fd: int, length: int, where: str) -> mmap.mmap:
    """The first ``length`` bytes (at least 1) of the file ``fd`` mapped read-only, as an
    :class:`mmap.mmap` that holds no descriptor where :data:`FIXED_MAPPINGS` (elsewhere,
    a plain one); the caller may close ``fd`` at once.

    Raises:
        OSError: the kernel refused, naming ``where``.
    """
    if not FIXED_MAPPINGS:
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)
    region = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        map_over(address_of(region), length, fd, 0, where)
    except BaseException:
        region.close()
        raise
    return region


def address_of(region: mmap.mmap) -> int:
    """The address where ``region`` starts (a read-only mapping has no writable buffer for
    :mod:`ctypes` to take it from)."""
    probe = np.frombuffer(region, dtype=np.uint8, count=1)
    address: int = probe.ctypes.data
    del probe  # an exported buffer would keep the region from being closed
    return address
