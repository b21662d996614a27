"""Gathers of rows not in the page cache: the reader asks the kernel for all of them at once.

Pages are made cold for real: the shard files are dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` while no process maps them, and ``mincore`` on a fresh
mapping (this file's own, independent of memshard's) checks that they left. Which gathers
advise their rows is observed at the reader's call of
:func:`memshard.pagecache.advise_will_need`, which still runs.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import pagecache, reader
from tests.helpers import write_dataset

_MINCORE = ctypes.CDLL(None, use_errno=True).mincore
_MINCORE.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]

#: 1000 float32: 4000-byte rows, so a shard is a whole number of pages only at 128 rows and
#: shards of 50 rows are each mapped as their own segment.
ROW = (1000,)


def _resident_pages(path: str) -> np.ndarray:
    """Which pages of ``path`` are in the page cache (``mincore`` on a fresh mapping)."""
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    status = ctypes.create_string_buffer(pages)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as mapped:
        probe = np.frombuffer(mapped, dtype=np.uint8)
        result = _MINCORE(probe.ctypes.data, size, status)
        del probe
    assert result == 0, os.strerror(ctypes.get_errno())
    resident: np.ndarray = np.frombuffer(status.raw, dtype=np.uint8) & 1 == 1
    return resident


def _evict(ds: ms.Dataset, rows: range | None = None) -> None:
    """Drop every shard file of ``ds`` from the page cache, and check that the files holding
    ``rows`` (default: all) left it. ``ds`` is closed first: pages that a live process maps
    stay cached, so another process mapping some files keeps those."""
    ds.close()
    gc.collect()  # unmap
    for shard in ds.shards:
        for name in ds.fields:
            path = os.path.join(ds.path, shard.files[name].path)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            held = range(shard.row_offset, shard.row_offset + shard.rows)
            if rows is None or range(max(held.start, rows.start), min(held.stop, rows.stop)):
                assert not _resident_pages(path).any(), f"{path} stayed in the page cache"


class _Advised:
    """Records the rows the reader advises, passing each call on to the real function."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.real = pagecache.advise_will_need

    def __call__(self, array: np.ndarray, rows: np.ndarray) -> int:
        self.rows.append(np.array(rows))
        return self.real(array, rows)

    @property
    def count(self) -> int:
        return sum(rows.size for rows in self.rows)


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> _Advised:
    spy = _Advised()
    monkeypatch.setattr(reader, "advise_will_need", spy)
    return spy


def _rows(count: int) -> np.ndarray:
    return np.arange(count * ROW[0], dtype=np.float32).reshape(count, *ROW)


#: Mapping a shard reads its header, and the kernel reads a few pages past it ahead (16 KiB
#: for a one-page read): rows this far into a shard file are still cold after it is mapped.
COLD_FROM_ROW = 8


def _batch(rows: int, count: int, shard_rows: int, seed: int) -> np.ndarray:
    """``count`` distinct random rows of ``rows``, the first one cold once its shard is mapped
    (at least :data:`COLD_FROM_ROW` rows into a shard of ``shard_rows``)."""
    indices = np.random.default_rng(seed).permutation(rows)[:count]
    first = int(np.flatnonzero(indices % shard_rows >= COLD_FROM_ROW)[0])
    indices[[0, first]] = indices[[first, 0]]
    return indices


def test_is_resident_tells_an_evicted_page_from_a_cached_one(tmp_path: Path) -> None:
    x = _rows(300)
    ds = write_dataset(tmp_path / "d", {"x": x}, shard_rows=128)
    _evict(ds)
    ds = ms.open(tmp_path / "d")
    column = ds["x"]
    layout = ds._snapshot.layouts["x"]
    segment = column._mapped(ds._snapshot, layout, 0)  # mapped, no page touched
    assert segment is not None
    assert not pagecache.is_resident(segment, 7)
    np.testing.assert_array_equal(column[7], x[7])  # reading the row brings its page in
    assert pagecache.is_resident(segment, 7)
    assert not pagecache.is_resident(segment, 200)


def _advice_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "memshard-advise"]


@pytest.mark.parametrize("count", [0, 1, 2, 50])
def test_advised_ahead_yields_each_item_after_its_advice(count: int) -> None:
    advised: list[int] = []
    for item in pagecache.advised_ahead(list(range(count)), advised.append):
        assert item in advised
    assert advised == list(range(count))
    assert not _advice_threads()


def test_advised_ahead_raises_what_the_advice_raised_at_its_item() -> None:
    def advise(item: int) -> None:
        if item == 3:
            raise OSError(5, "advice failed")

    got: list[int] = []

    def consume() -> None:
        for item in pagecache.advised_ahead(list(range(10)), advise):
            got.append(item)

    with pytest.raises(OSError, match="advice failed"):
        consume()
    assert got == [0, 1, 2]
    assert not _advice_threads()


def test_advised_ahead_closed_early_stops_and_joins_its_thread() -> None:
    advised: list[int] = []
    items = pagecache.advised_ahead(list(range(1000)), advised.append)
    assert [next(items), next(items)] == [0, 1]
    items.close()
    assert not _advice_threads()
    assert len(advised) <= 1000
    assert advised == list(range(len(advised)))


def test_a_large_cold_gather_advises_its_rows_and_a_warm_one_does_not(
    tmp_path: Path, advised: _Advised
) -> None:
    x = _rows(1200)
    ds = write_dataset(tmp_path / "d", {"x": x}, [700, 500], shard_rows=50)
    indices = _batch(1200, 300, 50, seed=1)  # 1.2 MB
    _evict(ds)
    np.testing.assert_array_equal(ms.open(tmp_path / "d").take(indices)["x"], x[indices])
    assert advised.count == indices.size
    advised.rows.clear()
    ds = ms.open(tmp_path / "d")
    np.testing.assert_array_equal(ds["x"][indices], x[indices])  # warm now: nothing advised
    assert advised.count == 0


