"""An exception inside ``with memshard.create(...)`` leaves what was committed, or nothing.

A failed block used to leave an empty dataset behind, so running it again failed with
``DatasetExistsError``. Now: before any commit, the dataset that ``create`` made is removed
(under its lock, only if the directory is still the one it created); after an explicit
``commit()``, the dataset stays with the committed rows. ``memshard.append`` never removes
anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import memshard as ms

FIELDS = {"x": ("float32", (3,))}


class Boom(Exception):
    """What the user's code raises inside the block."""


def rows(count: int, start: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.arange(start * 3, (start + count) * 3, dtype=np.float32).reshape(count, 3)}


def failing_block(writer: ms.Appender, body: Callable[[ms.Appender], object]) -> None:
    """``with writer: body(writer); raise Boom``, as a user's block that fails."""
    with writer:
        body(writer)
        raise Boom


def test_an_exception_before_any_commit_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with pytest.raises(Boom):
        failing_block(ms.create(path, FIELDS), lambda writer: writer.extend(rows(5)))
    assert os.listdir(tmp_path) == [], "no dataset, no staging directory"
    # So the same block runs again.
    with ms.create(path, FIELDS) as writer:
        writer.extend(rows(5))
    assert len(ms.open(path)) == 5


def test_an_exception_before_any_row_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with pytest.raises(Boom):  # commit() with nothing to commit: still nothing committed
        failing_block(ms.create(path, FIELDS), lambda writer: writer.commit())
    assert not path.exists()


def test_rows_committed_before_the_exception_stay(tmp_path: Path) -> None:
    path = tmp_path / "ds"

    def commit_4_then_append_3(writer: ms.Appender) -> None:
        writer.extend(rows(4))
        writer.commit()
        writer.extend(rows(3, start=4))

    with pytest.raises(Boom):
        failing_block(ms.create(path, FIELDS), commit_4_then_append_3)
    ds = ms.open(path)
    assert len(ds) == 4
    np.testing.assert_array_equal(ds["x"][:], rows(4)["x"])
    assert ds.verify().ok
    with ms.append(path) as writer:  # and it is a dataset like any other
        writer.extend(rows(3, start=4))
    assert len(ms.open(path)) == 7


def test_append_never_removes_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    with ms.create(path, FIELDS):
        pass  # an empty dataset, committed by close()
    for _ in range(2):
        with pytest.raises(Boom):
            failing_block(ms.append(path), lambda writer: writer.extend(rows(2)))
    assert len(ms.open(path)) == 0


def test_a_directory_replaced_meanwhile_is_not_removed(tmp_path: Path) -> None:
    """The appender removes only the directory it created and still holds the lock of: one
    put at the path in the meantime stays (and so does the one moved away)."""
    path, moved = tmp_path / "ds", tmp_path / "moved"

    def replace_the_directory(writer: ms.Appender) -> None:
        os.rename(path, moved)
        with ms.create(path, FIELDS) as other:
            other.extend(rows(2))

    with pytest.raises(Boom):
        failing_block(ms.create(path, FIELDS), replace_the_directory)
    assert len(ms.open(path)) == 2
    assert len(ms.open(moved)) == 0
