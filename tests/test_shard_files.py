"""Bad shard files: a table of damaged ``.npy`` shards and the typed error reading them gives.

A reader checks each shard's size and canonical header against the manifest before mapping it,
so a damaged shard is an :class:`~memshard.errors.InvalidDatasetError` subclass naming the file,
never a SIGBUS, a hang, an unpickled object or silently wrong data. The second half tests
:mod:`memshard.npyheader` directly: a table of headers, a round trip through numpy, and fuzzing.
"""

from __future__ import annotations

import gc
import io
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import memshard
from memshard import mappings, npyheader
from memshard.errors import (
    ChecksumError,
    InvalidDatasetError,
    ShardHeaderError,
    ShardMissingError,
    ShardSizeError,
    UnsafePathError,
)
from memshard.layout import SHARDS_DIR
from tests.helpers import make_socket, shard_records
from tests.strategies import dtypes, mutations_of, sample_shapes

ROWS = 10
SHARD_ROWS = 3
X_SHAPE = (2, 4)
X_ROW_BYTES = 4 * 2 * 4
HEADER_SIZE = npyheader.data_offset(np.dtype("<f4"), X_SHAPE)
#: Rows 0-8 are in sealed shards 0-2 of 3 rows; row 9 is alone in the unsealed shard 3.
SEALED, UNSEALED = 1, 3
ROW_IN = {SEALED: 4, UNSEALED: 9}


def _x_values(rows: int = ROWS) -> np.ndarray:
    return np.arange(rows * 8, dtype=np.float32).reshape(rows, *X_SHAPE)


