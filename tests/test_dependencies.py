"""Optional dependencies: one error, :class:`~memshard.errors.MissingDependencyError`, saying
what to install, or, for zarr on Python 3.10, that zarr 3 needs Python 3.11 or newer (the
``zarr`` extra installs nothing there, so "pip install" would not help)."""

from __future__ import annotations

import pytest

from memshard.dependencies import install_hint, require
from memshard.errors import MissingDependencyError


def test_a_missing_module_says_which_extra_installs_it() -> None:
    with pytest.raises(MissingDependencyError) as missing:
        require("memshard_no_such_module", "hdf5")
    assert isinstance(missing.value, ImportError)
    assert "memshard_no_such_module is needed for this" in str(missing.value)
    assert "pip install 'memshard[hdf5]'" in str(missing.value)


def test_zarr_on_python_3_10_says_it_needs_3_11() -> None:
    hint = install_hint("zarr", "zarr", (3, 10, 13))
    assert hint.startswith("zarr 3 needs Python 3.11 or newer, and this is Python 3.10.13")
    assert "pip install" not in hint
    assert (
        install_hint("zarr", "zarr", (3, 11, 7)) == "install it with: pip install 'memshard[zarr]'"
    )
    assert install_hint("torch", "torch", (3, 10, 0)) == (
        "install it with: pip install 'memshard[torch]'"
    )
