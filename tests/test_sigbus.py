"""A shard file truncated under a process that maps it: the process dies of SIGBUS (nothing can
recover from it), but first writes one line naming the dataset and the file.

Each case runs in a child process (``python -m tests.test_sigbus CASE DIRECTORY``) that maps a
shard, truncates the file for real and reads the lost rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import numpy as np
import pytest

import memshard as ms
from memshard import sigbus

REPO = Path(__file__).resolve().parent.parent
#: Rows of one page of float32, so that whole pages of rows are lost when a file is cut.
ROW = (1024,)
PREFIX = "memshard: a memory-mapped shard file of "


def _dataset(directory: str, shards: int, name: str = "ds") -> ms.Dataset:
    """``directory/name``: ``shards`` shards of 16 one-page rows, all mapped back to back as
    one segment; row ``i`` is all ``i``."""
    path = os.path.join(directory, name)
    rows = np.repeat(np.arange(16 * shards, dtype=np.float32)[:, None], ROW[0], axis=1)
    with ms.create(path, fields={"x": ("float32", ROW)}, shard_bytes=16 * 4096) as writer:
        writer.extend({"x": rows})
    dataset = ms.open(path)
    assert len(dataset.shards) == shards
    return dataset


def _cut(dataset: ms.Dataset, shard: int) -> str:
    """Truncate the file of ``shard`` to its header; return its path."""
    file = dataset.shards[shard].files["x"]
    path = os.path.join(dataset.path, file.path)
    os.truncate(path, file.data_offset)
    return path


def child_row_view(directory: str) -> None:
    dataset = _dataset(directory, 1)
    view = dataset["x"][9]
    _cut(dataset, 0)
    print(float(view.sum()))


def child_later_shard_of_a_segment(directory: str) -> None:
    dataset = _dataset(directory, 4)
    whole = dataset["x"][:]  # one view across the 4 shards
    _cut(dataset, 2)
    print(float(whole[2 * 16 + 3].sum()))


def child_copy_in_a_thread(directory: str) -> None:
    """A large copy (numpy releases the GIL for it) in another thread."""
    dataset = _dataset(directory, 2)
    whole = dataset["x"][:]
    _cut(dataset, 1)
    thread = threading.Thread(target=lambda: print(whole.copy().sum()))
    thread.start()
    thread.join()


def child_another_mapped_file(directory: str) -> None:
    """A fault in a file memshard did not map: no line from memshard."""
    dataset = _dataset(directory, 1)
    assert float(dataset["x"][0][0]) == 0.0  # memshard has a mapping, and its handler
    other = os.path.join(directory, "other.npy")
    np.save(other, np.ones((16, *ROW), dtype=np.float32))
    array = np.load(other, mmap_mode="r")
    os.truncate(other, 128)
    print(float(array[9].sum()))


def child_signal_sent_by_kill(directory: str) -> None:
    """``kill -BUS``: not a fault, no line, and the process still dies of it."""
    dataset = _dataset(directory, 1)
    assert float(dataset["x"][0][0]) == 0.0
    os.kill(os.getpid(), signal.SIGBUS)
    print("survived")


def child_faulthandler_enabled_after_the_first_mapping(directory: str) -> None:
    """faulthandler replaces memshard's handler; memshard's next mapping goes back on top."""
    import faulthandler

    assert float(_dataset(directory, 1, "first")["x"][0][0]) == 0.0
    faulthandler.enable()
    dataset = _dataset(directory, 1)
    view = dataset["x"][9]  # mapped after faulthandler.enable()
    _cut(dataset, 0)
    print(float(view.sum()))


class _TruncatingDataset:
    """A torch map-style dataset whose worker maps a shard, truncates it and reads it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> float:
        dataset = ms.open(os.path.join(self.directory, "ds"))
        view = dataset["x"][9]
        _cut(dataset, 0)
        return float(view.sum())


def child_torch_dataloader_worker(directory: str) -> None:
    """In a DataLoader worker, torch installs its own SIGBUS handler ("insufficient shared
    memory"), after the parent's mappings: memshard's next mapping goes on top of it."""
    import torch.utils.data

    dataset = _dataset(directory, 1)
    assert float(dataset["x"][0][0]) == 0.0  # the parent installs memshard's handler
    # Any object with __len__ and __getitem__ is a map-style dataset to torch; its stubs say
    # Dataset, which this module cannot subclass without importing torch in every child.
    mapped = cast("torch.utils.data.Dataset[float]", _TruncatingDataset(directory))
    loader = torch.utils.data.DataLoader(mapped, num_workers=1)
    try:
        next(iter(loader))
    except RuntimeError as exc:
        print(f"parent: {exc}")


