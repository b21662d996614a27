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
import uuid as uuid_module
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xxhash

import memshard
from memshard import appender as appender_module
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


def _write_example(root: Path, example: Any = None) -> None:
    """Write a worked example's manifest and files under ``root`` (default: section 11.1's)."""
    example = example or generate.build_example()
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
    # The first '"rows": 3,' is the manifest's of section 11.1.
    (tmp_path / "FORMAT.md").write_text(text.replace('"rows": 3,', '"rows": 4,', 1), "utf-8")

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
    assert written.version == manifest_io.FORMAT_VERSION == "2.2"
    token = written.uuid[:12]
    line = generate.shard_line(written.shards[-1]).replace(token, generate.EXAMPLE_UUID[:12])
    assert generate.block_body(_format_text(), "unsealed-shard") == f"```json\n{line}```\n"
    assert line in manifest_io.dumps(written).decode().replace(token, generate.EXAMPLE_UUID[:12])
    assert memshard.open(root).verify().ok


# -- the worked example with a ragged field (section 11.2) ----------------------------------
RAGGED_ROWS: dict[str, Any] = {
    "tokens": [np.asarray(row, dtype=np.int32) for row in generate.RAGGED_VALUES["tokens"]],
    "y": np.asarray(generate.RAGGED_VALUES["y"], dtype=np.int64),
}


def test_ragged_example_reads_back_through_memshard(tmp_path: Path) -> None:
    example = generate.build_ragged_example()
    _write_example(tmp_path, example)

    dataset = memshard.open(tmp_path)

    assert len(dataset) == 3
    assert dataset.fields["tokens"] == (np.dtype("int32"), (None,))
    assert [(shard.rows, shard.sealed) for shard in dataset.shards] == [(2, True), (1, False)]
    rows = dataset["tokens"][:]
    assert rows.lengths.tolist() == [4, 0, 2]
    for got, want in zip(rows, RAGGED_ROWS["tokens"], strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dataset["y"][:], RAGGED_ROWS["y"])
    report = dataset.verify()
    assert report.ok
    assert report.files == 6


def test_ragged_example_files_load_with_plain_numpy(tmp_path: Path) -> None:
    example = generate.build_ragged_example()
    _write_example(tmp_path, example)

    for shard in [*example.shards, *example.manifest.shards]:
        file = shard.files["tokens"]
        values = np.load(tmp_path / file.path, mmap_mode="r")
        offsets = np.load(tmp_path / file.offsets_path, mmap_mode="r")
        assert values.dtype == np.int32
        assert offsets.dtype == np.int64
        assert offsets.shape == (shard.rows + 1,)
        assert values.nbytes == file.nbytes
        expected = RAGGED_ROWS["tokens"][shard.row_offset : shard.row_offset + shard.rows]
        for row, want in enumerate(expected):
            np.testing.assert_array_equal(values[offsets[row] : offsets[row + 1]], want)
        del values, offsets


def test_ragged_example_checksums_cover_the_data_bytes() -> None:
    example = generate.build_ragged_example()

    def digest(path: str, data_offset: int) -> str:
        return "xxh3_64:" + xxhash.xxh3_64(example.files[path][data_offset:]).hexdigest()

    (sealed,) = example.shards
    (unsealed,) = example.manifest.shards
    for shard, values_key, offsets_key in (
        (sealed, "checksum", "offsets_checksum"),
        (unsealed, "prefix_checksum", "offsets_prefix_checksum"),
    ):
        file = shard.files["tokens"]
        assert getattr(file, values_key) == digest(file.path, file.data_offset)
        assert getattr(file, offsets_key) == digest(file.offsets_path, 4096)
        assert len(example.files[file.offsets_path]) == 4096 + (shard.rows + 1) * 8


