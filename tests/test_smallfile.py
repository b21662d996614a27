"""Special files where memshard expects a small regular file: a FIFO, a socket or a device in
place of a manifest, a part record or a conversion source is refused at once with a typed
error naming the path and what is there, never opened and waited on (memshard/smallfile.py).

Opening a FIFO for reading blocks until a writer appears, so a regression would hang rather
than fail. Every test here runs under :func:`no_hang`, an interval timer whose signal fails the
test if a call blocks (it only fails, it never orders anything), and the command-line tests run
the command as a child process with a timeout.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import memshard as ms
from memshard import cli
from memshard.appender import is_memshard_dataset
from memshard.errors import (
    ManifestError,
    PartError,
    SourceError,
    UnsafePathError,
)
from memshard.layout import MANIFEST_NAME, PARTS_DIR
from memshard.manifest import change_token
from memshard.smallfile import kind_of, read_small_file
from memshard.verify import verify_dataset
from tests.helpers import REPO_ROOT, make_socket, write_dataset

#: Seconds any test here may block before the guard fails it.
GUARD_SECONDS = 10


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail the test if it blocks for :data:`GUARD_SECONDS`: the timer's signal interrupts the
    blocked ``open`` and the handler raises the failure."""

    def expired(signum: int, frame: Any) -> None:
        pytest.fail(f"blocked for {GUARD_SECONDS} s: a special file was opened and waited on")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, GUARD_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- special files -----------------------------------------------------------------------------


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_device(path: Path) -> None:
    """A character device node with /dev/zero's numbers: reading it never ends."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.fail("creating a device node needs root, which this test environment provides")


#: kind -> (what makes it at a path, how memshard names it)
SPECIAL: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (make_fifo, "a FIFO"),
    "socket": (make_socket, "a socket"),
    "device": (make_device, "a character device"),
}


@pytest.fixture(params=sorted(SPECIAL))
def special(request: pytest.FixtureRequest) -> tuple[Callable[[Path], None], str]:
    """One kind of special file: its maker and the words naming it."""
    return SPECIAL[request.param]


def assert_refused(caught: pytest.ExceptionInfo[Any], path: Path, kind: str) -> None:
    message = str(caught.value)
    assert str(path) in message, message
    assert f"is {kind}, not a regular file" in message, message


# -- the reader itself -------------------------------------------------------------------------


def test_reads_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    assert read_small_file(str(tmp_path / "f"), what="f", limit=10, error=ManifestError) == (
        b"0123456789"
    )


def test_refuses_a_special_file(
    tmp_path: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    make, kind = special
    make(tmp_path / "f")
    with pytest.raises(ManifestError) as caught:
        read_small_file(str(tmp_path / "f"), what="the thing", limit=100, error=ManifestError)
    assert_refused(caught, tmp_path / "f", kind)
    assert "the thing" in str(caught.value)


def test_refuses_a_special_file_behind_a_followed_symlink(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    for path in ("/dev/zero", str(tmp_path / "zero")):
        with pytest.raises(SourceError) as caught:
            read_small_file(path, what="the source", limit=8, error=SourceError,
                            follow_symlinks=True)  # fmt: skip
        assert f"{path}: the source is a character device, not a regular file" in str(caught.value)


def test_refuses_any_symlink_unless_told_to_follow(tmp_path: Path) -> None:
    (tmp_path / "null").symlink_to("/dev/null")
    (tmp_path / "file").write_bytes(b"{}")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    for name in ("null", "link"):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            read_small_file(str(tmp_path / name), what="x", limit=8, error=ManifestError)
    assert read_small_file(str(tmp_path / "link"), what="x", limit=8, error=ManifestError,
                           follow_symlinks=True) == b"{}"  # fmt: skip


def test_a_file_over_the_limit_reports_its_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    with pytest.raises(PartError) as caught:
        read_small_file(str(tmp_path / "f"), what="the record", limit=999, error=PartError)
    assert str(caught.value) == (
        f"{tmp_path / 'f'}: the record is 1,000 bytes, more than the 999 allowed"
    )


def test_a_directory_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        read_small_file(str(tmp_path), what="x", limit=8, error=ManifestError)
    with pytest.raises(FileNotFoundError):
        read_small_file(str(tmp_path / "missing"), what="x", limit=8, error=ManifestError)


def test_kind_of_names_every_kind() -> None:
    assert kind_of(stat.S_IFSOCK) == "a socket"
    assert kind_of(stat.S_IFBLK) == "a block device"
    assert kind_of(stat.S_IFLNK) == "a symbolic link"


# -- each place memshard reads a small file ----------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    write_dataset(root, {"x": np.arange(10, dtype="<i4")})
    return root


def special_manifest(root: Path, make: Callable[[Path], None]) -> Path:
    (root / MANIFEST_NAME).unlink()
    make(root / MANIFEST_NAME)
    return root / MANIFEST_NAME


def test_open_refuses_a_special_manifest(
    dataset: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    make, kind = special
    where = special_manifest(dataset, make)
    with pytest.raises(ManifestError) as caught:
        ms.open(dataset)
    assert_refused(caught, where, kind)
    assert change_token(str(where)) is None


def test_verify_reports_a_special_manifest(
    dataset: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    make, kind = special
    where = special_manifest(dataset, make)
    report = verify_dataset(str(dataset))
    assert not report.ok
    [problem] = report.problems
    assert problem.error is ManifestError
    assert problem.path == str(where)
    assert f"is {kind}, not a regular file" in problem.message


def test_overwrite_refuses_a_dataset_whose_manifest_is_special(
    dataset: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    """Nothing can be told about it, so it is not replaced; nothing is left behind."""
    make, kind = special
    where = special_manifest(dataset, make)
    with pytest.raises(ManifestError) as caught:
        is_memshard_dataset(str(dataset))
    assert_refused(caught, where, kind)
    with pytest.raises(ManifestError) as caught:
        ms.create(dataset, fields={"x": ("<i4", ())}, overwrite=True)
    assert_refused(caught, where, kind)
    assert sorted(os.listdir(dataset.parent)) == ["ds"]
    assert sorted(os.listdir(dataset)) == sorted(
        [MANIFEST_NAME, ".memshard.lock", "shards", "shard_table.npy"]
    )


def test_commit_refuses_a_special_part_record(
    dataset: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    make, kind = special
    part_id = "p-part-0123456789abcdef"
    (dataset / PARTS_DIR).mkdir()
    where = dataset / PARTS_DIR / f"{part_id}.json"
    make(where)
    with pytest.raises(PartError) as caught:
        ms.commit_parts(dataset, [part_id])
    assert_refused(caught, where, kind)
    assert len(ms.open(dataset)) == 10


def test_conversion_sources_refuse_a_special_file(
    tmp_path: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    make, kind = special
    source = tmp_path / "src.npy"
    make(source)
    with pytest.raises(SourceError) as caught:
        cli.detect_format(str(source))
    assert_refused(caught, source, kind)
    with pytest.raises(SourceError) as caught:
        ms.from_numpy(str(source), tmp_path / "out")
    assert_refused(caught, source, kind)
    with pytest.raises(SourceError):
        ms.from_hdf5(source, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src.npy"]


def test_a_zarr_store_with_special_metadata_is_refused(
    tmp_path: Path, special: tuple[Callable[[Path], None], str]
) -> None:
    make, kind = special
    store = tmp_path / "src.zarr"
    zarr.create_array(store=store, shape=(4,), dtype="<i4")
    (store / "zarr.json").unlink()
    make(store / "zarr.json")
    assert cli.detect_format(str(store)) == "zarr"
    with pytest.raises(SourceError) as caught:
        ms.from_zarr(store, tmp_path / "out")
    assert_refused(caught, store / "zarr.json", kind)


# -- the command line --------------------------------------------------------------------------


def run_cli(*args: Any) -> subprocess.CompletedProcess[str]:
    """``memshard ARGS`` as a child process; a child still blocked after the guard fails."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "memshard", *(os.fspath(arg) for arg in args)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GUARD_SECONDS / 2,
            env={**os.environ, "PYTHONWARNINGS": "error"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"memshard {' '.join(map(str, args))} hung on a special file")


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_cli_verify_and_info_refuse_a_special_manifest(dataset: Path, kind: str) -> None:
    make, words = SPECIAL[kind]
    where = special_manifest(dataset, make)
    verify = run_cli("verify", dataset)
    assert verify.returncode == 1, (verify.stdout, verify.stderr)
    assert f"{where}: the manifest is {words}, not a regular file" in verify.stdout
    info = run_cli("info", dataset)
    assert info.returncode == 2, (info.stdout, info.stderr)
    assert f"{where}: the manifest is {words}, not a regular file" in info.stderr


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_cli_convert_refuses_a_special_source(tmp_path: Path, kind: str) -> None:
    make, words = SPECIAL[kind]
    source = tmp_path / "src"
    make(source)
    for options in ([], ["--format", "npy"]):
        result = run_cli("convert", source, tmp_path / "out", *options)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert f"memshard: error: {source}: the " in result.stderr
        assert f" is {words}, not a regular file" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["src"]
