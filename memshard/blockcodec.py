"""Compressing a block of rows, and decompressing a block straight into the memory it
belongs in, never past it.

Each codec (see :mod:`memshard.codecs`) comes from a well-kept library, measured against the
alternatives by ``python -m benchmarks.codecs`` (``docs/benchmarks/codecs.md``): zstd from
python-zstandard, lz4 and blosc from numcodecs.

A block's size is always known before it is decompressed (its rows times their bytes, from the
offsets), so every codec is held to it: a frame whose header claims another size, that ends
early, or that inflates past it (a decompression bomb) is a
:class:`~memshard.errors.BlockError`, and no more memory than the block's own is ever written
or allocated. A frame's claim is checked before memory for its block is allocated
(:meth:`BlockCodec.claim_problem`), and a claim no frame of its length can hold
(:data:`MAX_RATIO`) is refused with it, so offsets that lie about a block's size cost no
memory. Each library call releases the GIL, so blocks decompress in parallel threads.

A block its codec shrinks by less than :data:`MIN_SAVING` is *stored*: written as it is, not as
a frame (spec section 5.7, "Stored blocks"). Its length, equal to the block's size, says so (a
frame is always shorter), and its rows are read without decompressing anything.
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
_BLOSC_START = struct.Struct("<i")
_BLOSC_MEMCPYED = 0x02
#: The most bytes one byte of a frame can decompress to (spec section 5.7): a zstd block of
#: at most 128 KiB takes at least 4 bytes (an RLE block and its header); an LZ4 sequence
#: yields at most 255 bytes a byte (a match length goes on in bytes of 255); the splits of a
#: c-blosc 1 frame are copied bytes or frames of its inner codecs, zstd the most compressible.
#: A frame that claims more cannot be whole: it is refused before memory is set aside for it.
MAX_RATIO = {"zstd": 32768, "lz4": 255, "blosc": 32768}
#: A block is written as a frame only when the frame is at most this share of its size (a
#: saving of at least 1/8, the rule ZFS keeps): else it is stored as it is, so that data that
#: barely compresses (embeddings, noise) is read as fast as an uncompressed field.
MAX_FRAME_SHARE = (7, 8)


def is_stored(stored: memoryview | bytes, size: int) -> bool:
    """Whether ``stored``, a block of ``size`` bytes as its values file holds it, is the block
    itself (a stored block) rather than a frame: a frame is always shorter than its block.

    Example:
        >>> is_stored(bytes(8), 8), is_stored(bytes(5), 8), is_stored(b"", 0)
        (True, False, False)
    """
    return size > 0 and len(stored) == size


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

    def stored_form(self, block: memoryview) -> memoryview | bytes:
        """What the values file holds for ``block`` (bytes of whole rows): its frame, or
        ``block`` itself when the frame would not save :data:`MAX_FRAME_SHARE` of it (a
        stored block). Never empty: a block of no bytes (ragged rows without elements) is
        always a frame, so that every block ends at another byte than the one before it."""
        frame = self.compress(block)
        most, of = MAX_FRAME_SHARE
        if block.nbytes and len(frame) * of > block.nbytes * most:
            return block
        return frame

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
        if is_stored(frame, size):
            out[:] = frame
            return
        try:
            problem = self.claim_problem(frame, size)
            if problem is not None:
                raise _Refused(problem)
            if not size:  # numcodecs refuses to decode a block of no bytes
                return
            if self.name == "zstd":
                _zstd_into(frame, out, size)
            else:
                target = np.frombuffer(out, dtype=np.uint8)
                if self.name == "lz4":
                    _numcodecs_lz4(dict(self.params)["acceleration"]).decode(frame, out=target)
                else:
                    _numcodecs_blosc(self.params, self.itemsize).decode(frame, out=target)
        except _Refused as exc:
            raise BlockError(f"{where if isinstance(where, str) else where()}: {exc}") from None
        except Exception as exc:  # the libraries raise their own errors for damaged frames
            place = where if isinstance(where, str) else where()
            raise BlockError(f"{place}: not a valid {self.name} frame ({exc})") from None

    def claim_problem(self, frame: memoryview, size: int) -> str | None:
        """What is wrong with the size ``frame``'s header claims, for a block of ``size``
        bytes: another size, or more than a frame of its length can hold (None: nothing).
        Reads the header only, so that a reader checks a claim before it allocates memory
        for the block.

        Example:
            >>> codec = BlockCodec.of("lz4", {"acceleration": 1}, 1)
            >>> frame = memoryview(codec.compress(memoryview(bytes(100))))
            >>> codec.claim_problem(frame, 100) is None
            True
            >>> codec.claim_problem(frame, 10**6)
            'the lz4 frame claims 100 bytes, the block has 1000000'
        """
        if is_stored(frame, size):
            return None
        try:
            claimed = self._claimed(frame)
        except Exception as exc:  # zstandard: not a zstd frame at all
            return f"not a valid {self.name} frame ({exc})"
        if isinstance(claimed, str):
            return claimed
        if claimed != size:
            return f"the {self.name} frame claims {claimed} bytes, the block has {size}"
        most = MAX_RATIO[self.name]
        if size > len(frame) * most:
            return (
                f"a {self.name} frame of {len(frame)} bytes cannot hold the {size} bytes it "
                f"claims (at most {most} bytes a byte): a lie, or a bomb"
            )
        return _blosc_layout_problem(frame) if self.name == "blosc" and size else None

    def _claimed(self, frame: memoryview) -> int | str:
        """The block size ``frame``'s header claims, or what is wrong with its header."""
        if self.name == "zstd":
            claimed: int = _zstandard().frame_content_size(frame)
            return claimed
        if self.name == "lz4":
            if len(frame) < _LZ4_SIZE.size:
                return f"an lz4 frame of {len(frame)} bytes has no size"
            (claimed,) = _LZ4_SIZE.unpack_from(frame)
            return claimed
        if len(frame) < _BLOSC_HEADER.size:
            return f"a blosc frame of {len(frame)} bytes has no header"
        _, _, _, _, nbytes, _, cbytes = _BLOSC_HEADER.unpack_from(frame)
        if cbytes != len(frame):
            return (
                f"the blosc frame claims {nbytes} bytes in {cbytes}, yet its block's frame "
                f"is {len(frame)} bytes"
            )
        return int(nbytes)


