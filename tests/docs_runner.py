"""Run the code blocks of one Markdown file, in order, as ``tests/test_docs_examples.py`` asks.

Usage: ``python docs_runner.py BLOCKS.json`` in the directory the blocks run in. The JSON is a
list of ``{"where": "README.md:12", "kind": "python" | "bash" | "file", "code": ..., "name":
...}``. Python blocks run one after the other in one ``__main__`` module, as if typed into one
interactive session (so a function defined in one block can be sent to a forked worker by
reference, and modules in the current directory import); bash blocks run through
``bash -e -o pipefail``; a ``file`` block is written to ``name``. The first failure ends the
run with a non-zero status naming the block.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path


def run_blocks(blocks: list[dict[str, str]]) -> None:
    sys.path[0] = ""
    session = types.ModuleType("__main__")
    session.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = session
    for block in blocks:
        print(f"--- {block['where']} ({block['kind']})", file=sys.stderr, flush=True)
        if block["kind"] == "python":
            exec(compile(block["code"], block["where"], "exec"), session.__dict__)
        elif block["kind"] == "bash":
            sys.stdout.flush()
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block["code"]], check=False
            )
            if done.returncode != 0:
                raise SystemExit(f"{block['where']}: bash block exited with {done.returncode}")
        else:
            Path(block["name"]).write_text(block["code"])


if __name__ == "__main__":
    run_blocks(json.loads(Path(sys.argv[1]).read_text()))
