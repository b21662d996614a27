"""Committing finished parts in their order, however they finish: :class:`OrderedCommit`.

A conversion or a build numbers its parts ``0, 1, 2, ...`` in row order, writes several at
once, and must commit them in that order only (``spec/CONVERSION.md`` section 4): a part that
finishes early waits here until every part before it is committed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .appender import Appender
from .parts import Part, commit_parts

#: Finished parts are committed once they hold this many bytes of data ...
COMMIT_BYTES = 64 << 20
#: ... or once they number at least 1/COMMIT_GROWTH of the shards committed so far. Every
#: commit rewrites the whole manifest, so committing each of N tiny shards costs time
#: quadratic in N; batches that grow with the dataset keep the total linear.
COMMIT_GROWTH = 16


class OrderedCommit:
    """Commits finished parts in index order, holding back those that finish early.

    Parts that are ready (every part before them finished) are committed together once they
    hold :data:`COMMIT_BYTES` of data (``part_bytes`` each, an estimate) or number a
    sixteenth (:data:`COMMIT_GROWTH`) of the shards committed so far, and by :meth:`flush`.
    ``attrs``, if given, is asked for the dataset's attributes with the index of the last
    part of each commit, and they are committed with the parts, in the same commit.
    """

    def __init__(
        self,
        appender: Appender,
        first_index: int,
        part_bytes: int,
        attrs: Callable[[int], Mapping[str, Any]] | None = None,
    ) -> None:
        self._appender = appender
        self._next = first_index
        self._part_bytes = part_bytes
        self._attrs = attrs
        self._waiting: dict[int, Part] = {}
        self._ready: list[tuple[int, Part]] = []

    @property
    def pending(self) -> int:
        """Parts finished and not yet committed (ready, or waiting for one before them)."""
        return len(self._waiting) + len(self._ready)

    def finished(self, index: int, part: Part) -> None:
        """Take part ``index``; commit the parts ready, if enough are."""
        self._waiting[index] = part
        while self._next in self._waiting:
            self._ready.append((self._next, self._waiting.pop(self._next)))
            self._next += 1
        committed = len(self._appender.shards)
        if (
            len(self._ready) * self._part_bytes >= COMMIT_BYTES
            or len(self._ready) * COMMIT_GROWTH >= committed
        ):
            self.flush()

    def flush(self) -> None:
        """Commit every part ready."""
        if not self._ready:
            return
        last = self._ready[-1][0]
        attrs = None if self._attrs is None else self._attrs(last)
        commit_parts(self._appender, [part for _, part in self._ready], order="given", attrs=attrs)
        self._ready = []
