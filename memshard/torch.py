"""PyTorch integration: a batched, fork-safe ``Dataset``, its collate function, a DataLoader
helper, and a shard-aware shuffling sampler with DDP support.

This is the only module of memshard that imports torch (install the ``torch`` extra).

The fast path: a DataLoader with automatic batching calls :meth:`MemshardDataset.__getitems__`
with the whole batch of indices; memshard gathers each field once, grouped by shard, and
returns the arrays as tensors without another copy. :func:`collate` passes that batch through
(the default collate would stack the samples again). :func:`loader` builds such a DataLoader:

Example::

    import memshard.torch as mt

    sampler = mt.ShardAwareSampler("data/frames", seed=0)
    for batch in mt.loader("data/frames", batch_size=256, num_workers=8, sampler=sampler):
        x, y = batch["x"], batch["y"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .dependencies import missing

try:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, Sampler, default_collate, get_worker_info
    from torch.utils.data import Dataset as TorchDataset
except ImportError as exc:  # as every extra: MissingDependencyError, saying what to install
    raise missing("torch", "torch", exc) from None

from . import reader
from .errors import (
    ArgumentError,
    FieldNotFoundError,
    InvalidIndexError,
    SamplerError,
    TransformError,
)
from .indexing import as_index_array
from .reader import Dataset

Sample = dict[str, torch.Tensor]
Transform = Callable[[Sample], Mapping[str, torch.Tensor]]

#: How :func:`loader`'s workers hand batches to the main process (see :func:`loader`).
WORKER_SHARING_STRATEGY = "file_system"
#: Shards per shuffling window of :class:`ShardAwareSampler` by default.
DEFAULT_WINDOW_SHARDS = 4


class Batch(Sequence[Sample]):
    """A gathered batch: ``tensors`` maps each field to a tensor of ``len(batch)`` rows.

    As a sequence it yields one sample dict per row (views of the batch tensors), so code that
    expects a list of samples, such as torch's ``default_collate``, still works (by stacking
    them again); :func:`collate` returns ``tensors`` directly instead.
    """

    __slots__ = ("_size", "tensors")

    def __init__(self, tensors: dict[str, torch.Tensor], size: int) -> None:
        self.tensors = tensors
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[position] for position in range(self._size)[index]]
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def collate(batch: Any) -> Any:
    """Collate function for :class:`MemshardDataset`: a :class:`Batch` becomes its dict of
    tensors with no copy; anything else goes to torch's ``default_collate``."""
    if isinstance(batch, Batch):
        return batch.tensors
    return default_collate(batch)


