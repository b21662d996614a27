"""Optional dependencies: importing them, or saying how to install them.

Each integration module (``memshard.hdf5``, ``memshard.zarr``, ``memshard.torch``,
``memshard.dask``) imports its dependency through :func:`require`, so a missing one is always
the same :class:`~memshard.errors.MissingDependencyError`, naming the extra to install.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .errors import MissingDependencyError

#: Extras whose packages need a newer Python than memshard itself:
#: extra -> (what needs it, (major, minor)).
MIN_PYTHON = {"zarr": ("zarr 3", (3, 11))}


def install_hint(module: str, extra: str, python: tuple[int, ...] | None = None) -> str:
    """How to get ``module`` (of the extra ``extra``) on the Python ``python`` (default: this
    one).

    Example:
        >>> install_hint("h5py", "hdf5", (3, 11))
        "install it with: pip install 'memshard[hdf5]'"
        >>> install_hint("zarr", "zarr", (3, 10, 13))[:61]
        'zarr 3 needs Python 3.11 or newer, and this is Python 3.10.13'
        >>> install_hint("zarr", "zarr", (3, 11, 0))
        "install it with: pip install 'memshard[zarr]'"
    """
    python = tuple(sys.version_info[:3]) if python is None else tuple(python)
    if extra in MIN_PYTHON and python[:2] < MIN_PYTHON[extra][1]:
        what, needed = MIN_PYTHON[extra]
        have = ".".join(str(part) for part in python)
        want = ".".join(str(part) for part in needed)
        return (
            f"{what} needs Python {want} or newer, and this is Python {have}: the "
            f"{extra!r} extra installs nothing here; run memshard on Python {want}+ to use "
            f"{module}"
        )
    return f"install it with: pip install 'memshard[{extra}]'"


def missing(module: str, extra: str, exc: ImportError) -> MissingDependencyError:
    """The error for the optional dependency ``module`` of the extra ``extra`` failing to
    import with ``exc``: what failed, and how to install it."""
    return MissingDependencyError(
        f"{module} is needed for this ({exc}); {install_hint(module, extra)}"
    )


def require(module: str, extra: str) -> Any:
    """Import the optional dependency ``module`` of the extra ``extra``.

    Raises:
        MissingDependencyError: it cannot be imported; the message says how to install it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, extra, exc) from None