def test_ragged_example_prose_states_the_generated_numbers() -> None:
    text = _format_text()
    example = generate.build_ragged_example()
    records = np.load(io.BytesIO(example.files[TABLE_NAME]))

    # Section 11.2: shard 0 holds 56 bytes of data, 80 with row 2, shard 1 holds 32.
    assert [generate.ragged_data_bytes(*rows) for rows in ((0, 2), (0, 3), (2, 3))] == [56, 80, 32]
    assert generate.ragged_bounds() == [(0, 2), (2, 3)]
    assert generate.ragged_shard_rows() == 4
    assert records.dtype.itemsize == 120
    # Section 6.3.10 quotes the example's offsets_prefix_checksum.
    value = example.manifest.shards[0].files["tokens"].offsets_prefix_checksum
    section = text[text.index("##### `shards[].files.<name>.offsets_checksum`") :]
    assert f'"offsets_prefix_checksum": "{value}"' in section[: section.index("#### 6.3.11")]


def test_library_writes_the_ragged_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = generate.build_ragged_example()
    fixed = uuid_module.UUID(generate.RAGGED_UUID)
    monkeypatch.setattr(appender_module, "uuid_module", SimpleNamespace(uuid4=lambda: fixed))
    root = tmp_path / "dataset"
    appender = memshard.create(
        root,
        fields={"tokens": ("int32", (None,)), "y": ("int64", ())},
        shard_bytes=generate.RAGGED_SHARD_BYTES,
        attrs=generate.RAGGED_ATTRS,
    )
    appender.extend(RAGGED_ROWS)
    appender.commit()

    # Byte for byte: the manifest (its own checksum included), every shard file and the table.
    assert (root / "manifest.json").read_bytes() == manifest_io.dumps(example.manifest)
    written = {
        f"shards/{path.name}": path.read_bytes() for path in sorted((root / "shards").iterdir())
    }
    written[TABLE_NAME] = (root / TABLE_NAME).read_bytes()
    assert written == example.files

    # Closing seals shard 1 with the checksums its unsealed record stated: the table's second
    # record, 2 elements, generation 2 (the last paragraph of section 11.2).
    appender.close()
    closed = manifest_io.loads((root / "manifest.json").read_bytes(), where="closed")
    assert closed.table is not None
    assert (closed.generation, closed.shards, closed.table.records) == (2, (), 2)
    unsealed = example.manifest.shards[0].files
    last = memshard.open(root).shards[1].files
    assert last["tokens"].checksum == unsealed["tokens"].prefix_checksum
    assert last["tokens"].offsets_checksum == unsealed["tokens"].offsets_prefix_checksum
    assert last["tokens"].nbytes == 8
    assert last["y"].checksum == unsealed["y"].prefix_checksum


# -- the worked example with a compressed field (section 11.3) ------------------------------
COMPRESSED_ROWS: dict[str, Any] = {
    "img": np.asarray(generate.COMPRESSED_VALUES["img"], dtype=np.uint8),
    "y": np.asarray(generate.COMPRESSED_VALUES["y"], dtype=np.int64),
}
COMPRESSED_OPTIONS = {"codec": "zstd", "level": 3, "block_bytes": 1024}


