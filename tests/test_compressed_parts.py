"""Parts of compressed fields: written by ``write_part`` in other processes, committed with
``commit_parts`` (alone or through an appender whose last block was written by a commit),
checked by ``verify=True``, discarded with every file."""

from __future__ import annotations

import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard import errors

#: A zstd field of 200-byte rows, five to a block; a blosc ragged field; a plain field.
FIELDS = {
    "img": ("uint8", (200,), {"codec": "zstd", "block_bytes": 1024}),
    "codes": ("float32", (None, 2), {"codec": "blosc", "block_bytes": 1024}),
    "y": ("int64", ()),
}
SHARD_BYTES = 3000  # about 11 rows a shard


def rows(start: int, count: int) -> dict[str, Any]:
    """Row ``i``: ``img`` bytes ``(i + j) // 4 % 256``, ``i % 9`` pairs of codes all ``i``,
    ``y = i``."""
    index = np.arange(start, start + count)
    return {
        "img": ((index[:, None] + np.arange(200)) // 4 % 256).astype(np.uint8),
        "codes": [np.full((i % 9, 2), i, np.float32) for i in index.tolist()],
        "y": index.astype(np.int64),
    }


def assert_rows(ds: ms.Dataset, count: int) -> None:
    """``ds`` holds rows ``0 .. count`` of :func:`rows`, by slice, row, and threaded take."""
    expected = rows(0, count)
    assert len(ds) == count
    np.testing.assert_array_equal(ds["y"][:], expected["y"])
    np.testing.assert_array_equal(ds["img"][:], expected["img"])
    backwards = np.arange(count)[::-1]
    taken = ds.take(backwards, threads=2)
    np.testing.assert_array_equal(taken["img"], expected["img"][backwards])
    for position, index in enumerate(backwards.tolist()):
        np.testing.assert_array_equal(taken["codes"][position], expected["codes"][index])
    for index in range(count):
        np.testing.assert_array_equal(ds["codes"][index], expected["codes"][index])
        np.testing.assert_array_equal(ds["img"][index], expected["img"][index])


def _write_part(path: str, key: int, start: int, count: int) -> str:
    """In a worker process: rows ``start .. start + count`` as part ``key``, in two batches
    (the second of single rows: blocks are filled across calls)."""
    with ms.write_part(path, key=key) as part:
        part.extend(rows(start, count - 3))
        for index in range(start + count - 3, start + count):
            part.append({name: values[0] for name, values in rows(index, 1).items()})
    return part.id


def test_parts_written_in_other_processes_commit_in_key_order(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=SHARD_BYTES).close()
    spans = {2: (47, 23), 0: (0, 21), 1: (21, 26)}  # key -> (first row, rows)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_write_part, str(path), k, *span) for k, span in spans.items()]
        ids = [future.result() for future in futures]
    placed = ms.commit_parts(path, ids)
    assert [placed[part].start for part in ids] == [47, 0, 21]
    ds = ms.open(path)
    assert_rows(ds, 70)
    assert ds.verify().ok
    # Each part's shards start blocks of their own: their block ends start from 0.
    firsts = {shard.row_offset for shard in ds.shards}
    assert {0, 21, 47} <= firsts
    for shard in ds.shards:
        ends = np.load(path / shard.files["img"].offsets_path)
        assert ends[0] == 0
        assert ends[-1] == np.load(path / shard.files["img"].path).size
    assert os.listdir(path / "parts") == []


def test_commit_parts_through_an_appender_after_a_commit_mid_block(tmp_path: Path) -> None:
    """The appender's last block was written by a commit (7 rows: a block of 5 and one of
    2); commit_parts seals its shard and adopts the part's; the appender goes on after them."""
    path = tmp_path / "ds"
    writer = ms.create(path, FIELDS, shard_bytes=SHARD_BYTES)
    writer.extend(rows(0, 7))
    writer.commit()
    with ms.write_part(path) as part:
        part.extend(rows(7, 30))
    placed = ms.commit_parts(writer, [part.close()], order="given")
    assert placed == {part.id: range(7, 37)}
    writer.extend(rows(37, 8))
    writer.append({name: values[0] for name, values in rows(45, 1).items()})
    writer.close()
    ds = ms.open(path)
    assert_rows(ds, 46)
    assert ds.verify().ok
    first = np.load(path / ds.shards[0].files["img"].offsets_path)
    assert first.tolist()[:8] == [0] + [first[1]] * 5 + [first[6]] * 2  # blocks of 5 and 2


@pytest.mark.parametrize("damaged", ["frames", "block ends"])
def test_a_commit_that_verifies_parts_checks_frames_and_block_ends(
    tmp_path: Path, damaged: str
) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=1 << 20).close()
    with ms.write_part(path) as part:
        part.extend(rows(0, 30))
    suffix = "img.npy" if damaged == "frames" else "img.offsets.npy"
    (target,) = (path / "shards").glob(f"*.{suffix}")
    os.chmod(target, 0o644)
    with open(target, "r+b") as handle:  # one byte of data changed
        handle.seek(4096 + 8)
        byte = handle.read(1)
        handle.seek(4096 + 8)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(errors.ChecksumError, match=re.escape(suffix) + ": data"):
        ms.commit_parts(path, [part.close()], verify=True)
    assert len(ms.open(path)) == 0


def test_discard_parts_removes_every_file_of_a_compressed_part(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    ms.create(path, FIELDS, shard_bytes=SHARD_BYTES).close()
    with ms.write_part(path) as part:
        part.extend(rows(0, 30))
    names = os.listdir(path / "shards")
    assert {name.split(".", 1)[1] for name in names} == {
        "img.npy", "img.offsets.npy", "codes.npy", "codes.offsets.npy", "y.npy"
    }  # fmt: skip
    assert ms.discard_parts(path) == [part.id]
    assert os.listdir(path / "shards") == []
    assert os.listdir(path / "parts") == []
