"""Importing an optional dependency, or saying how to install it."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import MissingDependencyError


def require(module: str, extra: str) -> Any:
    """Import ``module``, an optional dependency, or raise :class:`MissingDependencyError`
    saying how to install it (``pip install 'memshard[EXTRA]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for this ({exc}); install it with: pip install 'memshard[{extra}]'"
        ) from None
