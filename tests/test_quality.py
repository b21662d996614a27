"""The codebase stays lint-clean and type-checked: ruff and mypy run as part of the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_on_the_package() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_on_the_tests_and_benchmarks() -> None:
    """benchmarks/ strict as the package; tests/ relaxed (pyproject's ``tests.*`` override)."""
    result = _run("mypy", "tests", "benchmarks", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_never_imports_optional_integrations() -> None:
    code = (
        "import sys, memshard; "
        "heavy = {'torch', 'h5py', 'zarr', 'dask', 'pyarrow', 'PIL'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_command_line_starts_without_optional_integrations() -> None:
    code = (
        "import sys, memshard.cli; "
        "heavy = {'torch', 'h5py', 'zarr', 'dask', 'pyarrow', 'PIL', 'tqdm'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("dependency", "owner"),
    [
        ("h5py", "hdf5.py"),
        ("zarr", "zarr.py"),
        ("torch", "torch.py"),
        ("pyarrow", "arrow.py"),
        ("PIL", "imagefolder.py"),
    ],
)
def test_each_integration_is_imported_by_its_own_module_only(dependency: str, owner: str) -> None:
    importing = re.compile(
        rf"^\s*(import {dependency}\b|from {dependency}\b|.*require\(\"{dependency}[\".])", re.M
    )
    package = REPO / "memshard"
    users = {
        path.name
        for path in package.glob("*.py")
        if importing.search(path.read_text()) and path.name != "demo.py"  # the end-to-end demo
    }
    assert users == {owner}
