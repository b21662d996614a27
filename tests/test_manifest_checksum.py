"""The manifest's own checksum (spec section 6.5): any changed byte of a manifest is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import manifest as manifest_io
from memshard.errors import ManifestError, MemshardError
from memshard.layout import MANIFEST_NAME
from memshard.shardtable import TABLE_NAME
from memshard.verify import verify_dataset

WHERE = "/data/ds/manifest.json"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("checksum") / "ds"
    with ms.create(
        root, {"x": ("float32", (3,)), "y": ("int64", ())}, shard_bytes=60,
        labels={"y": ["cat", "dog"]}, attrs={"note": "é"},
    ) as writer:  # fmt: skip
        writer.extend(
            {"x": np.arange(30, dtype=np.float32).reshape(10, 3), "y": np.ones(10, dtype=np.int64)}
        )
    return root, (root / MANIFEST_NAME).read_bytes()


def test_writer_ends_the_manifest_with_its_checksum(written: tuple[Path, bytes]) -> None:
    _, data = written
    document = json.loads(data)
    assert list(document)[-1] == "checksum"
    assert data.endswith(f'"{document["checksum"]}"\n}}\n'.encode())
    prefix = data[: -len(document["checksum"]) - 5]
    assert manifest_io.own_checksum(prefix) == document["checksum"]
    assert manifest_io.loads(data, where=WHERE).rows == 10


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_refused(written: tuple[Path, bytes], position: int, mask: int) -> None:
    _, data = written
    damaged = bytearray(data)
    damaged[position % len(data)] ^= mask
    with pytest.raises(MemshardError):
        manifest_io.loads(bytes(damaged), where=WHERE)


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("a value changed", lambda d: d.replace(b'"rows": 10', b'"rows": 11')),
        ("whitespace added", lambda d: d.replace(b'"rows": 10', b'"rows":  10')),
        (
            "checksum value changed",
            lambda d: d[:-6] + (b"0" if d[-6:-5] != b"0" else b"1") + d[-5:],
        ),
        ("no final newline", lambda d: d[:-1]),
        ("CRLF ending", lambda d: d[:-4] + b'"\r\n}\r\n'),
        ("trailing space", lambda d: d + b" "),
        ("checksum upper case", lambda d: d[:-21] + d[-21:-5].upper() + d[-5:]),
        ("checksum moved first", lambda d: _reordered(d)),
        ("checksum not a string", lambda d: d[: d.rindex(b'"xxh3')] + b"5\n}\n"),
    ],
)
def test_malformed_or_wrong_checksum_is_refused(
    written: tuple[Path, bytes], name: str, change: object
) -> None:
    _, data = written
    damaged = change(data)  # type: ignore[operator]
    assert damaged != data
    with pytest.raises(ManifestError, match="checksum"):
        manifest_io.loads(damaged, where=WHERE)


def _reordered(data: bytes) -> bytes:
    document = json.loads(data)
    checksum = document.pop("checksum")
    return json.dumps({"checksum": checksum, **document}).encode()


def test_manifest_without_checksum_opens_but_verify_reports_it(
    written: tuple[Path, bytes], tmp_path: Path
) -> None:
    root, data = written
    copy = tmp_path / "ds"
    (copy / "shards").mkdir(parents=True)
    for shard in (root / "shards").iterdir():
        (copy / "shards" / shard.name).write_bytes(shard.read_bytes())
    (copy / TABLE_NAME).write_bytes((root / TABLE_NAME).read_bytes())
    document = json.loads(data)
    del document["checksum"]
    (copy / MANIFEST_NAME).write_bytes(json.dumps(document).encode())
    assert len(ms.open(copy)) == 10
    report = verify_dataset(str(copy))
    assert not report.ok
    assert [problem.path for problem in report.problems] == [str(copy / MANIFEST_NAME)]
    assert "no checksum" in report.problems[0].message


def test_verify_reports_a_damaged_manifest(written: tuple[Path, bytes], tmp_path: Path) -> None:
    _, data = written
    copy = tmp_path / "ds"
    (copy / "shards").mkdir(parents=True)
    (copy / MANIFEST_NAME).write_bytes(data.replace(b'"note": "\xc3\xa9"', b'"note": "e\xcc\x81"'))
    report = verify_dataset(str(copy))
    assert not report.ok
    assert report.problems[0].error is ManifestError
    assert "hash to" in report.problems[0].message
    with pytest.raises(ManifestError):
        report.raise_first()
