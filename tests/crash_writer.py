"""Child process for the crash tests: appends deterministic rows and acknowledges commits.

Row ``i`` holds ``x = i`` (every element) and ``y = i``. After every commit the writer prints
``ACK <rows>`` and flushes, so the parent knows which rows were acknowledged as durable.
Run as ``python -m tests.crash_writer PATH SEED``.

The crash harness also writes datasets of :data:`RAGGED_FIELDS`, whose rows vary in length
(see :func:`ragged_rows`), and of :data:`COMPRESSED_FIELDS`, compressed in blocks (see
:func:`compressed_rows`); :func:`batch` and :func:`single_row` give the rows of any kind.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

import memshard as ms

SAMPLE_SHAPE = (5, 7)
FIELDS = {"x": ("float32", SAMPLE_SHAPE), "y": ("int64", ())}
#: Small shards so that the writer rolls over often.
SHARD_BYTES = 23 * (4 * 35 + 8)


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    """The deterministic content of rows ``start .. start + count``."""
    index = np.arange(start, start + count)
    x = np.broadcast_to(index[:, None, None], (count, *SAMPLE_SHAPE)).astype(np.float32)
    return {"x": x, "y": index}


#: A ragged int32 field, a ragged field of int16 triples and a fixed field.
RAGGED_FIELDS = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "y": ("int64", ())}
#: Ragged shards roll on their data size: about 18 rows each (rows hold 55 bytes on average,
#: offsets included), and one row in 20 (:data:`BIG_ROW`) is larger than a whole shard.
RAGGED_SHARD_BYTES = 1024
BIG_ROW_EVERY, BIG_ROW = 20, 17
BIG_ROW_TOKENS = 300


def token_count(index: int) -> int:
    """Tokens of row ``index``: 0 to 11, or :data:`BIG_ROW_TOKENS` (1200 bytes)."""
    return BIG_ROW_TOKENS if index % BIG_ROW_EVERY == BIG_ROW else index * 7 % 12


def ragged_rows(start: int, count: int) -> dict[str, Any]:
    """Rows ``start .. start + count`` of :data:`RAGGED_FIELDS`: row ``i`` holds the tokens
    ``1000 * i + j`` (``j`` counting them), ``i * 5 % 4`` strokes all ``i % 30000``, and
    ``y = i``."""
    index = range(start, start + count)
    return {
        "tokens": [(1000 * i + np.arange(token_count(i))).astype(np.int32) for i in index],
        "strokes": [np.full((i * 5 % 4, 3), i % 30000, dtype=np.int16) for i in index],
        "y": np.arange(start, start + count, dtype=np.int64),
    }


#: Compressed fields: a zstd field of 96-byte rows, ten to a block of 1 KiB; an lz4 ragged
#: field whose rows hold 0 to 11 int32 (one in 20 holds 300, a block of its own); a plain field.
COMPRESSED_FIELDS = {
    "img": ("uint8", (96,), {"codec": "zstd", "block_bytes": 1024}),
    "codes": ("int32", (None,), {"codec": "lz4", "block_bytes": 1024}),
    "y": ("int64", ()),
}
#: Compressed shards roll on their uncompressed data: about 13 rows each.
COMPRESSED_SHARD_BYTES = 2048


def compressed_rows(start: int, count: int) -> dict[str, Any]:
    """Rows ``start .. start + count`` of :data:`COMPRESSED_FIELDS`: row ``i`` holds
    ``img = (i + j) // 8 % 256`` (``j`` counting its bytes), ``codes`` the tokens of
    :func:`ragged_rows`, and ``y = i``."""
    index = np.arange(start, start + count, dtype=np.int64)
    img = ((index[:, None] + np.arange(96)) // 8 % 256).astype(np.uint8)
    codes = [(1000 * i + np.arange(token_count(i))).astype(np.int32) for i in index.tolist()]
    return {"img": img, "codes": codes, "y": index}


def is_ragged(fields: Iterable[str]) -> bool:
    """Whether a dataset of these fields is one of :data:`RAGGED_FIELDS`."""
    return "tokens" in fields


def is_compressed(fields: Iterable[str]) -> bool:
    """Whether a dataset of these fields is one of :data:`COMPRESSED_FIELDS`."""
    return "img" in fields


def batch(fields: Iterable[str], start: int, count: int) -> dict[str, Any]:
    """Rows ``start .. start + count`` of a dataset of ``fields`` (any kind)."""
    fields = list(fields)
    if is_compressed(fields):
        return compressed_rows(start, count)
    return ragged_rows(start, count) if is_ragged(fields) else rows(start, count)


def single_row(fields: Iterable[str], index: int) -> dict[str, Any]:
    """Row ``index`` of a dataset of ``fields``, as ``Appender.append`` takes it."""
    return {name: values[0] for name, values in batch(fields, index, 1).items()}


def main(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = ms.append(path)
    print(f"START {writer.rows}", flush=True)
    while True:
        for _ in range(int(rng.integers(1, 4))):
            count = int(rng.integers(1, 60))
            if rng.random() < 0.2:
                for _ in range(count):
                    row = rows(writer.rows, 1)
                    writer.append({"x": row["x"][0], "y": int(row["y"][0])})
            else:
                writer.extend(rows(writer.rows, count))
        if rng.random() < 0.1:
            writer.close()
            print(f"ACK {writer.committed_rows}", flush=True)
            writer = ms.append(path)
        else:
            writer.commit()
            print(f"ACK {writer.committed_rows}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
