"""Checking a dataset on disk: the manifest's own checksum, and every shard file's presence,
size, header and checksum.

:func:`verify` reads every data byte of every sealed shard once and compares its xxh3-64
checksum with the manifest; the unsealed shard (which has no checksum yet) is checked for its
size and header only. Problems are collected, not raised, so one report lists them all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import manifest as manifest_io
from .checksum import READ_CHUNK, StreamingChecksum
from .errors import ChecksumError, DatasetNotFoundError, ManifestError, MemshardError
from .layout import MANIFEST_NAME, open_shard
from .manifest import FieldSpec, Manifest, ShardFile
from .mappings import ShardPart, check_shard_file


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file (or manifest) and what is wrong with it."""

    path: str
    message: str
    error: type[MemshardError]


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    A report is true exactly when :attr:`ok` is, so ``if ds.verify():`` passes only for a
    dataset found intact; a damaged one gives a false report (never a truthy object that
    happens to hold problems).
    """

    path: str
    files: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def __bool__(self) -> bool:
        """:attr:`ok`."""
        return self.ok

    def raise_first(self) -> None:
        """Raise the first problem as its typed error (nothing when :attr:`ok`)."""
        if self.problems:
            first = self.problems[0]
            raise first.error(f"{first.path}: {first.message}")


def verify_dataset(root: str, *, progress: bool | None = False) -> VerifyReport:
    """Check the dataset at ``root`` as it is on disk now: the manifest (strict parse and its
    own checksum, which must be present), then every file it names (see :func:`verify`).

    Raises:
        DatasetNotFoundError: ``root`` holds no ``manifest.json``.
    """
    from .progress import progress_bar

    where = os.path.join(root, MANIFEST_NAME)
    started = time.perf_counter()
    try:
        data = _read_manifest(root, where)
        manifest = manifest_io.loads(data, where=where)
    except MemshardError as exc:
        if isinstance(exc, DatasetNotFoundError):
            raise
        result = VerifyReport(path=root, seconds=time.perf_counter() - started)
        result.problems.append(Problem(where, _without_path(str(exc), where), type(exc)))
        return result
    with progress_bar(total_bytes(manifest), desc="verify", enabled=progress) as bar:
        result = verify(root, manifest, report=bar.update)
    if not manifest_io.has_own_checksum(data):
        message = "has no checksum of its own, so damage to it cannot be detected"
        result.problems.insert(0, Problem(where, message, ManifestError))
    result.seconds = time.perf_counter() - started
    return result


def _read_manifest(root: str, where: str) -> bytes:
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        from .reader import not_found

        raise not_found(root) from None
    except OSError as exc:
        raise ManifestError(f"{where}: cannot read the manifest ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(manifest_io.MAX_MANIFEST_BYTES + 1)


def verify(
    root: str, manifest: Manifest, *, report: Callable[[int], object] | None = None
) -> VerifyReport:
    """Check every file ``manifest`` names under ``root``; ``report(nbytes)`` after each
    block hashed (for a progress bar)."""
    result = VerifyReport(path=root)
    started = time.perf_counter()
    buffer = bytearray(READ_CHUNK)
    for shard in manifest.shards:
        for name, file in shard.files.items():
            spec = manifest.fields[name]
            result.files += 1
            part = ShardPart(file, shard.rows, shard.sealed, shard.rows)
            problem = _check_file(root, spec, file, part, buffer, result, report)
            if problem is not None:
                result.problems.append(problem)
    result.seconds = time.perf_counter() - started
    return result


def total_bytes(manifest: Manifest) -> int:
    """Data bytes :func:`verify` hashes (those of sealed shards)."""
    return sum(
        file.nbytes for shard in manifest.shards if shard.sealed for file in shard.files.values()
    )


def _check_file(
    root: str,
    spec: FieldSpec,
    file: ShardFile,
    part: ShardPart,
    buffer: bytearray,
    result: VerifyReport,
    report: Callable[[int], object] | None,
) -> Problem | None:
    where = os.path.join(root, file.path)
    try:
        check_shard_file(root, spec, part)
    except MemshardError as exc:
        return Problem(where, _without_path(str(exc), where), type(exc))
    if not part.sealed or file.checksum is None:
        return None
    fd = open_shard(root, file.path)
    try:
        digest = _hash(fd, file.data_offset, file.nbytes, buffer, result, report)
    except OSError as exc:
        return Problem(where, f"cannot read ({exc.strerror})", ChecksumError)
    finally:
        os.close(fd)
    if digest != file.checksum:
        return Problem(
            where,
            f"data checksum is {digest}, the manifest records {file.checksum} (corrupt data)",
            ChecksumError,
        )
    return None


def _hash(
    fd: int,
    start: int,
    nbytes: int,
    buffer: bytearray,
    result: VerifyReport,
    report: Callable[[int], object] | None,
) -> str:
    state = StreamingChecksum()
    view = memoryview(buffer)
    offset, end = start, start + nbytes
    while offset < end:
        got = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if got == 0:
            break
        state.update(view[:got])
        offset += got
        result.bytes_hashed += got
        if report is not None:
            report(got)
    return state.digest()


def _without_path(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
