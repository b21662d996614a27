"""DataLoader epochs over every format, and the memory their worker processes gain.

Each peer is read through the best ``Dataset`` it reasonably supports: a batched one, whose
``__getitem__`` receives a whole batch of indices (``BatchSampler`` as the sampler,
``batch_size=None``) and calls the format's gather, opening its reader once in each process.
memshard goes through :func:`memshard.torch.loader`, its batched path. Every loader walks the
same random order; workers are forked, with torch's default settings for the peers.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

import memshard.torch as mt

from .compare import Effort, Figure, Figures, alternate
from .core import timed
from .formats import Format, Reader
from .system import announce, memory_of

BATCH_SIZE = 256
WORKER_COUNTS = (0, 2)


class Order(Sampler[int]):
    """A fixed sequence of row numbers."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows.tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class BatchedDataset(TorchDataset[torch.Tensor]):
    """A peer's batched ``Dataset``: ``dataset[list_of_rows]`` is one gather, as a tensor.

    The reader is opened on first use in each process, so no handle, connection or
    transaction crosses a fork.
    """

    def __init__(self, fmt: Format) -> None:
        self.format = fmt
        self._reader: Reader | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.format.workload.rows

    def __getitem__(self, rows: list[int]) -> torch.Tensor:  # type: ignore[override]
        if self._pid != os.getpid():
            self._reader, self._pid = self.format.open(), os.getpid()
        assert self._reader is not None
        out = self.format.empty(len(rows))
        self._reader.gather(np.asarray(rows), out)
        return torch.from_numpy(out)

    def close(self) -> None:
        """Close this process's reader, if it opened one."""
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None


@dataclass
class Epoch:
    """One timed pass: samples per second and, with workers, their memory at start and end."""

    rate: float
    workers: list[dict[str, Any]]


def drain_into(loader: DataLoader[Any], counted: list[int]) -> None:
    """Iterate ``loader`` once; append the number of samples it gave to ``counted``."""
    samples = 0
    for batch in loader:
        samples += len(batch["x"] if isinstance(batch, dict) else batch)
    counted.append(samples)


def run_epoch(fmt: Format, order: np.ndarray, workers: int) -> Epoch:
    """Time one pass over ``order`` through ``fmt``'s loader with ``workers`` workers.

    Workers are kept alive to the end of the pass so their memory can be read after it.
    """
    context = multiprocessing.get_context("fork")
    queue = context.Queue() if workers else None
    options: dict[str, Any] = {"num_workers": workers}
    if workers:
        options.update(
            multiprocessing_context=context,
            persistent_workers=True,
            worker_init_fn=lambda worker_id: announce(queue, worker_id),
        )
    dataset: BatchedDataset | None = None
    if fmt.name == "memshard":
        loader: DataLoader[Any] = mt.loader(
            fmt.root, batch_size=BATCH_SIZE, sampler=Order(order), fields=["x"], **options
        )
    else:
        dataset = BatchedDataset(fmt)
        batches = BatchSampler(Order(order), BATCH_SIZE, drop_last=False)
        loader = DataLoader(dataset, sampler=batches, batch_size=None, **options)
    counted: list[int] = []
    elapsed = timed(partial(drain_into, loader, counted))
    samples = counted[0]
    memory = []
    if queue is not None:
        for _ in range(workers):
            worker_id, pid, start = queue.get(timeout=120)
            memory.append({"worker": worker_id, "start": start, "end": memory_of(pid)})
    if samples != len(order):
        raise RuntimeError(f"{fmt.name}: the loader gave {samples} samples of {len(order)}")
    del loader
    if dataset is not None:
        dataset.close()
    gc.collect()
    return Epoch(samples / (elapsed / 1e9), sorted(memory, key=lambda w: w["worker"]))


def samples_for(gather: Figure, gather_rows: int, rows: int, seconds: float) -> int:
    """Samples an epoch should cover to last about ``seconds`` without workers, judged by the
    warm gather figure: whole batches, at least four, at most ``rows``."""
    rate = gather_rows / (gather.value / 1e9)
    wanted = int(rate * seconds) // BATCH_SIZE * BATCH_SIZE
    return max(min(rows, 4 * BATCH_SIZE), min(rows, wanted))


def measure_loaders(
    formats: Sequence[Format],
    gathers: Figures,
    gather_rows: int,
    epoch_rows: int,
    effort: Effort,
    seed: int,
) -> dict[str, Figures]:
    """Samples per second with 0 and 2 workers, and the workers' memory growth.

    A slow format covers fewer samples (see :func:`samples_for`) of the same random order.
    Memory growth is each worker's ``Private_Dirty`` (anonymous memory) at the end of the
    epoch less at its start; RSS and USS at the end also count the page cache it mapped.
    """
    rows = formats[0].workload.rows
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(rows)[:epoch_rows] for _ in range(effort.slow_repeats)]
    by_name = {fmt.name: fmt for fmt in formats}
    seconds = effort.run_seconds * 10
    samples = {
        name: samples_for(gathers[name], gather_rows, epoch_rows, seconds) for name in by_name
    }
    results: dict[str, Figures] = {}
    workers_seen: dict[str, list[dict[str, Any]]] = {name: [] for name in by_name}
    for workers in WORKER_COUNTS:

        def run(name: str, repeat: int, workers: int = workers) -> float:
            epoch = run_epoch(by_name[name], orders[repeat][: samples[name]], workers)
            workers_seen[name].extend(epoch.workers)
            return epoch.rate

        rates = alternate(list(by_name), effort.slow_repeats, run)
        results[f"loader{workers}"] = {
            name: Figure.of(values, samples[name]) for name, values in rates.items()
        }
    results["growth"] = {name: growth(seen) for name, seen in workers_seen.items() if seen}
    return results


def growth(workers: list[dict[str, Any]]) -> Figure:
    """The largest ``Private_Dirty`` growth of any worker of any epoch, with the RSS and USS
    that worker ended with."""
    grown = [w["end"]["private"] - w["start"]["private"] for w in workers]
    worst = workers[int(np.argmax(grown))]
    return Figure.of(
        [float(max(grown))],
        len(workers),
        rss=worst["end"]["rss"],
        uss=worst["end"]["uss"],
        private=worst["end"]["private"],
    )
