"""Reading shard files without memshard, in row order: :meth:`memshard.Dataset.shard_files`
and ``memshard ls``.

Shards written as parts are named after the part (``p-GROUP-NONCE-00000000.x.npy``), so a
sorted listing of ``shards/`` is not the dataset's row order; these list the files in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import memshard as ms
from memshard.errors import FieldNotFoundError
from tests.test_cli import assert_user_error, run_cli


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Four parts of 5 rows, committed in the reverse order of their file names."""
    root = tmp_path / "ds"
    with ms.create(root, {"x": ("int64", (2,)), "y": ("uint8", ())}):
        pass
    parts = []
    for block in range(4):
        with ms.write_part(root, key=block) as part:
            part.extend({"x": np.full((5, 2), block), "y": np.full(5, block)})
        assert part.part is not None
        parts.append(part.part)
    parts.sort(key=lambda part: part.id, reverse=True)
    ms.commit_parts(root, parts, order="given")
    return root


def test_shard_files_are_in_row_order_and_load_with_numpy(path: Path) -> None:
    ds = ms.open(path)
    files = ds.shard_files("x")
    assert files == [str(path / shard.files["x"].path) for shard in ds.shards]
    loaded = np.concatenate([np.load(file, mmap_mode="r") for file in files])
    np.testing.assert_array_equal(loaded, ds["x"][:])
    by_name = np.concatenate([np.load(file) for file in sorted(files)])
    assert not np.array_equal(by_name, ds["x"][:]), "file names do not sort in row order"


def test_shard_files_of_an_unknown_field(path: Path) -> None:
    with pytest.raises(FieldNotFoundError, match="no field 'z'"):
        ms.open(path).shard_files("z")


def test_ls_lists_the_shards_in_row_order(path: Path) -> None:
    ds = ms.open(path)
    listed = run_cli("ls", path, "--field", "y")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ds.shard_files("y")
    overview = run_cli("ls", path)
    assert overview.returncode == 0, overview.stderr
    lines = overview.stdout.splitlines()
    assert lines[0] == f"{path}: 20 rows in 4 shards, in row order"
    assert lines[1] == "  rows 0 to 4 (5 rows, sealed)"
    assert lines[2:4] == [f"    x: {ds.shard_files('x')[0]}", f"    y: {ds.shard_files('y')[0]}"]
    assert lines[-3] == "  rows 15 to 19 (5 rows, sealed)"
    assert_user_error(run_cli("ls", path, "--field", "z"), "no field 'z'")
