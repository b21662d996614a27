"""The specification in ``spec/`` matches the code, and its worked example is a real dataset.

``spec/manifest.schema.json`` and the generated blocks of ``spec/FORMAT.md`` must be exactly what
``spec/generate.py`` produces now; the worked example must read back through ``memshard.open``
and plain ``numpy.load``, and must be what the library itself writes for the same rows.
"""

from __future__ import annotations

import doctest
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import xxhash

import memshard
from memshard import manifest as manifest_io
from memshard.shardtable import TABLE_NAME

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"


def _load_generator() -> ModuleType:
    path = SPEC_DIR / "generate.py"
    spec = importlib.util.spec_from_file_location("memshard_spec_generate", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()
BLOCK_NAMES = sorted(generate.generated_blocks())


def _format_text() -> str:
    with open(SPEC_DIR / "FORMAT.md", encoding="utf-8", newline="") as handle:
        return handle.read()


def _write_example(root: Path) -> None:
    """Write the worked example's manifest and shard files under ``root``."""
    example = generate.build_example()
    (root / "shards").mkdir(parents=True)
    for path, content in example.files.items():
        (root / path).write_bytes(content)
    (root / "manifest.json").write_bytes(manifest_io.dumps(example.manifest))


def _expected_rows(name: str) -> np.ndarray:
    spec = generate.EXAMPLE_FIELDS[name]
    return np.asarray(generate.EXAMPLE_VALUES[name], dtype=spec.numpy_dtype)


# -- the committed spec files are fresh -----------------------------------------------------
def test_committed_schema_is_the_generated_one() -> None:
    committed = (SPEC_DIR / "manifest.schema.json").read_text(encoding="utf-8")
    assert committed == generate.schema_text()
    assert json.loads(committed) == manifest_io.json_schema()


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_format_block_is_the_generated_one(name: str) -> None:
    assert generate.block_body(_format_text(), name) == generate.generated_blocks()[name]


def test_format_has_no_unknown_generated_block() -> None:
    assert set(generate.BLOCK_PATTERN.findall(_format_text())) == set(BLOCK_NAMES)


def test_manifest_block_holds_the_dumped_bytes() -> None:
    dumped = manifest_io.dumps(generate.build_example().manifest).decode("utf-8")
    assert generate.block_body(_format_text(), "manifest") == f"```json\n{dumped}```\n"


def test_check_passes_on_the_committed_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check"]) == 0
    assert capsys.readouterr().err == ""


def test_check_names_each_stale_part(tmp_path: Path) -> None:
    shutil.copy(SPEC_DIR / "FORMAT.md", tmp_path / "FORMAT.md")
    (tmp_path / "manifest.schema.json").write_text("{}\n", encoding="utf-8")
    text = (tmp_path / "FORMAT.md").read_text(encoding="utf-8")
    (tmp_path / "FORMAT.md").write_text(text.replace('"rows": 3,', '"rows": 4,'), "utf-8")

    updates = generate.stale_files(tmp_path)

    assert [(update.path.name, update.reasons) for update in updates] == [
        ("manifest.schema.json", ["differs from memshard.manifest.json_schema()"]),
        ("FORMAT.md", ["generated block 'manifest' is out of date"]),
    ]
    generate.write_updates(updates)
    assert generate.stale_files(tmp_path) == []
    assert (tmp_path / "FORMAT.md").read_bytes() == (SPEC_DIR / "FORMAT.md").read_bytes()


def test_broken_markers_are_refused() -> None:
    text = _format_text().replace("<!-- END GENERATED: manifest -->", "")
    with pytest.raises(generate.SpecError, match="END GENERATED: manifest"):
        generate.replace_blocks(text, generate.generated_blocks())


def test_generator_doctests() -> None:
    result = doctest.testmod(generate)
    assert result.attempted > 0
    assert result.failed == 0


# -- the worked example is a valid dataset --------------------------------------------------
def test_example_manifest_round_trips() -> None:
    example = generate.build_example()
    data = manifest_io.dumps(example.manifest)
    assert manifest_io.loads(data, where="example") == example.manifest


def test_example_reads_back_through_memshard(tmp_path: Path) -> None:
    _write_example(tmp_path)

    dataset = memshard.open(tmp_path)

    assert len(dataset) == 3
    assert dataset.uuid == generate.EXAMPLE_UUID
    assert dataset.generation == generate.EXAMPLE_GENERATION
    assert dataset.labels == {"y": ("cat", "dog")}
    assert dataset.attrs == {"source": "worked example"}
    assert [(shard.rows, shard.sealed) for shard in dataset.shards] == [(2, True), (1, True)]
    for name in ("x", "y"):
        column = dataset[name][:]
        assert column.dtype == generate.EXAMPLE_FIELDS[name].numpy_dtype
        np.testing.assert_array_equal(column, _expected_rows(name))


def test_example_shards_load_with_plain_numpy(tmp_path: Path) -> None:
    _write_example(tmp_path)
    example = generate.build_example()

    for shard in example.shards:
        for name, record in shard.files.items():
            spec = example.manifest.fields[name]
            array = np.load(tmp_path / record.path, mmap_mode="r")
            assert isinstance(array, np.memmap)
            assert array.shape == (shard.rows, *spec.shape)
            assert array.dtype.str == spec.dtype
            expected = _expected_rows(name)[shard.row_offset : shard.row_offset + shard.rows]
            np.testing.assert_array_equal(array, expected)
            del array


def test_example_checksums_cover_the_data_bytes() -> None:
    example = generate.build_example()
    for shard in example.shards:
        for record in shard.files.values():
            content = example.files[record.path]
            assert len(content) == record.data_offset + record.nbytes
            digest = xxhash.xxh3_64(content[record.data_offset :]).hexdigest()
            assert record.checksum == f"xxh3_64:{digest}"


def _before_checksum(data: bytes) -> bytes:
    return data[: data.rindex(b' "checksum": ')]


def test_library_writes_the_worked_example(tmp_path: Path) -> None:
    example = generate.build_example()
    fields = {name: (spec.dtype, spec.shape) for name, spec in example.manifest.fields.items()}
    row_bytes = sum(spec.row_bytes for spec in example.manifest.fields.values())
    root = tmp_path / "dataset"

    with memshard.create(
        root,
        fields=fields,
        shard_bytes=row_bytes * generate.EXAMPLE_SHARD_ROWS,
        labels=generate.EXAMPLE_LABELS,
        attrs=generate.EXAMPLE_ATTRS,
    ) as appender:
        appender.extend({name: _expected_rows(name) for name in fields})

    uuid = memshard.open(root).uuid
    written = (root / "manifest.json").read_bytes()
    table_ref = manifest_io.loads(written, where="written").table  # its checksum matches
    assert table_ref is not None
    assert table_ref.chain is not None
    chain = table_ref.chain
    written = written.replace(uuid.encode(), generate.EXAMPLE_UUID.encode())
    written = written.replace(uuid[:12].encode(), generate.EXAMPLE_UUID[:12].encode())
    # The chain is seeded with the uuid: the table written for the example's uuid has its.
    assert example.manifest.table is not None
    assert example.manifest.table.chain is not None
    written = written.replace(chain.encode(), example.manifest.table.chain.encode())
    # The uuid is part of what the manifest checksum covers: compare up to the checksum.
    expected = manifest_io.dumps(example.manifest)
    assert _before_checksum(written) == _before_checksum(expected)
    token = generate.EXAMPLE_UUID[:12]
    files = {
        f"shards/{path.name.replace(uuid[:12], token)}": path.read_bytes()
        for path in (root / "shards").iterdir()
    }
    table = files[TABLE_NAME] = (root / TABLE_NAME).read_bytes()
    assert files.keys() == example.files.keys()
    assert {path: files[path] for path in files if path != TABLE_NAME} == {
        path: content for path, content in example.files.items() if path != TABLE_NAME
    }
    # The table: the same records but for the stems' token and the chains, which the uuid
    # seeds; the written shards chained again with the example's uuid are the example's bytes.
    records = np.load(io.BytesIO(table))
    shards = [
        shard.model_copy(update={"files": {
            name: file.model_copy(update={"path": file.path.replace(uuid[:12], token)})
            for name, file in shard.files.items()
        }})
        for shard in memshard.open(root).shards
    ]  # fmt: skip
    again = generate.example_records(shards)
    for member in ("row_offset", "rows", "checksums"):
        np.testing.assert_array_equal(records[member], again[member])
    header = len(table) - records.nbytes
    assert table[:header] == example.files[TABLE_NAME][:header]
    assert again.tobytes() == example.files[TABLE_NAME][header:]


def test_library_commits_the_unsealed_shard_of_the_worked_example(tmp_path: Path) -> None:
    example = generate.build_example()
    fields = {name: (spec.dtype, spec.shape) for name, spec in example.manifest.fields.items()}
    row_bytes = sum(spec.row_bytes for spec in example.manifest.fields.values())
    root = tmp_path / "dataset"
    appender = memshard.create(
        root,
        fields=fields,
        shard_bytes=row_bytes * generate.EXAMPLE_SHARD_ROWS,
        labels=generate.EXAMPLE_LABELS,
        attrs=generate.EXAMPLE_ATTRS,
    )
    appender.extend({name: _expected_rows(name) for name in fields})
    appender.commit()
    appender.abort()

    written = manifest_io.loads((root / "manifest.json").read_bytes(), where="written")
    assert written.version == manifest_io.FORMAT_VERSION == "2.1"
    token = written.uuid[:12]
    line = generate.shard_line(written.shards[-1]).replace(token, generate.EXAMPLE_UUID[:12])
    assert generate.block_body(_format_text(), "unsealed-shard") == f"```json\n{line}```\n"
    assert line in manifest_io.dumps(written).decode().replace(token, generate.EXAMPLE_UUID[:12])
    assert memshard.open(root).verify().ok
