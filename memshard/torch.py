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

In a DataLoader worker, every tensor of a batch is made in shared memory and the rows are
gathered straight into it, so handing the batch to the main process copies nothing (torch
would otherwise copy each tensor to shared memory when it sends it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
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
    CastError,
    FieldNotFoundError,
    InvalidIndexError,
    MemshardError,
    SamplerError,
    TransformError,
)
from .indexing import as_index_array
from .ragged import Ragged, checked_lengths
from .reader import Dataset, RaggedColumn

Sample = dict[str, torch.Tensor]
Transform = Callable[[Sample], Mapping[str, torch.Tensor]]

#: How :func:`loader`'s workers hand batches to the main process (see :func:`loader`).
WORKER_SHARING_STRATEGY = "file_system"
#: Rows per batch of :func:`loader` by default.
DEFAULT_BATCH_SIZE = 256
#: Shards per shuffling window of :class:`ShardAwareSampler` by default.
DEFAULT_WINDOW_SHARDS = 4
#: Batches per length-sorted window of :class:`LengthGroupedSampler` by default.
DEFAULT_WINDOW_BATCHES = 64
#: The most elements a packed batch holds: its offsets are int32, as flash-attn's
#: ``cu_seqlens`` are.
MAX_PACKED_ELEMENTS = 2**31 - 1
#: The key of a padded field's row lengths is the field's name and this suffix.
LENGTHS_SUFFIX = "_lengths"
#: The key of a packed field's offsets is the field's name and this suffix.
OFFSETS_SUFFIX = "_offsets"


class Batch(Sequence[Sample]):
    """A gathered batch: ``tensors`` maps each field to its tensors (see
    :class:`MemshardDataset`), ``len(batch)`` rows.

    As a sequence, ``batch[i]`` is row ``i`` as one sample dict (views of the batch tensors),
    so code that expects a list of samples still works; :func:`collate` returns ``tensors``
    directly instead. A fixed field gives its row; a padded ragged field its padded row and
    its length (``name + "_lengths"``), so torch's ``default_collate`` stacks the samples
    back into the batch; a packed field (``packed`` names them; its offsets are
    ``name + "_offsets"``) or a nested one gives the row, shape ``(n, *tail)``, and no
    offsets (rows of different lengths do not stack: use :func:`collate`).

    Raises:
        InvalidIndexError: ``batch[i]`` with ``i`` not an integer, or out of range.
    """

    __slots__ = ("_packed", "_size", "tensors")

    def __init__(
        self, tensors: dict[str, torch.Tensor], size: int, packed: Collection[str] = ()
    ) -> None:
        self.tensors = tensors
        self._size = size
        self._packed = frozenset(packed)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[position] for position in range(self._size)[index]]
        position = _row_index(index)
        if not -self._size <= position < self._size:
            raise InvalidIndexError(
                f"index {position} is out of range for a batch of {self._size} rows"
            )
        position %= self._size
        tensors = self.tensors
        packed = {name for name in self._packed if name + OFFSETS_SUFFIX in tensors}
        offsets = {name + OFFSETS_SUFFIX for name in packed}
        sample = {}
        for name, tensor in tensors.items():
            if name in packed:
                bounds = tensors[name + OFFSETS_SUFFIX]
                sample[name] = tensor[int(bounds[position]) : int(bounds[position + 1])]
            elif name not in offsets:
                sample[name] = tensor[position]
        return sample


def collate(batch: Any) -> Any:
    """Collate function for :class:`MemshardDataset`: a :class:`Batch` becomes its dict of
    tensors with no copy; anything else goes to torch's ``default_collate``."""
    if isinstance(batch, Batch):
        return batch.tensors
    return default_collate(batch)


