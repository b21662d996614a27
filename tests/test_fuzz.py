"""Fuzzing whole datasets: damaged bytes in ``manifest.json`` or a shard file, then open, read
everything and verify.

``tests/test_manifest.py`` and ``tests/test_shard_files.py`` fuzz the two parsers on their
own; this module damages a real dataset on disk and goes through the public API. The contract:
every damaged dataset either opens and reads exactly the right rows, or raises a
:class:`~memshard.errors.MemshardError` subclass, never another exception, a crash or a hang.

The reads run in a separate worker process (restarted if it dies) so that a SIGBUS or a
segmentation fault is reported as a failing example instead of killing the test run.
Hypothesis builds each damaged copy here and sends its path to the worker, which answers with
one JSON line. Run the worker alone as ``python -m tests.test_fuzz``.
"""

from __future__ import annotations

import json
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
from memshard import mappings
from memshard.errors import MemshardError
from memshard.layout import MANIFEST_NAME
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


# -- the worker (a child process) ---------------------------------------------------------------
def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "typed": isinstance(exc, MemshardError),
        "message": str(exc),
        "traceback": None if isinstance(exc, MemshardError) else traceback.format_exc(),
    }


def examine(path: str) -> dict[str, Any]:
    """Open, read every row three ways, and verify the dataset at ``path``."""
    mappings.CACHE.clear()
    report: dict[str, Any] = {"error": None, "rows": None, "correct": None}
    try:
        dataset = ms.open(path)
        rows = len(dataset)
        index = np.arange(rows)
        correct = True
        for name in dataset.fields:
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
        verified = ms.open(path).verify() if report["error"] is None else None
    except BaseException as exc:
        report["verify_error"] = _error(exc)
    else:
        report["problems"] = (
            None if verified is None else [[p.path, p.error.__name__] for p in verified.problems]
        )
    return report


def worker_main() -> None:
    for line in sys.stdin:
        print(json.dumps(examine(line.strip())), flush=True)


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

    def examine(self, path: Path) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        process = self.process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(f"{path}\n")
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


if __name__ == "__main__":
    worker_main()
