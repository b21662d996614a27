"""Fuzzing whole datasets: damaged bytes in ``manifest.json`` or a shard file, then open, read
everything and verify.

``tests/test_manifest.py`` and ``tests/test_shard_files.py`` fuzz the two parsers on their
own; this module damages a real dataset on disk and goes through the public API. The contract:
every damaged dataset either opens and reads exactly the right rows, or raises a
:class:`~memshard.errors.MemshardError` subclass, never another exception, a crash or a hang.

A second dataset has ragged fields (:data:`RAGGED_FIELDS`): its values and offsets files, its
manifest (with the keys of format 2.1) and its shard table records (element counts and
offsets checksums, with their chain recomputed) are damaged the same way.

The reads run in a separate worker process (restarted if it dies) so that a SIGBUS or a
segmentation fault is reported as a failing example instead of killing the test run.
Hypothesis builds each damaged copy here and sends its path to the worker, which answers with
one JSON line. Run the worker alone as ``python -m tests.test_fuzz``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import manifest as manifest_io
from memshard import mappings, npyheader
from memshard.errors import MemshardError
from memshard.layout import MANIFEST_NAME
from memshard.manifest import shard_files
from memshard.shardtable import TABLE_NAME, chain_of, chain_seed, format_chain, table_dtype
from tests.strategies import mutations_of

REPO = Path(__file__).resolve().parent.parent
ROWS = 10
#: x and y are small; p has page-sized rows, so its shards are mapped back to back.
FIELDS = {"x": ("float32", (3,)), "y": ("int64", ()), "p": ("float32", (1024,))}
SHARD_BYTES = 3 * (12 + 8 + 4096)  # 3-row shards: rows 0-8 sealed, row 9 unsealed
#: Seconds the worker may take for one dataset before it is called hung.
TIMEOUT = 30.0
FUZZ_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def columns(count: int) -> dict[str, np.ndarray]:
    """Row ``i`` holds ``i`` in every element of every field."""
    index = np.arange(count)
    return {
        "x": np.broadcast_to(index[:, None], (count, 3)).astype(np.float32),
        "y": index,
        "p": np.broadcast_to(index[:, None], (count, 1024)).astype(np.float32),
    }


#: A ragged int32 field, a ragged field of int16 triples and a fixed field.
RAGGED_FIELDS = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "y": ("int64", ())}
#: Shards of rows 0-2, 3, 4 (larger than a shard), 5-7, and 8-9 unsealed.
RAGGED_SHARD_BYTES = 192


def ragged_length(name: str, index: int) -> int:
    """The length of row ``index`` of ragged field ``name``: empty rows included, and row 4
    of ``tokens`` larger than a whole shard."""
    if name == "strokes":
        return index % 3
    return 200 if index == 4 else index * 7 % 11


def ragged_columns(count: int) -> dict[str, Any]:
    """Rows of :data:`RAGGED_FIELDS`: every element of row ``i`` is ``i``."""
    return {
        "tokens": [np.full(ragged_length("tokens", i), i, np.int32) for i in range(count)],
        "strokes": [np.full((ragged_length("strokes", i), 3), i, np.int16) for i in range(count)],
        "y": np.arange(count),
    }


# -- the worker (a child process) ---------------------------------------------------------------
def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "typed": isinstance(exc, MemshardError),
        "message": str(exc),
        "traceback": None if isinstance(exc, MemshardError) else traceback.format_exc(),
    }


def examine(path: str, verify_always: bool = False) -> dict[str, Any]:
    """Open, read every row three ways, and verify the dataset at ``path`` (if reading
    succeeded, or ``verify_always``)."""
    mappings.CACHE.clear()
    report: dict[str, Any] = {"error": None, "rows": None, "correct": None}
    try:
        dataset = ms.open(path)
        rows = len(dataset)
        index = np.arange(rows)
        correct = True
        for name, (_, shape) in dataset.fields.items():
            if shape[:1] == (None,):
                correct &= _ragged_correct(dataset, name, index)
                continue
            whole = dataset[name][:].reshape(rows, -1)
            gathered = dataset.take(index[::-1], fields=[name])[name].reshape(rows, -1)
            single = [dataset[name][i].reshape(-1) for i in range(rows)]
            correct &= bool((whole == index[:, None]).all())
            correct &= bool((gathered == index[::-1, None]).all())
            correct &= all(bool((row == i).all()) for i, row in enumerate(single))
        report["rows"], report["correct"] = rows, correct
    except BaseException as exc:
        report["error"] = _error(exc)
    try:
        verified = ms.open(path).verify() if report["error"] is None or verify_always else None
    except BaseException as exc:
        report["verify_error"] = _error(exc)
    else:
        report["problems"] = (
            None if verified is None else [[p.path, p.error.__name__] for p in verified.problems]
        )
    return report


def _ragged_correct(dataset: ms.Dataset, name: str, index: np.ndarray) -> bool:
    """Whether ragged field ``name`` holds the rows of :func:`ragged_columns`, read by a slice,
    gathered in reverse order, and row by row."""
    correct = True
    whole = dataset[name][:]
    gathered = dataset.take(index[::-1], fields=[name])[name]
    for batch, order in ((whole, index), (gathered, index[::-1])):
        lengths = np.array([ragged_length(name, int(i)) for i in order], dtype=np.int64)
        values = batch.values
        expected = np.repeat(order, lengths).reshape(-1, *[1] * (values.ndim - 1))
        correct &= np.array_equal(batch.offsets, np.concatenate(([0], np.cumsum(lengths))))
        correct &= values.shape[0] == expected.shape[0] and bool((values == expected).all())
    for i in index.tolist():
        row = dataset[name][i]
        correct &= row.shape[0] == ragged_length(name, i) and bool((row == i).all())
    return correct


def worker_main() -> None:
    for line in sys.stdin:
        path, _, always = line.rstrip("\n").partition("\t")
        print(json.dumps(examine(path, always == "always")), flush=True)


class Worker:
    """A persistent child running :func:`examine`; restarted after it dies."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.test_fuzz"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def examine(self, path: Path, *, verify_always: bool = False) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        process = self.process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(f"{path}\t{'always' if verify_always else ''}\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if line:
            report: dict[str, Any] = json.loads(line)
            return report
        if not ready:
            process.kill()
        status = process.wait()
        self.stop()
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit {status}"
        return {"crash": "hung" if not ready else how}

    def stop(self) -> None:
        if self.process is not None:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    running = Worker()
    yield running
    running.stop()


# -- the dataset and its damaged copies ---------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "ds"
    writer = ms.create(
        root,
        fields=FIELDS,
        shard_bytes=SHARD_BYTES,
        labels={"y": [f"label{i}" for i in range(ROWS)]},
        attrs={"note": "é", "k": [1, 2.5]},
    )
    writer.extend(columns(ROWS))
    writer.commit()
    writer.abort()  # leave the last shard unsealed
    shards = ms.open(root).shards
    assert [(shard.rows, shard.sealed) for shard in shards] == [(3, True)] * 3 + [(1, False)]
    return root


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for the damaged copies, each used once (the worker caches mappings)."""
    return iter(tmp_path_factory.mktemp("copies") / str(n) for n in range(10**9))


def _copy(pristine: Path, copies: Iterator[Path]) -> Path:
    root = next(copies)
    shutil.copytree(pristine, root, symlinks=True)
    return root


def _shard_files(root: Path) -> list[tuple[Path, int, bool]]:
    """(path, data offset, sealed) of every shard file."""
    return [
        (root / file.path, file.data_offset, shard.sealed)
        for shard in ms.open(root).shards
        for file in shard.files.values()
    ]


def _check(report: dict[str, Any], *, data_may_be_wrong: bool = False) -> None:
    """The contract: right rows, or a MemshardError; never anything else."""
    assert "crash" not in report, f"the reader process {report['crash']}"
    error = report["error"]
    event(f"outcome: {'opened and read' if error is None else error['type']}")
    if error is not None:
        assert error["typed"], f"{error['type']}: {error['message']}\n{error['traceback']}"
        return
    assert "verify_error" not in report, report["verify_error"]
    if not data_may_be_wrong:
        assert report["correct"], f"{report['rows']} rows opened, but not the right ones"


def _without_own_checksum(data: bytes) -> bytes:
    """The manifest re-serialised without its ``checksum`` member (valid, but unprotected),
    so that mutations reach the schema checks instead of stopping at the checksum."""
    document = json.loads(data)
    document.pop("checksum", None)
    return json.dumps(document, ensure_ascii=False, indent=1).encode()


def test_pristine_dataset_passes(pristine: Path, copies: Iterator[Path], worker: Worker) -> None:
    report = worker.examine(_copy(pristine, copies))
    assert report["error"] is None
    assert report["rows"] == ROWS
    assert report["correct"]
    assert report["problems"] == []


def test_without_own_checksum_still_reads(
    pristine: Path, copies: Iterator[Path], worker: Worker
) -> None:
    root = _copy(pristine, copies)
    manifest = root / MANIFEST_NAME
    manifest.write_bytes(_without_own_checksum(manifest.read_bytes()))
    report = worker.examine(root)
    assert report["error"] is None
    assert report["correct"]


#: Fragments spliced into manifests: JSON syntax and values the validators care about.
MANIFEST_TOKENS = [
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
    b"1",
    b"3",
    b"-1",
    b"4096",
    b"1e400",
    b"NaN",
    b"null",
    b"true",
    b"false",
    b'"shards/',
    b".npy",
    b"..",
    b"/",
    b'"<f8"',
    b'"<i4"',
    b'"2.0"',
    b'"1.9"',
    b"\xff",
    b"[" * 40,
]


def _mutated_manifest(data: bytes) -> st.SearchStrategy[bytes]:
    return mutations_of(data, MANIFEST_TOKENS, max_insert=8)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(data=st.data())
def test_fuzz_manifest_as_written(
    pristine: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """The manifest as written, with its own checksum: nearly every change is caught by it."""
    original = (pristine / MANIFEST_NAME).read_bytes()
    mutated = data.draw(_mutated_manifest(original), label="manifest")
    root = _copy(pristine, copies)
    (root / MANIFEST_NAME).write_bytes(mutated)
    _check(worker.examine(root))


@settings(FUZZ_SETTINGS, max_examples=400)
@given(data=st.data())
def test_fuzz_manifest_without_own_checksum(
    pristine: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """A manifest with no checksum of its own (allowed), so changes reach every other check;
    whatever still opens must read exactly the right rows."""
    original = _without_own_checksum((pristine / MANIFEST_NAME).read_bytes())
    mutated = data.draw(_mutated_manifest(original), label="manifest")
    root = _copy(pristine, copies)
    (root / MANIFEST_NAME).write_bytes(mutated)
    _check(worker.examine(root))


#: Fragments spliced into shard headers: the syntax of a Python literal dictionary.
HEADER_TOKENS = [b"", b"{", b"}", b"(", b")", b"[", b"]", b",", b":", b"'", b"-", b"\0"]
HEADER_TOKENS += [b"0", b"1", b"3", b"True", b"None", b"'<f8'", b"'>f4'", b"'|O'", b"\n"]


@settings(FUZZ_SETTINGS, max_examples=400)
@given(data=st.data())
def test_fuzz_shard_header(
    pristine: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """Flips, truncations and insertions in one shard file's header (the data after it
    moves along with the header's length).

    In the unsealed shard, whose file may hold bytes past its committed rows, bytes inserted
    after an intact header move the rows: as with a flipped data bit, readers (which do not
    check the data) may read wrong values, and verify() must name the file as corrupt."""
    root = _copy(pristine, copies)
    path, offset, sealed = data.draw(st.sampled_from(_shard_files(root)), label="file")
    content = path.read_bytes()
    header = data.draw(mutations_of(content[:offset], HEADER_TOKENS, max_insert=4), label="hdr")
    if data.draw(st.booleans(), label="keep the header's length"):
        header = header[:offset].ljust(offset, b" ")
    path.write_bytes(header + content[offset:])
    report = worker.examine(root)
    moved = not sealed and len(header) != offset
    _check(report, data_may_be_wrong=moved)
    if moved and report["error"] is None and not report["correct"]:
        assert [str(path), "ChecksumError"] in report["problems"]


@settings(FUZZ_SETTINGS, max_examples=100)
@given(data=st.data())
def test_fuzz_shard_length(
    pristine: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """A shard file cut anywhere, or with bytes appended (allowed after an unsealed shard's
    committed rows, refused after a sealed shard)."""
    root = _copy(pristine, copies)
    path, _, _ = data.draw(st.sampled_from(_shard_files(root)), label="file")
    content = path.read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="size")]
    else:
        content += data.draw(st.binary(min_size=1, max_size=64), label="tail")
    path.write_bytes(content)
    _check(worker.examine(root))


@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=st.data())
def test_fuzz_sealed_shard_data(
    pristine: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """A flipped bit in a sealed shard's rows: readers do not check the data (they may read
    the wrong value), but verify() must name the file as corrupt."""
    root = _copy(pristine, copies)
    sealed = [(path, offset) for path, offset, is_sealed in _shard_files(root) if is_sealed]
    path, offset = data.draw(st.sampled_from(sealed), label="file")
    content = bytearray(path.read_bytes())
    position = data.draw(st.integers(offset, len(content) - 1), label="byte")
    content[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path.write_bytes(bytes(content))
    report = worker.examine(root)
    _check(report, data_may_be_wrong=True)
    assert report["error"] is None
    assert [str(path), "ChecksumError"] in report["problems"]


# -- ragged fields ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine_ragged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-ragged") / "ds"
    writer = ms.create(root, fields=RAGGED_FIELDS, shard_bytes=RAGGED_SHARD_BYTES)
    writer.extend(ragged_columns(ROWS))
    writer.commit()
    writer.abort()  # leave the last shard unsealed
    shards = ms.open(root).shards
    assert [(shard.rows, shard.sealed) for shard in shards] == [
        (3, True), (1, True), (1, True), (3, True), (2, False)
    ]  # fmt: skip
    return root


def _ragged_files(root: Path) -> list[tuple[Path, int, bool]]:
    """(path, data offset, sealed) of every values and offsets file of the ragged fields."""
    dataset = ms.open(root)
    specs = dataset.manifest.fields
    return [
        (root / file.path, file.data_offset, shard.sealed)
        for shard in dataset.shards
        for name, values in shard.files.items()
        if specs[name].ragged
        for _, file, _ in shard_files(specs[name], values, shard.rows, sealed=shard.sealed)
    ]


def test_pristine_ragged_dataset_passes(
    pristine_ragged: Path, copies: Iterator[Path], worker: Worker
) -> None:
    report = worker.examine(_copy(pristine_ragged, copies))
    assert report["error"] is None
    assert report["rows"] == ROWS
    assert report["correct"]
    assert report["problems"] == []
    assert len(_ragged_files(pristine_ragged)) == 20


#: Fragments spliced into the data of offsets files: whole offsets, small and absurd.
OFFSETS_TOKENS = [np.int64(n).tobytes() for n in (0, 1, 7, 200, -1, 2**62)] + [b"", b"\0"]


@settings(FUZZ_SETTINGS, max_examples=150)
@given(data=st.data())
def test_fuzz_ragged_files(
    pristine_ragged: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """A ragged field's values or offsets file, sealed or not, with its header damaged, its
    data damaged (bits flipped, bytes inserted, deleted or replaced), or its length changed.

    Damaged offsets are never read as rows: whatever their damage, reading gives the right
    rows or a typed error (their order is checked, then their checksum). Damaged values may be
    read (readers do not check the data, as with fixed fields), and then verify() must name
    the file as corrupt; so must it for rows moved by a header that changed length in the
    unsealed shard."""
    root = _copy(pristine_ragged, copies)
    path, offset, sealed = data.draw(st.sampled_from(_ragged_files(root)), label="file")
    offsets = path.name.endswith(".offsets.npy")
    content = path.read_bytes()
    kinds = ["header", "entry", "entry", "data", "length"]  # "entry" in twice: it damages most
    where = data.draw(st.sampled_from(kinds), label="where")
    size = 8 if offsets else 2
    if where == "entry" and len(content) - offset < size:  # no element to change
        where = "length"
    if where == "entry":  # one element or offset changed in place: the file keeps its size
        entry = offset + size * data.draw(st.integers(0, (len(content) - offset) // size - 1))
        old = int.from_bytes(content[entry : entry + size], "little", signed=True)
        new = old + data.draw(st.sampled_from([-2, -1, 1, 2]), label="change")
        replacement = new.to_bytes(size, "little", signed=True)
        content = content[:entry] + replacement + content[entry + size :]
        moved = True
    elif where == "header":
        header = data.draw(mutations_of(content[:offset], HEADER_TOKENS, max_insert=4), "hdr")
        if data.draw(st.booleans(), label="keep the header's length"):
            header = header[:offset].ljust(offset, b" ")
        content = header + content[offset:]
        moved = not sealed and len(header) != offset
    elif where == "data":
        tokens = OFFSETS_TOKENS if offsets else [b"\0", b"\xff" * 4]
        content = content[:offset] + data.draw(mutations_of(content[offset:], tokens, 8), "data")
        moved = True
    else:
        if data.draw(st.booleans(), label="truncate"):
            content = content[: data.draw(st.integers(0, len(content) - 1), label="size")]
        else:
            content += data.draw(st.binary(min_size=1, max_size=64), label="tail")
        moved = False
    path.write_bytes(content)
    report = worker.examine(root, verify_always=True)
    _check(report, data_may_be_wrong=moved and not offsets)
    event(f"{where} of {'an offsets' if offsets else 'a values'} file")
    if report["error"] is None and not report["correct"]:
        assert [str(path), "ChecksumError"] in report["problems"]
    if report["error"] is not None and report.get("problems") is not None:
        # Refused when read: verify says which file is at fault.
        assert str(path) in [problem[0] for problem in report["problems"]], report


#: Fragments spliced into manifests of ragged fields: the keys and values of format 2.1.
RAGGED_MANIFEST_TOKENS = [
    *MANIFEST_TOKENS,
    b'"ragged"',
    b'"fixed"',
    b'"kind"',
    b'"shard_bytes"',
    b'"offsets_checksum"',
    b'"offsets_prefix_checksum"',
    b'"prefix_checksum"',
    b'"xxh3_64:0000000000000000"',
    b'"2.1"',
    b"192",
    b"[3]",
    b"[]",
]


@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=st.data())
def test_fuzz_ragged_manifest_without_own_checksum(
    pristine_ragged: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """The manifest of the ragged dataset, unprotected by its own checksum, with its format
    2.1 keys changed (``kind``, ``shard_bytes``, the unsealed shard's ``nbytes`` in elements,
    ``offsets_prefix_checksum``): whatever still opens must read exactly the right rows."""
    original = _without_own_checksum((pristine_ragged / MANIFEST_NAME).read_bytes())
    mutated = data.draw(mutations_of(original, RAGGED_MANIFEST_TOKENS, 8), label="manifest")
    root = _copy(pristine_ragged, copies)
    (root / MANIFEST_NAME).write_bytes(mutated)
    _check(worker.examine(root))


def _leaves(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path (keys and indices) of every member of a JSON document, objects and arrays
    included."""
    found = [path] if path else []
    if isinstance(document, (dict, list)):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, value in items:
            found += _leaves(value, (*path, key))
    return found


