"""Helpers shared by the test modules."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import memshard as ms


def write_dataset(
    path: str | os.PathLike[str],
    columns: dict[str, np.ndarray],
    sessions: Sequence[int] | None = None,
    *,
    shard_rows: int = 4,
    labels: dict[str, list[str]] | None = None,
    codecs: dict[str, dict[str, Any]] | None = None,
) -> ms.Dataset:
    """Write ``columns`` to a new dataset and open it.

    ``sessions`` splits the rows into appender sessions (create, then ``memshard.append``),
    each closed at its end, so the last shard of every session is a partial sealed shard and
    the shard boundaries are irregular. ``codecs`` compresses fields: name -> the options of
    a compressed field (``{"codec": "zstd", ...}``).
    """
    rows = len(next(iter(columns.values())))
    fields: dict[str, tuple[Any, ...]] = {
        name: (array.dtype, array.shape[1:]) for name, array in columns.items()
    }
    for name, options in (codecs or {}).items():
        fields[name] = (*fields[name], options)
    row_bytes = sum(
        array.dtype.itemsize * int(np.prod(array.shape[1:])) for array in columns.values()
    )
    sessions = [rows] if sessions is None else list(sessions)
    assert sum(sessions) == rows
    writer = ms.create(path, fields=fields, shard_bytes=row_bytes * shard_rows, labels=labels)
    start = 0
    for position, count in enumerate(sessions):
        if position:
            writer = ms.append(path)
        writer.extend({name: array[start : start + count] for name, array in columns.items()})
        writer.close()
        start += count
    return ms.open(path)


REPO_ROOT = Path(__file__).resolve().parent.parent


def run_from_repo(
    command: list[str], *, warnings: str = "error"
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from the repository root with ``PYTHONWARNINGS=warnings``; return the
    finished process with its output as text (it fails the test if it takes over 5 minutes)."""
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": warnings},
        check=False,
    )


def make_socket(path: str | os.PathLike[str]) -> None:
    """A bound UNIX socket's file at ``path`` (it stays after the socket closes). Bound under a
    short directory and renamed into place: a socket address holds at most 107 bytes, and a
    test's temporary directory may be longer (under pytest-xdist, for one)."""
    short = tempfile.mkdtemp(prefix="ms-sock-")
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(os.path.join(short, "s"))
        os.rename(os.path.join(short, "s"), path)
    finally:
        shutil.rmtree(short)


def as_format_1(root: str | os.PathLike[str], version: str = "1.1") -> None:
    """Rewrite the dataset at ``root`` as format 1.x wrote it: every shard listed in the
    manifest, no shard table. For tests of what format 1 datasets do (they stay readable)."""
    from memshard import manifest as manifest_io
    from memshard.layout import MANIFEST_NAME
    from memshard.shardtable import TABLE_NAME, Shards

    path = os.path.join(root, MANIFEST_NAME)
    current = manifest_io.load(path)
    shards = tuple(Shards.of(os.fspath(root), current))
    if version == "1.0":
        shards = tuple(
            shard.model_copy(
                update={
                    "files": {
                        name: file.model_copy(update={"prefix_checksum": None})
                        for name, file in shard.files.items()
                    }
                }
            )
            for shard in shards
        )
    old = current.model_copy(update={"version": version, "table": None, "shards": shards})
    data = manifest_io.dumps(manifest_io.Manifest.model_validate(old.model_dump()))
    with open(path, "wb") as file:
        file.write(data)
    table = os.path.join(root, TABLE_NAME)
    if os.path.exists(table):
        os.unlink(table)


def shard_records(root: str | os.PathLike[str]) -> list[ms.manifest.Shard]:
    """Every committed shard of the dataset at ``root`` (the shard table's, then the
    manifest's), as the reader sees them."""
    from memshard import manifest as manifest_io
    from memshard.layout import MANIFEST_NAME
    from memshard.shardtable import Shards

    manifest = manifest_io.load(os.path.join(root, MANIFEST_NAME))
    return list(Shards.of(os.fspath(root), manifest))
