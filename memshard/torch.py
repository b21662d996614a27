"""PyTorch integration: a batched, fork-safe ``Dataset``, its collate function, a DataLoader
helper, and a shard-aware shuffling sampler with DDP support; ragged batches as tensors (padded,
packed or nested) and a batch sampler that groups rows of similar length.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

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
    SchemaError,
    TransformError,
)
from .indexing import as_index_array
from .ragged import Ragged, checked_lengths
from .reader import Dataset

Sample = dict[str, torch.Tensor]
Transform = Callable[[Sample], Mapping[str, torch.Tensor]]

#: How :func:`loader`'s workers hand batches to the main process (see :func:`loader`).
WORKER_SHARING_STRATEGY = "file_system"
#: Shards per shuffling window of :class:`ShardAwareSampler` by default.
DEFAULT_WINDOW_SHARDS = 4
#: Batches per length-sorted window of :class:`LengthGroupedSampler` by default.
DEFAULT_WINDOW_BATCHES = 64
#: The most elements a packed batch holds: its offsets are int32, as flash-attn's
#: ``cu_seqlens`` are.
MAX_PACKED_ELEMENTS = 2**31 - 1


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
        ragged = [name for name in self.fields if None in described[name].shape]
        if ragged:
            raise SchemaError(
                f"{self.dataset.path}: field {ragged[0]!r} is ragged; the torch Dataset does not "
                "batch ragged fields yet"
            )
        # (torch dtype, sample shape) of each selected field, worked out once, not per batch.
        self._sample_types = {
            name: (_torch_dtype(described[name].dtype), _fixed(described[name].shape))
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


def _fixed(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(dim for dim in shape if dim is not None)


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


class _Epochs:
    """A sampler whose order depends on ``(seed, epoch)``, like ``DistributedSampler``."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration.

        Raises:
            SamplerError: ``epoch`` is not an integer >= 0.
        """
        _check_count("epoch", epoch, minimum=0)
        self.epoch = epoch


class ShardAwareSampler(_Epochs, Sampler[int]):
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


# -- ragged batches as tensors ----------------------------------------------------------------


class PaddedTensors(NamedTuple):
    """A ragged batch padded to one length: ``values`` of shape ``(rows, max_len, *tail)`` and
    int64 ``lengths`` of shape ``(rows,)``, each row's length in ``values``."""

    values: torch.Tensor
    lengths: torch.Tensor


class PackedTensors(NamedTuple):
    """A ragged batch packed: ``values`` of shape ``(total, *tail)``, the rows back to back;
    int32 ``offsets`` of ``rows + 1`` entries from 0 to ``total`` (row ``i`` is
    ``values[offsets[i]:offsets[i + 1]]``); ``max_len``, the longest row's length.

    This is the layout of flash-attn's varlen kernels (``cu_seqlens=offsets``,
    ``max_seqlen=max_len``) and of ``nn.EmbeddingBag`` (built with
    ``include_last_offset=True``, called as ``bag(values, offsets)``; it wants ``offsets`` of
    the ``values`` dtype, so int32 token ids, or ``offsets.long()`` for int64 ones).
    """

    values: torch.Tensor
    offsets: torch.Tensor
    max_len: int


@dataclass(frozen=True)
class Pad:
    """The ``"pad"`` mode of :func:`ragged_tensors`, with its options (see :func:`padded`).

    Raises:
        ArgumentError: ``max_len`` is not None or an integer >= 0.
    """

    max_len: int | None = None
    pad_value: Any = 0

    def __post_init__(self) -> None:
        if self.max_len is not None and (not _is_int(self.max_len) or self.max_len < 0):
            raise ArgumentError(
                f"Pad: max_len must be None or an integer >= 0, got {self.max_len!r}"
            )


#: How :func:`ragged_tensors` turns a ragged field into tensors: ``"pad"`` (or :class:`Pad`
#: for options), ``"packed"`` or ``"nested"``.
RaggedMode = Literal["pad", "packed", "nested"] | Pad


def padded(ragged: Ragged, *, max_len: int | None = None, pad_value: Any = 0) -> PaddedTensors:
    """The rows padded with ``pad_value`` to ``max_len`` (default: the longest row's length),
    longer rows cut to it; see :meth:`memshard.ragged.Ragged.to_padded`.

    Raises:
        ArgumentError: ``max_len`` is not an integer >= 0.
        CastError: ``pad_value`` is not a number the dtype holds.
    """
    array, lengths = ragged.to_padded(pad_value=pad_value, max_len=max_len)
    return PaddedTensors(torch.from_numpy(array), torch.from_numpy(lengths))


def packed(ragged: Ragged) -> PackedTensors:
    """The rows back to back with int32 offsets (see :class:`PackedTensors`); ``values`` is a
    copy (a batch's values are read-only, often a view of a mapped shard).

    Raises:
        ArgumentError: more than :data:`MAX_PACKED_ELEMENTS` elements (int32 offsets).
    """
    total = len(ragged.values)
    if total > MAX_PACKED_ELEMENTS:
        raise ArgumentError(
            f"a packed batch holds at most {MAX_PACKED_ELEMENTS} elements (its offsets are "
            f"int32), this one has {total}: use smaller batches, or the 'pad' or 'nested' mode"
        )
    return PackedTensors(
        torch.from_numpy(np.array(ragged.values)),
        torch.from_numpy(ragged.offsets.astype(np.int32)),
        int(ragged.lengths.max(initial=0)),
    )


