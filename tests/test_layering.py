"""The package's imports point one way, as ``docs/architecture.md`` lays them out."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "memshard"
ROW = re.compile(r"^\| (\d+) \| `([A-Za-z_][A-Za-z0-9_]*)` \| .+ \|$")


def documented_layers() -> dict[str, int]:
    """``{module: layer}`` from the table in docs/architecture.md."""
    layers = {}
    for line in (REPO_ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            layers[match.group(2)] = int(match.group(1))
    return layers


def package_imports(path: Path) -> set[str]:
    """The memshard modules that ``path`` imports, anywhere in the file (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "memshard":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "memshard" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_is_in_the_architecture_table() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    layers = documented_layers()
    assert modules - set(layers) == set(), "add these modules to docs/architecture.md"
    assert set(layers) - modules == set(), "docs/architecture.md lists modules that are gone"


def test_imports_point_down_the_layers() -> None:
    layers = documented_layers()
    wrong = [
        f"memshard/{path.name} (layer {layers.get(path.stem)}) imports {target} "
        f"(layer {layers.get(target)})"
        for path in sorted(PACKAGE.glob("*.py"))
        for target in sorted(package_imports(path))
        if target in layers and layers[target] >= layers.get(path.stem, -1)
    ]
    assert wrong == []


def test_the_import_parser_sees_every_form(tmp_path: Path) -> None:
    """The parser is the test's oracle: check it on each form of import it must see."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from . import manifest\n"
        "from .reader import open\n"
        "from memshard.errors import MemshardError\n"
        "import memshard.appender\n"
        "import numpy\n"
        "def lazy():\n"
        "    from .convert import require\n"
    )
    assert package_imports(sample) == {"manifest", "reader", "errors", "appender", "convert"}
