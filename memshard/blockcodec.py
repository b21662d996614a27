"""Compressing a block of rows, and decompressing a block straight into the memory it
belongs in, never past it.

Each codec (see :mod:`memshard.codecs`) comes from a well-kept library, measured against the
alternatives by ``python -m benchmarks.codecs`` (``docs/benchmarks/codecs.md``): zstd from
python-zstandard, lz4 and blosc from numcodecs.

A block's size is always known before it is decompressed (its rows times their bytes, from the
offsets), so every codec is held to it: a frame whose header claims another size, that ends
early, or that inflates past it (a decompression bomb) is a
:class:`~memshard.errors.BlockError`, and no more memory than the block's own is ever written
or allocated. Each library call releases the GIL, so blocks decompress in parallel threads.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codecs import BLOSC_SHUFFLES
from .dependencies import require
from .errors import BlockError

_LZ4_SIZE = struct.Struct("<i")
_BLOSC_HEADER = struct.Struct("<BBBBiii")


@dataclass(frozen=True)
class BlockCodec:
    """One field's codec, ready to use: ``name``, its ``params`` (checked) and the item size
    of the field's dtype (blosc's shuffle works on items)."""

    name: str
    params: tuple[tuple[str, Any], ...]
    itemsize: int

    @classmethod
    def of(cls, name: str, params: Mapping[str, Any], itemsize: int) -> BlockCodec:
        """The codec ``name`` with ``params`` (as a manifest holds them)."""
        return cls(name, tuple(sorted(params.items())), itemsize)

    def compress(self, block: memoryview) -> bytes:
        """The frame of ``block`` (bytes of whole rows); never empty."""
        params = dict(self.params)
        if self.name == "zstd":
            return bytes(_zstd_compressor(params["level"]).compress(block))
        if self.name == "lz4":
            return bytes(_numcodecs_lz4(params["acceleration"]).encode(block))
        return bytes(_numcodecs_blosc(self.params, self.itemsize).encode(block))

    def decompress_into(
        self, frame: memoryview, out: memoryview, *, where: str | Callable[[], str]
    ) -> None:
        """Fill ``out`` (writable, contiguous bytes: exactly the block's size) with the block
        ``frame`` holds.

        Raises:
            BlockError: the frame claims another size than ``out``'s, ends early, inflates
                past it, or is not a frame of this codec; the message starts with ``where``
                (or what it returns: it is called only then).
        """
        size = out.nbytes
        try:
            if self.name == "zstd":
                _zstd_into(frame, out, size)
            elif self.name == "lz4":
                _lz4_into(frame, out, size, dict(self.params))
            else:
                _blosc_into(frame, out, size, self)
        except _Refused as exc:
            raise BlockError(f"{where if isinstance(where, str) else where()}: {exc}") from None
        except Exception as exc:  # the libraries raise their own errors for damaged frames
            place = where if isinstance(where, str) else where()
            raise BlockError(f"{place}: not a valid {self.name} frame ({exc})") from None


class _Refused(Exception):
    """A frame refused before or after decompressing (the message says why)."""


def _zstd_into(frame: memoryview, out: memoryview, size: int) -> None:
    claimed = _zstandard().frame_content_size(frame)
    if claimed != size:
        raise _Refused(f"the zstd frame claims {claimed} bytes, the block has {size}")
    if not size:
        return
    reader = _zstd_decompressor().stream_reader(frame, read_across_frames=False)
    with reader:
        filled = 0
        while filled < size:
            got = reader.readinto(out[filled:])
            if not got:
                raise _Refused(f"the zstd frame ends after {filled} of {size} bytes")
            filled += got
        if reader.read(1):
            raise _Refused(f"the zstd frame inflates past its {size} bytes")


def _lz4_into(frame: memoryview, out: memoryview, size: int, params: dict[str, Any]) -> None:
    if len(frame) < _LZ4_SIZE.size:
        raise _Refused(f"an lz4 frame of {len(frame)} bytes has no size")
    (claimed,) = _LZ4_SIZE.unpack_from(frame)
    if claimed != size:
        raise _Refused(f"the lz4 frame claims {claimed} bytes, the block has {size}")
    if not size:  # numcodecs refuses to decode a block of no bytes
        return
    target = np.frombuffer(out, dtype=np.uint8)
    _numcodecs_lz4(params["acceleration"]).decode(frame, out=target)


def _blosc_into(frame: memoryview, out: memoryview, size: int, codec: BlockCodec) -> None:
    if len(frame) < _BLOSC_HEADER.size:
        raise _Refused(f"a blosc frame of {len(frame)} bytes has no header")
    _, _, _, _, nbytes, _, cbytes = _BLOSC_HEADER.unpack_from(frame)
    if nbytes != size or cbytes != len(frame):
        raise _Refused(
            f"the blosc frame claims {nbytes} bytes in {cbytes}, the block has {size} in "
            f"{len(frame)}"
        )
    if not size:  # numcodecs refuses to decode a block of no bytes
        return
    target = np.frombuffer(out, dtype=np.uint8)
    _numcodecs_blosc(codec.params, codec.itemsize).decode(frame, out=target)


# Codec objects: zstandard's are not thread-safe, so each thread has its own; numcodecs'
# are stateless and shared.
_local = threading.local()


_modules: dict[str, Any] = {}


def _zstandard() -> Any:
    module = _modules.get("zstandard")
    if module is None:
        module = _modules["zstandard"] = require("zstandard", "compression")
    return module


def _zstd_compressor(level: int) -> Any:
    compressors = _local.__dict__.setdefault("zstd_compressors", {})
    if level not in compressors:
        compressors[level] = _zstandard().ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True
        )
    return compressors[level]


def _zstd_decompressor() -> Any:
    if not hasattr(_local, "zstd_decompressor"):
        _local.zstd_decompressor = _zstandard().ZstdDecompressor()
    return _local.zstd_decompressor


_shared: dict[Any, Any] = {}


def _numcodecs_lz4(acceleration: int) -> Any:
    key = ("lz4", acceleration)
    if key not in _shared:
        _shared[key] = require("numcodecs", "compression").LZ4(acceleration=acceleration)
    return _shared[key]


def _numcodecs_blosc(params: tuple[tuple[str, Any], ...], itemsize: int) -> Any:
    key = ("blosc", params, itemsize)
    if key not in _shared:
        numcodecs = require("numcodecs", "compression")
        # Blosc's own threads are left off: a gather decompresses blocks in its own threads.
        numcodecs.blosc.use_threads = False
        given = dict(params)
        _shared[key] = numcodecs.Blosc(
            cname=given["cname"], clevel=given["clevel"],
            shuffle=BLOSC_SHUFFLES[given["shuffle"]], typesize=itemsize,
        )  # fmt: skip
    return _shared[key]