def nested(ragged: Ragged) -> torch.Tensor:
    """The rows as one nested tensor of the jagged layout (``layout=torch.jagged``), of shape
    ``(rows, j, *tail)``; ``unbind()`` gives the rows. Built from a copy of ``values`` and the
    offsets as they are (``torch.nested.nested_tensor_from_jagged``), not row by row."""
    values = torch.from_numpy(np.array(ragged.values))
    offsets = torch.from_numpy(np.array(ragged.offsets))
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def ragged_tensors(name: str, ragged: Ragged, mode: RaggedMode) -> dict[str, torch.Tensor]:
    """The tensors of ragged field ``name`` in a batch, by ``mode``:

    - ``"pad"`` or :class:`Pad`: ``{name: values, name + "_lengths": lengths}`` (see
      :func:`padded`);
    - ``"packed"``: ``{name: values, name + "_offsets": offsets}`` (see :func:`packed`; the
      longest row's length is ``offsets.diff().max()``);
    - ``"nested"``: ``{name: nested_tensor}`` (see :func:`nested`).

    Raises:
        ArgumentError: an unknown ``mode``, or see :func:`padded` and :func:`packed`.
        CastError: see :func:`padded`.
    """
    if mode == "pad" or isinstance(mode, Pad):
        options = mode if isinstance(mode, Pad) else Pad()
        values, lengths = padded(ragged, max_len=options.max_len, pad_value=options.pad_value)
        return {name: values, f"{name}_lengths": lengths}
    if mode == "packed":
        result = packed(ragged)
        return {name: result.values, f"{name}_offsets": result.offsets}
    if mode == "nested":
        return {name: nested(ragged)}
    raise ArgumentError(
        f"field {name!r}: unknown ragged mode {mode!r}; use 'pad', Pad(max_len=..., "
        "pad_value=...), 'packed' or 'nested'"
    )


# -- batches of rows of similar length --------------------------------------------------------


class LengthGroupedSampler(_Epochs, Sampler[list[int]]):
    """A batch sampler (``DataLoader(..., batch_sampler=...)``) whose batches hold rows of
    similar length, so that padding each batch to its longest row wastes little.

    Each epoch, the rows are shuffled and cut into windows of ``window`` batches
    (``window * batch_size`` rows); each window is sorted by length (ties keep the shuffled
    order) and cut into batches, and the batches of every window are shuffled together. A
    larger window wastes less padding and makes batches less random. With ``shuffle=False``
    nothing is shuffled: the windows follow the row order and the batches come window by
    window, each window shortest first.

    Every row is in exactly one batch per epoch; only one batch, the last cut, may have fewer
    than ``batch_size`` rows, and ``drop_last`` leaves it out. The order depends only on
    ``(seed, epoch)``: call :meth:`set_epoch` before each epoch.

    Parameters:
        lengths: each row's length (a 1-d array of integers >= 0, or a
            :class:`~memshard.ragged.Ragged` batch, whose lengths are used).

    Raises:
        SamplerError: ``lengths`` not a 1-d array of integers >= 0; ``batch_size``, ``window``
            < 1; ``seed`` < 0.
    """

    def __init__(
        self,
        lengths: Any,
        batch_size: int,
        *,
        window: int = DEFAULT_WINDOW_BATCHES,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        _check_count("batch_size", batch_size, minimum=1)
        _check_count("window", window, minimum=1)
        _check_count("seed", seed, minimum=0)
        self._lengths = _checked_lengths(lengths)
        self.batch_size = batch_size
        self.window = window
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        rows = self._lengths.size
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches, each an int64 array of row indices, in order."""
        rows = self._lengths.size
        if rows == 0:
            return []
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(rows) if self.shuffle else np.arange(rows, dtype=np.int64)
        windows = np.arange(rows) // (self.window * self.batch_size)
        order = order[np.lexsort((self._lengths[order], windows))]  # stable: ties stay shuffled
        batches = np.split(order, range(self.batch_size, rows, self.batch_size))
        if self.drop_last and batches[-1].size < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            yield batch.tolist()


def padding_waste(lengths: Any, batches: Iterable[Sequence[int] | np.ndarray]) -> float:
    """The share of padding in ``batches`` padded each to its longest row: over all batches,
    ``(rows * longest - elements) / (rows * longest)``; 0.0 when that is 0.

    ``lengths`` is each row's length (as for :class:`LengthGroupedSampler`), ``batches`` the
    row indices of each batch.

    Raises:
        SamplerError: ``lengths`` not a 1-d array of integers >= 0.

    Example:
        >>> padding_waste([1, 3, 2, 2], [[0, 1], [2, 3]])  # (2*3 - 4 + 2*2 - 4) / 10
        0.2
    """
    checked = _checked_lengths(lengths)
    padded_elements = elements = 0
    for batch in batches:
        selected = checked[np.asarray(batch, dtype=np.int64)]
        if selected.size:
            padded_elements += int(selected.max()) * selected.size
            elements += int(selected.sum())
    return (padded_elements - elements) / padded_elements if padded_elements else 0.0


def _checked_lengths(lengths: Any) -> np.ndarray:
    if isinstance(lengths, Ragged):
        return lengths.lengths
    try:
        array = np.asarray(lengths)
    except (ValueError, TypeError) as exc:
        raise SamplerError(f"lengths must be a 1-d array of integers >= 0 ({exc})") from None
    return checked_lengths(array, error=SamplerError).astype(np.int64, copy=False)
