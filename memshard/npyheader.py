"""The canonical ``.npy`` header of a shard file.

A shard is a valid NPY 1.0 file (``numpy.lib.format``) whose header is written in exactly one
way, so that it can be rewritten in place as rows are appended and so that a reader can check
it byte for byte:

1. the 6-byte magic ``\\x93NUMPY`` and the version bytes ``\\x01\\x00``;
2. the header length as a little-endian ``uint16``;
3. the ASCII dictionary ``{'descr': D, 'fortran_order': False, 'shape': S, }`` where ``D`` is
   the field's dtype descr and ``S`` the Python ``repr`` of ``(rows, *sample_shape)``;
4. spaces, then one ``\\n``, so that the data starts at a multiple of :data:`DATA_ALIGN` and
   there is room for a row count of :data:`ROW_DIGITS_RESERVED` digits. The data offset
   therefore depends only on the dtype and sample shape, never on the row count.

The data starts on a page boundary (4096 bytes for every realistic sample shape) so that the
data of consecutive shards can be mapped back to back into one contiguous array.
"""

from __future__ import annotations

import ast
import re
import struct
import threading
from typing import Any

import numpy as np

from .errors import ShardHeaderError

MAGIC = b"\x93NUMPY"
VERSION = b"\x01\x00"
#: Bytes before the header dictionary: magic, version and the uint16 header length.
PREAMBLE_SIZE = len(MAGIC) + len(VERSION) + 2
#: The data of every shard starts at a multiple of this: a memory page on common platforms.
DATA_ALIGN = 4096
#: A huge page (a PMD mapping on x86-64 and arm64 with 4 KiB pages): the placement unit of
#: mapped rows (:mod:`memshard.mappings` maps a segment at this alignment), of full shards'
#: sizes (:func:`memshard.schema.rows_per_shard`) and of the pieces shard files are written in
#: (:mod:`memshard.shardwriter`), so that the page cache holds them in 2 MiB folios.
HUGE_PAGE = 2 << 20
#: Digits of row count the header leaves room for: enough for any int64 row count.
ROW_DIGITS_RESERVED = 19
#: Largest header a shard may have; NPY 1.0 stores the length in a uint16.
MAX_HEADER_SIZE = 65535
#: Largest data offset a header of :data:`MAX_HEADER_SIZE` bytes can give.
MAX_DATA_OFFSET = (PREAMBLE_SIZE + MAX_HEADER_SIZE) // DATA_ALIGN * DATA_ALIGN


def _dictionary(dtype: np.dtype[Any], shape: tuple[int, ...]) -> str:
    # A structured dtype (the shard table's records) is spelled as numpy spells it: a list.
    descr = dtype.str if dtype.names is None else np.lib.format.dtype_to_descr(dtype)
    return f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"