def _write_dataset(root: Path) -> None:
    writer = memshard.create(
        root,
        fields={"x": ("float32", X_SHAPE), "y": ("int64", ())},
        shard_bytes=SHARD_ROWS * (X_ROW_BYTES + 8),
    )
    writer.extend({"x": _x_values(), "y": np.arange(ROWS)})
    writer.commit()
    writer.abort()  # leave the last shard unsealed


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards") / "ds"
    _write_dataset(root)
    shards = shard_records(root)
    assert [(s.rows, s.sealed) for s in shards] == [(3, True)] * 3 + [(1, False)]
    return root


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy per test: the reader caches mappings by path, so never reuse one."""
    root = tmp_path / "ds"
    shutil.copytree(pristine, root, symlinks=True)
    return root


def _shard_path(root: Path, shard: int, field: str = "x") -> Path:
    return root / shard_records(root)[shard].files[field].path


# -- the ways to read a row, each must report the damage ------------------------------------
def _row(root: Path, row: int) -> Any:
    return memshard.open(root)["x"][row]


def _slice(root: Path, row: int) -> Any:
    return memshard.open(root)["x"][row - 1 : row + 1]


def _gather(root: Path, row: int) -> Any:
    return memshard.open(root).take([row, 0])


def _fancy(root: Path, row: int) -> Any:
    return memshard.open(root)["x"][np.array([row, 2, row])]


ACCESSORS = {"row": _row, "slice": _slice, "gather": _gather, "fancy": _fancy}


# -- building damaged files ------------------------------------------------------------------
Mutation = Callable[[bytes], bytes]


def _header(text: str, *, size: int = HEADER_SIZE, version: bytes = b"\x01\x00") -> bytes:
    """An NPY 1.0 header of ``size`` bytes holding the dictionary ``text``."""
    body = text.ljust(size - 11).encode("latin-1") + b"\n"
    return npyheader.MAGIC + version + struct.pack("<H", len(body)) + body


def _dictionary(descr: str = "'<f4'", fortran: str = "False", shape: str = "(3, 2, 4)") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"


def with_dictionary(**parts: str) -> Mutation:
    """Replace the header by one with the same size and an edited dictionary."""
    return lambda data: _header(_dictionary(**parts)) + data[HEADER_SIZE:]


def in_header(old: bytes, new: bytes) -> Mutation:
    def mutate(data: bytes) -> bytes:
        assert len(old) == len(new)
        assert old in data[:HEADER_SIZE]
        return data[:HEADER_SIZE].replace(old, new, 1) + data[HEADER_SIZE:]

    return mutate


def at(offset: int, new: bytes) -> Mutation:
    return lambda data: data[:offset] + new + data[offset + len(new) :]


def body_text(text: str) -> Mutation:
    """Keep the magic, version and length, replace the dictionary and padding by ``text``."""
    return lambda data: _header(text) + data[HEADER_SIZE:]


def longer_header(data: bytes) -> bytes:
    return _header(_dictionary(shape="(3, 2, 4)"), size=HEADER_SIZE + 64) + data[HEADER_SIZE:]


def longer_header_one_row(data: bytes) -> bytes:
    return _header(_dictionary(shape="(1, 2, 4)"), size=HEADER_SIZE + 64) + data[HEADER_SIZE:]


def shorter_header(data: bytes) -> bytes:
    compact = "{'descr':'<f4','fortran_order':False,'shape':(3,2,4)}"
    return _header(compact, size=64) + data[HEADER_SIZE:]


def shorter_header_same_size(data: bytes) -> bytes:
    return shorter_header(data) + bytes(HEADER_SIZE - 64)


def numpy_saved(data: bytes, *, pad: bool = False) -> bytes:
    """The same rows written by ``numpy.save``: a valid .npy file with numpy's own (shorter,
    non-canonical) header; ``pad`` brings it back to the original size."""
    rows = np.frombuffer(data[HEADER_SIZE:], dtype="<f4").reshape(-1, *X_SHAPE)
    buffer = io.BytesIO()
    np.save(buffer, rows)
    saved = buffer.getvalue()
    return saved.ljust(len(data), b"\0") if pad else saved


def nul_padded(data: bytes) -> bytes:
    """The canonical header with NUL bytes where the padding spaces are."""
    header = data[:HEADER_SIZE]
    end = header.index(b"}") + 1
    return header[:end] + bytes(HEADER_SIZE - end - 1) + b"\n" + data[HEADER_SIZE:]


def bigger_header(extra: int, shape: str) -> Mutation:
    """A header ``extra`` bytes larger than the canonical one (the data moves along)."""
    size = HEADER_SIZE + extra

    def mutate(data: bytes) -> bytes:
        body = _dictionary(shape=shape).ljust(size - 11).encode("latin-1") + b"\n"
        return (
            npyheader.MAGIC
            + b"\x02\x00"
            + struct.pack("<I", len(body) - 2)
            + body[2:]
            + (data[HEADER_SIZE:])
        )

    return mutate


@dataclass(frozen=True)
class Bad:
    id: str
    shard: int
    mutate: Mutation
    error: type[InvalidDatasetError]
    says: str = ""  # a fragment of the message besides the file name, which is always checked


BAD: list[Bad] = [
    Bad("bad magic", SEALED, at(0, b"\x93NUMPZ"), ShardHeaderError, "not an .npy file"),
    Bad("zeroed magic", SEALED, at(0, bytes(6)), ShardHeaderError, "not an .npy file"),
    Bad("version bytes 2.0", SEALED, at(6, b"\x02"), ShardHeaderError, ".npy version (2, 0)"),
    Bad("version bytes 3.0", SEALED, at(6, b"\x03"), ShardHeaderError, ".npy version (3, 0)"),
    Bad("version bytes 1.1", SEALED, at(7, b"\x01"), ShardHeaderError, ".npy version (1, 1)"),
    Bad("longer header, sealed", SEALED, longer_header, ShardSizeError, "trailing bytes"),
    Bad("longer header, unsealed", UNSEALED, longer_header_one_row, ShardHeaderError, "match"),
    Bad("shorter header", SEALED, shorter_header, ShardSizeError, "truncated"),
    Bad("shorter header, same file size", SEALED, shorter_header_same_size, ShardHeaderError),
    Bad("header length field", SEALED, at(8, b"\x77"), ShardHeaderError, "does not match"),
    Bad("fortran order", SEALED, with_dictionary(fortran="True"), ShardHeaderError, "match"),
    Bad("big-endian descr", SEALED, in_header(b"'<f4'", b"'>f4'"), ShardHeaderError, "match"),
    Bad("native descr '=f4'", SEALED, in_header(b"'<f4'", b"'=f4'"), ShardHeaderError, "match"),
    Bad("other dtype '<i4'", SEALED, in_header(b"'<f4'", b"'<i4'"), ShardHeaderError, "match"),
    Bad("object descr", SEALED, with_dictionary(descr="'|O'"), ShardHeaderError, "match"),
    Bad(
        "structured descr",
        SEALED,
        with_dictionary(descr="[('a', '<f4')]"),
        ShardHeaderError,
        "match",
    ),
    Bad(
        "sample shape permuted",
        SEALED,
        with_dictionary(shape="(3, 4, 2)"),
        ShardHeaderError,
        "match",
    ),
    Bad("sample shape flat", SEALED, with_dictionary(shape="(3, 8)"), ShardHeaderError, "match"),
    Bad(
        "sample shape extra dim",
        SEALED,
        with_dictionary(shape="(3, 2, 4, 1)"),
        ShardHeaderError,
        "match",
    ),
    Bad(
        "fewer rows than the manifest, sealed",
        SEALED,
        with_dictionary(shape="(2, 2, 4)"),
        ShardHeaderError,
        "header states 2 rows, the manifest 3",
    ),
    Bad(
        "more rows than the manifest, sealed",
        SEALED,
        with_dictionary(shape="(4, 2, 4)"),
        ShardHeaderError,
        "header states 4 rows, the manifest 3",
    ),
    Bad(
        "fewer rows than the manifest, unsealed",
        UNSEALED,
        with_dictionary(shape="(0, 2, 4)"),
        ShardHeaderError,
        "header states 0 rows, the manifest 1",
    ),
    Bad("trailing byte, sealed", SEALED, lambda d: d + b"\0", ShardSizeError, "trailing bytes"),
    Bad("a row too many, sealed", SEALED, lambda d: d + d[-32:], ShardSizeError, "trailing"),
    Bad("truncated by a byte", SEALED, lambda d: d[:-1], ShardSizeError, "truncated shard"),
    Bad("truncated to the header", SEALED, lambda d: d[:HEADER_SIZE], ShardSizeError, "truncated"),
    Bad("truncated in the header", SEALED, lambda d: d[:5], ShardSizeError, "truncated"),
    Bad("empty file", SEALED, lambda d: b"", ShardSizeError, "truncated"),
    Bad("truncated, unsealed", UNSEALED, lambda d: d[:-1], ShardSizeError, "truncated shard"),
    Bad("space -> tab in padding", SEALED, at(100, b"\t"), ShardHeaderError, "does not match"),
    Bad("space -> '!' in padding", SEALED, at(100, b"!"), ShardHeaderError),
    Bad("space -> NUL in padding", SEALED, at(100, b"\0"), ShardHeaderError),
    Bad("space -> 0xe9 in padding", SEALED, at(100, b"\xe9"), ShardHeaderError),
    Bad("newline -> space", SEALED, at(HEADER_SIZE - 1, b" "), ShardHeaderError, "match"),
    Bad("dictionary not closed", SEALED, in_header(b"}", b" "), ShardHeaderError, "unreadable"),
    Bad(
        "unhashable dictionary key",
        SEALED,
        body_text("{[]: 0, " + _dictionary()[1:]),
        ShardHeaderError,
        "unreadable",
    ),
    Bad("shape is a list", SEALED, body_text(_dictionary(shape="[3, 2, 4]")), ShardHeaderError),
    Bad("no shape key", SEALED, body_text("{'descr': '<f4', }"), ShardHeaderError, "'shape'"),
    Bad("not a dictionary", SEALED, body_text("(3, 2, 4)"), ShardHeaderError, "'shape'"),
    Bad("negative rows", SEALED, body_text(_dictionary(shape="(-3, 2, 4)")), ShardHeaderError),
    # -- more hostile shards (audit: oversized headers, numpy's own files, odd literals)
    Bad("header length 0xffff", SEALED, at(8, b"\xff\xff"), ShardHeaderError, "does not match"),
    Bad("64 KiB header, sealed", SEALED, bigger_header(61440, "(3, 2, 4)"), ShardSizeError),
    Bad(
        "64 KiB header, unsealed",
        UNSEALED,
        bigger_header(61440, "(1, 2, 4)"),
        ShardHeaderError,
        ".npy version (2, 0)",
    ),
    Bad("written by numpy.save", SEALED, numpy_saved, ShardSizeError, "truncated"),
    Bad(
        "written by numpy.save, same size",
        SEALED,
        lambda d: numpy_saved(d, pad=True),
        ShardHeaderError,
        "unreadable header",
    ),
    Bad(
        "structured descr with an object field",
        SEALED,
        with_dictionary(descr="[('a', '|O')]"),
        ShardHeaderError,
        "match",
    ),
    Bad("string descr", SEALED, with_dictionary(descr="'<U2'"), ShardHeaderError, "match"),
    Bad("void descr", SEALED, with_dictionary(descr="'|V32'"), ShardHeaderError, "match"),
    Bad(
        "fortran order, transposed shape",
        SEALED,
        with_dictionary(fortran="True", shape="(4, 2, 3)"),
        ShardHeaderError,
        "match",
    ),
    Bad("0-d shape", SEALED, with_dictionary(shape="()"), ShardHeaderError, "'shape'"),
    Bad("rows a string", SEALED, with_dictionary(shape="('3', 2, 4)"), ShardHeaderError, "'shape'"),
    Bad("rows a bool", SEALED, with_dictionary(shape="(True, 2, 4)"), ShardHeaderError, "'shape'"),
    Bad(
        "rows with a leading zero",
        SEALED,
        with_dictionary(shape="(03, 2, 4)"),
        ShardHeaderError,
        "unreadable",
    ),
    Bad("rows in hex", SEALED, with_dictionary(shape="(0x3, 2, 4)"), ShardHeaderError, "match"),
    Bad(
        "huge sample dimension",
        SEALED,
        with_dictionary(shape="(3, 2, " + "9" * 30 + ")"),
        ShardHeaderError,
        "match",
    ),
    Bad(
        "shape key twice",
        SEALED,
        body_text(_dictionary()[:-1] + "'shape': (3, 2, 4), }"),
        ShardHeaderError,
        "match",
    ),
    Bad(
        "keys reordered",
        SEALED,
        body_text("{'shape': (3, 2, 4), 'descr': '<f4', 'fortran_order': False, }"),
        ShardHeaderError,
        "match",
    ),
    Bad(
        "a call instead of a dictionary",
        SEALED,
        body_text("__import__('os').mkdir('pwned')"),
        ShardHeaderError,
        "unreadable",
    ),
    Bad("NUL padding", SEALED, nul_padded, ShardHeaderError, "unreadable"),
    Bad("CRLF at the end", SEALED, at(HEADER_SIZE - 2, b"\r\n"), ShardHeaderError, "match"),
]

GOOD: list[tuple[str, int, Mutation]] = [
    ("unchanged", SEALED, lambda d: d),
    (
        "unsealed, an uncommitted row",
        UNSEALED,
        lambda d: _header(_dictionary(shape="(2, 2, 4)")) + d[HEADER_SIZE:] + bytes(X_ROW_BYTES),
    ),
    ("unsealed, a partial uncommitted row", UNSEALED, lambda d: d + b"\1\2\3"),
]


def _damage(root: Path, shard: int, mutate: Mutation) -> Path:
    path = _shard_path(root, shard)
    path.write_bytes(mutate(path.read_bytes()))
    return path


def test_table_is_large_enough() -> None:
    assert len(BAD) >= 50
    assert len(HEADERS) >= 50
    assert len({case.id for case in BAD}) == len(BAD)


@pytest.mark.parametrize("access", list(ACCESSORS))
@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_damaged_shard_is_refused(dataset: Path, case: Bad, access: str) -> None:
    path = _damage(dataset, case.shard, case.mutate)
    with pytest.raises(InvalidDatasetError) as caught:
        ACCESSORS[access](dataset, ROW_IN[case.shard])
    assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"
    assert str(path) in str(caught.value)
    assert case.says in str(caught.value)


@pytest.mark.parametrize("access", list(ACCESSORS))
@pytest.mark.parametrize(("name", "shard", "mutate"), GOOD, ids=[name for name, _, _ in GOOD])
def test_acceptable_shard_reads(
    dataset: Path, name: str, shard: int, mutate: Mutation, access: str
) -> None:
    _damage(dataset, shard, mutate)
    row = ROW_IN[shard]
    result = ACCESSORS[access](dataset, row)
    expected = _x_values()
    if access == "row":
        np.testing.assert_array_equal(result, expected[row])
    elif access == "slice":
        np.testing.assert_array_equal(result, expected[row - 1 : row + 1])
    elif access == "gather":
        np.testing.assert_array_equal(result["x"], expected[[row, 0]])
        np.testing.assert_array_equal(result["y"], [row, 0])
    else:
        np.testing.assert_array_equal(result, expected[[row, 2, row]])
    assert len(memshard.open(dataset)) == ROWS


class _MakeDirectoryWhenUnpickled:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def test_object_header_is_never_unpickled(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a short relative name keeps the pickle within the data size
    sentinel = tmp_path / "u"
    payload = pickle.dumps(_MakeDirectoryWhenUnpickled("u"), protocol=2)
    data_size = SHARD_ROWS * X_ROW_BYTES
    assert len(payload) <= data_size
    trap = _header(_dictionary(descr="'|O'")) + payload.ljust(data_size, b".")
    path = _shard_path(dataset, SEALED)
    path.write_bytes(trap)

    for access in ACCESSORS.values():
        with pytest.raises(ShardHeaderError):
            access(dataset, ROW_IN[SEALED])
    assert not sentinel.exists()

    # The trap is real: numpy, allowed to unpickle, springs it.
    np.load(path, allow_pickle=True)
    assert sentinel.is_dir()


# -- damage inside a run of page-sized shards (mapped back to back as one segment) -----------
PAGE_ROW = (1024,)  # one float32 row is 4096 bytes: every shard is a whole number of pages


def _page_dataset(root: Path) -> Path:
    with memshard.create(root, fields={"x": ("float32", PAGE_ROW)}, shard_bytes=2 * 4096) as w:
        w.extend({"x": np.arange(7 * 1024, dtype=np.float32).reshape(7, 1024)})
    shards = shard_records(root)
    assert [shard.rows for shard in shards] == [2, 2, 2, 1]
    return root / shards[1].files["x"].path


def _page_header(rows: int) -> Mutation:
    header = npyheader.header_bytes(np.dtype("<f4"), PAGE_ROW, rows)
    return lambda data: header + data[len(header) :]


SEGMENT_DAMAGE: list[tuple[str, Mutation | None, type[InvalidDatasetError]]] = [
    ("truncated by a byte", lambda data: data[:-1], ShardSizeError),
    ("truncated to the header", lambda data: data[:HEADER_SIZE], ShardSizeError),
    ("trailing byte", lambda data: data + b"\0", ShardSizeError),
    ("header states 1 row", _page_header(1), ShardHeaderError),
    ("header states 3 rows", _page_header(3), ShardHeaderError),
    ("bad magic", at(0, b"\x93NUMPZ"), ShardHeaderError),
    ("missing", None, ShardMissingError),
]


@pytest.mark.parametrize("row", [2, 3, 0, 6])
@pytest.mark.parametrize(
    ("name", "mutate", "error"), SEGMENT_DAMAGE, ids=[name for name, _, _ in SEGMENT_DAMAGE]
)
def test_damage_inside_a_segment_is_refused(
    tmp_path: Path,
    name: str,
    mutate: Mutation | None,
    error: type[InvalidDatasetError],
    row: int,
) -> None:
    """Shard 1 (rows 2-3) is damaged: reading it, or any row mapped along with it, is refused."""
    path = _page_dataset(tmp_path / "ds")
    if mutate is None:
        path.unlink()
    else:
        path.write_bytes(mutate(path.read_bytes()))
    dataset = memshard.open(tmp_path / "ds")
    if row in (2, 3):
        for access in (lambda: dataset["x"][row], lambda: dataset.take([row])):
            with pytest.raises(error, match=re.escape(str(path))):
                access()
        return
    if mappings.BACK_TO_BACK:  # the four shards form one segment, mapped all at once
        with pytest.raises(error, match=re.escape(str(path))):
            dataset["x"][row]
    else:
        np.testing.assert_array_equal(dataset["x"][row], np.arange(row * 1024, (row + 1) * 1024))
    with pytest.raises(error):
        dataset["x"][0:7]


# -- the file system: missing files, directories, links ---------------------------------------
def _remove(root: Path) -> Path:
    path = _shard_path(root, SEALED)
    path.unlink()
    return path


def _directory(root: Path) -> Path:
    path = _remove(root)
    path.mkdir()
    return path


def _symlink_outside(root: Path) -> Path:
    path = _shard_path(root, SEALED)
    copy = root.parent / "elsewhere.npy"
    shutil.copyfile(path, copy)
    path.unlink()
    path.symlink_to(copy)
    return path


def _symlink_inside(root: Path) -> Path:
    path = _shard_path(root, SEALED)
    copy = path.with_name("copy.npy")
    path.rename(copy)
    path.symlink_to(copy.name)
    return path


def _dangling_symlink(root: Path) -> Path:
    path = _remove(root)
    path.symlink_to(root / "nowhere.npy")
    return path


def _shards_symlink(root: Path) -> Path:
    shards = root / SHARDS_DIR
    moved = root.parent / "shards-elsewhere"
    shards.rename(moved)
    shards.symlink_to(moved, target_is_directory=True)
    return shards


def _shards_missing(root: Path) -> Path:
    shutil.rmtree(root / SHARDS_DIR)
    return root / SHARDS_DIR


def _shards_file(root: Path) -> Path:
    shutil.rmtree(root / SHARDS_DIR)
    (root / SHARDS_DIR).write_bytes(b"")
    return root / SHARDS_DIR


def _socket(root: Path) -> Path:
    path = _remove(root)
    make_socket(path)
    return path


def _other_field(root: Path) -> Path:
    """The y file of the same shard, padded to the x file's size, in place of the x file."""
    path = _shard_path(root, SEALED)
    size = path.stat().st_size
    path.write_bytes(_shard_path(root, SEALED, "y").read_bytes().ljust(size, b"\0"))
    return path


