"""The DataLoader part of :mod:`benchmarks.ragged`: memshard's loader of a ragged field in each
batching mode (``"pad"``, ``"packed"``, ``"nested"``) against the flat memmap pair through a
batched ``Dataset`` with the very same collate, in elements (tokens, stroke points) per second.

Every loader has 2 forked, persistent workers, batches of 256 rows, the ``"file_system"``
sharing strategy (memshard's loader sets it; the flat one gets it from its ``worker_init_fn``)
and reads the same random order. The collate of both is
:func:`memshard.torch.ragged_tensors` on the packed gather, so the figures differ only by the
gather.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.multiprocessing
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

import memshard.torch as mt
from memshard.ragged import Ragged

from .core import BATCH_SIZE, SEED, Figure, alternate, timed_call
from .loaders import Order
from .ragged_data import RaggedWorkload
from .ragged_formats import FlatFiles
from .torch_loader import passthrough

NUM_WORKERS = 2
Mode = Literal["pad", "packed", "nested"]
MODES: tuple[Mode, ...] = ("pad", "packed", "nested")
SHARING_STRATEGY = "file_system"
#: Batches of the untimed pass of every loader before the timed runs.
WARM_BATCHES = 2 * NUM_WORKERS
CONTEXT = multiprocessing.get_context("fork")
Batch = dict[str, torch.Tensor]


def sharing_file_system(worker: int) -> None:
    """``worker_init_fn`` of the flat loaders: the sharing strategy memshard's loader sets."""
    torch.multiprocessing.set_sharing_strategy(SHARING_STRATEGY)  # type: ignore[no-untyped-call]


class FlatBatched(TorchDataset[Batch]):
    """The flat pair, batched: ``dataset[indices]`` is one gather (see
    :meth:`benchmarks.ragged_formats.FlatFiles.gather`) turned into ``mode``'s tensors. The
    files are mapped on first use in each process."""

    def __init__(self, root: str, workload: RaggedWorkload, mode: Mode) -> None:
        self.root, self.workload, self.mode = root, workload, mode
        self._files: FlatFiles | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.workload.rows

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        if self._files is None or self._pid != os.getpid():
            self._files, self._pid = FlatFiles(self.root, self.workload), os.getpid()
        packed = self._files.gather(np.asarray(indices, dtype=np.int64))
        ragged = Ragged(packed.values, packed.offsets)
        return mt.ragged_tensors(self.workload.name, ragged, self.mode)


def flat_loader(root: str, workload: RaggedWorkload, mode: Mode, order: Order) -> DataLoader[Any]:
    """The flat pair's loader in ``mode``."""
    return DataLoader(
        FlatBatched(root, workload, mode),
        batch_size=BATCH_SIZE,
        sampler=order,
        collate_fn=passthrough,
        num_workers=NUM_WORKERS,
        persistent_workers=True,
        multiprocessing_context=CONTEXT,
        worker_init_fn=sharing_file_system,
    )


def memshard_loader(
    root: str, workload: RaggedWorkload, mode: Mode, order: Order
) -> DataLoader[Any]:
    """memshard's loader in ``mode``: :func:`memshard.torch.loader` over a
    :class:`memshard.torch.MemshardDataset` with ``ragged={field: mode}``."""
    dataset = mt.MemshardDataset(root, ragged={workload.name: mode})
    return mt.loader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=order,
        num_workers=NUM_WORKERS,
        multiprocessing_context=CONTEXT,
    )


def memshard_path() -> str:
    """How memshard's loaders were built, for the report."""
    return "`mt.loader(mt.MemshardDataset(path, ragged={field: mode}), ...)`"


def rows_of(batch: Batch, name: str, mode: Mode) -> int:
    """Rows in a batch of ``mode``."""
    if mode == "pad":
        return len(batch[f"{name}_lengths"])
    if mode == "packed":
        return len(batch[f"{name}_offsets"]) - 1
    return int(batch[name].size(0))


def parts_of(batch: Batch, name: str, mode: Mode) -> list[torch.Tensor]:
    """The tensors that make up a batch of ``mode`` (a nested tensor's values and offsets)."""
    if mode == "nested":
        nested = batch[name]
        return [nested.values(), nested.offsets()]  # type: ignore[attr-defined]
    return [batch[key] for key in sorted(batch)]


def same_batch(first: Batch, other: Batch, name: str, mode: Mode) -> bool:
    """Whether two batches of ``mode`` hold the same tensors."""
    mine, theirs = parts_of(first, name, mode), parts_of(other, name, mode)
    return len(mine) == len(theirs) and all(
        a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)
    )


def drain(loader: DataLoader[Any], name: str, mode: Mode) -> int:
    """Iterate ``loader`` once; the rows received."""
    return sum(rows_of(batch, name, mode) for batch in loader)


Candidate = tuple[Mode, str]
MakeLoader = Callable[[str, RaggedWorkload, Mode, Order], DataLoader[Any]]
BUILDERS: dict[str, MakeLoader] = {"flat": flat_loader, "memshard": memshard_loader}


def measure_loaders(
    root: dict[str, str],
    workload: RaggedWorkload,
    lengths: np.ndarray,
    batches: int,
    repeats: int,
) -> tuple[dict[str, dict[str, Figure]], bool]:
    """Elements per second of each mode's flat and memshard loaders, and whether the loaders
    of a mode returned the same batches and every row of each run.

    ``root`` holds the flat pair's and the memshard dataset's paths by format name. Each
    repeat reads a fresh random order of ``batches`` batches, the same for every loader. An
    untimed pass of :data:`WARM_BATCHES` batches first starts the workers (each builds at
    least one batch: a worker's first nested tensor imports much of torch) and checks them.
    """
    rows = min(workload.rows, batches * BATCH_SIZE)
    rng = np.random.default_rng(SEED)
    order = Order(rng.permutation(workload.rows)[: WARM_BATCHES * BATCH_SIZE])
    orders = [rng.permutation(workload.rows)[:rows] for _ in range(repeats)]
    candidates: list[Candidate] = [(mode, name) for mode in MODES for name in BUILDERS]
    loaders = {c: BUILDERS[c[1]](root[c[1]], workload, c[0], order) for c in candidates}
    warm = {candidate: list(loader) for candidate, loader in loaders.items()}
    right = all(
        len(warm[(mode, "flat")]) == len(warm[(mode, "memshard")])
        and all(
            same_batch(flat, memshard, workload.name, mode)
            for flat, memshard in zip(warm[(mode, "flat")], warm[(mode, "memshard")], strict=False)
        )
        for mode in MODES
    )
    warm.clear()

    def run(candidate: Candidate, repeat: int) -> float:
        nonlocal right
        order.rows = orders[repeat]
        gc.collect()
        elapsed, received = timed_call(
            partial(drain, loaders[candidate], workload.name, candidate[0])
        )
        right = right and received == len(orders[repeat])
        return float(lengths[orders[repeat]].sum()) / (elapsed / 1e9)

    samples = alternate(candidates, repeats, run)
    loaders.clear()  # stops their workers
    gc.collect()
    figures: dict[str, dict[str, Figure]] = {mode: {} for mode in MODES}
    for (mode, name), values in samples.items():
        figures[mode][name] = Figure.of(values, rows)
    return figures, right