def data_offset(dtype: np.dtype[Any], sample_shape: tuple[int, ...]) -> int:
    """Byte offset of the first row in a shard of this dtype and sample shape.

    Example:
        >>> data_offset(np.dtype("<f4"), (3, 64, 64))
        4096
    """
    widest = _dictionary(dtype, (10**ROW_DIGITS_RESERVED - 1, *sample_shape))
    unpadded = PREAMBLE_SIZE + len(widest) + 1
    return -(-unpadded // DATA_ALIGN) * DATA_ALIGN


def header_bytes(dtype: np.dtype[Any], sample_shape: tuple[int, ...], rows: int) -> bytes:
    """The canonical header of a shard holding ``rows`` rows; ``data_offset(...)`` bytes long."""
    if not 0 <= rows < 10**ROW_DIGITS_RESERVED:
        raise ValueError(f"row count {rows} does not fit the reserved header space")
    size = data_offset(dtype, sample_shape)
    text = _dictionary(dtype, (rows, *sample_shape))
    body_size = size - PREAMBLE_SIZE
    if body_size > MAX_HEADER_SIZE:
        raise ValueError(f"a header of {body_size} bytes exceeds {MAX_HEADER_SIZE}")
    body = text.ljust(body_size - 1).encode("ascii") + b"\n"
    return MAGIC + VERSION + struct.pack("<H", body_size) + body


def rows_in_header(
    header: bytes, dtype: np.dtype[Any], sample_shape: tuple[int, ...], *, where: str
) -> int:
    """Return the row count of a canonical header, checking every byte of it.

    ``header`` is the first ``data_offset(dtype, sample_shape)`` bytes of the shard file. The
    dictionary is parsed with :func:`ast.literal_eval` (never unpickled), then the header is
    regenerated and compared, so any deviation (another dtype, Fortran order, a big-endian
    descr, odd padding, a flipped byte) is refused.

    Raises:
        ShardHeaderError: naming ``where`` (the shard file) and what was found.
    """
    expected_size = data_offset(dtype, sample_shape)
    if len(header) != expected_size:
        raise ShardHeaderError(f"{where}: header is {len(header)} bytes, expected {expected_size}")
    if header[: len(MAGIC)] != MAGIC:
        raise ShardHeaderError(f"{where}: not an .npy file (magic {header[:6]!r})")
    if header[len(MAGIC) : len(MAGIC) + 2] != VERSION:
        raise ShardHeaderError(
            f"{where}: .npy version {tuple(header[6:8])} is not the 1.0 that memshard writes"
        )
    rows = _canonical_rows(header, dtype, sample_shape)
    if rows is not None:
        return rows
    rows = _parse_rows(header[PREAMBLE_SIZE:], where)
    if header_bytes(dtype, sample_shape, rows) != header:
        raise ShardHeaderError(
            f"{where}: header {header[PREAMBLE_SIZE:].rstrip().decode('latin-1')!r} does not "
            f"match the manifest (dtype {dtype.str!r}, sample shape {sample_shape}, C order)"
        )
    return rows


#: The row count as it stands in a canonical header: the first number of the shape tuple.
_CANONICAL_ROWS = re.compile(rb"'shape': \((0|[1-9][0-9]{0,%d}),[ )]" % (ROW_DIGITS_RESERVED - 1))
#: CPython 3.11 keeps the AST validator's recursion depth per interpreter, so two threads
#: parsing at once can fail with "SystemError: AST constructor recursion depth mismatch"
#: (CPython gh-106905); a threaded gather maps shards from several threads.
_LITERAL_EVAL_LOCK = threading.Lock()


def _canonical_rows(
    header: bytes, dtype: np.dtype[Any], sample_shape: tuple[int, ...]
) -> int | None:
    """The row count of a header that is byte for byte canonical, else None (never raises).

    The common case needs no parser: the row count is read from the shape and the header
    regenerated from it; only a header that is not canonical goes on to the full parse, which
    says what is wrong with it.
    """
    found = _CANONICAL_ROWS.search(header, PREAMBLE_SIZE)
    if found is None:
        return None
    rows = int(found.group(1))
    if rows >= 10**ROW_DIGITS_RESERVED or header_bytes(dtype, sample_shape, rows) != header:
        return None
    return rows


def _parse_rows(body: bytes, where: str) -> int:
    try:
        with _LITERAL_EVAL_LOCK:
            parsed = ast.literal_eval(body.decode("ascii"))
    except (  # everything literal_eval raises on hostile text (TypeError: unhashable keys)
        ValueError,
        TypeError,
        SyntaxError,
        UnicodeDecodeError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise ShardHeaderError(f"{where}: unreadable header dictionary ({exc})") from None
    shape = parsed.get("shape") if isinstance(parsed, dict) else None
    if (
        not isinstance(shape, tuple)
        or not shape
        or type(shape[0]) is not int
        or not 0 <= shape[0] < 10**ROW_DIGITS_RESERVED
    ):
        raise ShardHeaderError(f"{where}: header has no valid 'shape' with a row count")
    return shape[0]
