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
from .errors import BatchError, SourceError
from .manifest import FieldSpec
from .parts import Part, PartTarget, write_part
from .ragged import Ragged
from .sources import (
    RaggedSourceReader,
    SourceField,
    SourceReader,
    block_ranges,
    block_rows_for,
    check_label_range,
)

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
    """Write source rows ``start:stop`` as part ``index`` of the conversion: sealed,
    ``fsync``-ed shards (one, unless ragged fields fill more) and the part's record; return
    the record (not yet committed).

    Every field is read in the same blocks of rows, whole source chunks of the widest field
    (a ragged field's rows counted at their mean length), so that memory stays bounded (see
    :func:`memshard.sources.block_rows_for`).

    Raises:
        SourceError: the source cannot read a field's rows (or a ragged field's at all).
        LabelError: a label field holds a value outside its vocabulary.
    """
    block_rows = min(
        block_rows_for(source.chunk_rows, source.row_bytes) for source in job.sources.values()
    )
    buffers = {
        name: np.empty((min(block_rows, stop - start), *spec.shape), dtype=spec.numpy_dtype)
        for name, spec in job.specs.items()
        if not spec.ragged
    }
    ragged = [name for name, spec in job.specs.items() if spec.ragged]
    with write_part(job.target, key=index, group=CONVERT_GROUP) as part:
        for begin, end in block_ranges(start, stop, block_rows):
            interrupt.check()
            block: dict[str, np.ndarray | Ragged] = {}
            for name, buffer in buffers.items():
                values = block[name] = buffer[: end - begin]
                reader.read(name, begin, end, values)
                vocabulary = job.vocabulary_sizes.get(name)
                if vocabulary is not None:
                    check_label_range(values, vocabulary, where=f"field {name!r}", start=begin)
            for name in ragged:
                block[name] = _read_ragged(reader, name, begin, end)
            part.extend(block)
            if report is not None:
                report(sum(_nbytes(rows) for rows in block.values()))
    return part.close()


def _read_ragged(reader: SourceReader, name: str, start: int, stop: int) -> Ragged:
    """Rows ``start:stop`` of the ragged field ``name`` as a batch (its offsets checked).

    Raises:
        SourceError: the source reads no ragged rows.
        BatchError: the source's offsets are not those of ``stop - start`` rows.
    """
    if not isinstance(reader, RaggedSourceReader):
        raise SourceError(f"field {name!r} is ragged, and this source reads no ragged rows")
    values, offsets = reader.read_ragged(name, start, stop)
    batch = Ragged(values, offsets)
    if len(batch) != stop - start:
        raise BatchError(
            f"field {name!r}: the source gave {len(batch)} rows for rows {start}:{stop}"
        )
    return batch


def _nbytes(rows: np.ndarray | Ragged) -> int:
    """Bytes of a block of one field: its rows, or a ragged field's values and offsets."""
    if isinstance(rows, Ragged):
        return int(rows.values.nbytes + rows.offsets.nbytes)
    return int(rows.nbytes)


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
