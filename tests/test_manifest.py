"""Bad manifests: a table of malformed ``manifest.json`` files and the typed error each gives.

Every case is one small mutation of a manifest that :func:`memshard.create` really wrote (several
shards, labels, attrs). Each is checked twice: through :func:`memshard.manifest.loads` and
through :func:`memshard.open` on a dataset whose ``manifest.json`` was replaced. The error must
be the expected :mod:`memshard.errors` class and its message must name the offending key.
Then: round trips of real and generated manifests, and fuzzing of the parser.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import memshard
from memshard import manifest as manifest_io
from memshard import npyheader
from memshard.dtypes import SUPPORTED_DESCRS
from memshard.errors import (
    DatasetNotFoundError,
    InvalidDatasetError,
    ManifestError,
    ManifestTooLargeError,
    MemshardError,
    UnsafePathError,
    UnsupportedVersionError,
)
from memshard.layout import FIELD_NAME_PATTERN, MANIFEST_NAME, shard_file_name
from memshard.manifest import (
    MAX_COUNT,
    MAX_MANIFEST_BYTES,
    MAX_SAMPLE_NDIM,
    FieldSpec,
    Manifest,
    Shard,
    ShardFile,
)
from tests.helpers import as_format_1, make_socket
from tests.strategies import mutations_of

WHERE = "/data/ds/manifest.json"
ROWS = 10
#: x is 12 bytes a row and y 8: 60 bytes give shards of 3 rows, so 10 rows make 4 shards.
SHARD_BYTES = 60


def _write_dataset(root: Path) -> None:
    """A format 1.1 dataset: the cases below mutate its list of shards, whose rules format 2
    keeps for the shards after its table (the table's own cases are in test_shard_table.py)."""
    with memshard.create(
        root,
        fields={"x": ("float32", (3,)), "y": ("int64", ())},
        shard_bytes=SHARD_BYTES,
        labels={"y": ["cat", "dog", "eel"]},
        attrs={"k": [1, 2], "name": "démo"},
    ) as writer:
        writer.extend(
            {
                "x": np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3),
                "y": np.arange(ROWS) % 3,
            }
        )
    as_format_1(root)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifest") / "ds"
    _write_dataset(root)
    return root


@pytest.fixture(scope="module")
def valid(dataset_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((dataset_dir / MANIFEST_NAME).read_bytes())
    # The mutations re-serialise the document, so they drop the manifest's own checksum (a
    # manifest without one is valid); tests/test_manifest_checksum.py covers the checksum.
    assert document.pop("checksum").startswith("xxh3_64:")
    # The mutations below index into this shape; fail loudly if create() changes it.
    assert [shard["rows"] for shard in document["shards"]] == [3, 3, 3, 1]
    assert all(shard["sealed"] for shard in document["shards"])
    return document


def _replaced_copy(dataset_dir: Path, tmp_path: Path, data: bytes) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root, symlinks=True)
    (root / MANIFEST_NAME).write_bytes(data)
    return root


# -- building mutations ------------------------------------------------------------------------
Mutation = Callable[[dict[str, Any]], bytes]


def _keys(path: str) -> list[str | int]:
    """``"shards[1].files.x.path"`` -> ``["shards", 1, "files", "x", "path"]``."""
    keys: list[str | int] = []
    for part in path.split("."):
        name, *indices = re.split(r"\[(\d+)\]", part)
        keys.append(name)
        keys.extend(int(index) for index in indices if index)
    return keys


def _parent(document: Any, path: str) -> tuple[Any, str | int]:
    *head, last = _keys(path)
    for key in head:
        document = document[key]
    return document, last


