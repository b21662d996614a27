"""Writing one shard of a conversion as a part, in whichever process runs it.

A :class:`ShardJob` is everything a worker needs (picklable); :func:`write_shard` reads the
source rows of one shard in bounded blocks and writes them as one part, which the converter
commits in row order (``spec/CONVERSION.md``). A worker process reports back with the typed
messages at the end of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import numpy as np

from . import interrupt
from .manifest import FieldSpec
from .parts import Part, PartTarget, write_part
from .sources import SourceField, SourceReader, block_ranges, block_rows_for, check_label_range

#: The group of the parts a conversion writes (their ids are ``p-convert-NONCE``).
CONVERT_GROUP = "convert"


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write shards of one conversion (picklable)."""

    target: PartTarget
    sources: dict[str, SourceField]
    vocabulary_sizes: dict[str, int]

    @property
    def specs(self) -> dict[str, FieldSpec]:
        """The staging dataset's fields."""
        return self.target.fields

    def shard_range(self, index: int, rows: int) -> tuple[int, int]:
        """Rows ``start, stop`` of shard ``index`` in a source of ``rows`` rows."""
        start = index * self.target.shard_rows
        return start, min(rows, start + self.target.shard_rows)


def write_shard(
    job: ShardJob,
    reader: SourceReader,
    index: int,
    start: int,
    stop: int,
    report: Callable[[int], None] | None = None,
) -> Part:
    """Write source rows ``start:stop`` as part ``index`` of the conversion: one sealed,
    ``fsync``-ed shard and the part's record; return the record (not yet committed).

    Every field is read in the same blocks of rows, whole source chunks of the widest field,
    so that memory stays bounded (see :func:`memshard.sources.block_rows_for`)."""
    block_rows = min(
        block_rows_for(job.sources[name].chunk_rows, spec.row_bytes)
        for name, spec in job.specs.items()
    )
    buffers = {
        name: np.empty((min(block_rows, stop - start), *spec.shape), dtype=spec.numpy_dtype)
        for name, spec in job.specs.items()
    }
    with write_part(job.target, key=index, group=CONVERT_GROUP) as part:
        for begin, end in block_ranges(start, stop, block_rows):
            interrupt.check()
            block = {name: buffer[: end - begin] for name, buffer in buffers.items()}
            for name, values in block.items():
                reader.read(name, begin, end, values)
                vocabulary = job.vocabulary_sizes.get(name)
                if vocabulary is not None:
                    check_label_range(values, vocabulary, where=f"field {name!r}", start=begin)
            part.extend(block)
            if report is not None:
                report(sum(values.nbytes for values in block.values()))
    return part.close()


# -- what a worker process reports (memshard.workers) --------------------------------------


@dataclass(frozen=True)
class Progress:
    """A worker read and wrote ``nbytes`` more bytes of its shard."""

    nbytes: int


@dataclass(frozen=True)
class Done:
    """A worker finished shard ``index`` as the part ``part`` (not yet committed)."""

    index: int
    part: Part


@dataclass(frozen=True)
class Failed:
    """A worker failed on shard ``index`` (-1: opening the source) with ``error``; it exits."""

    index: int
    error: Exception


#: What a worker sends its parent.
Message = Union[Progress, Done, Failed]  # noqa: UP007 - a runtime alias on Python 3.10
