"""Shared fixtures and settings for the test suite."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import memshard as ms
from tests.helpers import write_dataset

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def make_dataset(tmp_path: Any) -> Callable[..., ms.Dataset]:
    """``make_dataset(columns, sessions=None, shard_rows=4)`` -> an open Dataset in tmp_path."""
    counter = iter(range(1_000_000))

    def make(
        columns: dict[str, np.ndarray], sessions: Sequence[int] | None = None, **kw: Any
    ) -> ms.Dataset:
        return write_dataset(tmp_path / f"ds{next(counter)}", columns, sessions, **kw)

    return make


def pytest_configure(config: pytest.Config) -> None:
    """Most conversion tests write small sources in several shards on purpose, which warns
    (:class:`~memshard.errors.SmallShardWarning`); ``tests/test_small_shards.py`` checks the
    warning itself with ``pytest.warns``, which sees it whatever the filters say."""
    config.addinivalue_line("filterwarnings", "ignore::memshard.errors.SmallShardWarning")