CHILDREN = {
    "row view": child_row_view,
    "later shard of a segment": child_later_shard_of_a_segment,
    "copy in a thread": child_copy_in_a_thread,
    "another mapped file": child_another_mapped_file,
    "signal sent by kill": child_signal_sent_by_kill,
    "faulthandler enabled later": child_faulthandler_enabled_after_the_first_mapping,
    "torch dataloader worker": child_torch_dataloader_worker,
}


def _run(case: str, directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONFAULTHANDLER"}
    environment["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, *options, "-m", "tests.test_sigbus", case, str(directory)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _file(directory: Path, shard: int) -> str:
    dataset = ms.open(directory / "ds")
    return os.path.join(dataset.path, dataset.shards[shard].files["x"].path)


def _memshard_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("memshard:")]


@pytest.fixture(autouse=True)
def _supported() -> None:
    if not sigbus.SUPPORTED:
        pytest.fail(f"the SIGBUS handler is not supported here ({sys.platform})")


@pytest.mark.parametrize(
    ("case", "shard"),
    [("row view", 0), ("later shard of a segment", 2), ("copy in a thread", 1)],
)
def test_a_shard_truncated_while_mapped_dies_of_sigbus_naming_the_file(
    tmp_path: Path, case: str, shard: int
) -> None:
    result = _run(case, tmp_path)
    assert result.returncode == -signal.SIGBUS, result
    assert result.stdout == ""
    lines = _memshard_lines(result.stderr)
    root = str(tmp_path / "ds")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PREFIX}{root} was truncated or became unreadable while mapped")
    assert f"({_file(tmp_path, shard)}, address 0x" in lines[0]
    assert result.stderr == lines[0] + "\n"  # nothing else: no traceback, no warning


def test_faulthandler_enabled_before_still_prints_its_traceback(tmp_path: Path) -> None:
    result = _run("row view", tmp_path, "-X", "faulthandler")
    assert result.returncode == -signal.SIGBUS, result
    first, *rest = result.stderr.splitlines()
    assert first.startswith(PREFIX), result.stderr
    assert _file(tmp_path, 0) in first
    assert "Fatal Python error: Bus error" in rest
    assert any("child_row_view" in line for line in rest), result.stderr


def test_faulthandler_enabled_later_is_chained_after_the_next_mapping(tmp_path: Path) -> None:
    result = _run("faulthandler enabled later", tmp_path)
    assert result.returncode == -signal.SIGBUS, result
    first, *rest = result.stderr.splitlines()
    assert first.startswith(PREFIX), result.stderr
    assert _file(tmp_path, 0) in first
    assert "Fatal Python error: Bus error" in rest
    assert _memshard_lines(result.stderr) == [first]  # once, though faulthandler passes it back


def test_a_dataloader_worker_names_the_file_before_torch_speaks(tmp_path: Path) -> None:
    result = _run("torch dataloader worker", tmp_path)
    assert result.returncode == 0, result  # the parent lives on and reports the dead worker
    assert "parent: DataLoader worker (pid" in result.stdout
    lines = result.stderr.splitlines()
    memshard_lines = _memshard_lines(result.stderr)
    assert len(memshard_lines) == 1, result.stderr
    assert _file(tmp_path, 0) in memshard_lines[0]
    torch_line = "ERROR: Unexpected bus error encountered in worker."
    torch_lines = [n for n, line in enumerate(lines) if line.startswith(torch_line)]
    assert torch_lines, result.stderr
    assert lines.index(memshard_lines[0]) < torch_lines[0]


@pytest.mark.parametrize("case", ["another mapped file", "signal sent by kill"])
def test_other_sigbus_passes_through_unchanged(tmp_path: Path, case: str) -> None:
    result = _run(case, tmp_path)
    assert result.returncode == -signal.SIGBUS, result
    assert "survived" not in result.stdout
    assert _memshard_lines(result.stderr) == []


def test_the_handler_is_installed_at_the_first_mapping_and_keeps_the_previous_one(
    tmp_path: Path,
) -> None:
    code = (
        "import faulthandler, sys, memshard as ms\n"
        "from memshard import sigbus\n"
        "from tests.test_sigbus import _dataset\n"
        "faulthandler.enable()\n"
        "dataset = _dataset(sys.argv[1], 1)\n"
        "before = sigbus.installed()\n"
        "float(dataset['x'][0][0])\n"
        "print(before, sigbus.installed())\n"
    )
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.split() == ["False", "True"]


def test_message_is_one_line_naming_dataset_and_file() -> None:
    line = sigbus.message("/data/d s", "shards/ab-00000001.x.npy", 0x7F0000001000)
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert line.startswith(f"{PREFIX}/data/d s was truncated or became unreadable while mapped")
    assert "(/data/d s/shards/ab-00000001.x.npy, address 0x7f0000001000)" in line
    assert "SIGBUS" in line


if __name__ == "__main__":
    CHILDREN[sys.argv[1]](*sys.argv[2:])
    sys.exit(0)
