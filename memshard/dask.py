"""Dask arrays in and out: :func:`to_dask` and :func:`from_dask`.

The only module of memshard that imports dask (``pip install "memshard[dask]"``).

- :func:`to_dask` turns a field into a ``dask.array`` with one chunk per shard. The task graph
  holds only where each shard is; a task maps its shard read-only (zero copies, as
  :func:`memshard.open` does), so nothing of the data travels through the scheduler.
- :func:`from_dask` writes dask arrays as a dataset on the workers of whatever scheduler is
  active (a ``dask.distributed`` cluster, typically): every block of rows becomes a part
  (:mod:`memshard.parts`) written where the block was computed, and the parts are committed in
  block order in one atomic commit, so the result never depends on which worker finished first.
- :class:`ClusterTasks` runs the parts of :func:`memshard.build` on a ``dask.distributed``
  client, a bounded number at a time.
"""

from __future__ import annotations

import operator
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from . import interrupt
from .appender import Appender, append, create
from .dependencies import require
from .errors import (
    ArgumentError,
    BatchError,
    ConversionFailedError,
    DatasetExistsError,
    FieldNotFoundError,
    MemshardError,
    SchemaError,
)
from .layout import PARTS_DIR
from .manifest import Codec, FieldSpec
from .mappings import SegmentFile, map_segment
from .parts import Part, PartTarget, commit_parts, discard_parts, write_part
from .reader import Dataset
from .reader import open as open_dataset
from .schema import (
    DEFAULT_SHARD_BYTES,
    CodecChoice,
    chosen_codecs,
    codec_options,
    field_specs,
)

da = require("dask.array", "dask")
dask = require("dask", "dask")

__all__ = ["ClusterTasks", "append_dask", "from_dask", "to_dask"]

#: Seconds a wait for tasks on a cluster lasts before it looks for a Ctrl-C (a wait on
#: futures cannot be woken by a signal).
POLL_SECONDS = 0.2


def to_dask(dataset: Dataset | str | os.PathLike[str], field: str) -> Any:
    """Field ``field`` of a dataset (or of the dataset at a path) as a ``dask.array.Array``.

    One chunk per shard along the first axis (rows), the whole sample in the other axes. Each
    chunk is computed by mapping its shard file read-only, checked against the manifest first
    (size and header), so it is a zero-copy view of the page cache; the graph holds no data.
    A compressed field's chunk is its shard's rows decompressed, read through the column
    (which a worker process reopens by the dataset's path). The array covers the rows of
    ``dataset``'s snapshot (rows committed later are not in it).

    Raises:
        FieldNotFoundError: no field ``field``.
    """
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset)
    if field not in dataset.fields:
        raise FieldNotFoundError(
            f"{dataset.path}: no field {field!r}; fields are {sorted(dataset.fields)}"
        )
    spec = dataset.manifest.fields[field]
    if spec.ragged:
        raise SchemaError(
            f"{dataset.path}: field {field!r} is ragged; a dask array needs rows of one shape "
            "(read it with memshard.open, or pad it first)"
        )
    rows, dtype = len(dataset), spec.numpy_dtype
    name = f"memshard-{field}-{dataset.uuid}-{dataset.generation}-{rows}"
    tail = (0,) * len(spec.shape)
    graph: dict[tuple[Any, ...], Any] = {}
    chunk_rows = []
    column = dataset[field]
    for index, shard in enumerate(s for s in dataset.shards if s.row_offset < rows):
        mapped = min(shard.rows, rows - shard.row_offset)
        key = (name, index, *tail)
        if spec.compressed:
            rows_of_shard = slice(shard.row_offset, shard.row_offset + mapped)
            graph[key] = (operator.getitem, column, rows_of_shard)
        else:
            part = SegmentFile(
                file=shard.files[field], manifest_rows=shard.rows, sealed=shard.sealed, rows=mapped
            )
            graph[key] = (map_segment, dataset.path, spec, [part])
        chunk_rows.append(mapped)
    if not chunk_rows:
        return da.zeros((0, *spec.shape), dtype=dtype, chunks=(0, *spec.shape))
    chunks = (tuple(chunk_rows), *((dim,) for dim in spec.shape))
    return da.Array(graph, name, chunks, dtype=dtype)