class _Refused(Exception):
    """A frame refused before or after decompressing (the message says why)."""


def _blosc_layout_problem(frame: memoryview) -> str | None:
    """What is wrong with the layout of a c-blosc 1 frame (its header read whole, and its
    claim of a size above 0 checked), or None: its bytes must be copied right after the
    header, or its blocks' starts follow the header and its first block follow them. A frame
    whose header was made to claim fewer bytes than its blocks hold (c-blosc would decode the
    first ones and say nothing) is refused so."""
    _, _, flags, _, nbytes, blocksize, _ = _BLOSC_HEADER.unpack_from(frame)
    if flags & _BLOSC_MEMCPYED:
        if len(frame) != _BLOSC_HEADER.size + nbytes:
            return f"the blosc frame copies {nbytes} bytes, yet is {len(frame)} bytes"
        return None
    if blocksize <= 0:
        return f"the blosc frame claims blocks of {blocksize} bytes"
    blocks = -(-nbytes // blocksize)
    first = _BLOSC_HEADER.size + _BLOSC_START.size * blocks
    if len(frame) < first + _BLOSC_START.size:
        return f"the blosc frame claims {blocks} blocks of {blocksize} bytes in {len(frame)}"
    (start,) = _BLOSC_START.unpack_from(frame, _BLOSC_HEADER.size)
    if start != first:
        return (
            f"the blosc frame claims {nbytes} bytes in {blocks} blocks, yet its first block "
            f"starts at byte {start}, not {first} (it holds more than it claims)"
        )
    return None


def _zstd_into(frame: memoryview, out: memoryview, size: int) -> None:
    """Decompress a zstd frame whose claim was checked (a content size of ``size`` bytes, which
    bounds the decoder's buffers too) into ``out``; refuse one that ends early or goes on."""
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