def _shards_fifo(root: Path) -> Path:
    shutil.rmtree(root / SHARDS_DIR)
    os.mkfifo(root / SHARDS_DIR)
    return root / SHARDS_DIR


FILESYSTEM: list[tuple[str, Callable[[Path], Path], type[InvalidDatasetError]]] = [
    ("missing file", _remove, ShardMissingError),
    ("directory instead of the file", _directory, ShardMissingError),
    ("symlink to a valid copy outside", _symlink_outside, UnsafePathError),
    ("symlink to a valid copy inside shards/", _symlink_inside, UnsafePathError),
    ("dangling symlink", _dangling_symlink, UnsafePathError),
    ("shards/ is a symlink", _shards_symlink, UnsafePathError),
    ("shards/ is missing", _shards_missing, ShardMissingError),
    ("shards/ is a file", _shards_file, UnsafePathError),
    ("shards/ is a FIFO", _shards_fifo, UnsafePathError),
    ("another field's file", _other_field, ShardHeaderError),
    # A socket is not a regular file, like the directory above (ShardMissingError's own words).
    ("UNIX socket instead of the file", _socket, ShardMissingError),
]


@pytest.mark.parametrize("access", list(ACCESSORS))
@pytest.mark.parametrize(
    ("name", "damage", "error"), FILESYSTEM, ids=[name for name, _, _ in FILESYSTEM]
)
def test_file_system_damage_is_refused(
    dataset: Path,
    name: str,
    damage: Callable[[Path], Path],
    error: type[InvalidDatasetError],
    access: str,
) -> None:
    path = damage(dataset)  # the shard file, or shards/ itself
    with pytest.raises(InvalidDatasetError) as caught:
        ACCESSORS[access](dataset, ROW_IN[SEALED])
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert str(caught.value).startswith(str(path))


