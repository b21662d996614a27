"""Every code block of README.md and docs/ runs as written, in order, in a fresh directory.

Each Markdown file's fenced ``python`` and ``bash`` blocks run top to bottom in a new temporary
directory (``tests/docs_runner.py``): the Python blocks in one interpreter session, the bash
blocks through bash with this interpreter's ``bin`` first on ``PATH``, so ``memshard`` and
``python`` are the ones under test. Warnings are errors, as in the rest of the suite.

Two HTML comments, on the line just before a block's opening fence, change what happens:

- ``<!-- skip-run: REASON -->`` does not run the block. Only blocks that cannot run in a test
  may be skipped: installs (they make a virtual environment) and benchmark runs (they take
  minutes; ``tests/test_*_benchmark.py`` run their quick modes).
- ``<!-- file: NAME -->`` writes the block to ``NAME`` instead of running it, for a script that
  a later block runs (``torchrun ... train.py``).

Generated benchmark reports (``docs/benchmarks/``) and the specification (``spec/``, whose
examples are checked by ``tests/test_spec.py``) are not run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "docs_runner.py"
#: Markdown files whose blocks are run, relative to the repository.
DOCUMENTS = sorted(
    [Path("README.md")]
    + [
        path.relative_to(REPO)
        for path in (REPO / "docs").rglob("*.md")
        if "benchmarks" not in path.relative_to(REPO / "docs").parts
    ]
)
#: What a skipped block must contain: only installs and benchmark runs may be skipped.
SKIPPABLE = ("pip install", "python -m benchmarks")
RUN_KINDS = ("python", "bash")

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^<!--\s*(?P<name>skip-run|file):(?P<value>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it starts, its language, its code and its directive."""

    where: str
    language: str
    code: str
    directive: tuple[str, str] | None

    def step(self) -> dict[str, str] | None:
        """What the runner does with the block, or None if nothing."""
        if self.language not in RUN_KINDS or self.directive_name == "skip-run":
            return None
        if self.directive_name == "file":
            return {"where": self.where, "kind": "file", "code": self.code, "name": self.value}
        return {"where": self.where, "kind": self.language, "code": self.code}

    @property
    def directive_name(self) -> str | None:
        return self.directive[0] if self.directive else None

    @property
    def value(self) -> str:
        return self.directive[1].strip() if self.directive else ""


def blocks_of(document: Path) -> list[Block]:
    """The fenced blocks of ``document`` (relative to the repository), in order."""
    lines = (REPO / document).read_text().splitlines()
    blocks, number = [], 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        end = next((i for i in range(number + 1, len(lines)) if lines[i].strip() == "```"), None)
        assert end is not None, f"{document}:{number + 1}: code block never closed"
        assert not opening["indent"], f"{document}:{number + 1}: indented fences are not run"
        previous = lines[number - 1] if number else ""
        directive = _DIRECTIVE.match(previous)
        blocks.append(
            Block(
                where=f"{document}:{number + 1}",
                language=opening["info"].strip(),
                code="\n".join(lines[number + 1 : end]) + "\n",
                directive=(directive["name"], directive["value"]) if directive else None,
            )
        )
        number = end + 1
    return blocks


def test_documents_are_found() -> None:
    names = {str(document) for document in DOCUMENTS}
    assert {"README.md", "docs/getting-started.md", "docs/writing.md"} <= names
    assert not any(name.startswith("docs/benchmarks/") for name in names)
    assert len(steps_of(Path("README.md"))) >= 1


@pytest.mark.parametrize("document", DOCUMENTS, ids=str)
def test_directives_are_well_formed(document: Path) -> None:
    text = (REPO / document).read_text().splitlines()
    directive_lines = {n for n, line in enumerate(text, 1) if _DIRECTIVE.match(line)}
    blocks = blocks_of(document)
    attached = {int(block.where.rsplit(":", 1)[1]) - 1 for block in blocks if block.directive}
    assert directive_lines == attached, f"{document}: a directive is not right before a fence"
    for block in blocks:
        assert block.language, f"{block.where}: a code block without a language"
        if block.directive is None:
            continue
        assert block.language in RUN_KINDS, f"{block.where}: a directive on a {block.language}"
        assert block.value, f"{block.where}: {block.directive_name} needs a value"
        if block.directive_name == "skip-run":
            assert any(marker in block.code for marker in SKIPPABLE), (
                f"{block.where}: only installs and benchmark runs may be skipped"
            )
        else:
            assert block.language == "python", block.where
            assert "/" not in block.value, f"{block.where}: a file name, not a path"


def steps_of(document: Path) -> list[dict[str, str]]:
    """What the runner does for ``document``, block by block."""
    return [step for block in blocks_of(document) if (step := block.step()) is not None]


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if steps_of(d)], ids=str)
def test_code_blocks_run_as_written(document: Path, tmp_path: Path) -> None:
    steps = steps_of(document)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (tmp_path / "blocks.json").write_text(json.dumps(steps))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONWARNINGS": "error",
    }
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(tmp_path / "blocks.json")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{document}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


def test_the_readme_commands_are_what_ci_runs() -> None:
    readme = {block.code.strip() for block in blocks_of(Path("README.md"))}
    ci = (REPO / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "python -m pytest" in line)
    assert test_command.strip() in readme
    assert any(code.endswith("&& .venv/bin/memshard demo") for code in readme)


@pytest.mark.parametrize("document", [*DOCUMENTS, Path("CONTRIBUTING.md")], ids=str)
def test_every_install_command_keeps_the_torch_pin(document: Path) -> None:
    commands = [
        command
        for block in blocks_of(document)
        for line in block.code.splitlines()
        for command in line.split("&&")
        if "pip install" in command
    ]
    for command in commands:
        assert "-c constraints.txt" in command, f"{document}: {command.strip()}"
