"""DataLoader epochs over every format and the memory their workers gain; and what every
DataLoader measurement here shares: a settable sampler, draining a loader, workers that report
their memory.

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
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

import memshard.torch as mt

from .compare import Effort
from .core import BATCH_SIZE, Figure, Figures, alternate, timed_call
from .formats import Format, Reader
from .system import announce, memory_of

WORKER_COUNTS = (0, 2)


class Order(Sampler[int]):
    """Yields :attr:`rows`, which may be set again between epochs, so that every candidate of
    a comparison reads the very same indices."""

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = np.empty(0, dtype=np.int64) if rows is None else rows

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows.tolist())

    def __len__(self) -> int:
        return len(self.rows)


def drain(loader: DataLoader[Any]) -> int:
    """Iterate ``loader`` once (its batches dicts of tensors); return the samples received."""
    return sum(len(next(iter(batch.values()))) for batch in loader)


class WorkerProbe:
    """DataLoader workers, forked, that report their pid and memory before their first batch."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("fork")
        self.queue = self.context.Queue()

    def options(self, workers: int) -> dict[str, Any]:
        """DataLoader options: ``workers`` persistent workers that report to this probe."""
        if not workers:
            return {"num_workers": 0}
        return {
            "num_workers": workers,
            "multiprocessing_context": self.context,
            "persistent_workers": True,
            "worker_init_fn": partial(announce, self.queue),
        }

    def started(self, workers: int) -> list[tuple[int, int, dict[str, int]]]:
        """``(worker id, pid, memory at start)`` of the ``workers`` workers started last."""
        return sorted(self.queue.get(timeout=120) for _ in range(workers))


class BatchedDataset(TorchDataset[dict[str, torch.Tensor]]):
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

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = self.format.open(), os.getpid()
        out = self.format.empty(len(rows))
        self._reader.gather(np.asarray(rows), out)
        return {"x": torch.from_numpy(out)}

    def close(self) -> None:
        """Close this process's reader, if it opened one."""
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None


def run_epoch(fmt: Format, order: np.ndarray, workers: int) -> tuple[float, list[dict[str, Any]]]:
    """Samples per second of one pass over ``order`` through ``fmt``'s loader with ``workers``
    workers, and each worker's memory at its start and at the end (workers are kept alive to
    the end of the pass so that it can be read)."""
    probe = WorkerProbe()
    options = probe.options(workers)
    dataset = BatchedDataset(fmt)
    if fmt.name == "memshard":
        loader: DataLoader[Any] = mt.loader(
            fmt.root, batch_size=BATCH_SIZE, sampler=Order(order), fields=["x"], **options
        )
    else:
        batches = BatchSampler(Order(order), BATCH_SIZE, drop_last=False)
        loader = DataLoader(dataset, sampler=batches, batch_size=None, **options)
    elapsed, samples = timed_call(partial(drain, loader))
    if samples != len(order):
        raise RuntimeError(f"{fmt.name}: the loader gave {samples} samples of {len(order)}")
    memory = [
        {"worker": worker, "start": start, "end": memory_of(pid)}
        for worker, pid, start in probe.started(workers)
    ]
    del loader
    dataset.close()
    gc.collect()
    return samples / (elapsed / 1e9), memory


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
            rate, memory = run_epoch(by_name[name], orders[repeat][: samples[name]], workers)
            workers_seen[name] += memory
            return rate

        rates = alternate(list(by_name), effort.slow_repeats, run)
        results[f"loader{workers}"] = {
            name: Figure.of(values, samples[name]) for name, values in rates.items()
        }
    results["growth"] = {name: growth(seen) for name, seen in workers_seen.items() if seen}
    return results


def growth(workers: list[dict[str, Any]]) -> Figure:
    """The largest ``Private_Dirty`` growth of any worker of any epoch, with the memory
    (``rss``, ``uss``, ``private``) that worker ended with."""
    grown = [w["end"]["private"] - w["start"]["private"] for w in workers]
    return Figure.of([float(max(grown))], len(workers), **workers[int(np.argmax(grown))]["end"])