def from_dask(
    arrays: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    labels: Mapping[str, Iterable[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    overwrite: bool = False,
) -> Dataset:
    """Write dask arrays, one per field, as a new dataset at ``path`` and open it.

    Every array's first axis is the rows; all must have the same number of rows. They are
    rechunked to the row blocks of the first array (and whole samples). Block ``k`` of every
    field is written on a worker as one part, by the scheduler that is active (the
    ``dask.distributed`` client, if one is); the parts are committed in block order in one
    commit. Blocks of a multiple of the dataset's ``shard_rows`` rows give full shards; other
    blocks end in a short shard each.

    The dataset is built under a temporary name next to ``path`` and renamed into place when
    complete: a failure leaves nothing at ``path``. A worker that dies while writing leaves a
    part without a record, which is never committed; the scheduler runs the block again and the
    dead part's files are deleted at the end. To add rows to an existing dataset, see
    :func:`append_dask`.

    Parameters:
        arrays: ``{field: dask array}``; a field's dtype and sample shape are the array's.
        shard_bytes: as for :func:`memshard.create`.
        labels: as for :func:`memshard.create`.
        attrs: as for :func:`memshard.create`.
        codecs: compress fields, as for :func:`memshard.from_hdf5` (``"zstd:3"`` for every
            field, ``{field: codec}`` for some); each worker compresses the blocks it writes.
        overwrite: as for :func:`memshard.create`.

    Raises:
        ArgumentError: not dask arrays, or unknown chunk sizes.
        BatchError: arrays of different lengths or without rows axis.
        SchemaError, UnsupportedDtypeError, LabelError: as for :func:`memshard.create` and
            :meth:`memshard.Appender.extend`.
        DatasetExistsError: ``path`` exists (without ``overwrite``).
        ConversionFailedError: the computation failed (a worker died too often, a block
            raised); nothing was committed.
    """
    root = os.path.abspath(os.fspath(path))
    blocks = _row_blocks(arrays, root)
    chosen = chosen_codecs(codecs, list(blocks))
    fields = {
        name: (array.dtype, array.shape[1:], *_options(chosen.get(name)))
        for name, array in arrays.items()
    }
    if os.path.lexists(root) and not overwrite:
        raise DatasetExistsError(f"{root}: already exists (pass overwrite=True to replace it)")
    staging = f"{root}.memshard-tmp-dask{secrets.token_hex(6)}"
    appender = create(staging, fields, shard_bytes=shard_bytes, labels=labels, attrs=attrs)
    try:
        _write_and_commit(appender, blocks)
        appender.close_into(root, overwrite=overwrite)
    except BaseException:
        appender.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_dataset(root)


def _options(codec: Codec | None) -> tuple[dict[str, Any], ...]:
    """The third member of a field's declaration that compresses it with ``codec``, if any."""
    return () if codec is None else (codec_options(codec),)


def append_dask(arrays: Mapping[str, Any], path: str | os.PathLike[str]) -> Dataset:
    """Append dask arrays, one per field, to the existing dataset at ``path`` and open it.

    The blocks are written and committed as by :func:`from_dask`, in one commit; the dataset's
    write lock is held throughout, and on failure the dataset stays as it was. The dataset's
    compressed fields are compressed with their codecs.

    Raises:
        ArgumentError: not dask arrays, or unknown chunk sizes.
        SchemaError: fields that differ from the dataset's (the message names both).
        DatasetNotFoundError, DatasetLockedError: as for :func:`memshard.append`.
        BatchError, LabelError: as for :meth:`memshard.Appender.extend`.
        ConversionFailedError: the computation failed; nothing was committed.
    """
    root = os.path.abspath(os.fspath(path))
    blocks = _row_blocks(arrays, root)
    fields = {name: (array.dtype, array.shape[1:]) for name, array in arrays.items()}
    appender = append(root)
    try:
        _check_fields(appender, fields)
        _write_and_commit(appender, blocks)
        appender.close()
    except BaseException:
        appender.abort()
        raise
    return open_dataset(root)


def _write_and_commit(appender: Appender, blocks: dict[str, list[Any]]) -> None:
    """Write every block as a part on the workers and commit them in block order."""
    job = f"dask{secrets.token_hex(4)}"
    running = start_job(appender.path, job)
    try:
        parts = _write_parts(PartTarget.of(appender.path), job, blocks)
        commit_parts(appender, parts, order="key")
    finally:
        end_job(appender, running, job)


def _row_blocks(arrays: Mapping[str, Any], root: str) -> dict[str, list[Any]]:
    """Each field's blocks of rows as delayed arrays, the same row blocks for every field."""
    if not isinstance(arrays, Mapping) or not arrays:
        raise ArgumentError(f"{root}: arrays must be a non-empty mapping of field -> dask array")
    first = None
    blocks = {}
    for name, array in arrays.items():
        if not isinstance(array, da.Array):
            raise ArgumentError(
                f"{root}: field {name!r} is a {type(array).__name__}, not a dask array"
            )
        if array.ndim < 1:
            raise BatchError(f"{root}: field {name!r} has no rows axis (a 0-d array)")
        if any(np.isnan(size) for sizes in array.chunks for size in sizes):
            raise ArgumentError(
                f"{root}: field {name!r} has unknown chunk sizes; call compute_chunk_sizes() first"
            )
        if first is None:
            first = array.chunks[0]
        elif array.shape[0] != sum(first):
            raise BatchError(
                f"{root}: field {name!r} has {array.shape[0]} rows, the first field {sum(first)}"
            )
        whole = {axis: -1 for axis in range(1, array.ndim)}
        rechunked = array.rechunk({0: first, **whole})
        blocks[name] = list(rechunked.to_delayed().ravel())
    return blocks


def _check_fields(appender: Appender, fields: dict[str, tuple[Any, Any]]) -> None:
    """The arrays' dtypes and sample shapes are the dataset's fields' (their codecs are the
    dataset's business)."""
    wanted = field_specs(fields)
    if _uncompressed(wanted) != _uncompressed(appender.fields):
        raise SchemaError(
            f"{appender.path}: the arrays' fields {_describe(wanted)} differ from the dataset's "
            f"{_describe(appender.fields)}"
        )


def _uncompressed(specs: dict[str, FieldSpec]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    return {name: (spec.dtype, spec.shape, spec.kind) for name, spec in specs.items()}


def _describe(specs: dict[str, FieldSpec]) -> str:
    return ", ".join(f"{name}: {spec.dtype}{list(spec.shape)}" for name, spec in specs.items())


def _write_parts(target: PartTarget, job: str, blocks: dict[str, list[Any]]) -> list[Part]:
    names = list(blocks)
    count = len(blocks[names[0]])
    tasks = [
        dask.delayed(write_block, pure=False)(
            target, job, index, names, *(blocks[n][index] for n in names)
        )
        for index in range(count)
    ]
    try:
        return _compute_all(tasks)
    except MemshardError:
        raise
    except Exception as exc:
        raise ConversionFailedError(
            f"{target.root}: writing the blocks failed, nothing was committed "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _compute_all(tasks: list[Any]) -> list[Part]:
    """Compute ``tasks``; when one fails, return (raise) only after the others have ended.

    A scheduler reports the first failure while other blocks still run; cleaning up the job
    then would race their writes. On a ``dask.distributed`` cluster the futures are waited
    for; the local schedulers run the blocks in this process's pools, whose running tasks end
    soon after the job's marker is gone (see :func:`write_block`).
    """
    client = _distributed_client()
    if client is None:
        return list(dask.compute(*tasks))
    futures = client.compute(tasks)
    try:
        return list(client.gather(futures))
    except Exception:
        require("distributed", "dask").wait(futures)
        # The error's traceback keeps this frame: futures held there would keep the failed
        # keys (shared by the same computation run again) failed on the scheduler.
        client.cancel(futures)
        futures.clear()
        raise


def _distributed_client() -> Any:
    """The ``dask.distributed`` client that ``dask.compute`` would use, or None."""
    if dask.config.get("scheduler", None) != "dask.distributed":
        return None
    try:
        distributed = require("distributed", "dask")
    except MemshardError:
        return None
    try:
        return distributed.get_client()
    except ValueError:  # no client: dask's default scheduler runs the tasks
        return None


def write_block(target: PartTarget, job: str, index: int, names: list[str], *arrays: Any) -> Part:
    """Write one block of rows, ``{names[i]: arrays[i]}``, as part ``index`` of ``job`` (runs
    on a worker) and return the part's record."""
    with write_part(target, key=index, group=job) as part:
        # Checked while the part's lock is held: see end_job.
        if not os.path.exists(os.path.join(target.root, PARTS_DIR, f"{job}.running")):
            raise ConversionFailedError(
                f"{target.root}: job {job} has ended; block {index} is not written"
            )
        part.extend(dict(zip(names, arrays, strict=False)))
    return part.close()


def start_job(root: str, job: str) -> str:
    """Mark ``job`` as running: its blocks write parts only while ``parts/JOB.running`` exists."""
    parts = os.path.join(root, PARTS_DIR)
    os.makedirs(parts, exist_ok=True)
    running = os.path.join(parts, f"{job}.running")
    os.close(os.open(running, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return running


def end_job(appender: Appender, running: str, job: str) -> None:
    """Stop ``job`` and delete every part of it that was not committed.

    Blocks of a failed job may still be running on the workers (a scheduler cannot stop a
    running task). Once the marker is gone no block starts a part, and a block that started
    one before holds its lock until it is done, so waiting for the locks of the job's parts
    leaves none behind: dead attempts, and the blocks of a job that failed.
    """
    os.unlink(running)
    discard_parts(appender, group=job, wait=True)


class ClusterTasks:
    """Tasks submitted to a ``dask.distributed`` client; their results as they complete.

    A task whose worker is lost is run again by the scheduler elsewhere (up to its
    ``distributed.scheduler.allowed-failures``); then the lost attempt's part has no record,
    or one that is never committed, and is discarded at the end.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._distributed = require("distributed", "dask")
        self._futures: dict[Any, int] = {}

    @property
    def threads(self) -> int:
        """The threads of the cluster's workers: how many tasks run at once."""
        return max(1, int(sum(self._client.nthreads().values())))

    def submit(self, tag: int, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on a worker; :meth:`next_done` gives its result with
        ``tag``."""
        self._futures[self._client.submit(function, *args, pure=False)] = tag

    def next_done(self) -> tuple[int, Any]:
        """``(tag, result)`` of a task that has completed (blocks until one has; of several,
        the one of the smallest tag).

        A task's own exception is raised here, and ``distributed``'s ``KilledWorker`` when
        its workers were lost too often.

        Raises:
            KeyboardInterrupt: Ctrl-C was pressed (checked every :data:`POLL_SECONDS`).
        """
        while True:
            interrupt.check()
            try:
                # wait() asks the current client, which the caller's need not be (a client
                # made with set_as_default=False, or another one made since).
                with self._client.as_current():
                    done = self._distributed.wait(
                        list(self._futures), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED"
                    ).done
            except TimeoutError:
                continue
            future = min(done, key=self._futures.__getitem__)
            tag = self._futures.pop(future)
            return tag, future.result()

    def cancel(self) -> None:
        """Cancel every task not yet taken (running ones run on: a scheduler cannot stop
        them)."""
        futures, self._futures = list(self._futures), {}
        self._client.cancel(futures)