def test_a_cold_gather_of_many_small_rows_advises_them(tmp_path: Path, advised: _Advised) -> None:
    """Small rows: the batch is checked by its row count (:data:`COLD_CHECK_MIN_ROWS`)."""
    labels = np.arange(20_000)
    ds = write_dataset(tmp_path / "d", {"y": labels}, shard_rows=20_000)
    indices = _batch(20_000, reader.COLD_CHECK_MIN_ROWS, 20_000, seed=2)
    indices[0] = 10_000  # 80 KB into the file
    _evict(ds)
    np.testing.assert_array_equal(ms.open(tmp_path / "d")["y"][indices], labels[indices])
    assert advised.count == indices.size


def test_a_cold_gather_whose_first_row_is_cached_is_still_advised(
    tmp_path: Path, advised: _Advised
) -> None:
    """Part of the data cached (a dataset larger than memory): the first row's page is in
    the page cache, the others are not; the batch is advised all the same."""
    x = _rows(1200)
    ds = write_dataset(tmp_path / "d", {"x": x}, [700, 500], shard_rows=50)
    indices = _batch(1200, 300, 50, seed=3)  # 1.2 MB
    _evict(ds)
    warm = ms.open(tmp_path / "d")
    np.testing.assert_array_equal(warm["x"][int(indices[0])], x[indices[0]])  # now cached
    np.testing.assert_array_equal(warm.take(indices)["x"], x[indices])
    assert advised.count == indices.size


def test_a_small_cold_gather_is_not_checked(tmp_path: Path, advised: _Advised) -> None:
    x = _rows(300)
    ds = write_dataset(tmp_path / "d", {"x": x}, shard_rows=50)
    small = np.arange(0, 300, 2)[: (reader.COLD_CHECK_MIN_BYTES // x[0].nbytes) - 1]
    _evict(ds)
    np.testing.assert_array_equal(ms.open(tmp_path / "d")["x"][small], x[small])
    assert advised.count == 0


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """210 rows in shards of 50 and two partial ones (one per session), each its own
    segment: more than ``MASK_GROUPING_MAX_SHARDS`` segments would group by sort instead."""
    path = tmp_path_factory.mktemp("cold") / "d"
    x = _rows(210)
    ds = write_dataset(path, {"x": x}, [120, 90], shard_rows=50)
    assert [shard.rows for shard in ds.shards] == [50, 50, 20, 50, 40]
    assert len(ds._snapshot.layouts["x"].parts) == 5
    return path, x


@st.composite
def _cold_first(draw: st.DrawFn, rows: int, shard_starts: list[int]) -> np.ndarray:
    """Indices (negative ones too) whose first row is cold once its shard is mapped."""
    cold = [
        row
        for row in range(rows)
        if row - max(start for start in shard_starts if start <= row) >= COLD_FROM_ROW
    ]
    first = draw(st.sampled_from(cold))
    rest = draw(st.lists(st.integers(-rows, rows - 1), max_size=80))
    return np.array([first - draw(st.sampled_from([0, rows])), *rest])


@settings(max_examples=40)
@given(data=st.data())
def test_cold_gathers_give_the_rows_of_warm_gathers(
    segments: tuple[Path, np.ndarray], data: Any
) -> None:
    path, x = segments
    indices = data.draw(_cold_first(len(x), [0, 50, 100, 120, 170]), label="indices")
    chunk_rows = data.draw(st.integers(1, 100), label="chunk_rows")  # advised, then copied
    spy = _Advised()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "COLD_CHECK_MIN_ROWS", 1)
        patch.setattr(reader, "ADVISE_CHUNK_BYTES", chunk_rows * x[0].nbytes)
        patch.setattr(reader, "advise_will_need", spy)
        _evict(ms.open(path))
        ds = ms.open(path)
        cold = ds.take(indices)["x"]
        assert spy.count == indices.size  # the first row was cold: every row was advised
        warm = ds.take(indices)["x"]
    np.testing.assert_array_equal(cold, warm)
    np.testing.assert_array_equal(cold, x[indices])


def _cold_gather_in_child(path: str, indices: np.ndarray, connection: Any) -> None:
    try:
        spy = _Advised()
        setattr(reader, "advise_will_need", spy)  # noqa: B010 - this process only: it exits next
        _evict(ms.open(path), range(int(indices.min()), int(indices.max()) + 1))
        rows = ms.open(path).take(indices)["x"]
        connection.send((rows, spy.count))
    except BaseException as exc:
        connection.send(exc)
        raise
    finally:
        connection.close()


def test_a_forked_child_gathers_cold_rows_after_its_parent_did(
    tmp_path: Path, advised: _Advised
) -> None:
    """The parent gathers cold rows of the first half and keeps its mappings (so those pages
    stay cached); the forked child gathers cold rows of the other half."""
    x = _rows(2400)
    write_dataset(tmp_path / "d", {"x": x}, shard_rows=50)
    first, second = _batch(1200, 300, 50, seed=3), 1200 + _batch(1200, 300, 50, seed=4)
    _evict(ms.open(tmp_path / "d"))
    ds = ms.open(tmp_path / "d")
    np.testing.assert_array_equal(ds.take(first)["x"], x[first])
    assert advised.count == first.size
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_cold_gather_in_child, args=(str(tmp_path / "d"), second, sender)
    )
    child.start()
    sender.close()
    result = receiver.recv()
    child.join()
    assert child.exitcode == 0, result
    rows, child_advised = result
    np.testing.assert_array_equal(rows, x[second])
    assert child_advised == second.size
    np.testing.assert_array_equal(ds.take(first)["x"], x[first])  # the parent reads on