def test_swapped_sealed_shards_are_found_by_verify(dataset: Path) -> None:
    """Two sealed shard files of the same field swapped: header and size are right, so readers
    cannot tell (they never hash data); verify() names both files as corrupt."""
    first, second = _shard_path(dataset, 0), _shard_path(dataset, SEALED)
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    opened = memshard.open(dataset)
    np.testing.assert_array_equal(opened["x"][0:3], _x_values()[3:6])  # wrong, silently
    report = opened.verify()
    assert [(p.path, p.error) for p in report.problems] == [
        (str(first), ChecksumError),
        (str(second), ChecksumError),
    ]


def test_missing_shard_is_also_file_not_found(dataset: Path) -> None:
    _remove(dataset)
    with pytest.raises(FileNotFoundError):
        memshard.open(dataset)["x"][ROW_IN[SEALED]]


def _read_in_child(root: str, row: int, conn: Connection) -> None:
    try:
        memshard.open(root)["x"][row]
    except Exception as exc:
        conn.send(type(exc).__name__)
    else:
        conn.send("no error")
    conn.close()


#: How long a child may take to open a dataset and read a row before it is called hung.
CHILD_TIMEOUT = 20.0


def _outcome_in_child(root: Path, row: int) -> tuple[str | None, int | None]:
    """Read ``row`` in a spawned child: (what it reported, its exit code); None, None if hung."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read_in_child, args=(str(root), row, sender))
    child.start()
    sender.close()
    try:
        if not receiver.poll(CHILD_TIMEOUT):
            child.kill()
            child.join()
            return None, None
        try:
            report: str | None = receiver.recv()
        except EOFError:  # the child died before reporting, e.g. of a signal
            report = None
        child.join()
        return report, child.exitcode
    finally:
        receiver.close()


def test_truncated_shard_never_raises_sigbus(dataset: Path) -> None:
    _damage(dataset, SEALED, lambda data: data[: HEADER_SIZE + 8])
    report, exitcode = _outcome_in_child(dataset, ROW_IN[SEALED])
    assert exitcode != -signal.SIGBUS
    assert (report, exitcode) == ("ShardSizeError", 0)


def test_fifo_instead_of_shard_does_not_hang(dataset: Path) -> None:
    """Opening a FIFO for reading blocks until a writer appears: a reader must not hang."""
    path = _remove(dataset)
    os.mkfifo(path)
    report, exitcode = _outcome_in_child(dataset, ROW_IN[SEALED])
    assert report is not None, f"reading a dataset whose shard {path} is a FIFO hung"
    assert (report, exitcode) == ("ShardMissingError", 0)


# -- npyheader.rows_in_header ------------------------------------------------------------------
F4 = np.dtype("<f4")
SHAPE = (3,)
SIZE = npyheader.data_offset(F4, SHAPE)
VALID = npyheader.header_bytes(F4, SHAPE, 5)


def _body(text: str) -> bytes:
    """A header of the right size, magic and version whose dictionary is ``text``."""
    return _header(text, size=SIZE)


def _f4(descr: str = "'<f4'", fortran: str = "False", shape: str = "(5, 3)") -> str:
    """The dictionary of :data:`VALID` with one part replaced."""
    return _dictionary(descr=descr, fortran=fortran, shape=shape)


def _padded_with(byte: bytes) -> bytes:
    end = VALID.index(b"}") + 1
    return VALID[:end] + byte * (SIZE - end - 1) + b"\n"


HEADERS: list[tuple[str, bytes, int | str]] = [
    ("0 rows", npyheader.header_bytes(F4, SHAPE, 0), 0),
    ("5 rows", VALID, 5),
    ("most rows", npyheader.header_bytes(F4, SHAPE, 10**19 - 1), 10**19 - 1),
    ("empty", b"", f"header is 0 bytes, expected {SIZE}"),
    ("a byte short", VALID[:-1], f"header is {SIZE - 1} bytes, expected {SIZE}"),
    ("a byte long", VALID + b" ", f"header is {SIZE + 1} bytes, expected {SIZE}"),
    ("bad magic", b"\x93NUMPX" + VALID[6:], "not an .npy file"),
    ("version 2.0", VALID[:6] + b"\x02\x00" + VALID[8:], ".npy version (2, 0)"),
    ("version 1.1", VALID[:6] + b"\x01\x01" + VALID[8:], ".npy version (1, 1)"),
    ("length field", VALID[:8] + b"\x00\x00" + VALID[10:], "does not match the manifest"),
    ("CRLF", VALID[:-2] + b"\r\n", "does not match"),
    ("newline missing", VALID[:-1] + b" ", "does not match"),
    ("fortran", _body("{'descr': '<f4', 'fortran_order': True, 'shape': (5, 3), }"), "match"),
    ("big-endian", _body("{'descr': '>f4', 'fortran_order': False, 'shape': (5, 3), }"), "match"),
    ("other dtype", _body("{'descr': '<f8', 'fortran_order': False, 'shape': (5, 3), }"), "match"),
    ("object", _body("{'descr': '|O', 'fortran_order': False, 'shape': (5, 3), }"), "match"),
    ("no spaces", _body("{'descr':'<f4','fortran_order':False,'shape':(5,3),}"), "match"),
    (
        "extra key",
        _body("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 3), 'x': 1, }"),
        "match",
    ),
    ("wrong sample shape", _body(_dictionary(shape="(5, 4)")), "match"),
    ("rows only", _body("{'shape': (5,)}"), "match"),
    ("shape missing", _body("{'descr': '<f4'}"), "no valid 'shape'"),
    ("shape empty", _body("{'shape': ()}"), "no valid 'shape'"),
    ("shape a list", _body("{'shape': [5, 3]}"), "no valid 'shape'"),
    ("shape an int", _body("{'shape': 5}"), "no valid 'shape'"),
    ("rows negative", _body("{'shape': (-1, 3)}"), "no valid 'shape'"),
    ("rows a bool", _body("{'shape': (True, 3)}"), "no valid 'shape'"),
    ("rows a float", _body("{'shape': (5.0, 3)}"), "no valid 'shape'"),
    ("rows too many digits", _body(f"{{'shape': ({10**19}, 3)}}"), "no valid 'shape'"),
    ("rows huge", _body("{'shape': (" + "9" * 90 + ", 3)}"), "no valid 'shape'"),
    ("not a dict", _body("[('shape', (5, 3))]"), "no valid 'shape'"),
    ("a call", _body("dict(shape=(5, 3))"), "unreadable header dictionary"),
    ("a name", _body("shape"), "unreadable header dictionary"),
    ("unbalanced", _body("{'shape': (5, 3)"), "unreadable header dictionary"),
    ("NUL", _body("{'shape': (5, 3)}\0"), "unreadable header dictionary"),
    ("non-ASCII", _body("{'shape': (5, 3), 'é': 1}"), "unreadable header dictionary"),
    ("deep nesting", _body("(" * 1000 + ")" * 1000), "unreadable header dictionary"),
    ("unhashable key", _body("{[]: 0, 'shape': (5, 3)}"), "unreadable header dictionary"),
    ("unhashable set item", _body("{'shape': (5, 3), 'x': {1, []}}"), "unreadable header"),
    # -- audit: more hostile headers
    ("magic in lower case", b"\x93numpy" + VALID[6:], "not an .npy file"),
    ("length field 0xffff", VALID[:8] + b"\xff\xff" + VALID[10:], "does not match"),
    ("NUL padding", _padded_with(b"\0"), "unreadable header dictionary"),
    ("tab padding", _padded_with(b"\t"), "does not match"),
    ("rows with a leading zero", _body("{'shape': (05, 3)}"), "unreadable header dictionary"),
    ("rows in hex", _body(_f4(shape="(0x5, 3)")), "does not match"),
    ("rows with an underscore", _body(_f4(shape="(5_0, 3)")), "does not match"),
    ("rows a string", _body("{'shape': ('5', 3)}"), "no valid 'shape'"),
    ("rows complex", _body("{'shape': (5j, 3)}"), "no valid 'shape'"),
    ("rows None", _body("{'shape': (None, 3)}"), "no valid 'shape'"),
    ("rows Python 2 long", _body("{'shape': (5L, 3)}"), "unreadable header dictionary"),
    ("shape key twice", _body(_f4()[:-1] + "'shape': (5, 3), }"), "does not match"),
    (
        "keys reordered",
        _body("{'shape': (5, 3), 'descr': '<f4', 'fortran_order': False, }"),
        "match",
    ),
    ("fortran_order 0", _body(_f4(fortran="0")), "does not match"),
    ("descr as bytes", _body(_f4(descr="b'<f4'")), "does not match"),
    ("structured object descr", _body(_f4(descr="[('a', '|O')]")), "does not match"),
    ("string descr", _body(_f4(descr="'<U1'")), "does not match"),
    ("huge sample dimension", _body(_f4(shape="(5, " + "9" * 40 + ")")), "does not match"),
    ("a set", _body("{'shape', (5, 3)}"), "no valid 'shape'"),
    ("bytes", _body("b'shape'"), "no valid 'shape'"),
    ("a call to __import__", _body("__import__('os').getcwd()"), "unreadable header dictionary"),
    ("a lambda", _body("lambda: (5, 3)"), "unreadable header dictionary"),
]


@pytest.mark.parametrize(("name", "header", "expected"), HEADERS, ids=[h[0] for h in HEADERS])
def test_rows_in_header(name: str, header: bytes, expected: int | str) -> None:
    if isinstance(expected, int):
        assert npyheader.rows_in_header(header, F4, SHAPE, where="W") == expected
        return
    with pytest.raises(ShardHeaderError) as caught:
        npyheader.rows_in_header(header, F4, SHAPE, where="/ds/shards/a.x.npy")
    assert str(caught.value).startswith("/ds/shards/a.x.npy: ")
    assert expected in str(caught.value)


class _ReleasesTheGil:
    """Garbage whose finalizer lets another thread run: the collector may call it in the
    middle of a parse, which is how two threads' parses interleave."""

    def __del__(self) -> None:
        time.sleep(0)


