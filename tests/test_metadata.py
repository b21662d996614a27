"""Editing attributes and label vocabularies after the fact: :func:`memshard.edit` and the
``memshard attrs`` / ``memshard labels`` commands.

An edit is a commit under the writer lock that touches no row: a new manifest (next
generation, correct checksum) and nothing else. A vocabulary change must leave every stored
value with a label.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard import manifest as manifest_io
from memshard.errors import DatasetLockedError, MetadataError, SchemaError
from tests.test_cli import assert_user_error, run_cli

LABELS = ["cat", "dog", "fox"]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """7 rows in shards of 3 (the last one unsealed), a label field holding 0..2."""
    root = tmp_path / "ds"
    with ms.create(root, {"x": ("float32", (2,)), "y": ("uint8", ()), "n": ("int32", ())},
                   labels={"y": LABELS}, attrs={"source": "sim", "run": 1},
                   shard_bytes=3 * 13) as writer:  # fmt: skip
        writer.extend({"x": np.ones((6, 2)), "y": [0, 1, 2, 0, 1, 2], "n": np.arange(6)})
    with ms.append(root) as writer:  # an unsealed last shard
        writer.append({"x": np.zeros(2), "y": 1, "n": 6})
        writer.commit()
        writer.abort()
    return root


def shard_digests(root: Path) -> dict[str, str]:
    return {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in (root / "shards").iterdir()
    }


def test_edit_commits_new_metadata_and_touches_no_row(path: Path) -> None:
    before = ms.open(path)
    files = shard_digests(path)
    assert not before.shards[-1].sealed
    new = ms.edit(path, attrs={"source": "camera 2"}, labels={"y": ["Cat", "Dog", "Fox", "Owl"]})
    assert new.generation == before.generation + 1
    assert shard_digests(path) == files
    ds = ms.open(path)
    assert ds.attrs == {"source": "camera 2"}
    assert ds.labels == {"y": ("Cat", "Dog", "Fox", "Owl")}
    assert list(ds.shards) == list(before.shards)  # the unsealed shard stays unsealed
    assert len(ds) == 7
    assert ds.verify().ok
    manifest_io.loads((path / "manifest.json").read_bytes(), where="test")  # its own checksum
    # A reader that was open sees the change on refresh.
    assert before.refresh()
    assert before.labels == ds.labels


def test_appending_after_an_edit_uses_the_new_vocabulary(path: Path) -> None:
    ms.edit(path, labels={"y": [*LABELS, "owl"]})
    with ms.append(path) as writer:
        writer.append({"x": np.zeros(2), "y": 3, "n": 7})
    ds = ms.open(path)
    assert ds["y"][-1] == 3
    assert ds.verify().ok


@pytest.mark.parametrize(
    "vocabulary",
    [["a", "b", "c"], ["a", "b", "c", "d"], None],
    ids=["renamed", "appended", "removed"],
)
def test_vocabularies_that_keep_every_value_labelled(
    path: Path, vocabulary: list[str] | None
) -> None:
    ms.edit(path, labels={"y": vocabulary})
    labels = ms.open(path).labels
    assert labels == ({} if vocabulary is None else {"y": tuple(vocabulary)})


def test_a_shorter_vocabulary_is_checked_against_the_stored_values(path: Path) -> None:
    with pytest.raises(MetadataError) as refused:
        ms.edit(path, labels={"y": ["cat", "dog"]})
    message = str(refused.value)
    assert "field 'y': row 2 holds 2, which a vocabulary of 2 labels does not cover" in message
    assert ms.open(path).labels == {"y": tuple(LABELS)}  # nothing changed
    ms.edit(path, labels={"n": [f"n{index}" for index in range(7)]})  # a new one, covering 0..6
    with pytest.raises(MetadataError, match="row 6 holds 6"):
        ms.edit(path, labels={"n": [f"n{index}" for index in range(6)]})


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({"x": ["a"]}, "labels need an integer field"),
        ({"nope": ["a"]}, "no field named 'nope'"),
        ({"y": ["a", "a", "b"]}, "unique"),
        ({"y": "abc"}, "must be a sequence of strings"),
    ],
)
def test_vocabularies_the_format_forbids(path: Path, labels: dict[str, Any], says: str) -> None:
    with pytest.raises(SchemaError, match=says):
        ms.edit(path, labels=labels)


def test_attributes_must_be_json(path: Path) -> None:
    with pytest.raises(SchemaError, match="NaN"):
        ms.edit(path, attrs={"bad": float("nan")})
    assert ms.open(path).attrs == {"source": "sim", "run": 1}


def test_an_edit_waits_for_no_one(path: Path) -> None:
    with ms.append(path), pytest.raises(DatasetLockedError):
        ms.edit(path, attrs={})


def test_edit_through_an_appender_commits_its_rows_first(path: Path) -> None:
    from memshard.metadata import edit_appender

    with ms.append(path) as writer:
        writer.append({"x": np.zeros(2), "y": 2, "n": 7})
        with pytest.raises(MetadataError, match="row 2 holds 2"):
            edit_appender(writer, labels={"y": ["cat", "dog"]})
        assert writer.committed_rows == 8
        edit_appender(writer, attrs={"k": [1, 2]})
        writer.append({"x": np.zeros(2), "y": 0, "n": 8})
    ds = ms.open(path)
    assert len(ds) == 9
    assert ds.attrs == {"k": [1, 2]}


# -- the commands ------------------------------------------------------------------------------


def test_attrs_command_sets_deletes_and_shows(path: Path) -> None:
    shown = run_cli("attrs", path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"source": "sim", "run": 1}
    changed = run_cli("attrs", path, "source=camera 2", "run=3", "tags=[1, 2]", "--delete", "run")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == {"source": "camera 2", "run": 3, "tags": [1, 2]}
    assert ms.open(path).attrs == {"source": "camera 2", "run": 3, "tags": [1, 2]}
    assert_user_error(run_cli("attrs", path, "--delete", "missing"), "no attribute 'missing'")


def test_labels_command_changes_and_shows(path: Path) -> None:
    changed = run_cli(
        "labels", path, "y=cat,dog,fox,owl", 'n=["a,b", "c", "d", "e", "f", "g", "h"]'
    )
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines() == ["y: cat, dog, fox, owl", "n: a,b, c, d, e, f, g, h"]
    assert run_cli("labels", path, "--remove", "n").stdout == "y: cat, dog, fox, owl\n"
    assert_user_error(run_cli("labels", path, "y=cat"), "row 1 holds 1", "nothing was changed")
    assert ms.open(path).labels == {"y": ("cat", "dog", "fox", "owl")}


def test_commands_on_a_missing_dataset(tmp_path: Path) -> None:
    for command in ("attrs", "labels"):
        assert_user_error(run_cli(command, tmp_path / "none", "a=b"), "no memshard dataset")
    assert not os.listdir(tmp_path)