def _dump(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def set_(path: str, value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> bytes:
        parent, key = _parent(document, path)
        parent[key] = copy.deepcopy(value)
        return _dump(document)

    return mutate


def delete(path: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> bytes:
        parent, key = _parent(document, path)
        del parent[key]
        return _dump(document)

    return mutate


def edit(change: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(document: dict[str, Any]) -> bytes:
        change(document)
        return _dump(document)

    return mutate


def text(change: Callable[[str], str]) -> Mutation:
    """Edit the JSON text itself (for what a dict cannot hold: duplicate keys, NaN, ...)."""

    def mutate(document: dict[str, Any]) -> bytes:
        before = _dump(document).decode("utf-8")
        after = change(before)
        assert after != before, "the text edit matched nothing"
        return after.encode("utf-8")

    return mutate


def raw(change: Callable[[bytes], bytes]) -> Mutation:
    return lambda document: change(_dump(document))


def replace_once(old: str, new: str) -> Callable[[str], str]:
    return lambda content: content.replace(old, new, 1)


def _swap_shards(document: dict[str, Any]) -> None:
    shards = document["shards"]
    shards[1], shards[2] = shards[2], shards[1]


def _zero_row_shard(document: dict[str, Any]) -> None:
    shard = document["shards"][3]
    shard["rows"] = 0
    for file in shard["files"].values():
        file["nbytes"] = 0
    document["rows"] = 9


OMIT = object()


def _unseal(
    position: int, *, keep_checksum: bool, prefix: Any = "checksum"
) -> Callable[[dict[str, Any]], None]:
    """Unseal shard ``position``: drop the checksum unless ``keep_checksum``, and record the
    ``prefix_checksum`` a writer of version 1.1 would (the checksum of the committed bytes,
    here the sealed checksum), or set it to ``prefix``, or leave it out (``prefix=OMIT``)."""

    def change(document: dict[str, Any]) -> None:
        shard = document["shards"][position]
        shard["sealed"] = False
        for file in shard["files"].values():
            if prefix == "checksum":
                file["prefix_checksum"] = file["checksum"]
            elif prefix is not OMIT:
                file["prefix_checksum"] = prefix
            if not keep_checksum:
                file["checksum"] = None

    return change


def _as_version_1_0(document: dict[str, Any]) -> None:
    """What a writer of format 1.0 wrote: its version, no ``prefix_checksum``."""
    document["version"] = "1.0"
    for shard in document["shards"]:
        for file in shard["files"].values():
            file.pop("prefix_checksum", None)


def _unsealed_1_0(document: dict[str, Any]) -> None:
    _unseal(3, keep_checksum=False)(document)
    _as_version_1_0(document)


def _unsealed_1_0_with_prefix(document: dict[str, Any]) -> None:
    _unsealed_1_0(document)
    document["shards"][3]["files"]["x"]["prefix_checksum"] = "xxh3_64:0123456789abcdef"


def _extra_file(document: dict[str, Any]) -> None:
    files = document["shards"][2]["files"]
    files["z"] = dict(files["x"], path="shards/extra.z.npy")


def _rename_field(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["fields"] = {new if k == old else k: v for k, v in document["fields"].items()}
        for shard in document["shards"]:
            files = shard["files"]
            shard["files"] = {new if k == old else k: v for k, v in files.items()}

    return change


def _oversized(content: bytes) -> bytes:
    return content + b" " * (MAX_MANIFEST_BYTES + 1 - len(content))


def _same_path_twice(document: dict[str, Any]) -> None:
    document["shards"][1]["files"]["x"]["path"] = document["shards"][0]["files"]["x"]["path"]


def _same_path_in_shard(document: dict[str, Any]) -> None:
    files = document["shards"][0]["files"]
    files["y"]["path"] = files["x"]["path"]


def _unsealed_last_shard_over_shard_rows(document: dict[str, Any]) -> None:
    """Drop shard 3 and leave shard 2 (3 rows) unsealed, in 2-row shards."""
    del document["shards"][3]
    document["rows"] = 9
    document["shard_rows"] = 2
    _unseal(2, keep_checksum=False)(document)


def _overflowing_shard(document: dict[str, Any]) -> None:
    """Shard 3 claims MAX_COUNT rows, with byte sizes to match (which overflow)."""
    shard = document["shards"][3]
    shard["rows"] = MAX_COUNT
    shard["files"]["x"]["nbytes"] = 12 * MAX_COUNT
    shard["files"]["y"]["nbytes"] = 8 * MAX_COUNT
    document["rows"] = 9 + MAX_COUNT


def _nested(depth: int) -> Callable[[str], str]:
    return replace_once('"k": [1, 2]', '"k": ' + "[" * depth + "]" * depth)


def _exponent_generation(content: str) -> str:
    return re.sub(r'"generation": \d+', '"generation": 1E2', content, count=1)


# -- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    id: str
    mutate: Mutation
    error: type[ManifestError]
    names: str  # the key (or, for whole-file problems, the fault) the message must name


def path_case(path: str, value: Any, *, error: type[ManifestError] = ManifestError) -> Bad:
    """The common case: set ``path`` to ``value``; the message must name ``path``."""
    return Bad(f"{path}={value!r:.40}", set_(path, value), error, path)


X0 = "shards[0].files.x"
BIG_SHAPE = [2] * (MAX_SAMPLE_NDIM + 1)

BAD: list[Bad] = [
    # -- not strict JSON, not an object
    Bad("empty file", raw(lambda content: b""), ManifestError, "not strict JSON"),
    Bad("truncated", raw(lambda c: c[: len(c) // 2]), ManifestError, "not strict JSON"),
    Bad("trailing garbage", raw(lambda c: c + b"}"), ManifestError, "not strict JSON"),
    Bad("top level list", lambda d: _dump([d]), ManifestError, "top level must be an object"),
    Bad("top level string", lambda d: b'"memshard"', ManifestError, "top level"),
    Bad("top level null", lambda d: b"null", ManifestError, "top level"),
    Bad(
        "invalid UTF-8",
        raw(lambda c: c.replace("démo".encode(), b"d\xe9mo")),
        ManifestError,
        "not strict JSON",
    ),
    Bad("UTF-8 BOM", raw(lambda c: b"\xef\xbb\xbf" + c), ManifestError, "not strict JSON"),
    Bad(
        "duplicate top-level key",
        text(replace_once('"rows": 10', '"rows": 10, "rows": 10')),
        ManifestError,
        "duplicate key 'rows'",
    ),
    Bad(
        "duplicate key in fields.x",
        text(replace_once('"dtype": "<f4"', '"dtype": "<f4", "dtype": "<f4"')),
        ManifestError,
        "duplicate key 'dtype'",
    ),
    Bad(
        "duplicate key in a shard file",
        text(replace_once('"nbytes": 36', '"nbytes": 36, "nbytes": 36')),
        ManifestError,
        "duplicate key 'nbytes'",
    ),
    Bad(
        "NaN",
        text(replace_once('"generation": ', '"generation": NaN, "g": ')),
        ManifestError,
        "NaN",
    ),
    Bad("Infinity", text(replace_once('"k": [1, 2]', '"k": Infinity')), ManifestError, "Infinity"),
    Bad(
        "-Infinity",
        text(replace_once('"k": [1, 2]', '"k": [1, -Infinity]')),
        ManifestError,
        "-Infinity",
    ),
    # A float literal outside the double range parses to inf in Python's json: still not JSON
    # that can be written back (dumps uses allow_nan=False).
    Bad(
        "1e400 overflows to inf",
        text(replace_once('"k": [1, 2]', '"k": 1e400')),
        ManifestError,
        "1e400",
    ),
    # -- wrong types (strict: no coercion)
    path_case("generation", "1"),
    path_case("rows", 10.0),
    path_case("shard_rows", True),
    path_case("fields", [{"dtype": "<f4", "shape": [3]}]),
    path_case("fields.x.shape", "3"),
    path_case("fields.x.shape", 3),
    path_case("labels.y", "cat,dog,eel"),
    path_case("labels", [["cat", "dog", "eel"]]),
    path_case("attrs", [1, 2]),
    path_case("shards", {"0": {}}),
    path_case("shards[0]", [0, 3, True]),
    path_case("shards[0].sealed", 1),
    path_case("shards[1].row_offset", "3"),
    path_case("shards[2].files", []),
    path_case(f"{X0}.checksum", 5),
    path_case(f"{X0}.nbytes", 36.0),
    path_case(f"{X0}.path", ["shards", "a.npy"]),
    # -- missing keys
    Bad("missing uuid", delete("uuid"), ManifestError, "uuid"),
    Bad("missing attrs", delete("attrs"), ManifestError, "attrs"),
    Bad("missing shards", delete("shards"), ManifestError, "shards"),
    Bad("missing shard rows", delete("shards[1].rows"), ManifestError, "shards[1].rows"),
    Bad("missing shape", delete("fields.y.shape"), ManifestError, "fields.y.shape"),
    Bad("missing checksum", delete(f"{X0}.checksum"), ManifestError, f"{X0}.checksum"),
    Bad("missing format", delete("format"), ManifestError, "format"),
    Bad("missing version", delete("version"), ManifestError, "version"),
    # -- unknown keys are refused in a 1.0 manifest
    path_case("compression", "zstd"),
    path_case("fields.x.order", "C"),
    path_case("shards[1].compressed", False),
    path_case("shards[1].files.x.codec", "none"),
    # -- format and version
    path_case("format", "memshard2"),
    path_case("format", "MEMSHARD"),
    path_case("version", "3.0", error=UnsupportedVersionError),
    path_case("version", "0.9", error=UnsupportedVersionError),
    path_case("version", "10.0", error=UnsupportedVersionError),
    Bad("format 2 without a table", set_("version", "2.0"), ManifestError, "table"),
    Bad("a field kind in format 1", set_("fields.x.kind", "fixed"), ManifestError, "fields.x.kind"),
    Bad("a codec in format 1", set_("fields.y.codec", None), ManifestError, "fields.y.codec"),
    Bad(
        "format 1 with a table",
        set_("table", {"records": 0, "rows": 0, "chain": None}),
        ManifestError,
        "table",
    ),
    Bad(
        "major version is checked before anything else",
        edit(lambda d: d.update(version="3.0", shards="garbage", compression="zstd")),
        UnsupportedVersionError,
        "version",
    ),
    path_case("version", "1"),
    path_case("version", 1.0),
    path_case("version", "1.0.0"),
    path_case("version", "v1.0"),
    path_case("version", " 1.0"),
    path_case("version", "1."),
    path_case("version", ".0"),
    path_case("version", "².0"),
    path_case("version", "1.¹"),
    path_case("version", "\u0661.\u0660"),  # Arabic-Indic digits
    path_case("version", "1.00000"),
    # -- identity and counters
    path_case("uuid", "F" * 32),
    path_case("uuid", "12345678-1234-1234-1234-123456789abc"),
    path_case("uuid", "0" * 31),
    path_case("uuid", ""),
    path_case("generation", -1),
    path_case("rows", -1),
    path_case("shard_rows", 0),
    path_case("shards[1].row_offset", -3),
    path_case("rows", MAX_COUNT + 1),
    path_case("generation", MAX_COUNT + 1),
    path_case("shards[3].rows", MAX_COUNT + 1),
    path_case(f"{X0}.nbytes", -36),
    # -- shards must cover the rows in order
    Bad("rows larger than the shards", set_("rows", 11), ManifestError, "rows is 11"),
    Bad("rows smaller than the shards", set_("rows", 9), ManifestError, "rows is 9"),
    Bad("rows on an empty shard list", set_("shards", []), ManifestError, "rows is 10"),
    path_case("shards[1].row_offset", 2),  # overlaps shard 0
    path_case("shards[2].row_offset", 7),  # gap after shard 1
    Bad("unordered shards", edit(_swap_shards), ManifestError, "shards[1].row_offset"),
    Bad("zero-row shard", edit(_zero_row_shard), ManifestError, "shards[3].rows"),
    Bad(
        "unsealed shard that is not last",
        edit(_unseal(1, keep_checksum=False)),
        ManifestError,
        "shards[1].sealed",
    ),
    path_case(f"{X0}.checksum", None),  # sealed without checksum
    Bad(
        "unsealed last shard with a checksum",
        edit(_unseal(3, keep_checksum=True)),
        ManifestError,
        "shards[3].files.x.checksum",
    ),
    Bad(
        "unsealed last shard without prefix_checksum",
        edit(_unseal(3, keep_checksum=False, prefix=OMIT)),
        ManifestError,
        "shards[3].files.x.prefix_checksum is missing",
    ),
    Bad(
        "prefix_checksum null",
        edit(_unseal(3, keep_checksum=False, prefix=None)),
        ManifestError,
        "shards[3].files.x.prefix_checksum",
    ),
    Bad(
        "prefix_checksum malformed",
        edit(_unseal(3, keep_checksum=False, prefix="xxh3_64:0123456789ABCDEF")),
        ManifestError,
        "shards[3].files.x.prefix_checksum",
    ),
    Bad(
        "prefix_checksum not a string",
        edit(_unseal(3, keep_checksum=False, prefix=12)),
        ManifestError,
        "shards[3].files.x.prefix_checksum",
    ),
    Bad(
        "prefix_checksum on a sealed shard",
        set_(f"{X0}.prefix_checksum", "xxh3_64:0123456789abcdef"),
        ManifestError,
        f"{X0}.prefix_checksum must be left out on a sealed shard",
    ),
    Bad(
        "prefix_checksum in version 1.0",
        edit(_unsealed_1_0_with_prefix),
        ManifestError,
        "shards[3].files.x.prefix_checksum: not a key of format version 1.0",
    ),
    path_case(f"{X0}.checksum", "xxh3_64:XYZ"),
    path_case(f"{X0}.checksum", "xxh3_64:0123456789ABCDEF"),
    path_case(f"{X0}.checksum", "md5:0123456789abcdef"),
    path_case(f"{X0}.checksum", "xxh3_64:0123456789abcdef0"),
    path_case(f"{X0}.checksum", ""),
    Bad("files missing a field", delete("shards[2].files.y"), ManifestError, "shards[2].files"),
    Bad("files with an extra field", edit(_extra_file), ManifestError, "shards[2].files"),
    path_case("shards[1].files.x.nbytes", 35),
    path_case("shards[1].files.y.nbytes", 0),
    path_case("shards[0].files.y.data_offset", 192),
    path_case("shards[0].files.y.data_offset", 0),
    path_case("shards[0].files.y.data_offset", 65536),
    Bad("path used twice", edit(_same_path_twice), ManifestError, "shards[1].files.x.path"),
    Bad("path used twice in a shard", edit(_same_path_in_shard), ManifestError, "shards[0].files"),
    # -- shard paths stay inside shards/
    path_case(f"{X0}.path", "/etc/passwd.npy"),
    path_case(f"{X0}.path", "/shards/a.npy"),
    path_case(f"{X0}.path", "shards/../manifest.npy"),
    path_case(f"{X0}.path", "shards/..npy"),
    path_case(f"{X0}.path", "shards\\a.npy"),
    path_case(f"{X0}.path", "shards/a\\b.npy"),
    path_case(f"{X0}.path", "shards/a\u0000.npy"),
    path_case(f"{X0}.path", "shards/a.npy\n"),
    path_case(f"{X0}.path", "data/a.npy"),
    path_case(f"{X0}.path", "a.npy"),
    path_case(f"{X0}.path", "shards/sub/a.npy"),
    path_case(f"{X0}.path", "shards//a.npy"),
    path_case(f"{X0}.path", "shards/.a.npy"),
    path_case(f"{X0}.path", "shards/a.npz"),
    path_case(f"{X0}.path", "shards/a.npy.bak"),
    path_case(f"{X0}.path", "shards/" + "a" * 300 + ".npy"),
    path_case(f"{X0}.path", ""),
    # -- dtypes
    path_case("fields.x.dtype", "|O"),
    path_case("fields.x.dtype", [["a", "<f4"]]),
    path_case("fields.x.dtype", "|V4"),
    path_case("fields.x.dtype", "<U4"),
    path_case("fields.x.dtype", ">f4"),
    path_case("fields.x.dtype", "<f16"),
    path_case("fields.x.dtype", "<M8[s]"),
    path_case("fields.x.dtype", "float32"),
    path_case("fields.x.dtype", "f4"),
    path_case("fields.y.dtype", "<i16"),
    # -- sample shapes
    path_case("fields.x.shape", [0]),
    path_case("fields.x.shape", [-3]),
    path_case("fields.x.shape", [3, 0]),
    path_case("fields.x.shape", [3.0]),
    path_case("fields.x.shape", [True]),
    path_case("fields.x.shape", [MAX_COUNT + 1]),
    path_case("fields.x.shape", BIG_SHAPE),
    # -- fields and labels
    path_case("fields", {}),
    Bad("field name with a space", edit(_rename_field("x", "a b")), ManifestError, "'a b'"),
    Bad("field name with a dot", edit(_rename_field("x", "a.b")), ManifestError, "'a.b'"),
    path_case("labels.z", ["cat"]),  # no such field
    path_case("labels.x", ["cat"]),  # float field
    path_case("labels.y", ["cat", "dog", "cat"]),
    path_case("labels.y", ["cat", 1]),
    path_case("labels.y", None),
    # -- more hostile files (audit: truncation, encodings, nesting, numbers, duplicates)
    Bad("truncated by one byte", raw(lambda c: c[:-1]), ManifestError, "not strict JSON"),
    Bad("whitespace only", raw(lambda c: b" \n\t\n"), ManifestError, "not strict JSON"),
    Bad("NUL bytes", raw(lambda c: bytes(64)), ManifestError, "not strict JSON"),
    Bad("UTF-16", raw(lambda c: c.decode().encode("utf-16")), ManifestError, "not strict JSON"),
    Bad("empty object", lambda d: b"{}", ManifestError, "format"),
    Bad("top level number", lambda d: b"1", ManifestError, "top level"),
    Bad("top level true", lambda d: b"true", ManifestError, "top level"),
    Bad("trailing comma", raw(lambda c: c[:-1] + b",}"), ManifestError, "not strict JSON"),
    Bad("comment", raw(lambda c: b"// memshard\n" + c), ManifestError, "not strict JSON"),
    Bad(
        "single-quoted key",
        text(replace_once('"format"', "'format'")),
        ManifestError,
        "not strict JSON",
    ),
    Bad("lowercase nan", text(replace_once('"k": [1, 2]', '"k": nan')), ManifestError, "JSON"),
    Bad("lone surrogate", text(replace_once('"démo"', '"\\ud800"')), ManifestError, "JSON"),
    Bad("nesting beyond the parser", text(_nested(100_000)), ManifestError, "recursion"),
    Bad("nesting beyond the validator", text(_nested(300)), ManifestError, "recursion"),
    Bad(
        "integer of 5000 digits",
        text(replace_once('"k": [1, 2]', '"k": ' + "9" * 5000)),
        ManifestError,
        "digits",
    ),
    Bad("integer with an exponent", text(_exponent_generation), ManifestError, "generation"),
    Bad(
        "duplicate key in attrs",
        text(replace_once('"k": [1, 2]', '"k": [1, 2], "k": 3')),
        ManifestError,
        "duplicate key 'k'",
    ),
    Bad(
        "duplicate key in labels",
        text(replace_once('"y": ["cat"', '"y": ["cat"], "y": ["cat"')),
        ManifestError,
        "duplicate key 'y'",
    ),
    Bad(
        "duplicate key in a shard",
        text(replace_once('"row_offset": 0', '"row_offset": 0, "row_offset": 0')),
        ManifestError,
        "duplicate key 'row_offset'",
    ),
    path_case("uuid", 12345),
    path_case("format", None),
    path_case("format", "memshard "),
    path_case("version", "9999.0", error=UnsupportedVersionError),
    path_case("version", "1.10000"),
    path_case("version", "-1.0"),
    path_case("generation", 2**64),
    path_case("shard_rows", MAX_COUNT + 1),
    path_case("shards[1].row_offset", MAX_COUNT + 1),
    path_case("shards[3].row_offset", 10),  # past the end
    path_case(f"{X0}.nbytes", MAX_COUNT + 1),
    path_case(f"{X0}.data_offset", -4096),
    path_case(f"{X0}.data_offset", 4097),
    path_case(f"{X0}.data_offset", 2**64),
    path_case(f"{X0}.data_offset", True),
    path_case("shards[0].files.x", "shards/a.npy"),
    path_case("fields.x", None),
    path_case("fields.x.dtype", None),
    path_case("fields.x.dtype", ""),
    Bad(
        "unsealed last shard over shard_rows",
        edit(_unsealed_last_shard_over_shard_rows),
        ManifestError,
        "shards[2].rows",
    ),
    Bad(
        "shard of MAX_COUNT rows",
        edit(_overflowing_shard),
        ManifestError,
        "shards[3].files.x.nbytes",
    ),
    path_case(f"{X0}.path", "shards/a..b.npy"),
    path_case(f"{X0}.path", "./shards/a.npy"),
    path_case(f"{X0}.path", "~/shards/a.npy"),
    path_case(f"{X0}.path", "shards/-a.npy"),
    path_case(f"{X0}.path", "shards/a b.npy"),
    path_case(f"{X0}.path", "shards/é.npy"),
    path_case(f"{X0}.path", "SHARDS/a.npy"),
    path_case(f"{X0}.path", "shards/a.npy/"),
    Bad("empty field name", edit(_rename_field("x", "")), ManifestError, "''"),
    Bad("field name with a digit first", edit(_rename_field("x", "1x")), ManifestError, "'1x'"),
    Bad("field name too long", edit(_rename_field("x", "x" * 65)), ManifestError, "'xxxx"),
    Bad("field name not ASCII", edit(_rename_field("x", "é")), ManifestError, "'é'"),
    # -- size
    Bad("larger than MAX_MANIFEST_BYTES", raw(_oversized), ManifestTooLargeError, "bytes, more"),
]

GOOD: list[tuple[str, Mutation]] = [
    ("as written", _dump),
    ("indented", lambda d: json.dumps(d, indent=4).encode()),
    ("ASCII escapes", lambda d: json.dumps(d, ensure_ascii=True).encode()),
    ("keys reordered", lambda d: _dump(dict(reversed(list(d.items()))))),
    ("unsealed last shard", edit(_unseal(3, keep_checksum=False))),
    ("version 1.0", edit(_as_version_1_0)),
    ("unsealed last shard of version 1.0", edit(_unsealed_1_0)),
    ("no labels", set_("labels", {})),
    ("nested attrs", set_("attrs", {"a": {"b": [None, True, -1.5, "é", {"c": 2**70}]}})),
    ("generation at MAX_COUNT", set_("generation", MAX_COUNT)),
]


def _mentions(message: str, key: str) -> bool:
    """Whether ``message`` names ``key``, written ``a[1].b`` or pydantic's ``a.1.b``."""
    return key in message or re.sub(r"\[(\d+)\]", r".\1", key) in message


def _check_error(exc: BaseException, case: Bad, where: str) -> None:
    assert type(exc) is case.error, f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.startswith(where), message
    assert _mentions(message, case.names), f"{case.names!r} not in {message!r}"


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_loads_refuses(valid: dict[str, Any], case: Bad) -> None:
    data = case.mutate(copy.deepcopy(valid))
    with pytest.raises(ManifestError) as caught:
        manifest_io.loads(data, where=WHERE)
    _check_error(caught.value, case, WHERE)


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_open_refuses(dataset_dir: Path, valid: dict[str, Any], tmp_path: Path, case: Bad) -> None:
    root = _replaced_copy(dataset_dir, tmp_path, case.mutate(copy.deepcopy(valid)))
    with pytest.raises(ManifestError) as caught:
        memshard.open(root)
    _check_error(caught.value, case, str(root / MANIFEST_NAME))


def test_table_is_large_enough() -> None:
    assert len(BAD) >= 50
    assert len({case.id for case in BAD}) == len(BAD), "case ids must be unique"


# -- the manifest file itself: links, directories, special files -------------------------------
def _manifest_symlink(root: Path) -> None:
    elsewhere = root.parent / "elsewhere.json"
    (root / MANIFEST_NAME).rename(elsewhere)
    (root / MANIFEST_NAME).symlink_to(elsewhere)


def _manifest_dangling_symlink(root: Path) -> None:
    (root / MANIFEST_NAME).unlink()
    (root / MANIFEST_NAME).symlink_to(root / "nowhere.json")


def _manifest_directory(root: Path) -> None:
    (root / MANIFEST_NAME).unlink()
    (root / MANIFEST_NAME).mkdir()


def _manifest_socket(root: Path) -> None:
    (root / MANIFEST_NAME).unlink()
    make_socket(root / MANIFEST_NAME)


def _dataset_is_a_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_bytes(b"{}")


#: What replaces ``manifest.json`` (or the dataset), the error and a fragment of its message.
MANIFEST_FILES: list[tuple[str, Callable[[Path], None], type[MemshardError], str]] = [
    ("symlink to a valid copy", _manifest_symlink, UnsafePathError, "symbolic link"),
    ("dangling symlink", _manifest_dangling_symlink, UnsafePathError, "symbolic link"),
    ("directory", _manifest_directory, DatasetNotFoundError, "is a directory"),
    ("missing", lambda root: (root / MANIFEST_NAME).unlink(), DatasetNotFoundError, "no manifest"),
    ("dataset is a file", _dataset_is_a_file, DatasetNotFoundError, "is a file"),
    ("UNIX socket", _manifest_socket, InvalidDatasetError, ""),
]


@pytest.mark.parametrize(
    ("name", "damage", "error", "says"), MANIFEST_FILES, ids=[case[0] for case in MANIFEST_FILES]
)
def test_manifest_file_is_refused(
    dataset_dir: Path,
    tmp_path: Path,
    name: str,
    damage: Callable[[Path], None],
    error: type[MemshardError],
    says: str,
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root, symlinks=True)
    damage(root)
    with pytest.raises(MemshardError) as caught:
        memshard.open(root)
    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {caught.value}"
    assert str(caught.value).startswith(str(root))
    assert says in str(caught.value)


def test_dataset_directory_may_be_a_symlink(dataset_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(dataset_dir, target_is_directory=True)
    assert len(memshard.open(tmp_path / "link")) == ROWS


_OPEN_FIFO = """
import json, os, sys, memshard
root, when = sys.argv[1:]
def fifo():
    os.unlink(os.path.join(root, "manifest.json"))
    os.mkfifo(os.path.join(root, "manifest.json"))
try:
    if when == "open":
        fifo()
        memshard.open(root)
    else:
        dataset = memshard.open(root)
        fifo()
        dataset.refresh()
    print(json.dumps({"error": None}))
except Exception as exc:
    print(json.dumps({"error": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}))
"""


@pytest.mark.parametrize("when", ["open", "refresh"])
def test_manifest_fifo_does_not_hang(dataset_dir: Path, tmp_path: Path, when: str) -> None:
    """Opening a FIFO for reading waits for a writer: a reader must refuse it, not hang."""
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root, symlinks=True)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _OPEN_FIFO, str(root), when],
            capture_output=True,
            text=True,
            timeout=8,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"memshard {when} hung on {root / MANIFEST_NAME}, a FIFO")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] is not None
    assert "MemshardError" in report["error"], report
    assert str(root) in report["message"]


@pytest.mark.parametrize(("name", "mutate"), GOOD, ids=[name for name, _ in GOOD])
def test_loads_accepts(valid: dict[str, Any], name: str, mutate: Mutation) -> None:
    manifest = manifest_io.loads(mutate(copy.deepcopy(valid)), where=WHERE)
    assert manifest.rows == ROWS
    assert manifest_io.loads(manifest_io.dumps(manifest), where=WHERE) == manifest


@pytest.mark.parametrize(("name", "mutate"), GOOD, ids=[name for name, _ in GOOD])
def test_open_accepts(
    dataset_dir: Path, valid: dict[str, Any], tmp_path: Path, name: str, mutate: Mutation
) -> None:
    root = _replaced_copy(dataset_dir, tmp_path, mutate(copy.deepcopy(valid)))
    dataset = memshard.open(root)
    assert len(dataset) == ROWS
    np.testing.assert_array_equal(dataset["x"][7], [21, 22, 23])


def _newer_minor(document: dict[str, Any]) -> bytes:
    document["version"] = "1.7"
    document["compression"] = {"codec": "none"}
    document["fields"]["x"]["chunks"] = [1]
    document["shards"][1]["written_at"] = "2030-01-01"
    document["shards"][1]["files"]["y"]["mtime"] = 1
    return _dump(document)


def test_newer_minor_version_ignores_unknown_keys(
    dataset_dir: Path, valid: dict[str, Any], tmp_path: Path
) -> None:
    manifest = manifest_io.loads(_newer_minor(copy.deepcopy(valid)), where=WHERE)
    original = manifest_io.loads(_dump(copy.deepcopy(valid)), where=WHERE)
    assert manifest.version == "1.7"
    assert manifest.model_copy(update={"version": original.version}) == original

    data = _newer_minor(copy.deepcopy(valid))
    dataset = memshard.open(_replaced_copy(dataset_dir, tmp_path, data))
    np.testing.assert_array_equal(dataset["y"][:], np.arange(ROWS) % 3)


def test_newer_minor_version_is_still_validated(valid: dict[str, Any]) -> None:
    document = copy.deepcopy(valid)
    document["version"] = "1.7"
    document["shards"][1]["row_offset"] = 4
    with pytest.raises(ManifestError, match=re.escape("shards[1].row_offset is 4")):
        manifest_io.loads(_dump(document), where=WHERE)


def test_manifest_of_exactly_the_size_limit_is_not_refused_for_its_size() -> None:
    # One byte less than the oversized case: refused for being a JSON number, not for its size.
    with pytest.raises(ManifestError) as caught:
        manifest_io.loads(b"1" + b" " * (MAX_MANIFEST_BYTES - 1), where=WHERE)
    assert "top level must be an object" in str(caught.value)


# -- round trips -------------------------------------------------------------------------------
def test_dumps_loads_round_trip(dataset_dir: Path) -> None:
    data = (dataset_dir / MANIFEST_NAME).read_bytes()
    manifest = manifest_io.loads(data, where=WHERE)
    assert manifest_io.dumps(manifest) == data  # what create() wrote is already canonical
    again = manifest_io.loads(manifest_io.dumps(manifest), where=WHERE)
    assert again == manifest
    assert manifest_io.dumps(again) == data


def test_equality_survives_derived_properties(dataset_dir: Path) -> None:
    """Derived values (numpy dtype, row bytes, data offset) must not take part in equality."""
    data = (dataset_dir / MANIFEST_NAME).read_bytes()
    first = manifest_io.loads(data, where=WHERE)
    second = manifest_io.loads(data, where=WHERE)
    for spec in first.fields.values():
        assert spec.numpy_dtype.itemsize * int(np.prod(spec.shape)) == spec.row_bytes
        assert spec.data_offset % 4096 == 0
    assert first == second
    assert first != first.model_copy(update={"generation": 0})


def test_open_reads_what_dumps_wrote(dataset_dir: Path, tmp_path: Path) -> None:
    manifest = manifest_io.load(str(dataset_dir / MANIFEST_NAME))
    root = _replaced_copy(dataset_dir, tmp_path, manifest_io.dumps(manifest))
    assert memshard.open(root).attrs == {"k": [1, 2], "name": "démo"}


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
hex_digits = "0123456789abcdef"


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    names = draw(
        st.lists(
            st.from_regex(FIELD_NAME_PATTERN, fullmatch=True), min_size=1, max_size=3, unique=True
        )
    )
    fields = {
        name: FieldSpec(
            dtype=draw(st.sampled_from(sorted(SUPPORTED_DESCRS))),
            shape=tuple(draw(st.lists(st.integers(1, 64), max_size=3))),
        )
        for name in names
    }
    uuid = draw(st.text(hex_digits, min_size=32, max_size=32))
    shard_rows = draw(st.integers(1, 10**6))
    row_counts = draw(st.lists(st.integers(1, shard_rows), max_size=6))
    last_sealed = draw(st.booleans())
    version = draw(st.sampled_from(["1.0", "1.1", "1.3", "1.9999"]))
    checksum = st.text(hex_digits, min_size=16, max_size=16).map(lambda digits: f"xxh3_64:{digits}")
    shards = []
    offset = 0
    for index, rows in enumerate(row_counts):
        sealed = last_sealed or index < len(row_counts) - 1
        files = {}
        for name, spec in fields.items():
            prefix = {} if sealed or version == "1.0" else {"prefix_checksum": draw(checksum)}
            files[name] = ShardFile(
                path=shard_file_name(uuid[:12], index, name),
                data_offset=spec.data_offset,
                nbytes=rows * spec.row_bytes,
                checksum=draw(checksum) if sealed else None,
                **prefix,
            )
        shards.append(Shard(row_offset=offset, rows=rows, sealed=sealed, files=files))
        offset += rows
    integer_fields = [name for name, spec in fields.items() if spec.numpy_dtype.kind in "iu"]
    labelled = (
        draw(st.lists(st.sampled_from(integer_fields), unique=True)) if integer_fields else []
    )
    labels = {
        name: tuple(draw(st.lists(st.text(max_size=10), max_size=5, unique=True)))
        for name in labelled
    }
    return Manifest(
        format="memshard",
        version=version,
        uuid=uuid,
        generation=draw(st.integers(0, MAX_COUNT)),
        rows=offset,
        shard_rows=shard_rows,
        fields=fields,
        labels=labels,
        attrs=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        shards=tuple(shards),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_generated_manifests_round_trip(manifest: Manifest) -> None:
    data = manifest_io.dumps(manifest)
    again = manifest_io.loads(data, where=WHERE)
    assert again == manifest
    assert manifest_io.dumps(again) == data


# -- fuzzing -----------------------------------------------------------------------------------
def _loads_or_typed_error(data: bytes) -> None:
    """The parser's contract: a valid Manifest (that dumps back), or a MemshardError."""
    try:
        manifest = manifest_io.loads(data, where=WHERE)
    except MemshardError:
        return
    assert isinstance(manifest, Manifest)
    assert manifest_io.loads(manifest_io.dumps(manifest), where=WHERE) == manifest


#: Fragments that tend to break JSON parsers and validators, spliced in by the fuzzer.
TOKENS = [
    b"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b'"',
    b"\\",
    b"0",
    b"-1",
    b".",
    b".5",
    b"1.",
    b"\xc2\xb2",
    b"1e400",
    b"-0",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b"\\ud800",
    b"\\u0000",
    b"\xff",
    b"[" * 50,
    b'"2.0"',
    b'"x"',
    str(MAX_COUNT + 1).encode(),
]


def _seed() -> bytes:
    """A small valid manifest: one unsealed shard of 2 rows, fields x (<f4, (3,)) and y (<i8)."""
    offsets = {name: npyheader.data_offset(np.dtype(d), s) for name, d, s in FUZZ_FIELDS}
    token = "0123456789ab"
    document = {
        "format": "memshard",
        "version": "1.0",
        "uuid": token + "cdef0123456789abcdef",
        "generation": 1,
        "rows": 2,
        "shard_rows": 3,
        "fields": {name: {"dtype": d, "shape": list(s)} for name, d, s in FUZZ_FIELDS},
        "labels": {"y": ["cat", "dog"]},
        "attrs": {"k": [1, 2.5]},
        "shards": [
            {
                "row_offset": 0,
                "rows": 2,
                "sealed": False,
                "files": {
                    name: {
                        "path": shard_file_name(token, 0, name),
                        "data_offset": offsets[name],
                        "nbytes": 2 * np.dtype(d).itemsize * math.prod(s),
                        "checksum": None,
                    }
                    for name, d, s in FUZZ_FIELDS
                },
            }
        ],
    }
    return json.dumps(document).encode()


FUZZ_FIELDS = [("x", "<f4", (3,)), ("y", "<i8", ())]
VALID_BYTES = _seed()


def test_fuzz_seed_is_valid() -> None:
    assert manifest_io.loads(VALID_BYTES, where=WHERE).rows == 2


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _loads_or_typed_error(data)


@settings(max_examples=2000, deadline=None)
@given(mutations_of(VALID_BYTES, TOKENS, max_insert=8))
@example(VALID_BYTES.replace(b'"1.0"', b'"1."'))
@example(VALID_BYTES.replace(b'"1.0"', b'"\xc2\xb2.0"'))
@example(VALID_BYTES.replace(b"[1, 2.5]", b"[1, 1e400]"))
def test_fuzz_mutated_manifest(data: bytes) -> None:
    _loads_or_typed_error(data)
