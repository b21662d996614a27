"""A memshard dataset as a conversion source (see :func:`memshard.recompress`).

The source is read through :func:`memshard.open`, in blocks of rows gathered with
:meth:`~memshard.Dataset.take`: a compressed field's blocks are decompressed straight into
the worker's buffer, a ragged field's rows come packed. Every worker process opens the dataset
itself (the opener holds its path, never a mapping) and checks that it is the dataset planned:
the same ``uuid``, with at least the rows planned. Rows are append-only, so the first ``rows``
rows of a dataset never change, and a resume only needs the ``uuid`` and the row count to
know the source is the one it started from; rows appended to the source since are not read.

The source's labels and attributes are the new dataset's. Its ``memshard.source`` is replaced
by the record of this conversion, which keeps in ``upstream`` the record of the conversion that
brought the rows into memshard (the source's own, or, if that is a recompression too, its
``upstream``), so provenance survives any number of recompressions at a bounded depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DatasetNotFoundError, SourceError
from .reader import Dataset
from .reader import open as open_dataset
from .sources import SOURCE_ATTR, SourceField, SourcePlan

#: The ``format`` a conversion records for a memshard dataset as its source.
KIND = "memshard"


def plan(dataset: Dataset) -> SourcePlan:
    """Describe the conversion of every field of ``dataset``: the rows it shows."""
    rows = len(dataset)
    recorded = dataset.attrs.get(SOURCE_ATTR)
    upstream = recorded.get("upstream", recorded) if isinstance(recorded, dict) else None
    return SourcePlan(
        kind=KIND,
        location=dataset.path,
        rows=rows,
        fields={name: _source_field(dataset, name, rows) for name in dataset.fields},
        attrs={key: value for key, value in dataset.attrs.items() if key != SOURCE_ATTR},
        labels={name: list(vocabulary) for name, vocabulary in dataset.labels.items()},
        identity={"uuid": dataset.uuid},
        opener=DatasetOpener(dataset.path, dataset.uuid, rows),
        upstream=upstream if isinstance(upstream, dict) else None,
    )


def _source_field(dataset: Dataset, name: str, rows: int) -> SourceField:
    """Field ``name`` of ``dataset`` as a source field, read in blocks of about
    :data:`~memshard.sources.READ_BLOCK_BYTES` (a compressed field's blocks are far smaller,
    so few are decompressed twice, by two reads); a ragged field's mean row length is
    exact."""
    spec = dataset.manifest.fields[name]
    elements = dataset[name].nbytes // spec.row_bytes if spec.ragged else rows
    return SourceField(
        origin=name,
        dtype=spec.numpy_dtype,
        shape=spec.shape,
        chunk_rows=1,
        attrs={},
        ragged=spec.ragged,
        elements_per_row=elements / rows if spec.ragged and rows else 1.0,
    )


@dataclass(frozen=True)
class DatasetOpener:
    """Opens the dataset at ``path`` in the calling process (picklable: a path and what to
    check)."""

    path: str
    uuid: str
    rows: int

    def __call__(self) -> DatasetReader:
        """Open the dataset.

        Raises:
            SourceError: it is gone, another dataset, or holds fewer rows than planned.
        """
        try:
            dataset = open_dataset(self.path)
        except DatasetNotFoundError as exc:
            raise SourceError(f"{self.path}: the source dataset is gone ({exc})") from exc
        if dataset.uuid != self.uuid or len(dataset) < self.rows:
            dataset.close()
            raise SourceError(
                f"{self.path}: no longer the source dataset planned (uuid {self.uuid}, "
                f"{self.rows:,} rows): it is uuid {dataset.uuid} with {len(dataset):,} rows"
            )
        return DatasetReader(dataset)


class DatasetReader:
    """Reads rows of a memshard dataset with :meth:`~memshard.Dataset.take`."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of the fixed field ``name``.

        Raises:
            MemshardError: the rows cannot be read (a damaged shard, named).
        """
        rows = np.arange(start, stop, dtype=np.int64)
        self._dataset.take(rows, out={name: out}, fields=[name])

    def read_ragged(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` of the ragged field ``name``, packed: ``(values, offsets)``."""
        rows = np.arange(start, stop, dtype=np.int64)
        batch = self._dataset.take(rows, fields=[name])[name]
        return batch.values, batch.offsets

    def close(self) -> None:
        """Close the dataset."""
        self._dataset.close()
