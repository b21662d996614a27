"""Writing one shard of a conversion as a part, in whichever process runs it.

A :class:`ShardJob` is everything a worker needs (picklable); :func:`write_shard` reads the
source rows of one part in bounded blocks and writes them as one part, which the converter
commits in row order (``spec/CONVERSION.md``). A part is one shard of ``shard_rows`` rows; in
a dataset with ragged fields, whose shards roll on their data size, it is the rows whose data
is estimated to fill most of one shard (:func:`part_rows_for`), and the part writer rolls to
another shard if they hold more. A worker process runs a :class:`ConvertWork`
(:mod:`memshard.workerjob`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import interrupt
from .errors import MemshardError, SourceError
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
#: With ragged fields, a part holds the rows whose data is estimated at this fraction of
#: ``shard_bytes``: an estimate a little high would otherwise roll most parts into a full
#: shard and a tiny one, while one a little low only leaves each shard a little short.
RAGGED_PART_FILL = 0.9


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write the parts of one conversion (picklable).

    ``part_rows`` is the number of source rows each part holds (see :func:`part_rows_for`).
    """

    target: PartTarget
    sources: dict[str, SourceField]
    vocabulary_sizes: dict[str, int]
    part_rows: int

    @property
    def specs(self) -> dict[str, FieldSpec]:
        """The staging dataset's fields."""
        return self.target.fields

    def parts(self, first_row: int, rows: int) -> list[tuple[int, int, int]]:
        """``(index, start, stop)`` of each part that writes source rows ``first_row:rows``,
        ``part_rows`` rows each (the last one shorter), indexed in row order from
        ``first_row // part_rows``.

        Example:
            >>> job = ShardJob(target=None, sources={}, vocabulary_sizes={}, part_rows=10)
            >>> job.parts(20, 45)
            [(2, 20, 30), (3, 30, 40), (4, 40, 45)]
        """
        step = self.part_rows
        first = first_row // step
        return [
            (first + number, start, min(rows, start + step))
            for number, start in enumerate(range(first_row, rows, step))
        ]


def part_rows_for(target: PartTarget, sources: dict[str, SourceField]) -> int:
    """Source rows per part: ``shard_rows`` (one shard) without ragged fields; with them, the
    rows whose data (estimated from the sources' mean row lengths) fills
    :data:`RAGGED_PART_FILL` of ``shard_bytes``, at least one and at most ``shard_rows``."""
    if target.shard_bytes is None or not any(spec.ragged for spec in target.fields.values()):
        return target.shard_rows
    row_bytes = max(1, sum(source.row_bytes for source in sources.values()))
    fitting = int(target.shard_bytes * RAGGED_PART_FILL) // row_bytes
    return max(1, min(target.shard_rows, fitting))


def write_shard(
    job: ShardJob,
    reader: SourceReader,
    index: int,
    start: int,
    stop: int,
    report: Callable[[int], None] | None = None,
) -> Part:
    """Write source rows ``start:stop`` as part ``index`` of the conversion: sealed,
    ``fsync``-ed shards (one, unless ragged fields hold more than ``shard_bytes``) and the
    part's record; return the record (not yet committed).

    Every field is read in the same blocks of rows, whole source chunks of the widest field
    (a ragged field's rows counted at their mean length), so that memory stays bounded (see
    :func:`memshard.sources.block_rows_for`).

    Raises:
        SourceError: the source cannot read a field's rows, or gives a ragged field's rows
            that are not ``stop - start`` valid packed rows.
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
    """Rows ``start:stop`` of the ragged field ``name`` as a checked batch.

    Raises:
        SourceError: the reader reads no ragged rows, or gave something other than
            ``stop - start`` packed rows (a bug of the source module, said plainly).
    """
    if not isinstance(reader, RaggedSourceReader):
        raise SourceError(f"field {name!r} is ragged, and this source reads no ragged rows")
    values, offsets = reader.read_ragged(name, start, stop)
    try:
        batch = Ragged(values, offsets)
    except MemshardError as exc:
        raise SourceError(
            f"field {name!r}, rows {start}:{stop}: the source's packed rows are invalid ({exc})"
        ) from exc
    if len(batch) != stop - start:
        raise SourceError(
            f"field {name!r}: the source gave {len(batch)} rows for rows {start}:{stop}"
        )
    return batch


def _nbytes(rows: np.ndarray | Ragged) -> int:
    """Bytes of a block of one field: its rows, or a ragged field's values and offsets."""
    if isinstance(rows, Ragged):
        return int(rows.values.nbytes + rows.offsets.nbytes)
    return int(rows.nbytes)


# -- what a worker process runs (memshard.workers) ------------------------------------------


@dataclass(frozen=True)
class ConvertWork:
    """A conversion as a worker process holds it (:class:`memshard.workerjob.Work`): the
    source's opener and the job; its tasks are ``(index, start, stop)``, see
    :meth:`ShardJob.parts`."""

    opener: Callable[[], SourceReader]
    job: ShardJob

    def open(self) -> ShardWriting:
        """Open the source in this process."""
        return ShardWriting(self.job, self.opener())


class ShardWriting:
    """Writes the parts a worker process is given from its open source."""

    def __init__(self, job: ShardJob, reader: SourceReader) -> None:
        self._job = job
        self._reader = reader

    def run(self, task: tuple[Any, ...], report: Callable[[int], None] | None) -> Part:
        """Write part ``task = (index, start, stop)``; see :func:`write_shard`."""
        index, start, stop = task
        return write_shard(self._job, self._reader, index, start, stop, report)

    def close(self) -> None:
        """Close the source."""
        self._reader.close()