class MemshardDataset(TorchDataset[Sample]):
    """A map-style torch ``Dataset`` over a memshard dataset.

    Parameters:
        source: a dataset path, or a :class:`memshard.Dataset` opened already (even in the
            parent of forked workers: it holds no descriptor and pickles by path).
        fields: the fields to read (default: all), in this order.
        transform: applied to each sample dict; must return a mapping of field -> tensor.
            A per-sample transform makes batched reads split the batch, so prefer
            ``batch_transform`` where you can.
        batch_transform: applied to each gathered batch dict (field -> tensor of rows).
        prefetch: before each batch's gather, ask the kernel to read all its rows at once
            (:meth:`memshard.Dataset.prefetch`). Several times faster when the data is not in
            the page cache (a first epoch, a dataset larger than RAM); a small cost otherwise.

    Raises:
        FieldNotFoundError: an unknown name in ``fields``.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Dataset,
        fields: Sequence[str] | None = None,
        *,
        transform: Transform | None = None,
        batch_transform: Transform | None = None,
        prefetch: bool = False,
    ) -> None:
        self.dataset = source if isinstance(source, Dataset) else reader.open(source)
        self.fields = list(self.dataset.keys() if fields is None else fields)
        for name in self.fields:
            self.dataset.column(name)
        if not self.fields:
            raise FieldNotFoundError(f"{self.dataset.path}: no fields selected")
        self.transform = transform
        self.batch_transform = batch_transform
        described = self.dataset.fields
        # (torch dtype, sample shape) of each selected field, worked out once, not per batch.
        self._sample_types = {
            name: (_torch_dtype(described[name].dtype), described[name].shape)
            for name in self.fields
        }
        self.prefetch = prefetch

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Label vocabularies of the selected fields that have one."""
        return {k: v for k, v in self.dataset.labels.items() if k in self.fields}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        """One sample as a dict of tensors (copied out of the read-only mapping)."""
        sample = {
            name: torch.from_numpy(np.array(self.dataset.column(name)[_row_index(index)]))
            for name in self.fields
        }
        return _apply(self.transform, sample, "transform")

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A whole batch, gathered once per field; what a DataLoader with automatic batching
        calls. See :class:`Batch` and :func:`collate`."""
        rows = as_index_array(indices, where=self.dataset.path)
        if self.prefetch:
            self.dataset.prefetch(rows, fields=self.fields)
        tensors = self._empty_batch(rows.size)
        self.dataset.take(rows, out={name: t.numpy() for name, t in tensors.items()})
        if self.transform is not None:
            samples = [
                _apply(self.transform, {k: t[row] for k, t in tensors.items()}, "transform")
                for row in range(len(indices))
            ]
            tensors = default_collate(samples) if samples else tensors
        tensors = _apply(self.batch_transform, tensors, "batch_transform")
        return Batch(tensors, len(indices))

    def _empty_batch(self, size: int) -> dict[str, torch.Tensor]:
        """Tensors to gather a batch into. In a DataLoader worker they are allocated in shared
        memory, as torch's own collate does, so that handing the batch to the main process
        does not copy it again."""
        in_worker = get_worker_info() is not None
        tensors = {}
        for name, (dtype, shape) in self._sample_types.items():
            tensor = torch.empty((size, *shape), dtype=dtype)
            tensors[name] = tensor.share_memory_() if in_worker else tensor  # type: ignore[no-untyped-call]
        return tensors


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _row_index(index: Any) -> int:
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise InvalidIndexError(f"a sample index must be an integer, got {index!r:.80}")
    return int(index)


def _apply(transform: Transform | None, sample: Sample, role: str) -> Sample:
    if transform is None:
        return sample
    result = transform(sample)
    if not isinstance(result, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in result.items()
    ):
        raise TransformError(
            f"{role} {getattr(transform, '__name__', transform)!r} returned "
            f"{type(result).__name__}; expected a mapping of field name -> torch.Tensor"
        )
    return dict(result)


def loader(
    source: str | os.PathLike[str] | Dataset | MemshardDataset,
    *,
    batch_size: int = 256,
    fields: Sequence[str] | None = None,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    prefetch: bool = False,
    sharing_strategy: str | None = WORKER_SHARING_STRATEGY,
    **options: Any,
) -> DataLoader[Sample]:
    """A ``DataLoader`` on the fast path: batched gathers and :func:`collate`.

    Workers are kept alive between epochs (``persistent_workers``) when there are any.
    ``prefetch`` is passed to :class:`MemshardDataset` (for data not in the page cache).

    ``shuffle=True`` draws a new random order each epoch; it contradicts a ``sampler``
    (:class:`~memshard.errors.ArgumentError`).

    ``sharing_strategy`` is set in each worker (after any ``worker_init_fn`` you pass) and
    decides how a batch reaches the main process. With torch's default,
    ``"file_descriptor"``, every tensor's descriptor is handed over through a connection to a
    helper thread of the worker, which costs about as much as gathering a whole batch of small
    rows; ``"file_system"`` (the default here) names the shared memory instead, and torch's
    ``torch_shm_manager`` removes it once no process uses it. ``None`` leaves torch's setting.
    Other keyword arguments go to ``DataLoader`` unchanged.
    """
    if shuffle and sampler is not None:
        raise ArgumentError(
            "loader(): shuffle=True and a sampler contradict each other (the sampler decides "
            "the order); pass one or the other"
        )
    if isinstance(source, MemshardDataset):
        if fields is not None or prefetch:
            raise ArgumentError(
                "loader(): fields and prefetch belong to the MemshardDataset given; "
                "pass them to MemshardDataset(...) instead"
            )
        dataset = source
    else:
        dataset = MemshardDataset(source, fields, prefetch=prefetch)
    options.setdefault("persistent_workers", num_workers > 0)
    if sharing_strategy is not None:
        options["worker_init_fn"] = _WorkerInit(sharing_strategy, options.get("worker_init_fn"))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        **options,
    )


class _WorkerInit:
    """Sets the tensor sharing strategy in a worker, then runs the user's ``worker_init_fn``.
    A class, not a closure, so that it pickles for ``spawn`` and ``forkserver`` workers."""

    def __init__(self, strategy: str, then: Callable[[int], None] | None) -> None:
        self.strategy = strategy
        self.then = then

    def __call__(self, worker_id: int) -> None:
        torch.multiprocessing.set_sharing_strategy(self.strategy)  # type: ignore[no-untyped-call]
        if self.then is not None:
            self.then(worker_id)


class ShardAwareSampler(Sampler[int]):
    """Shuffles shard by shard, so that reads stay local, with ``DistributedSampler`` semantics.

    Each epoch, the shards are put in a random order and grouped into windows of
    ``window_shards`` consecutive shards (in that order); the rows of each window are shuffled
    together. The order depends only on ``(seed, epoch)``: call :meth:`set_epoch` before each
    epoch, as with ``DistributedSampler``. Larger windows shuffle better and read less locally.

    With several replicas (DDP ranks) every rank gets ``len(self)`` indices: the epoch's order
    is padded by repeating its start (or, with ``drop_last``, cut) to a multiple of
    ``num_replicas``, and rank ``r`` takes positions ``r, r + num_replicas, ...``. The ranks are
    disjoint and, without padding, cover every row exactly once. ``num_replicas`` and ``rank``
    default to the initialised ``torch.distributed`` process group, else to 1 and 0.

    Raises:
        SamplerError: ``num_replicas`` < 1, ``rank`` outside it, ``window_shards`` < 1.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Dataset | MemshardDataset,
        *,
        window_shards: int = DEFAULT_WINDOW_SHARDS,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        dataset = _memshard_dataset(source)
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = (
            (dist.get_world_size() if distributed else 1) if num_replicas is None else num_replicas
        )
        rank = (dist.get_rank() if distributed else 0) if rank is None else rank
        _check_count("num_replicas (world size)", num_replicas, minimum=1)
        _check_count("window_shards", window_shards, minimum=1)
        _check_count("seed", seed, minimum=0)
        if not _is_int(rank) or not 0 <= rank < num_replicas:
            raise SamplerError(f"rank must be an integer in [0, {num_replicas}), got {rank!r}")
        self._shard_starts, shard_rows = dataset.shards.columns()
        # A dataset view may end inside its last shard (a pickled snapshot of a growing
        # dataset), so a shard's rows are cut at len(dataset).
        self._shard_rows = np.minimum(shard_rows, len(dataset) - self._shard_starts)
        self._rows = len(dataset)
        self.window_shards = window_shards
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self._rows // num_replicas
        else:
            self.num_samples = math.ceil(self._rows / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration.

        Raises:
            SamplerError: ``epoch`` is not an integer >= 0.
        """
        _check_count("epoch", epoch, minimum=0)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def epoch_order(self) -> np.ndarray:
        """Every row once, in this epoch's order, before padding and rank selection."""
        if not self.shuffle:
            return np.arange(self._rows, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self._shard_starts.size)
        pieces = []
        for first in range(0, order.size, self.window_shards):
            window = order[first : first + self.window_shards]
            rows = np.concatenate(
                [
                    np.arange(self._shard_starts[s], self._shard_starts[s] + self._shard_rows[s])
                    for s in window
                ]
            )
            pieces.append(rng.permutation(rows))
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def indices(self) -> np.ndarray:
        """This rank's indices for this epoch."""
        order = self.epoch_order()
        if self.total_size > order.size and order.size:
            repeats = math.ceil((self.total_size - order.size) / order.size)
            order = np.concatenate([order, *([order] * repeats)])
        order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        mine = self.indices()
        for start in range(0, mine.size, 1 << 16):
            yield from mine[start : start + (1 << 16)].tolist()


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_count(name: str, value: Any, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise SamplerError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _memshard_dataset(source: Any) -> Dataset:
    if isinstance(source, MemshardDataset):
        return source.dataset
    if isinstance(source, Dataset):
        return source
    return reader.open(source)
