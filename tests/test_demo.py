"""``memshard demo``: HDF5 -> memshard -> PyTorch, end to end, from the shell and in-process."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memshard as ms
from memshard import demo
from tests.helpers import REPO_ROOT


def test_demo_command(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "memshard", "demo", "--rows", "3000", "--steps", "12",
         "--workers", "2", "--dir", str(workdir)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"memshard demo in {workdir}"
    stages = [line for line in lines if re.match(r"\d/4 ", line)]
    assert [line[:4] for line in stages] == ["1/4 ", "2/4 ", "3/4 ", "4/4 "], result.stdout
    assert "3,000 images float32[3, 32, 32]" in stages[0]
    assert str(workdir / "synthetic.h5") in stages[0]
    assert f"converted to {workdir / 'synthetic.memshard'}" in stages[1]
    assert "2 worker processes" in stages[1]
    assert re.search(r"verified \d+ shard files: ok,", stages[2]), stages[2]
    match = re.search(
        r"12 steps of 256 .* 2 workers: ([\d,]+) samples/s; loss ([\d.]+) -> ([\d.]+), "
        r"accuracy on the last batches (\d+)%",
        stages[3],
    )
    assert match is not None, stages[3]
    assert float(match[1].replace(",", "")) > 0
    assert math.isfinite(float(match[2]))
    assert math.isfinite(float(match[3]))
    assert 0 <= int(match[4]) <= 100
    # The files are kept in --dir.
    assert (workdir / "synthetic.h5").is_file()
    assert len(ms.open(workdir / "synthetic.memshard")) == 3000


def test_demo_run_keeps_its_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "kept"
    result = demo.run(rows=2000, steps=8, workers=2, directory=str(workdir), progress=False)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"memshard demo in {workdir}"
    assert result.rows == 2000
    assert result.steps == 8
    assert result.verify_ok is True
    source = workdir / "synthetic.h5"
    assert result.source_bytes == source.stat().st_size > 2000 * 3 * 32 * 32 * 4 * 0.5
    assert result.convert_seconds > 0
    assert result.samples_per_second > 0
    assert math.isfinite(result.first_loss)
    assert math.isfinite(result.last_loss)
    assert 0 <= result.accuracy <= 1

    ds = ms.open(workdir / "synthetic.memshard")
    assert len(ds) == 2000
    assert set(ds.fields) == {"train_images", "train_labels"}
    assert ds["train_images"].shape == (2000, *demo.IMAGE_SHAPE)
    assert ds.labels == {"train_labels": demo.CLASSES}
    labels = ds["train_labels"][:]
    assert labels.min() >= 0
    assert labels.max() < len(demo.CLASSES)
    assert len(np.unique(labels)) == len(demo.CLASSES)
    assert ds.verify().ok
    # The demo's classes are patterns plus noise: training must make the loss fall.
    assert result.last_loss < result.first_loss, (result.first_loss, result.last_loss)


def test_demo_run_removes_its_temporary_directory(capsys: pytest.CaptureFixture[str]) -> None:
    result = demo.run(rows=600, steps=2, workers=2, directory=None, progress=False)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("memshard demo in ")
    workdir = first.removeprefix("memshard demo in ")
    assert os.path.basename(workdir).startswith("memshard-demo-")
    assert not os.path.exists(workdir)
    assert result.rows == 600
    assert result.verify_ok