def _create_compressed_example(root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The writer of section 11.3, its ``uuid`` fixed: ``create``, then rows 0 to 2."""
    fixed = uuid_module.UUID(generate.COMPRESSED_UUID)
    monkeypatch.setattr(appender_module, "uuid_module", SimpleNamespace(uuid4=lambda: fixed))
    writer = memshard.create(
        root,
        fields={"img": ("uint8", (4, 4), COMPRESSED_OPTIONS), "y": ("int64", ())},
        shard_bytes=generate.COMPRESSED_SHARD_BYTES,
        attrs=generate.COMPRESSED_ATTRS,
    )
    writer.extend({name: values[:3] for name, values in COMPRESSED_ROWS.items()})
    return writer


def test_library_writes_the_compressed_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = generate.build_compressed_example()
    root = tmp_path / "dataset"
    writer = _create_compressed_example(root, monkeypatch)
    writer.commit()
    # After the first commit (the last paragraph of section 11.3): the shard unsealed, 3 rows,
    # block 0's 48 bytes (stored) and the 4 block ends committed.
    first = manifest_io.loads((root / "manifest.json").read_bytes(), where="first")
    (unsealed,) = first.shards
    img = unsealed.files["img"]
    assert (first.generation, unsealed.rows, unsealed.sealed, img.nbytes) == (1, 3, False, 48)
    ends = np.fromfile(root / img.offsets_path, dtype="<i8", offset=4096)
    assert ends.tolist() == [0, 48, 48, 48]
    assert img.offsets_prefix_checksum == "xxh3_64:" + xxhash.xxh3_64(ends.tobytes()).hexdigest()
    writer.extend({name: values[3:] for name, values in COMPRESSED_ROWS.items()})
    writer.close()

    # Byte for byte: the manifest (its own checksum included), every shard file and the table.
    assert (root / "manifest.json").read_bytes() == manifest_io.dumps(example.manifest)
    written = {
        f"shards/{path.name}": path.read_bytes() for path in sorted((root / "shards").iterdir())
    }
    written[TABLE_NAME] = (root / TABLE_NAME).read_bytes()
    assert written == example.files


def test_compressed_example_reads_back_through_memshard(tmp_path: Path) -> None:
    example = generate.build_compressed_example()
    _write_example(tmp_path, example)

    dataset = memshard.open(tmp_path)

    assert len(dataset) == 5
    assert dataset.fields["img"] == (np.dtype("uint8"), (4, 4))
    np.testing.assert_array_equal(dataset["img"][:], COMPRESSED_ROWS["img"])
    np.testing.assert_array_equal(dataset.take([4, 0])["img"], COMPRESSED_ROWS["img"][[4, 0]])
    np.testing.assert_array_equal(dataset["y"][:], COMPRESSED_ROWS["y"])
    assert dataset["img"].stored_bytes == 69
    report = dataset.verify()
    assert report.ok
    assert report.files == 3  # the frames, their block ends and y


def test_compressed_example_blocks_are_a_stored_block_and_a_frame() -> None:
    """Block 0 of section 11.3 is stored: its bytes are its rows', since zstd would take more
    than 7/8 of them; block 1 is a zstd frame that plain zstandard decodes to its rows, one
    compressed block with the content size and checksum the layout table explains."""
    import zstandard

    example = generate.build_compressed_example()
    file = example.shards[0].files["img"]
    blocks = example.files[file.path][file.data_offset :]
    ends = np.load(io.BytesIO(example.files[file.offsets_path]))
    assert generate.compressed_blocks() == [(0, 3), (3, 5)]
    assert ends.tolist() == [0, 48, 48, 48, 69, 69]
    stored = COMPRESSED_ROWS["img"][:3].tobytes()
    assert blocks[:48] == stored
    assert len(generate.compressed_frame(stored)) * 8 > len(stored) * 7
    frame, block = blocks[48:], COMPRESSED_ROWS["img"][3:].tobytes()
    assert block == bytes(32)
    assert zstandard.frame_content_size(frame) == len(block)
    assert zstandard.ZstdDecompressor().decompress(frame) == block
    assert frame[4] == 0x24  # a single segment, a 1-byte content size, a checksum
    header = int.from_bytes(frame[6:9], "little")
    assert (header & 1, (header >> 1) & 3) == (1, 2)  # the last block, compressed
    assert len(frame) == 4 + 1 + 1 + 3 + (header >> 3) + 4 < len(block) * 7 / 8
    assert frame[-4:] == (xxhash.xxh64_intdigest(block) & 0xFFFFFFFF).to_bytes(4, "little")


def test_compressed_example_files_load_with_plain_numpy(tmp_path: Path) -> None:
    example = generate.build_compressed_example()
    _write_example(tmp_path, example)
    (shard,) = example.shards
    file = shard.files["img"]
    frames = np.load(tmp_path / file.path)
    ends = np.load(tmp_path / file.offsets_path)
    assert (frames.dtype, frames.shape, frames.nbytes) == (np.uint8, (69,), file.nbytes)
    assert (ends.dtype, ends.shape, int(ends[-1])) == (np.int64, (6,), file.nbytes)
    records = np.load(io.BytesIO(example.files[TABLE_NAME]))
    assert records.dtype.itemsize == 120  # 88 + 8 * 2 + 16 * 1
    assert records[0]["elements"].tolist() == [69]