class MemshardDataset(TorchDataset[Sample]):
    """A map-style torch ``Dataset`` over a memshard dataset.

    A batch (:meth:`__getitems__`) is a dict of tensors. A fixed field ``name`` gives one
    tensor of shape ``(rows, *sample_shape)`` under ``name``. A ragged field (rows of
    varying length, see :mod:`memshard.ragged`) gives what its mode in ``ragged`` says (see
    :func:`ragged_tensors`):

    - ``"pad"`` (the default) or :class:`Pad`: ``name``, the rows padded to the longest
      (or to ``Pad.max_len``, longer rows cut), shape ``(rows, width, *tail)``, and
      ``name + "_lengths"``, int64, each row's length in it;
    - ``"packed"``: ``name``, the rows back to back, shape ``(elements, *tail)``, and
      ``name + "_offsets"``, int32, ``rows + 1`` entries (flash-attn's ``cu_seqlens``, an
      ``EmbeddingBag``'s offsets);
    - ``"nested"``: ``name``, a nested tensor of the jagged layout (``torch.jagged``).

    ``"pad"`` is the default because every model takes it; ``"packed"`` moves and computes
    no padding, for models that take variable-length batches.

    One sample (:meth:`__getitem__`) holds each field's row as it is stored: a ragged row is
    a tensor of shape ``(n, *tail)``, neither padded nor cut.

    Parameters:
        source: a dataset path, or a :class:`memshard.Dataset` opened already (even in the
            parent of forked workers: it holds no descriptor and pickles by path).
        fields: the fields to read (default: all), in this order.
        ragged: ragged field name -> mode (``"pad"``, :class:`Pad`, ``"packed"`` or
            ``"nested"``); a selected ragged field not named is padded.
        transform: applied to each sample dict (as :meth:`__getitem__` gives it); must return
            a mapping of field -> tensor, a ragged field's value a row of shape
            ``(n, *tail)``. The samples of a batch are then batched again, each ragged field
            by its mode. A per-sample transform makes batched reads split the batch, so
            prefer ``batch_transform`` where you can.
        batch_transform: applied to each batch dict (the tensors above).
        prefetch: before each batch's gather, ask the kernel to read all its rows at once
            (:meth:`memshard.Dataset.prefetch`). Several times faster when the data is not in
            the page cache (a first epoch, a dataset larger than RAM); a small cost otherwise.

    Raises:
        FieldNotFoundError: an unknown name in ``fields`` or ``ragged``.
        ArgumentError: a name in ``ragged`` that is not a selected ragged field, an unknown
            mode, or a key a mode adds (``tokens_lengths``) that is also a selected field.
        CastError: a :class:`Pad` ``pad_value`` that the field's dtype cannot hold.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Dataset,
        fields: Sequence[str] | None = None,
        *,
        ragged: Mapping[str, RaggedMode] | None = None,
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
        #: The mode of every selected ragged field.
        self.ragged: dict[str, RaggedMode] = self._ragged_modes(ragged or {})
        described = self.dataset.fields
        # (torch dtype, sample shape) of each selected fixed field, worked out once.
        self._sample_types = {
            name: (_torch_dtype(described[name].dtype), _fixed(described[name].shape))
            for name in self.fields
            if name not in self.ragged
        }
        self._packed = [name for name, mode in self.ragged.items() if mode == "packed"]
        self.prefetch = prefetch

    def _ragged_modes(self, given: Mapping[str, RaggedMode]) -> dict[str, RaggedMode]:
        where = self.dataset.path
        described = self.dataset.fields
        for name in given:
            self.dataset.column(name)
            if name not in self.fields or None not in described[name].shape:
                raise ArgumentError(
                    f"{where}: ragged= names field {name!r}, which is not a selected ragged "
                    f"field (selected: {self.fields}, of shapes "
                    f"{[described[field].shape for field in self.fields]})"
                )
        modes: dict[str, RaggedMode] = {
            name: given.get(name, "pad") for name in self.fields if None in described[name].shape
        }
        for name, mode in modes.items():
            _check_mode(name, mode)
            added = set(_keys_of(name, mode)) - {name}
            clash = sorted(added & set(self.fields))
            if clash:
                raise ArgumentError(
                    f"{where}: field {name!r} in mode {mode!r} adds the key {clash[0]!r}, "
                    "which is also a selected field; leave one of them out, or choose "
                    "another mode"
                )
            if isinstance(mode, Pad):
                _check_pad_value(where, name, mode, described[name].dtype)
        return modes

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Label vocabularies of the selected fields that have one."""
        return {k: v for k, v in self.dataset.labels.items() if k in self.fields}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        """One sample as a dict of tensors (copied out of the read-only mapping); a ragged
        field's row has shape ``(n, *tail)``."""
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
        memory = _Memory(shared=get_worker_info() is not None)
        if self.transform is None or rows.size == 0:
            tensors = self._batch(rows, memory)
        else:
            tensors = self._transformed(rows, memory)
        tensors = _apply(self.batch_transform, tensors, "batch_transform")
        return Batch(tensors, rows.size, self._packed)

    def _gather(
        self, rows: np.ndarray, memory: _Memory, direct: Collection[str]
    ) -> tuple[dict[str, torch.Tensor], dict[str, _Gathered]]:
        """Rows ``rows`` of each field: fixed fields as tensors made by ``memory``; ragged
        fields as batches whose values are gathered into a tensor, made by ``memory`` for
        the fields in ``direct`` (their values are handed on as they are) and in private
        memory for the others."""
        fixed = {
            name: memory.empty((rows.size, *shape), dtype)
            for name, (dtype, shape) in self._sample_types.items()
        }
        values = {name: _Into(memory if name in direct else _PRIVATE) for name in self.ragged}
        out: dict[str, Any] = {name: tensor.numpy() for name, tensor in fixed.items()}
        arrays = self.dataset.take(rows, out={**out, **values}, fields=self.fields)
        ragged = {name: _Gathered(arrays[name], into.tensor()) for name, into in values.items()}
        return fixed, ragged

    def _batch(self, rows: np.ndarray, memory: _Memory) -> dict[str, torch.Tensor]:
        """The batch of ``rows``, gathered into tensors made by ``memory``."""
        # A packed or nested field's values are gathered into the tensor handed on; a padded
        # field's are copied once more, into the padded tensor.
        direct = {name for name, mode in self.ragged.items() if mode in ("packed", "nested")}
        fixed, ragged = self._gather(rows, memory, direct)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.fields:
            if name in ragged:
                batch, values = ragged[name]
                owned = values if name in direct else None
                tensors.update(_tensors(name, batch, self.ragged[name], memory, owned))
            else:
                tensors[name] = fixed[name]
        return tensors

    def _transformed(self, rows: np.ndarray, memory: _Memory) -> dict[str, torch.Tensor]:
        """The batch of ``rows`` split into samples, each transformed, batched again."""
        fixed, ragged = self._gather(rows, _PRIVATE, ())
        bounds = {name: gathered.batch.offsets.tolist() for name, gathered in ragged.items()}
        samples = []
        for row in range(rows.size):
            sample = {}
            for name in self.fields:
                if name in ragged:
                    start, stop = bounds[name][row], bounds[name][row + 1]
                    sample[name] = ragged[name].values[start:stop]
                else:
                    sample[name] = fixed[name][row]
            samples.append(_apply(self.transform, sample, "transform"))
        return self._collate(samples, memory)

    def _collate(self, samples: list[Sample], memory: _Memory) -> dict[str, torch.Tensor]:
        """Transformed samples batched: ragged fields by their mode, others stacked."""
        tensors: dict[str, torch.Tensor] = {}
        for name in samples[0]:
            column = [sample[name] for sample in samples]
            if name not in self.ragged:
                tensors[name] = default_collate(column)
                continue
            try:
                batch = Ragged.from_rows([row.numpy() for row in column])
            except MemshardError as exc:
                raise TransformError(
                    f"transform {getattr(self.transform, '__name__', self.transform)!r}: the "
                    f"rows it returned for ragged field {name!r} do not batch ({exc})"
                ) from None
            tensors.update(_tensors(name, batch, self.ragged[name], memory, None))
        return tensors


