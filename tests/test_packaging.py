"""The wheel builds without deprecation warnings and ships the licence, ``py.typed`` and the
metadata an index shows: an SPDX licence expression, classifiers, keywords and project URLs.

The wheel is built the way pip builds it for a user (``pip wheel``, with build isolation, so
with the setuptools that ``build-system.requires`` asks for), from a copy of the files that go
into it, so the build leaves nothing in the checkout.
"""

from __future__ import annotations

import email.parser
import email.policy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import memshard

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel and the build's verbose output (which includes the build backend's)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "memshard", source / "memshard",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("memshard-*.whl")
    return wheel, result.stdout + result.stderr


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    return email.parser.Parser(policy=email.policy.compat32).parsestr(text)


def test_the_build_prints_no_deprecation_warning(built: tuple[Path, str]) -> None:
    _, output = built
    lines = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert not lines, "\n".join(lines)


def test_the_wheel_ships_the_licence_and_py_typed(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(licence) == (REPO / "LICENSE").read_bytes()
        assert "memshard/py.typed" in names
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert "Version 2.0, January 2004" in (REPO / "LICENSE").read_text()
    assert not [n for n in names if n.split("/")[0] in {"tests", "benchmarks", "docs", "spec"}]


def test_the_wheel_metadata_is_complete(built: tuple[Path, str]) -> None:
    wheel, _ = built
    meta = metadata(wheel)
    assert meta["Name"] == "memshard"
    assert meta["Version"] == memshard.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Keywords"]
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX field says it
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog", "Source", "Issues"} <= set(urls)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"torch", "hdf5", "zarr", "dask", "all", "bench", "docs", "dev"} <= extras
    assert meta.get_payload()  # the README as the long description