#: Values put in place of a member of the ragged dataset's manifest, besides integers near
#: the old one and the manifest's own checksums.
RAGGED_MANIFEST_VALUES = [None, "ragged", "fixed", "<i4", "<i2", "<u4", "2.0", [], [3], [1], [1, 3]]
#: Keys added to an object of the manifest.
RAGGED_MANIFEST_KEYS = ["kind", "shard_bytes", "offsets_checksum", "offsets_prefix_checksum"]


@settings(FUZZ_SETTINGS, max_examples=150)
@given(data=st.data())
def test_fuzz_ragged_manifest_members(
    pristine_ragged: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """One member of the ragged dataset's manifest (unprotected by its own checksum) replaced,
    removed or added, so that every key of format 2.1 is reached with plausible values: the
    fields' ``kind`` and ``shape``, ``shard_bytes``, the unsealed shard's ``rows``, its files'
    ``nbytes`` (elements), ``prefix_checksum`` and ``offsets_prefix_checksum``. Whatever still
    opens must read exactly the right rows."""
    document = json.loads((pristine_ragged / MANIFEST_NAME).read_bytes())
    document.pop("checksum")
    checksums = sorted(
        {value for value in map(str, _values(document)) if value.startswith("xxh3_64:")}
    )
    path = data.draw(st.sampled_from(_leaves(document)), label="member")
    *parents, key = path
    parent = document
    for step in parents:
        parent = parent[step]
    action = data.draw(st.sampled_from(["replace", "remove", "add"]), label="action")
    old = parent[key]
    values: st.SearchStrategy[Any] = st.sampled_from([*RAGGED_MANIFEST_VALUES, *checksums])
    if isinstance(old, int) and not isinstance(old, bool):
        values = st.integers(old - 8, old + 8) | values
    if action == "replace":
        parent[key] = data.draw(values, label="value")
    elif action == "remove" and isinstance(parent, dict):
        del parent[key]
    elif action == "add" and isinstance(old, dict):
        old[data.draw(st.sampled_from(RAGGED_MANIFEST_KEYS), label="key")] = data.draw(values)
    root = _copy(pristine_ragged, copies)
    (root / MANIFEST_NAME).write_text(json.dumps(document))
    report = worker.examine(root)
    _check(report)


def _values(document: Any) -> list[Any]:
    if isinstance(document, dict):
        return [value for member in document.values() for value in _values(member)]
    if isinstance(document, list):
        return [value for member in document for value in _values(member)]
    return [document]


#: The members of a table record of the ragged dataset that a lying writer could change.
RECORD_MEMBERS = ["elements", "offsets_checksums", "checksums", "rows", "row_offset"]


@settings(FUZZ_SETTINGS, max_examples=80)
@given(data=st.data())
def test_fuzz_ragged_table_records(
    pristine_ragged: Path, copies: Iterator[Path], worker: Worker, data: st.DataObject
) -> None:
    """A shard table record of the ragged dataset with a member changed and every chain
    recomputed (the manifest's too), as a buggy or hostile writer would leave it: a reader
    never returns a wrong row. A lying element count is refused by the size of the values
    file (ShardSizeError) or as out of range (ShardTableError), a lying offsets checksum by
    the offsets (ChecksumError); a lying values checksum reads the right rows, but verify
    names the file."""
    root = _copy(pristine_ragged, copies)
    manifest = manifest_io.load(str(root / MANIFEST_NAME))
    assert manifest.table is not None
    table = root / TABLE_NAME
    dtype = table_dtype(manifest.fields)
    start = npyheader.data_offset(dtype, ())
    records = np.frombuffer(table.read_bytes(), dtype, manifest.table.records, start).copy()
    number = data.draw(st.integers(0, len(records) - 1), label="record")
    member = data.draw(st.sampled_from(RECORD_MEMBERS), label="member")
    column = records[member][number : number + 1].reshape(-1)
    position = data.draw(st.integers(0, len(column) - 1), label="position")
    old = int(column[position])
    bits = 64 if member.endswith("checksums") else 63
    new = data.draw(
        st.integers(max(old - 3, 0), old + 3) | st.integers(-(2**bits - 1), 2**bits - 1)
        if bits == 63 else st.integers(0, 2**64 - 1),
        label="value",
    )  # fmt: skip
    column[position] = new
    records[member][number] = column.reshape(records[member][number].shape)
    raw = records.view(np.uint8).reshape(len(records), -1)
    previous = chain_seed(manifest.uuid)
    for index in range(len(records)):
        previous = chain_of(raw[index, : dtype.itemsize - 8].tobytes(), previous)
        records[index]["chain"] = previous
    os.chmod(table, 0o644)
    table.write_bytes(table.read_bytes()[:start] + records.tobytes())
    ref = manifest.table.model_copy(update={"chain": format_chain(int(previous))})
    (root / MANIFEST_NAME).write_bytes(
        manifest_io.dumps(manifest.model_copy(update={"table": ref}))
    )
    report = worker.examine(root)
    _check(report)
    error = report["error"]
    event(f"{member}: {'unchanged' if new == old else error['type'] if error else 'read'}")
    if new == old:
        assert error is None
        assert report["problems"] == []
    elif member == "elements":
        assert error is not None
        assert error["type"] in ("ShardSizeError", "ShardTableError"), error
    elif member == "offsets_checksums":
        assert error is not None
        assert error["type"] == "ChecksumError", error
    elif member == "checksums":
        assert error is None
        assert any(problem[1] == "ChecksumError" for problem in report["problems"])
    else:
        assert error is not None


if __name__ == "__main__":
    worker_main()