class _Gathered(NamedTuple):
    """A ragged field's rows, and the tensor whose memory holds their values."""

    batch: Ragged
    values: torch.Tensor


def _check_mode(name: str, mode: Any) -> None:
    if not (isinstance(mode, Pad) or (isinstance(mode, str) and mode in _MODES)):
        raise ArgumentError(
            f"field {name!r}: unknown ragged mode {mode!r}; use 'pad', Pad(max_len=..., "
            "pad_value=...), 'packed' or 'nested'"
        )


def _keys_of(name: str, mode: RaggedMode) -> tuple[str, ...]:
    """The keys of the tensors ragged field ``name`` gives in ``mode``."""
    if mode == "packed":
        return (name, name + OFFSETS_SUFFIX)
    if mode == "nested":
        return (name,)
    return (name, name + LENGTHS_SUFFIX)


def _check_pad_value(where: str, name: str, mode: Pad, dtype: np.dtype[Any]) -> None:
    try:
        Ragged._of(np.empty(0, dtype), np.zeros(1, np.int64)).to_padded(mode.pad_value)
    except CastError as exc:
        raise CastError(f"{where}: field {name!r}: {exc}") from None


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


# -- where a batch's tensors are made ---------------------------------------------------------


class _Memory:
    """Makes a batch's tensors: in shared memory in a DataLoader worker (``shared``), so that
    handing the batch to the main process does not copy it, as torch's own collate does."""

    def __init__(self, shared: bool) -> None:
        self.shared = shared

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A new uninitialised tensor."""
        if not self.shared:
            return torch.empty(shape, dtype=dtype)
        # As torch's default_collate does in a worker: made in shared memory, where
        # empty(...).share_memory_() would make it elsewhere and copy it there.
        nbytes = math.prod(shape) * dtype.itemsize
        storage = torch.UntypedStorage._new_shared(nbytes)  # type: ignore[no-untyped-call]
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)

    def copy(self, array: np.ndarray) -> torch.Tensor:
        """A new tensor holding a copy of ``array``."""
        tensor = self.empty(array.shape, _torch_dtype(array.dtype))
        tensor.numpy()[...] = array
        return tensor


_PRIVATE = _Memory(shared=False)


class _Into:
    """An :data:`~memshard.ragged.Allocator` whose arrays are the memory of tensors made by
    ``memory``: the gather of a ragged field writes its values straight into a tensor, kept
    as :meth:`tensor`."""

    def __init__(self, memory: _Memory) -> None:
        self._memory = memory
        self._tensor: torch.Tensor | None = None

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        self._tensor = self._memory.empty(shape, _torch_dtype(dtype))
        array: np.ndarray = self._tensor.numpy()
        return array

    def tensor(self) -> torch.Tensor:
        """The tensor of the last array made."""
        if self._tensor is None:
            raise RuntimeError("_Into.tensor(): no array was made")  # a bug in this module
        return self._tensor


def loader(
    source: str | os.PathLike[str] | Dataset | MemshardDataset,
    *,
    batch_size: int | None = None,
    fields: Sequence[str] | None = None,
    ragged: Mapping[str, RaggedMode] | None = None,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    batch_sampler: Sampler[list[int]] | Iterable[list[int]] | None = None,
    num_workers: int = 0,
    prefetch: bool = False,
    sharing_strategy: str | None = WORKER_SHARING_STRATEGY,
    **options: Any,
) -> DataLoader[Sample]:
    """A ``DataLoader`` on the fast path: batched gathers and :func:`collate`.

    Workers are kept alive between epochs (``persistent_workers``) when there are any.
    ``fields``, ``ragged`` and ``prefetch`` are passed to :class:`MemshardDataset`.

    ``batch_size`` is :data:`DEFAULT_BATCH_SIZE` unless a ``batch_sampler`` (such as
    :class:`LengthGroupedSampler`) makes the batches. ``shuffle=True`` draws a new random
    order each epoch. A ``sampler``, ``shuffle`` and a ``batch_sampler`` each decide the
    order, so each contradicts the others (:class:`~memshard.errors.ArgumentError`), as a
    ``batch_size`` contradicts a ``batch_sampler``.

    ``sharing_strategy`` is set in each worker (after any ``worker_init_fn`` you pass) and
    decides how a batch reaches the main process. With torch's default,
    ``"file_descriptor"``, every tensor's descriptor is handed over through a connection to a
    helper thread of the worker, which costs about as much as gathering a whole batch of small
    rows; ``"file_system"`` (the default here) names the shared memory instead, and torch's
    ``torch_shm_manager`` removes it once no process uses it. ``None`` leaves torch's setting.
    Other keyword arguments go to ``DataLoader`` unchanged.
    """
    deciders = [
        name
        for name, given in (("shuffle=True", shuffle), ("a sampler", sampler is not None),
                            ("a batch_sampler", batch_sampler is not None))
        if given
    ]  # fmt: skip
    if len(deciders) > 1:
        raise ArgumentError(
            f"loader(): {' and '.join(deciders)} contradict each other (each decides the "
            "order); pass one of them"
        )
    if batch_sampler is not None and batch_size is not None:
        raise ArgumentError(
            "loader(): a batch_size and a batch_sampler contradict each other (the batch "
            "sampler makes the batches); pass one or the other"
        )
    if isinstance(source, MemshardDataset):
        if fields is not None or ragged is not None or prefetch:
            raise ArgumentError(
                "loader(): fields, ragged and prefetch belong to the MemshardDataset given; "
                "pass them to MemshardDataset(...) instead"
            )
        dataset = source
    else:
        dataset = MemshardDataset(source, fields, ragged=ragged, prefetch=prefetch)
    options.setdefault("persistent_workers", num_workers > 0)
    if sharing_strategy is not None:
        options["worker_init_fn"] = _WorkerInit(sharing_strategy, options.get("worker_init_fn"))
    if batch_sampler is not None:
        options["batch_sampler"] = batch_sampler
    else:
        options.update(
            batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            shuffle=shuffle,
            sampler=sampler,
        )
    return DataLoader(dataset, num_workers=num_workers, collate_fn=collate, **options)


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
_MODES = ("pad", "packed", "nested")


def padded(ragged: Ragged, *, max_len: int | None = None, pad_value: Any = 0) -> PaddedTensors:
    """The rows padded with ``pad_value`` to ``max_len`` (default: the longest row's length),
    longer rows cut to it; see :meth:`memshard.ragged.Ragged.to_padded`.

    Raises:
        ArgumentError: ``max_len`` is not an integer >= 0.
        CastError: ``pad_value`` is not a number the dtype holds.
    """
    return _padded(ragged, max_len, pad_value, _PRIVATE)


def packed(ragged: Ragged) -> PackedTensors:
    """The rows back to back with int32 offsets (see :class:`PackedTensors`); ``values`` is a
    copy (a batch's values are read-only, often a view of a mapped shard).

    Raises:
        ArgumentError: more than :data:`MAX_PACKED_ELEMENTS` elements (int32 offsets).
    """
    return _packed(ragged, _PRIVATE, None)


def nested(ragged: Ragged) -> torch.Tensor:
    """The rows as one nested tensor of the jagged layout (``layout=torch.jagged``), of shape
    ``(rows, j, *tail)``; ``unbind()`` gives the rows. Built from a copy of ``values`` and the
    offsets as they are (``torch.nested.nested_tensor_from_jagged``), not row by row."""
    return _nested(ragged, _PRIVATE, None)


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
    return _tensors(name, ragged, mode, _PRIVATE, None)


def _tensors(
    name: str, ragged: Ragged, mode: RaggedMode, memory: _Memory, values: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """:func:`ragged_tensors`, made by ``memory``; ``values``, if given, is a tensor holding
    ``ragged.values`` that a packed or nested result takes as it is (not a copy)."""
    _check_mode(name, mode)
    if mode == "packed":
        result = _packed(ragged, memory, values)
        return {name: result.values, name + OFFSETS_SUFFIX: result.offsets}
    if mode == "nested":
        return {name: _nested(ragged, memory, values)}
    options = mode if isinstance(mode, Pad) else Pad()
    padded_values, lengths = _padded(ragged, options.max_len, options.pad_value, memory)
    return {name: padded_values, name + LENGTHS_SUFFIX: lengths}


def _padded(ragged: Ragged, max_len: int | None, pad_value: Any, memory: _Memory) -> PaddedTensors:
    into = _Into(memory)
    _, lengths = ragged.to_padded(pad_value, max_len, empty=into)
    return PaddedTensors(into.tensor(), memory.copy(lengths))


def _packed(ragged: Ragged, memory: _Memory, values: torch.Tensor | None) -> PackedTensors:
    total = len(ragged.values)
    if total > MAX_PACKED_ELEMENTS:
        raise ArgumentError(
            f"a packed batch holds at most {MAX_PACKED_ELEMENTS} elements (its offsets are "
            f"int32), this one has {total}: use smaller batches, or the 'pad' or 'nested' mode"
        )
    return PackedTensors(
        memory.copy(ragged.values) if values is None else values,
        memory.copy(ragged.offsets.astype(np.int32)),
        int(ragged.lengths.max(initial=0)),
    )


def _nested(ragged: Ragged, memory: _Memory, values: torch.Tensor | None) -> torch.Tensor:
    return torch.nested.nested_tensor_from_jagged(
        memory.copy(ragged.values) if values is None else values, memory.copy(ragged.offsets)
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
        lengths: each row's length: a 1-d array of integers >= 0, a ragged column
            (``dataset["tokens"]``, a :class:`~memshard.reader.RaggedColumn`) or a
            :class:`~memshard.ragged.Ragged` batch, whose lengths are used.
        batch_size: rows per batch.

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

    ``lengths`` is each row's length, or a ragged column or batch (as for
    :class:`LengthGroupedSampler`), ``batches`` the row indices of each batch.

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
    if isinstance(lengths, (Ragged, RaggedColumn)):
        return lengths.lengths
    try:
        array = np.asarray(lengths)
    except (ValueError, TypeError) as exc:
        raise SamplerError(f"lengths must be a 1-d array of integers >= 0 ({exc})") from None
    return checked_lengths(array, error=SamplerError).astype(np.int64, copy=False)
