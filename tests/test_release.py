"""Letting a dataset go: :meth:`memshard.Dataset.close` and ``with memshard.open(...) as ds``.

A dataset's shard mappings live in a per-process cache that outlives the object; closing it
drops them, so that nothing of the dataset stays mapped once the views handed out are gone:
its files' pages can then be evicted from the page cache (a benchmark's cold run) and the
files deleted. Checked with the kernel's own answers: ``/proc/self/maps`` for what is mapped,
``posix_fadvise(DONTNEED)`` to evict and ``mincore`` to count the pages still cached.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

import memshard as ms
from memshard.errors import DatasetClosedError

PAGE = mmap.PAGESIZE
ROWS, WIDTH = 4096, 256  # 4 MiB of float32, in shards of 1 MiB

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_LIBC.mincore.restype = ctypes.c_int


@pytest.fixture
def path(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    values = np.arange(ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)
    with ms.create(root, {"x": ("float32", (WIDTH,))}, shard_bytes=1 << 20) as writer:
        writer.extend({"x": values})  # close() commits: the data is synced, the pages clean
    return root


def shard_files(root: Path) -> list[Path]:
    return sorted((root / "shards").iterdir())


def evict(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_pages(file: Path) -> int:
    """Pages of ``file`` in the page cache (``mincore`` over a mapping that touches none)."""
    size = file.stat().st_size
    with open(file, "rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        pages = -(-size // PAGE)
        vector = (ctypes.c_ubyte * pages)()
        result = _LIBC.mincore(view.ctypes.data, size, vector)
        del view
    assert result == 0, os.strerror(ctypes.get_errno())
    return sum(entry & 1 for entry in vector)


def mapped_here(files: list[Path]) -> set[str]:
    """Which of ``files`` this process maps now."""
    maps = Path("/proc/self/maps").read_text()
    return {str(file) for file in files if str(file) in maps}


def test_close_releases_the_mappings_so_the_pages_can_be_evicted(path: Path) -> None:
    files = shard_files(path)
    data_pages = ROWS * WIDTH * 4 // PAGE
    ds = ms.open(path)
    assert float(ds["x"][:].sum()) > 0  # maps every shard and reads every page
    assert mapped_here(files) == {str(file) for file in files}
    evict(files)
    assert sum(cached_pages(file) for file in files) >= data_pages, "mapped pages stay"

    ds.close()
    assert mapped_here(files) == set()
    evict(files)
    assert sum(cached_pages(file) for file in files) == 0
    for file in files:  # and nothing holds them any more
        file.chmod(0o644)
        file.unlink()


def test_views_handed_out_stay_valid_and_keep_their_pages(path: Path) -> None:
    """A view keeps the mapping it points into alive: the run of shards mapped back to back
    with its own (here all four), until it is gone."""
    files = shard_files(path)
    ds = ms.open(path)
    view = ds["x"][10:20]
    assert float(ds["x"][:].sum()) > 0
    ds.close()
    assert mapped_here(files) == {str(file) for file in files}
    evict(files)
    assert sum(cached_pages(file) for file in files) >= ROWS * WIDTH * 4 // PAGE
    np.testing.assert_array_equal(view[:, 0], np.arange(10, 20) * WIDTH)
    del view
    assert mapped_here(files) == set()
    evict(files)
    assert sum(cached_pages(file) for file in files) == 0


def test_a_closed_dataset_refuses_reads(path: Path) -> None:
    with ms.open(path) as ds:
        column = ds["x"]
        row = column[3]
    assert ds.closed
    for read in (
        lambda: ds["x"],
        lambda: ds[0],
        lambda: ds.take([0, 1]),
        lambda: ds.prefetch([0]),
        lambda: ds.refresh(),
        lambda: column[0],
        lambda: list(column),
        lambda: np.asarray(column),
    ):
        with pytest.raises(DatasetClosedError, match="was closed"):
            read()
    assert len(ds) == ROWS  # what it is, still known
    assert ds.fields["x"].shape == (WIDTH,)
    np.testing.assert_array_equal(row, np.arange(3 * WIDTH, 4 * WIDTH))
    ds.close()  # again: nothing happens


def test_closing_one_dataset_leaves_another_of_the_same_path_readable(path: Path) -> None:
    first, second = ms.open(path), ms.open(path)
    assert second["x"][5, 0] == 5 * WIDTH
    first.close()
    assert mapped_here(shard_files(path)) == set()
    assert second["x"][ROWS - 1, 0] == (ROWS - 1) * WIDTH  # maps again
    second.close()