def test_headers_are_read_from_many_threads_at_once() -> None:
    """A threaded gather maps shards, and so reads their headers, from several threads; in
    CPython 3.11 two ``ast`` parses interleaved by a finalizer failed with "AST constructor
    recursion depth mismatch" (gh-106905). Canonical and hostile headers, read by four
    threads under a collector that runs finalizers mid-parse, give only their own answers."""
    nested = _body("{'shape': (" + "(" * 30 + "5," + ")" * 30 + ", 3)}")
    outcomes: list[object] = []

    def read_headers() -> None:
        for _ in range(400):
            cycle = _ReleasesTheGil()
            cycle.self = cycle  # type: ignore[attr-defined]  # collected by the cycle collector
            del cycle
            outcomes.append(npyheader.rows_in_header(VALID, F4, SHAPE, where="W"))
            try:
                npyheader.rows_in_header(nested, F4, SHAPE, where="W")
            except ShardHeaderError as error:
                outcomes.append(type(error))
            except Exception as error:  # the failure this test is about: recorded, not lost
                outcomes.append(error)

    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(5, 1, 1)
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=read_headers) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
    assert [o for o in outcomes if o not in (5, ShardHeaderError)] == []
    assert outcomes.count(5) == outcomes.count(ShardHeaderError) == 4 * 400


