"""Compressed fields written by a hostile (or broken) writer who recomputes every checksum:
offsets that lie, truncated frames, table records that lie, frames that claim or inflate to
another size. Each is a typed error naming the file and the field, never a crash, a hang, a
misread row or an allocation of gigabytes (measured in a child process), and ``verify``
reports it."""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import errors, npyheader, shardtable
from memshard import manifest as manifest_io
from memshard.blockcodec import MAX_RATIO, BlockCodec
from memshard.blockindex import blocks_of
from memshard.checksum import StreamingChecksum
from memshard.codecs import codec_parameters
from memshard.layout import MANIFEST_NAME
from tests.helpers import REPO_ROOT

CODECS = ["zstd", "lz4", "blosc"]
ROWS = 40
#: Fixed rows of 300 bytes, 3 to a block; ragged rows of 0 to 99 int32 elements.
FIXED = ("uint8", (300,))
RAGGED = ("int32", (None,))
BLOCK_BYTES = 1024
#: Most memory a read of a hostile dataset may take beyond what opening it took.
MEMORY_LIMIT = 32 << 20


def _rows(ragged: bool) -> Any:
    rng = np.random.default_rng(7)
    if ragged:
        return [rng.integers(0, 5, i * 7 % 100).astype(np.int32) for i in range(ROWS)]
    return rng.integers(0, 4, (ROWS, 300), dtype=np.uint8)


def _write(path: Path, codec: str, ragged: bool) -> Any:
    """One sealed shard of ``ROWS`` rows of field ``x``; returns the rows."""
    dtype, shape = RAGGED if ragged else FIXED
    options = {"codec": codec, "block_bytes": BLOCK_BYTES}
    rows = _rows(ragged)
    with ms.create(path, fields={"x": (dtype, shape, options)}) as writer:
        if ragged:
            for row in rows:
                writer.append({"x": row})
        else:
            writer.extend({"x": rows})
    return rows


def _digest(data: np.ndarray) -> str:
    state = StreamingChecksum()
    state.update(np.ascontiguousarray(data).data.cast("B"))
    return state.digest()


def _paths(path: Path) -> tuple[str, str]:
    """The values and offsets files of field ``x`` in shard 0."""
    file = ms.open(path).shards[0].files["x"]
    return str(path / file.path), str(path / file.offsets_path)


