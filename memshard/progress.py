"""Progress bars for long operations (conversion, export, verification), drawn by tqdm.

A bar is shown when asked (``enabled=True``), or, with ``enabled=None``, only when stderr is a
terminal, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
from typing import Any


def is_enabled(enabled: bool | None) -> bool:
    """Whether to draw: ``enabled``, or stderr is a terminal when it is ``None``."""
    if enabled is None:
        return sys.stderr.isatty()
    return bool(enabled)


def progress_bar(total: int, *, desc: str, enabled: bool | None, unit: str = "B") -> Any:
    """A context-managed bar counting to ``total`` (bytes by default); call ``update(n)``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024 if unit == "B" else 1000,
        disable=not is_enabled(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def say(message: str) -> None:
    """Print one line to stderr without breaking a bar being drawn."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