def test_header_table_cases_have_the_right_size() -> None:
    sized = [name for name, header, _ in HEADERS if len(header) == SIZE]
    assert len(sized) == len(HEADERS) - 3  # all but "empty", "a byte short", "a byte long"


@settings(max_examples=300, deadline=None)
@given(dtypes, sample_shapes, st.integers(0, 6), st.data())
def test_header_round_trips_through_numpy(
    dtype: np.dtype[Any], shape: tuple[int, ...], rows: int, data: st.DataObject
) -> None:
    header = npyheader.header_bytes(dtype, shape, rows)
    assert len(header) == npyheader.data_offset(dtype, shape)
    assert len(header) % 64 == 0  # numpy's alignment; memshard may align to more
    assert npyheader.rows_in_header(header, dtype, shape, where="W") == rows

    nbytes = rows * dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    payload = data.draw(st.binary(min_size=nbytes, max_size=nbytes))
    loaded = np.load(io.BytesIO(header + payload), allow_pickle=False)
    assert loaded.dtype == dtype
    assert loaded.shape == (rows, *shape)
    assert loaded.tobytes() == payload


@settings(max_examples=300, deadline=None)
@given(dtypes, sample_shapes, st.integers(0, 10**19 - 1))
def test_header_round_trips_any_row_count(
    dtype: np.dtype[Any], shape: tuple[int, ...], rows: int
) -> None:
    header = npyheader.header_bytes(dtype, shape, rows)
    assert len(header) == npyheader.data_offset(dtype, shape)
    assert npyheader.rows_in_header(header, dtype, shape, where="W") == rows
    assert np.lib.format.read_array_header_1_0(io.BytesIO(header[8:])) == (
        (rows, *shape),
        False,
        dtype,
    )