def _stored(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The frames (bytes) and offsets of field ``x`` in shard 0, as np.load reads them."""
    values, offsets = _paths(path)
    return np.load(values), np.load(offsets)


def _hostile(
    path: Path,
    *,
    frames: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    nbytes: int | None = None,
) -> None:
    """Rewrite field ``x`` of the sealed shard 0 as a hostile writer would: new frames and/or
    offsets as valid ``.npy`` files, and every checksum, the table record (``nbytes`` may lie
    about the frames' bytes), its chain and the manifest recomputed to agree."""
    manifest = manifest_io.load(str(path / MANIFEST_NAME))
    assert manifest.table is not None
    assert manifest.table.records == 1
    shard = ms.open(path).shards[0]
    file = shard.files["x"]
    update: dict[str, Any] = {}
    if frames is not None:
        _write_npy(path / file.path, np.ascontiguousarray(frames, np.uint8))
        update.update(nbytes=frames.size, checksum=_digest(frames))
    if offsets is not None:
        offsets = np.ascontiguousarray(offsets, "<i8")
        _write_npy(path / file.offsets_path, offsets)
        update.update(offsets_checksum=_digest(offsets))
    if nbytes is not None:
        update.update(nbytes=nbytes)
    lying = shard.model_copy(update={"files": {"x": file.model_copy(update=update)}})
    records = shardtable.encode(
        [lying], manifest.fields, shardtable.chain_seed(manifest.uuid), where="test"
    )
    table = path / shardtable.TABLE_NAME
    os.chmod(table, 0o644)
    table.write_bytes(npyheader.header_bytes(records.dtype, (), len(records)) + records.tobytes())
    chain = shardtable.format_chain(int(records[-1]["chain"]))
    ref = manifest.table.model_copy(update={"chain": chain})
    (path / MANIFEST_NAME).write_bytes(
        manifest_io.dumps(manifest.model_copy(update={"table": ref}))
    )


def _write_npy(where: Path, array: np.ndarray) -> None:
    os.chmod(where, 0o644)
    header = npyheader.header_bytes(array.dtype, array.shape[1:], array.shape[0])
    where.write_bytes(header + array.tobytes())


def _block_ends(offsets: np.ndarray) -> np.ndarray:
    return offsets[:, 1] if offsets.ndim == 2 else offsets


def _with_block_ends(offsets: np.ndarray, ends: np.ndarray) -> np.ndarray:
    changed: np.ndarray = offsets.copy()
    if changed.ndim == 2:
        changed[:, 1] = ends
    else:
        changed[:] = ends
    return changed


def _reads(ds: ms.Dataset) -> dict[str, Callable[[], object]]:
    return {
        "row": lambda: ds["x"][5],
        "slice": lambda: ds["x"][:],
        "take": lambda: ds.take(list(range(0, ROWS, 3))),
        "threaded take": lambda: ds.take(list(range(ROWS))[::-1], threads=3),
    }


def _assert_refused(
    path: Path, error: type[Exception], names: str, says: str | None = None
) -> None:
    """Every read of the shard raises ``error`` whose message starts with ``names`` (a file)
    and names field ``x``; verify reports it on that file."""
    ds = ms.open(path)
    for how, read in _reads(ds).items():
        with pytest.raises(error, match=says) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(f"{names}: "), (how, message)
        assert "field 'x'" in message, (how, message)
    report = ds.verify()
    assert not report.ok
    assert names in [problem.path for problem in report.problems], report.problems


# -- offsets that lie ----------------------------------------------------------------------------
@pytest.mark.parametrize("ragged", [False, True], ids=["fixed", "ragged"])
@pytest.mark.parametrize("codec", CODECS)
def test_block_ends_that_decrease_or_end_past_the_frames_are_refused(
    tmp_path: Path, codec: str, ragged: bool
) -> None:
    for lie in ("decreasing", "past the end"):
        path = tmp_path / lie.replace(" ", "-")
        _write(path, codec, ragged)
        _, offsets = _stored(path)
        ends = _block_ends(offsets).copy()
        if lie == "decreasing":
            ends[3] = ends[-1]  # row 2's block ends past row 3's
        else:
            ends[-4:] += 100  # the last block ends 100 bytes past the frames
        _hostile(path, offsets=_with_block_ends(offsets, ends))
        _, offsets_path = _paths(path)
        _assert_refused(path, errors.ShardDataError, offsets_path, "block ends of field 'x'")


@pytest.mark.parametrize("codec", CODECS)
def test_element_ends_that_decrease_are_refused(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "ds"
    _write(path, codec, ragged=True)
    _, offsets = _stored(path)
    lying = offsets.copy()
    lying[5, 0] = lying[4, 0] - 1
    _hostile(path, offsets=lying)
    _, offsets_path = _paths(path)
    _assert_refused(path, errors.ShardDataError, offsets_path, "element ends of field 'x'")


@pytest.mark.parametrize("later", [False, True], ids=["earlier", "later"])
@pytest.mark.parametrize("ragged", [False, True], ids=["fixed", "ragged"])
@pytest.mark.parametrize("codec", CODECS)
def test_a_block_end_inside_another_frame_is_a_block_error(
    tmp_path: Path, codec: str, ragged: bool, later: bool
) -> None:
    """The first block's end moved 5 bytes into its own frame, or into the next one: a frame
    cut short, or one that starts mid-frame, is refused by its block, naming the values file;
    the row read back is never wrong."""
    path = tmp_path / "ds"
    rows = _write(path, codec, ragged)
    _, offsets = _stored(path)
    ends = _block_ends(offsets).copy()
    first = int(np.unique(ends)[1])
    ends[ends == first] = first + (5 if later else -5)
    _hostile(path, offsets=_with_block_ends(offsets, ends))
    values, _ = _paths(path)
    ds = ms.open(path)
    with pytest.raises(errors.BlockError) as caught:
        ds["x"][:]
    assert str(caught.value).startswith(f"{values}: field 'x', block ")
    for row in (0, ROWS - 1):  # a row reads right, or not at all
        outcome = _outcome(functools.partial(ds["x"].__getitem__, row))
        if isinstance(outcome, errors.BlockError):
            assert str(outcome).startswith(f"{values}: field 'x', block ")
        else:
            np.testing.assert_array_equal(outcome, rows[row])
    report = ds.verify()
    assert [(p.path, p.error) for p in report.problems] == [(values, errors.BlockError)]


# -- files and records that lie ------------------------------------------------------------------
@pytest.mark.parametrize("ragged", [False, True], ids=["fixed", "ragged"])
@pytest.mark.parametrize("codec", CODECS)
def test_a_truncated_values_file_is_a_size_error_before_any_frame_is_read(
    tmp_path: Path, codec: str, ragged: bool
) -> None:
    path = tmp_path / "ds"
    _write(path, codec, ragged)
    values, _ = _paths(path)
    os.chmod(values, 0o644)
    os.truncate(values, os.path.getsize(values) - 7)
    _assert_refused_without_field(path, errors.ShardSizeError, values, "truncated")


@pytest.mark.parametrize("lie", [-1, 1, 4096])
@pytest.mark.parametrize("ragged", [False, True], ids=["fixed", "ragged"])
def test_a_table_record_lying_about_its_bytes_of_frames_is_a_size_error(
    tmp_path: Path, ragged: bool, lie: int
) -> None:
    """A record's ``elements`` (bytes of frames, for a compressed field) that disagree with
    the values file, chain and manifest agreeing: every read refuses the values file."""
    path = tmp_path / "ds"
    _write(path, "zstd", ragged)
    frames, _ = _stored(path)
    _hostile(path, nbytes=frames.size + lie)
    values, _ = _paths(path)
    _assert_refused_without_field(path, errors.ShardSizeError, values)


def _assert_refused_without_field(
    path: Path, error: type[Exception], names: str, says: str | None = None
) -> None:
    """As :func:`_assert_refused`, for the file checks shared with every field kind (their
    messages name the file, not the field)."""
    ds = ms.open(path)
    for how, read in _reads(ds).items():
        with pytest.raises(error, match=says) as caught:
            read()
        assert str(caught.value).startswith(f"{names}: "), (how, str(caught.value))
    report = ds.verify()
    assert (names, error) in [(problem.path, problem.error) for problem in report.problems]


# -- frames that claim or inflate to another size -----------------------------------------------
def _zstd_header(content_size: int) -> bytes:
    """A zstd frame header (single segment, a 4-byte content size) claiming ``content_size``."""
    return struct.pack("<IB", 0xFD2FB528, 0xA0) + struct.pack("<I", content_size)


def _claiming(codec: str, claim: int, body: bytes) -> bytes:
    """A frame of ``codec`` whose header claims ``claim`` bytes, followed by ``body``."""
    if codec == "zstd":
        return _zstd_header(claim) + body
    if codec == "lz4":
        return struct.pack("<i", claim) + body
    header = struct.pack("<BBBBiii", 2, 1, 0x10 | (4 << 5), 1, claim, claim, 0)
    frame = bytearray(header + struct.pack("<i", 20) + body)
    struct.pack_into("<i", frame, 12, len(frame))
    return bytes(frame)


def _inflating(codec: str, size: int) -> bytes:
    """A real frame of ``2 * size`` compressible bytes whose header claims ``size``."""
    content = np.random.default_rng(3).integers(0, 4, 2 * size, dtype=np.uint8)
    frame = bytearray(_codec(codec).compress(content.data))
    if codec == "zstd":  # its content size: a 2-byte field holds the size less 256
        descriptor = frame[4]
        assert descriptor >> 6 == 1, hex(descriptor)
        assert descriptor & 0x23 == 0x20, hex(descriptor)  # one segment, no dictionary
        struct.pack_into("<H", frame, 5, size - 256)
    elif codec == "lz4":
        struct.pack_into("<i", frame, 0, size)
    else:
        struct.pack_into("<i", frame, 4, size)
    return bytes(frame)


def _codec(name: str) -> BlockCodec:
    return BlockCodec.of(name, codec_parameters(name, {}, where="test"), 1)


def _replace_frame(path: Path, block: int, frame: bytes) -> None:
    """Field ``x`` of shard 0 with the frame of ``block`` replaced (block ends moved to
    match), checksums recomputed."""
    frames, offsets = _stored(path)
    ends = _block_ends(offsets)
    blocks = blocks_of(ends)
    pieces = [
        frames[start:stop].tobytes()
        for start, stop in zip(blocks.byte_starts, blocks.byte_ends, strict=True)
    ]
    pieces[block] = frame
    block_ends = np.cumsum([len(piece) for piece in pieces])
    new_ends = np.zeros_like(ends)
    for number, (first, stop) in enumerate(zip(blocks.first_rows, blocks.stop_rows, strict=True)):
        new_ends[first + 1 : stop + 1] = block_ends[number]
    joined = np.frombuffer(b"".join(pieces), np.uint8)
    _hostile(path, frames=joined, offsets=_with_block_ends(offsets, new_ends))


@pytest.mark.parametrize("codec", CODECS)
def test_a_frame_that_inflates_past_its_block_is_a_block_error(tmp_path: Path, codec: str) -> None:
    """Block 1 (one row of 4096 bytes) replaced by a real frame of 8192 bytes whose header
    claims 4096, every checksum recomputed: the row is refused naming its file, field and
    block, and the rows around it read on; verify reports it."""
    path = tmp_path / "ds"
    rows = np.random.default_rng(1).integers(0, 4, (4, 4096), dtype=np.uint8)
    options = {"codec": codec, "block_bytes": 4096}  # a block per row
    with ms.create(path, fields={"x": ("uint8", (4096,), options)}) as writer:
        writer.extend({"x": rows})
    _replace_frame(path, 1, _inflating(codec, 4096))
    values, _ = _paths(path)
    ds = ms.open(path)
    for read in (lambda: ds["x"][1], lambda: ds["x"][:], lambda: ds.take([3, 1])):
        with pytest.raises(errors.BlockError) as caught:
            read()
        assert str(caught.value).startswith(f"{values}: field 'x', block 1 (rows 1 to 1")
    np.testing.assert_array_equal(ds["x"][[0, 2, 3]], rows[[0, 2, 3]])
    report = ds.verify()
    assert [(p.path, p.error) for p in report.problems] == [(values, errors.BlockError)]
    assert report.problems[0].message.startswith("block 1 (from row 1): ")


def test_a_blosc_frame_claiming_fewer_whole_blocks_than_it_holds_is_refused(
    tmp_path: Path,
) -> None:
    """A blosc frame of 1 MiB whose header claims its first half, a whole number of its
    blocks: c-blosc would decode those and say nothing, so the frame's layout is checked (its
    first block must follow the starts of exactly the blocks it claims)."""
    size = 1 << 19
    path = tmp_path / "ds"
    rows = np.random.default_rng(2).integers(0, 4, (2, size), dtype=np.uint8)
    options = {"codec": "blosc", "block_bytes": size}
    with ms.create(path, fields={"x": ("uint8", (size,), options)}) as writer:
        writer.extend({"x": rows})
    frame = bytearray(_inflating("blosc", size))
    blocksize = struct.unpack_from("<i", frame, 8)[0]
    assert size % blocksize == 0
    assert size // blocksize >= 2
    _replace_frame(path, 0, bytes(frame))
    values, _ = _paths(path)
    ds = ms.open(path)
    with pytest.raises(errors.BlockError, match="it holds more than it claims") as caught:
        ds["x"][0]
    assert str(caught.value).startswith(f"{values}: field 'x', block 0 ")
    np.testing.assert_array_equal(ds["x"][1], rows[1])
    assert [p.error for p in ds.verify().problems] == [errors.BlockError]


_MEASURE = """
import json, resource, sys, tracemalloc
import memshard as ms
path = sys.argv[1]
ds = ms.open(path)
ds["x"].shape
found = {}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
reads = {
    "row": lambda: ds["x"][5],
    "slice": lambda: ds["x"][:],
    "take": lambda: ds.take(list(range(40))[::-1], threads=3),
    "lengths": lambda: int(ds["x"].lengths.sum()),
    "verify": lambda: [(p.error.__name__, p.message) for p in ds.verify().problems],
}
for name, read in reads.items():
    try:
        found[name] = ["ok", str(read())[:300]]
    except Exception as exc:
        found[name] = [type(exc).__name__, str(exc)]
peak = tracemalloc.get_traced_memory()[1]
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"found": found, "traced_peak": peak, "rss_growth": grown}))
"""


def _measured(path: Path) -> dict[str, Any]:
    """Read the hostile dataset in a fresh process: what each read raised, and the memory
    it took (numpy's allocations traced by tracemalloc, and the growth of peak RSS)."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["traced_peak"] < MEMORY_LIMIT, result
    assert result["rss_growth"] < MEMORY_LIMIT, result
    return result


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("extra", [1 << 28, 1 << 40], ids=["1GiB", "4TiB"])
def test_element_ends_claiming_huge_rows_cost_no_memory(
    tmp_path: Path, codec: str, extra: int
) -> None:
    """Element ends that give row 5 ``extra`` more elements (1 GiB, 4 TiB), checksums
    recomputed: every read is a BlockError naming the values file (the frame claims its real
    size), and no read allocates the lie."""
    path = tmp_path / "ds"
    _write(path, codec, ragged=True)
    _, offsets = _stored(path)
    lying = offsets.copy()
    lying[6:, 0] += extra
    _hostile(path, offsets=lying)
    values, _ = _paths(path)
    found = _measured(path)["found"]
    for name in ("row", "slice", "take"):
        error, message = found[name]
        assert error == "BlockError", found
        assert message.startswith(f"{values}: field 'x', block "), message
        assert "claims" in message
    assert found["lengths"][0] == "ok"  # the lengths are what the offsets say
    assert "BlockError" in found["verify"][1]


@pytest.mark.parametrize("codec", CODECS)
def test_a_frame_and_element_ends_agreeing_on_a_huge_block_cost_no_memory(
    tmp_path: Path, codec: str
) -> None:
    """The first block's frame replaced by a few bytes whose header claims 1 GiB, and the
    element ends made to agree: no frame of that length can hold it, so every read refuses it
    before allocating it."""
    path = tmp_path / "ds"
    _write(path, codec, ragged=True)
    _, offsets = _stored(path)
    blocks = blocks_of(offsets[:, 1])
    first_stop = int(blocks.stop_rows[0])
    claim = 1 << 30
    lying = offsets.copy()
    lying[first_stop:, 0] += (claim - int(offsets[first_stop, 0]) * 4) // 4
    assert (lying[first_stop, 0] - lying[0, 0]) * 4 == claim
    _hostile(path, offsets=lying)
    _replace_frame(path, 0, _claiming(codec, claim, bytes(8)))
    values, _ = _paths(path)
    found = _measured(path)["found"]
    for name in ("row", "slice", "take"):
        error, message = found[name]
        assert (error, message[: len(values)]) == ("BlockError", values), found
    assert "cannot hold the 1073741824 bytes it claims" in found["row"][1]
    assert "BlockError" in found["verify"][1]


@pytest.mark.parametrize("codec", CODECS)
def test_a_claim_past_what_a_frame_can_hold_is_refused(codec: str) -> None:
    """The bound of :data:`MAX_RATIO` holds for real frames of zeros (the most compressible
    content), and a header claiming more than it is refused by its claim alone."""
    compressor = _codec(codec)
    for size in (1 << 16, 1 << 24):
        frame = compressor.compress(memoryview(bytes(size)))
        assert size <= len(frame) * MAX_RATIO[codec]
        assert compressor.claim_problem(memoryview(frame), size) is None
    header = _claiming(codec, 1 << 30, bytes(8))
    problem = compressor.claim_problem(memoryview(header), 1 << 30)
    assert problem is not None
    with pytest.raises(errors.BlockError, match=r"^here: "):
        compressor.decompress_into(memoryview(header), memoryview(bytearray(16)), where="here")


@settings(max_examples=150, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    size=st.integers(1, 5000),
    damage=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1),
)
def test_damaged_frames_never_write_past_their_block(
    codec: str, size: int, damage: list[tuple[int, int]]
) -> None:
    """Bytes of a real frame changed anywhere, header included: decompressing it either
    fills exactly its block or is a BlockError, and never writes past the block."""
    content = np.random.default_rng(size).integers(0, 3, size, dtype=np.uint8)
    frame = bytearray(_codec(codec).compress(content.data))
    for at, value in damage:
        frame[at % len(frame)] = value
    guard = np.full(size + 4096, 0xA5, dtype=np.uint8)
    outcome = _outcome(
        lambda: _codec(codec).decompress_into(
            memoryview(bytes(frame)), guard[:size].data, where="w"
        )
    )
    if isinstance(outcome, errors.BlockError):
        assert str(outcome).startswith("w: ")
    assert (guard[size:] == 0xA5).all()


def _outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or the BlockError it raises."""
    try:
        return call()
    except errors.BlockError as exc:
        return exc