def _rows_or_typed_error(header: bytes) -> None:
    try:
        rows = npyheader.rows_in_header(header, F4, SHAPE, where="W")
    except ShardHeaderError:
        return
    assert type(rows) is int
    assert header == npyheader.header_bytes(F4, SHAPE, rows)  # only canonical headers pass


#: Fragments spliced into headers by the fuzzer: Python literal syntax that literal_eval reads.
TOKENS = [b"", b"{", b"}", b"[", b"]", b"(", b")", b",", b":", b"'", b"[]", b"{}", b"-", b"\0"]
TOKENS += [b"1j", b"True", b"None", b"'shape'", b"(5, 3)", b"9" * 20, b"\xff", b"\\"]


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    data = draw(mutations_of(VALID, TOKENS, max_insert=4))
    if draw(st.booleans()):  # keep the size right so the parser is reached more often
        data = data[:SIZE].ljust(SIZE, b" ")
    return data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2 * SIZE))
def test_fuzz_arbitrary_header_bytes(header: bytes) -> None:
    _rows_or_typed_error(header)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=SIZE - 8, max_size=SIZE - 8))
def test_fuzz_arbitrary_header_body(body: bytes) -> None:
    _rows_or_typed_error(VALID[:8] + body)


@settings(max_examples=2000, deadline=None)
@given(mutated_headers())
@example(_body("{[]: 0, 'shape': (5, 3)}"))
def test_fuzz_mutated_header(header: bytes) -> None:
    _rows_or_typed_error(header)
