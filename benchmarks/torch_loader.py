"""The PyTorch job: memshard's DataLoader path against the loaders people write by hand.

Run from the repository root::

    python -m benchmarks.torch_loader            # full: 1M vectors, ~1 GiB of images (minutes)
    python -m benchmarks.torch_loader --quick    # small sizes, well under a minute (CI runs this)

Every loader has ``num_workers=2`` and ``batch_size=256`` and reads in a shuffled order that all
the candidates of a comparison share. Four measurements:

* **loader speed, vectors** (float32[128]): :func:`memshard.torch.loader` (one batched gather
  per batch, into shared memory in the worker, handed over by name) against the same dataset
  read one item at a time (``__getitem__`` per sample, ``default_collate`` stacks) and against
  one ``np.memmap`` ``.npy`` file with the same batched fetch and pass-through collate.
* **loader speed, images** (float32[3, 64, 64]): memshard against an in-RAM tensor, ``t[idx]``.

  Both also time variants of memshard's own options: ``prefetch=True`` (the cost of
  ``MADV_WILLNEED`` on a warm cache) and ``sharing_strategy=None`` (torch's default strategy,
  as the baselines use); the vectors section profiles the fetch alone against the loader's time
  per batch, to show where a worker's time goes.
* **worker memory**: each worker's anonymous private memory (``Private_Dirty + Swap``) at the
  start and end of the epochs, against a hand-written dataset that keeps its index as a Python
  list of ``(file, row)`` tuples and reads through ``np.memmap``.
* **shard-aware shuffling**: distinct shards and labels per batch for several window sizes, and
  the speed of an epoch from a cold page cache with :class:`memshard.torch.ShardAwareSampler`
  against torch's ``RandomSampler``, plus variants that tell the kernel what will be read.

Speed figures are medians of repeats in which the candidates alternate (warm page cache, except
the cold-cache section, which evicts every shard file before every run and checks it with
``mincore``); only the same-run ratios mean anything on a shared machine.
"""

from __future__ import annotations

import gc
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

import memshard as ms
import memshard.torch as mt
from benchmarks.core import (
    FULL_IMAGE_ROWS,
    FULL_VECTOR_ROWS,
    IMAGE_SHAPE,
    QUICK_IMAGE_ROWS,
    QUICK_VECTOR_ROWS,
    SEED,
    VECTOR_SHAPE,
    Setup,
    Workload,
    batches_of,
    benchmark_parser,
    files_under,
    format_bytes,
    goals_summary,
    machine_info,
    markdown,
    median_ns,
    parse_positive,
    progress,
    random_rows,
    scratch_directory,
    shard_bytes_for,
    three_digits,
    warm_page_cache,
    write_dataset,
)
from benchmarks.system import PAGE, announce, evict, memory_of, resident_bytes

BATCH_SIZE = 256
NUM_WORKERS = 2
FULL_REPEATS = 5
QUICK_REPEATS = 2
#: Samples per timed run of the vectors loaders (the one-item-at-a-time loader is slow).
FULL_VECTOR_SAMPLES = 1000 * BATCH_SIZE
QUICK_VECTOR_SAMPLES = 100 * BATCH_SIZE
#: Epochs of the worker-memory measurement.
MEMORY_EPOCHS = 2
#: The goal on each worker's growth of anonymous private memory over the epochs.
MAX_WORKER_GROWTH = 16 << 20
#: Shards of the dataset of the shuffling measurements, and the label classes it holds,
#: written class by class (as a conversion of a folder-per-class image set would).
SHUFFLE_SHARDS = 64
CLASSES = 10
WINDOWS = (1, 2, 4, 8)
#: Batches per cold-cache run in full mode (about half an epoch; quick mode runs the epoch).
FULL_COLD_BATCHES = 40
FULL_COLD_REPEATS = 3
#: Fraction of the shard bytes that may stay cached after eviction for a run to count as cold.
EVICTION_TOLERANCE = 0.05
QUICK_COLD_REPEATS = 1


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """What to run, resolved from the command line."""

    mode: str
    vectors: Workload
    images: Workload
    repeats: int
    vector_samples: int
    cold_repeats: int
    cold_batches: int | None
    dir: str | None
    json: str | None


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes left unset default to the mode's."""
    parser = benchmark_parser(
        "python -m benchmarks.torch_loader",
        "Time memshard's DataLoader path against hand-written loaders, measure "
        "worker memory and shard-aware shuffling; print ratios against goals.",
    )
    parser.add_argument("--samples", type=int, help="samples per timed run of the vector loaders")
    parser.add_argument("--cold-repeats", type=int, help="repeats of each cold-cache run")
    parser.add_argument(
        "--cold-batches", type=int, help="batches per cold-cache run (default: full 40, quick all)"
    )
    names = ("rows_images", "rows_vectors", "samples", "repeats", "cold_repeats", "cold_batches")
    args = parse_positive(parser, argv, names)
    quick = bool(args.quick)
    image_rows = args.rows_images or (QUICK_IMAGE_ROWS if quick else FULL_IMAGE_ROWS)
    vector_rows = args.rows_vectors or (QUICK_VECTOR_ROWS if quick else FULL_VECTOR_ROWS)
    samples = args.samples or (QUICK_VECTOR_SAMPLES if quick else FULL_VECTOR_SAMPLES)
    return Config(
        mode="quick" if quick else "full",
        vectors=Workload(
            "vectors",
            VECTOR_SHAPE,
            vector_rows,
            shard_bytes_for(vector_rows, FULL_VECTOR_ROWS, quick),
        ),
        images=Workload(
            "images", IMAGE_SHAPE, image_rows, shard_bytes_for(image_rows, FULL_IMAGE_ROWS, quick)
        ),
        repeats=args.repeats or (QUICK_REPEATS if quick else FULL_REPEATS),
        vector_samples=min(samples, vector_rows),
        cold_repeats=args.cold_repeats or (QUICK_COLD_REPEATS if quick else FULL_COLD_REPEATS),
        cold_batches=args.cold_batches or (None if quick else FULL_COLD_BATCHES),
        dir=args.dir,
        json=args.json,
    )


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A goal: memshard at least ``min_ratio`` of the baseline, or at most ``max_value``."""

    min_ratio: float | None = None
    max_value: float | None = None

    def describe(self, unit: str) -> str:
        """The goal as printed in the table."""
        if self.min_ratio is not None:
            return f">= {self.min_ratio:.2f}x"
        if self.max_value is not None:
            return f"< {format_value(self.max_value, unit)} (absolute)"
        return "none (context)"


@dataclass(frozen=True)
class Comparison:
    """One measurement: memshard's figure against a baseline's from the same run.

    ``unit`` is ``"samples/s"`` (higher is better) or ``"bytes"`` (lower is better);
    ``ratio`` is always "how many times better memshard is" (1.00x = as good).
    """

    key: str
    measurement: str
    unit: str
    memshard: float
    baseline: float
    baseline_name: str
    target: Target

    @property
    def ratio(self) -> float:
        """memshard / baseline for speeds; baseline / memshard (floored at a page) for sizes."""
        if self.unit == "bytes":
            return max(self.baseline, PAGE) / max(self.memshard, PAGE)
        return self.memshard / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (None without a goal)."""
        if self.target.min_ratio is not None:
            return self.ratio >= self.target.min_ratio
        if self.target.max_value is not None:
            return self.memshard < self.target.max_value
        return None

    def to_json(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        record = asdict(self)
        record.update(goal=self.target.describe(self.unit), ratio=self.ratio, met=self.met)
        return record


@dataclass
class Section:
    """A titled table of comparisons, with notes printed under it and extra data for JSON."""

    key: str
    title: str
    results: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def format_value(value: float, unit: str) -> str:
    """A figure with its unit.

    Example:
        >>> format_value(123456.0, "samples/s"), format_value(3 << 20, "bytes")
        ('123k samples/s', '3.00 MiB')
    """
    if unit == "bytes":
        sign = "-" if value < 0 else ""
        return sign + format_bytes(abs(value))
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{three_digits(value / scale)}{suffix} {unit}"
    return f"{three_digits(value)} {unit}"


def render(section: Section) -> str:
    """A section: title, the comparison table, then its notes."""
    head = ["measurement", "memshard", "baseline", "baseline name", "ratio", "goal", "met"]
    rows = [
        [
            result.measurement,
            format_value(result.memshard, result.unit),
            format_value(result.baseline, result.unit),
            result.baseline_name,
            f"{result.ratio:.3f}x",
            result.target.describe(result.unit),
            {True: "yes", False: "no", None: "-"}[result.met],
        ]
        for result in section.results
    ]
    blocks = [markdown(head, rows)] if rows else []
    blocks += ["\n".join(section.notes)] if section.notes else []
    return "\n\n".join([f"## {section.title}", *blocks])


# -- datasets, samplers and collates of the baselines ------------------------------------------
def passthrough(batch: Any) -> Any:
    """Collate of the batched baselines: ``__getitems__`` returns the batch already."""
    return batch


class OneByOne(TorchDataset[dict[str, torch.Tensor]]):
    """A memshard dataset without ``__getitems__``: the DataLoader fetches each sample alone."""

    def __init__(self, inner: mt.MemshardDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.inner[index]


class MemmapBatched(TorchDataset[dict[str, torch.Tensor]]):
    """One ``.npy`` file through ``np.memmap`` (mapped lazily, in the worker), batched fetch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows = int(np.load(path, mmap_mode="r").shape[0])
        self._memmap: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rows

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        if self._memmap is None:
            self._memmap = np.load(self.path, mmap_mode="r")
        rows = self._memmap[np.asarray(indices, dtype=np.int64)]
        return {"x": torch.from_numpy(np.asarray(rows))}


class TensorBatched(TorchDataset[dict[str, torch.Tensor]]):
    """An in-RAM tensor (shared with forked workers copy-on-write), batched fetch ``t[idx]``."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return {"x": self.tensor[torch.as_tensor(indices, dtype=torch.int64)]}


class NaiveIndex(TorchDataset[dict[str, torch.Tensor]]):
    """The usual hand-written dataset: a Python list of ``(file, row)`` tuples, one per row,
    and one ``np.memmap`` per file. Reading an entry bumps reference counts, and the worker's
    garbage collector walks the tuples: both write to pages shared with the parent."""

    def __init__(self, dataset: ms.Dataset) -> None:
        self.index: list[tuple[str, int]] = []
        for shard in dataset.shards:
            path = os.path.join(dataset.path, shard.files["x"].path)
            self.index.extend((path, row) for row in range(shard.rows))
        self._memmaps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = []
        for index in indices:
            path, row = self.index[index]
            memmap = self._memmaps.get(path)
            if memmap is None:
                memmap = self._memmaps[path] = np.load(path, mmap_mode="r")
            rows.append(memmap[row])
        return {"x": torch.from_numpy(np.stack(rows))}


class Order(Sampler[int]):
    """A sampler that yields ``order``, set before each run, so that every candidate of a
    comparison reads the very same shuffled indices."""

    def __init__(self) -> None:
        self.order = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.order.size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


def drain(loader: DataLoader[Any], batches: int | None = None) -> int:
    """Iterate ``loader`` (up to ``batches`` batches); return the samples received."""
    samples = 0
    iterator = iter(loader)
    for batch in itertools.islice(iterator, batches):
        samples += len(next(iter(batch.values())))
    del iterator
    return samples


# -- 1 and 2: loader speed -------------------------------------------------------------------
#: Batches fetched per timed run of :func:`fetch_profile`.
PROFILE_BATCHES = 50


def fetch_profile(
    fetches: Sequence[Callable[[list[int]], object]],
    rows: int,
    repeats: int,
    generator: torch.Generator,
) -> list[float]:
    """Nanoseconds per batch of each fetch (``__getitems__`` or ``__getitem__`` per sample,
    then the collate) in this process, without workers: the part of a worker's time that is the
    dataset's own; the rest is the DataLoader's transfer of the batch to the main process."""

    def loop(fetch: Callable[[list[int]], object], batches: list[list[int]]) -> Setup:
        def run() -> None:
            for batch in batches:
                fetch(batch)

        return lambda: run

    def trial() -> list[Setup]:
        order = torch.randperm(rows, generator=generator)[: PROFILE_BATCHES * BATCH_SIZE]
        batches = [chunk.tolist() for chunk in order.split(BATCH_SIZE)]
        return [loop(fetch, batches) for fetch in fetches]

    return [ns / PROFILE_BATCHES for ns in median_ns(repeats, trial)]


def measure_loaders(
    loaders: Sequence[DataLoader[Any]],
    sampler: Order,
    rows: int,
    samples: int,
    repeats: int,
    generator: torch.Generator,
) -> list[float]:
    """Samples per second of each loader (persistent workers, warmed up), all reading the
    same fresh ``torch.randperm`` order each repeat; medians of ``repeats``."""
    check = torch.randperm(rows, generator=generator)[:BATCH_SIZE].numpy()
    sampler.order = check
    firsts = [next(iter(loader))["x"] for loader in loaders]
    if not all(torch.equal(firsts[0], other) for other in firsts[1:]):
        raise AssertionError("the loaders returned different rows for the same indices")

    def setup(loader: DataLoader[Any], order: np.ndarray) -> Setup:
        def prepare() -> Callable[[], object]:
            sampler.order = order
            return lambda: drain(loader)

        return prepare

    def trial() -> list[Setup]:
        order = torch.randperm(rows, generator=generator)[:samples].numpy()
        return [setup(loader, order) for loader in loaders]

    return [samples / (ns / 1e9) for ns in median_ns(repeats, trial)]


def run_vector_loaders(
    config: Config, path: str, npy_path: str, generator: torch.Generator
) -> Section:
    """Measurement 1: memshard's batched loader against one-by-one and np.memmap loaders."""
    workload = config.vectors
    sampler = Order()
    dataset = mt.MemshardDataset(path)
    common: dict[str, Any] = dict(
        batch_size=BATCH_SIZE, sampler=sampler, num_workers=NUM_WORKERS, persistent_workers=True
    )
    loaders = [
        mt.loader(dataset, batch_size=BATCH_SIZE, num_workers=NUM_WORKERS, sampler=sampler),
        DataLoader(OneByOne(dataset), collate_fn=default_collate, **common),
        DataLoader(MemmapBatched(npy_path), collate_fn=passthrough, **common),
        mt.loader(path, prefetch=True, **common),
        mt.loader(dataset, sharing_strategy=None, **common),
    ]
    progress(f"vectors: timing 5 loaders, {config.vector_samples:,} samples x {config.repeats}")
    batched, one_by_one, memmap, advised, torch_strategy = measure_loaders(
        loaders, sampler, workload.rows, config.vector_samples, config.repeats, generator
    )
    del loaders
    one_by_one_dataset = OneByOne(dataset)
    memmap_dataset = MemmapBatched(npy_path)
    fetches: list[Callable[[list[int]], object]] = [
        lambda batch: mt.collate(dataset.__getitems__(batch)),
        lambda batch: default_collate([one_by_one_dataset[i] for i in batch]),
        lambda batch: passthrough(memmap_dataset.__getitems__(batch)),
    ]
    profile = fetch_profile(fetches, workload.rows, config.repeats, generator)
    title = (
        f"loader speed, vectors: {workload.rows:,} rows of float32{list(workload.shape)} "
        f"({format_bytes(workload.nbytes)}), {len(ms.open(path).shards)} shards"
    )
    section = Section("loader_vectors", title)
    measurement = "`mt.loader`, batched `__getitems__`"
    section.results = [
        Comparison(
            "loader_vectors_vs_items",
            measurement,
            "samples/s",
            batched,
            one_by_one,
            "same dataset, `__getitem__` per sample + `default_collate`",
            Target(min_ratio=2.0),
        ),
        Comparison(
            "loader_vectors_vs_memmap",
            measurement,
            "samples/s",
            batched,
            memmap,
            "one np.memmap `.npy`, batched `mm[idx]`, same collate",
            Target(min_ratio=1.0),
        ),
        Comparison(
            "loader_vectors_madvise",
            "`prefetch=True` (`MADV_WILLNEED` per run of rows), then the gather",
            "samples/s",
            advised,
            batched,
            "`mt.loader` as is (the cost of advising, warm cache)",
            Target(),
        ),
        Comparison(
            "loader_vectors_torch_strategy_vs_memmap",
            "`sharing_strategy=None`: torch's default strategy, as the baseline's",
            "samples/s",
            torch_strategy,
            memmap,
            "one np.memmap `.npy`, batched `mm[idx]`, same collate",
            Target(),
        ),
    ]
    section.notes = [
        f"{config.vector_samples:,} samples per timed run, `num_workers={NUM_WORKERS}`, "
        f"`batch_size={BATCH_SIZE}`, persistent workers, one shared random order per repeat "
        "(`torch.randperm`, fixed seed); page cache warm.",
        "",
        "Where a worker's time goes: the fetch alone (same indices, in one process, no "
        "workers) against the loader's time per batch per worker "
        f"({NUM_WORKERS} x {BATCH_SIZE} / samples per second); the rest is the DataLoader "
        "moving the batch to the main process and the main process receiving it.",
        "",
        markdown(
            ["loader", "fetch + collate alone", "loader, per batch per worker", "fetch share"],
            [
                [
                    name,
                    f"{ns / 1e3:.0f} us/batch",
                    f"{NUM_WORKERS * BATCH_SIZE / speed * 1e6:.0f} us/batch",
                    f"{100 * ns / 1e9 / (NUM_WORKERS * BATCH_SIZE / speed):.0f}%",
                ]
                for name, ns, speed in zip(
                    ["memshard batched", "memshard one item at a time", "np.memmap batched"],
                    profile,
                    [batched, one_by_one, memmap],
                    strict=True,
                )
            ],
        ),
    ]
    section.details = {
        "fetch_ns_per_batch": dict(zip(["batched", "items", "memmap"], profile, strict=True))
    }
    return section


def run_image_loaders(
    config: Config, path: str, tensor: torch.Tensor, generator: torch.Generator
) -> Section:
    """Measurement 2: memshard's batched loader against an in-RAM tensor, full epochs."""
    workload = config.images
    sampler = Order()
    loaders = [
        mt.loader(path, batch_size=BATCH_SIZE, num_workers=NUM_WORKERS, sampler=sampler),
        DataLoader(
            TensorBatched(tensor),
            batch_size=BATCH_SIZE,
            sampler=sampler,
            num_workers=NUM_WORKERS,
            collate_fn=passthrough,
            persistent_workers=True,
        ),
        mt.loader(
            path, batch_size=BATCH_SIZE, num_workers=NUM_WORKERS, sampler=sampler, prefetch=True
        ),
        mt.loader(
            path,
            batch_size=BATCH_SIZE,
            num_workers=NUM_WORKERS,
            sampler=sampler,
            sharing_strategy=None,
        ),
    ]
    progress(f"images: timing 4 loaders, epochs of {workload.rows:,} samples x {config.repeats}")
    memshard, in_ram, advised, torch_strategy = measure_loaders(
        loaders, sampler, workload.rows, workload.rows, config.repeats, generator
    )
    del loaders
    title = (
        f"loader speed, images: {workload.rows:,} rows of float32{list(workload.shape)} "
        f"({format_bytes(workload.nbytes)}), {len(ms.open(path).shards)} shards"
    )
    section = Section("loader_images", title)
    section.results = [
        Comparison(
            "loader_images_vs_ram",
            "`mt.loader`, batched `__getitems__`, one epoch",
            "samples/s",
            memshard,
            in_ram,
            "in-RAM tensor, batched `t[idx]`, same sampler",
            Target(min_ratio=0.95),
        ),
        Comparison(
            "loader_images_madvise",
            "`prefetch=True` (`MADV_WILLNEED` per run of rows), then the gather",
            "samples/s",
            advised,
            memshard,
            "`mt.loader` as is (the cost of advising, warm cache)",
            Target(),
        ),
        Comparison(
            "loader_images_torch_strategy_vs_ram",
            "`sharing_strategy=None`: torch's default strategy, as the baseline's",
            "samples/s",
            torch_strategy,
            in_ram,
            "in-RAM tensor, batched `t[idx]`, same sampler",
            Target(),
        ),
    ]
    section.notes = [
        f"whole epochs, `num_workers={NUM_WORKERS}`, `batch_size={BATCH_SIZE}`, persistent "
        "workers, one shared random order per repeat; page cache warm."
    ]
    return section


# -- 3: worker memory ------------------------------------------------------------------------
def worker_memory(dataset: TorchDataset[Any], collate: Callable[[Any], Any]) -> dict[str, Any]:
    """Run :data:`MEMORY_EPOCHS` shuffled epochs with forked, persistent workers; return each
    worker's memory at its start and after every epoch."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED)),
        num_workers=NUM_WORKERS,
        collate_fn=collate,
        persistent_workers=True,
        worker_init_fn=partial(announce, queue),
        multiprocessing_context=context,
    )
    workers: dict[int, dict[str, Any]] = {}
    for epoch in range(MEMORY_EPOCHS):
        drain(loader)
        if epoch == 0:
            for _ in range(NUM_WORKERS):
                worker_id, pid, start = queue.get(timeout=60)
                workers[worker_id] = {"pid": pid, "start": start, "epochs": []}
        for worker in workers.values():
            worker["epochs"].append(memory_of(worker["pid"]))
    del loader
    gc.collect()
    for worker in workers.values():
        worker["growth"] = worker["epochs"][-1]["private"] - worker["start"]["private"]
    return {"workers": [workers[worker_id] for worker_id in sorted(workers)]}


def run_memory(config: Config, paths: dict[str, str]) -> Section:
    """Measurement 3: per-worker memory of memshard and of the list-of-tuples dataset."""
    section = Section(
        "memory",
        f"worker memory: {MEMORY_EPOCHS} shuffled epochs, `num_workers={NUM_WORKERS}` (fork), "
        f"`batch_size={BATCH_SIZE}`",
    )
    rows = []
    for workload in (config.vectors, config.images):
        path = paths[workload.name]
        progress(f"{workload.name}: worker memory over {MEMORY_EPOCHS} epochs, memshard")
        gc.collect()
        memshard = worker_memory(mt.MemshardDataset(path), mt.collate)
        progress(f"{workload.name}: worker memory over {MEMORY_EPOCHS} epochs, list index")
        naive_dataset = NaiveIndex(ms.open(path))
        naive = worker_memory(naive_dataset, passthrough)
        del naive_dataset
        gc.collect()
        section.details[workload.name] = {"memshard": memshard, "naive": naive}
        for name, figures in (("memshard", memshard), ("list index", naive)):
            for number, worker in enumerate(figures["workers"]):
                start, end = worker["start"], worker["epochs"][-1]
                rows.append(
                    [
                        workload.name,
                        name,
                        str(number),
                        *(
                            f"{format_bytes(start[k])} -> {format_bytes(end[k])}"
                            for k in ("rss", "uss", "private")
                        ),
                        format_value(worker["growth"], "bytes"),
                    ]
                )
        section.results.append(
            Comparison(
                f"memory_{workload.name}",
                f"{workload.name} ({workload.rows:,} rows, {format_bytes(workload.nbytes)}): "
                "largest growth of a worker's Private_Dirty + Swap",
                "bytes",
                max(worker["growth"] for worker in memshard["workers"]),
                max(worker["growth"] for worker in naive["workers"]),
                "list of `(file, row)` tuples + np.memmap",
                Target(max_value=MAX_WORKER_GROWTH),
            )
        )
    head = ["workload", "dataset", "worker", "RSS", "USS", "Private_Dirty + Swap", "growth"]
    section.notes = [
        "Per worker, from `/proc/PID/smaps_rollup`: at `worker_init_fn` (before the first "
        f"batch) -> after epoch {MEMORY_EPOCHS}. Ratio = list-index growth / memshard growth "
        "(each floored at one page).",
        "",
        markdown(head, rows),
    ]
    return section


# -- 4: shard-aware shuffling ----------------------------------------------------------------
def batch_mixing(order: np.ndarray, shard_starts: np.ndarray, labels: np.ndarray) -> tuple:
    """Mean distinct shards and distinct labels per full batch of ``order``."""
    full = order[: order.size // BATCH_SIZE * BATCH_SIZE].reshape(-1, BATCH_SIZE)
    shards = np.searchsorted(shard_starts, full, side="right") - 1
    distinct_shards = np.mean([np.unique(row).size for row in shards])
    distinct_labels = np.mean([np.unique(row).size for row in labels[full]])
    return float(distinct_shards), float(distinct_labels)


def run_mixing(path: str) -> Section:
    """Measurement 4a: how well batches mix shards and labels, per window size."""
    dataset = ms.open(path)
    starts = np.array([shard.row_offset for shard in dataset.shards], dtype=np.int64)
    labels = np.asarray(dataset["y"][:])
    generator = torch.Generator().manual_seed(SEED)
    random_order = torch.randperm(len(dataset), generator=generator).numpy()
    random_shards, random_labels = batch_mixing(random_order, starts, labels)
    rows = [["random permutation", f"{random_shards:.1f}", f"{random_labels:.2f}"]]
    details: dict[str, Any] = {"random": {"shards": random_shards, "labels": random_labels}}
    for window in WINDOWS:
        order = mt.ShardAwareSampler(dataset, window_shards=window, seed=SEED).indices()
        shards, mixed = batch_mixing(order, starts, labels)
        rows.append([f"ShardAwareSampler, window_shards={window}", f"{shards:.1f}", f"{mixed:.2f}"])
        details[f"window_{window}"] = {"shards": shards, "labels": mixed}
    section = Section(
        "mixing",
        f"shuffle quality: {len(dataset):,} rows in {len(dataset.shards)} shards, "
        f"{CLASSES} classes written class by class",
    )
    head = ["order", f"distinct shards per batch of {BATCH_SIZE}", "distinct labels per batch"]
    section.notes = [markdown(head, rows)]
    section.details = details
    return section


def disk_counters(path: str) -> dict[str, int]:
    """Reads completed, sectors read and milliseconds busy of the disk holding ``path``, from
    ``/proc/diskstats`` (the whole machine's I/O on that disk, not only ours)."""
    device = os.stat(path).st_dev
    key = (os.major(device), os.minor(device))
    with open("/proc/diskstats") as file:
        for line in file:
            cells = line.split()
            if (int(cells[0]), int(cells[1])) == key:
                return {"reads": int(cells[3]), "sectors": int(cells[5]), "busy_ms": int(cells[12])}
    return {"reads": 0, "sectors": 0, "busy_ms": 0}


#: memshard's own cold-data option: ``MemshardDataset(prefetch=True)``, which advises
#: ``MADV_WILLNEED`` on each run of adjacent rows of the batch before the gather.
MadviseGather = partial(mt.MemshardDataset, prefetch=True)


@dataclass(frozen=True)
class ColdCandidate:
    """A dataset class and a sampler factory (given the dataset and the repeat number)."""

    key: str
    name: str
    dataset: Callable[[ms.Dataset], mt.MemshardDataset]
    sampler: Callable[[ms.Dataset, int], Sampler[int]]


def random_sampler(dataset: ms.Dataset, repeat: int) -> Sampler[int]:
    """torch's ``RandomSampler`` with a fixed seed per repeat."""
    return RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(repeat))


def shard_aware(dataset: ms.Dataset, repeat: int) -> Sampler[int]:
    """memshard's sampler, default window, epoch ``repeat``."""
    sampler = mt.ShardAwareSampler(dataset, seed=SEED)
    sampler.set_epoch(repeat)
    return sampler


def shard_aware_window(window: int) -> Callable[[ms.Dataset, int], Sampler[int]]:
    """A factory of memshard's sampler with ``window`` shards per window, epoch ``repeat``."""

    def make(dataset: ms.Dataset, repeat: int) -> Sampler[int]:
        sampler = mt.ShardAwareSampler(dataset, seed=SEED, window_shards=window)
        sampler.set_epoch(repeat)
        return sampler

    return make


#: The first candidate is the baseline; ``GOAL_KEY`` is the configuration memshard recommends
#: for cold data. Tried before and dropped for doing no better than the plain shard-aware
#: loader: sorting each batch before the gather (0.97-1.25x of random), 8 threads gathering
#: pieces of a batch (1.07-1.68x), ``posix_fadvise(WILLNEED)`` on a window's files
#: (1.28-1.90x).
COLD_CANDIDATES = (
    ColdCandidate("random", "RandomSampler", mt.MemshardDataset, random_sampler),
    ColdCandidate("shard_aware", "ShardAwareSampler", mt.MemshardDataset, shard_aware),
    ColdCandidate("madvise", "ShardAwareSampler + `prefetch=True`", MadviseGather, shard_aware),
    ColdCandidate(
        "random_madvise", "RandomSampler + `prefetch=True`", MadviseGather, random_sampler
    ),
    *(
        ColdCandidate(
            f"window_{window}",
            f"ShardAwareSampler(window_shards={window}) + `prefetch=True`",
            MadviseGather,
            shard_aware_window(window),
        )
        for window in (1, 2, 8)
    ),
)
GOAL_KEY = "madvise"


def cold_run(
    candidate: ColdCandidate, path: str, files: Sequence[str], repeat: int, batches: int | None
) -> dict[str, Any]:
    """Evict every shard file, check with ``mincore``, then time ``batches`` batches of a
    fresh loader (workers started inside the timing, for every candidate alike)."""
    dataset = ms.open(path)
    torch_dataset = candidate.dataset(dataset)
    sampler = candidate.sampler(dataset, repeat)
    evict(files)
    resident, total = resident_bytes(files)
    loader = mt.loader(
        torch_dataset,
        batch_size=BATCH_SIZE,
        num_workers=NUM_WORKERS,
        sampler=sampler,
        persistent_workers=False,
    )
    before = disk_counters(files[0])
    gc.collect()
    times = os.times()
    start = time.perf_counter_ns()
    iterator = iter(loader)
    samples = 0
    for batch in itertools.islice(iterator, batches):
        samples += len(batch["x"])
    elapsed = time.perf_counter_ns() - start
    after = disk_counters(files[0])
    main_cpu = os.times()
    del iterator, batch
    gc.collect()
    ended = os.times()  # the workers' CPU time counts once they are joined
    workers_cpu = (ended.children_user - times.children_user) + (
        ended.children_system - times.children_system
    )
    main_cpu_s = (main_cpu.user - times.user) + (main_cpu.system - times.system)
    return {
        "ns": elapsed,
        "cpu": (main_cpu_s + workers_cpu) * 1e9 / elapsed / (os.cpu_count() or 1),
        "workers_sys": (ended.children_system - times.children_system) / max(workers_cpu, 1e-9),
        "samples": samples,
        "resident_before": resident / total,
        "disk_reads": after["reads"] - before["reads"],
        "disk_bytes": (after["sectors"] - before["sectors"]) * 512,
        "disk_busy": (after["busy_ms"] - before["busy_ms"]) * 1e6 / elapsed,
    }


def run_cold(config: Config, path: str) -> Section:
    """Measurement 4b: cold-page-cache speed of each :data:`COLD_CANDIDATES` entry."""
    files = sorted(name for name in files_under(path) if name.endswith(".npy"))
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in COLD_CANDIDATES}
    batches = config.cold_batches
    what = "an epoch" if batches is None else f"{batches} batches"
    for repeat in range(config.cold_repeats):
        progress(f"cold cache: repeat {repeat + 1} of {config.cold_repeats}, {what} per run")
        start = repeat % len(COLD_CANDIDATES)
        for candidate in [*COLD_CANDIDATES[start:], *COLD_CANDIDATES[:start]]:
            runs[candidate.key].append(cold_run(candidate, path, files, repeat, batches))

    def median(key: str, figure: str) -> float:
        return float(statistics.median(run[figure] for run in runs[key]))

    def speed(key: str) -> float:
        return float(statistics.median(run["samples"] / (run["ns"] / 1e9) for run in runs[key]))

    dataset = ms.open(path)
    section = Section(
        "cold",
        f"cold page cache: {len(dataset):,} images in {len(dataset.shards)} shards "
        f"({format_bytes(dataset.nbytes)}), {what} per run, default window "
        f"({mt.DEFAULT_WINDOW_SHARDS} shards)",
    )
    baseline = speed("random")
    for candidate in COLD_CANDIDATES[1:]:
        section.results.append(
            Comparison(
                f"cold_{candidate.key}",
                candidate.name,
                "samples/s",
                speed(candidate.key),
                baseline,
                "RandomSampler (plain memshard loader)",
                Target(min_ratio=2.0) if candidate.key == GOAL_KEY else Target(),
            )
        )
    rows = [
        [
            candidate.name,
            format_value(speed(candidate.key), "samples/s"),
            format_bytes(median(candidate.key, "disk_bytes")),
            f"{median(candidate.key, 'disk_reads'):,.0f}",
            format_bytes(
                median(candidate.key, "disk_bytes") / max(median(candidate.key, "disk_reads"), 1)
            ),
            f"{100 * median(candidate.key, 'disk_busy'):.0f}%",
            f"{100 * median(candidate.key, 'cpu'):.0f}%",
            f"{100 * median(candidate.key, 'workers_sys'):.0f}%",
        ]
        for candidate in COLD_CANDIDATES
    ]
    worst = max(run["resident_before"] for key in runs for run in runs[key])
    head = [
        "candidate",
        "speed",
        "read from disk",
        "disk reads",
        "mean read",
        "disk busy",
        "CPU busy",
        "workers' CPU in kernel",
    ]
    section.notes = [
        f"Before every run each shard file was synced and dropped with "
        f"`posix_fadvise(POSIX_FADV_DONTNEED)`; `mincore` then found at most "
        f"{100 * worst:.2f}% of the shard bytes still in the page cache. Medians of "
        f"{config.cold_repeats} runs; loader start-up (fork of {NUM_WORKERS} workers) is inside "
        "every timing. Disk figures come from /proc/diskstats (the whole disk), CPU busy is "
        "the CPU time of the main process and the workers over the run's wall time on all "
        f"{os.cpu_count()} CPUs (workers' time includes their shutdown); medians:",
        "",
        markdown(head, rows),
    ]
    if worst > EVICTION_TOLERANCE:
        section.notes.append(
            f"WARNING: {100 * worst:.0f}% of the shard bytes stayed cached after eviction (a "
            "filesystem that ignores POSIX_FADV_DONTNEED, such as tmpfs?): these runs were "
            "not cold; use --dir on a disk filesystem."
        )
    section.details = {"runs": runs, "max_resident_before": worst}
    return section


# -- the job ---------------------------------------------------------------------------------
def write_vectors(config: Config, scratch: str, rng: np.random.Generator) -> tuple[str, str]:
    """The vectors workload as a memshard dataset and as one ``.npy`` file, both warm."""
    workload = config.vectors
    data = random_rows(workload, rng)
    path = os.path.join(scratch, "vectors")
    npy_path = os.path.join(scratch, "vectors.npy")
    progress(f"vectors: writing {format_bytes(workload.nbytes)} twice (memshard, .npy)")
    write_dataset(path, workload, batches_of(data, 65536))
    np.save(npy_path, data)
    warm_page_cache([path, npy_path])
    return path, npy_path


def write_images(config: Config, scratch: str, rng: np.random.Generator) -> tuple[str, str, Any]:
    """The images workload twice: default shards, and :data:`SHUFFLE_SHARDS` shards with a
    label field ``y`` of :data:`CLASSES` classes written in order. Returns the paths and the
    rows as an in-RAM tensor."""
    workload = config.images
    data = random_rows(workload, rng)
    path = os.path.join(scratch, "images")
    progress(f"images: writing {format_bytes(workload.nbytes)} twice")
    write_dataset(path, workload, batches_of(data, 256))
    labelled = os.path.join(scratch, "images-labelled")
    labels = np.arange(workload.rows, dtype=np.int64) * CLASSES // workload.rows
    row_bytes = workload.row_bytes + labels.itemsize
    shard_bytes = -(-workload.rows // SHUFFLE_SHARDS) * row_bytes
    with ms.create(
        labelled,
        fields={**workload.fields, "y": ("int64", ())},
        labels={"y": [f"class{k}" for k in range(CLASSES)]},
        shard_bytes=shard_bytes,
    ) as appender:
        for start in range(0, workload.rows, 256):
            appender.extend({"x": data[start : start + 256], "y": labels[start : start + 256]})
    warm_page_cache([path])
    return path, labelled, torch.from_numpy(data)


def header(config: Config, machine: dict[str, str]) -> str:
    """What ran where, and how to read the tables."""
    lines = [f"# memshard PyTorch loader benchmark ({config.mode} mode)", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += [
        f"- torch: {torch.__version__}; every loader: `num_workers={NUM_WORKERS}`, "
        f"`batch_size={BATCH_SIZE}`, shuffled",
        f"- speed figures: median of {config.repeats} repeats (cold cache: "
        f"{config.cold_repeats}); the candidates alternate within every repeat",
        "- ratio: how many times better memshard is than the baseline (memshard / baseline "
        "speed; baseline / memshard memory growth); 1.00x = as good",
    ]
    return "\n".join(lines)


def summary(sections: Sequence[Section]) -> str:
    """Goals met, and which were missed."""
    return goals_summary(
        [(r.key, r.met) for section in sections for r in section.results if r.met is not None]
    )


def to_json(config: Config, machine: dict[str, str], sections: Sequence[Section]) -> dict:
    """Everything the tables show, and the raw figures behind them."""
    return {
        "mode": config.mode,
        "machine": machine,
        "torch": torch.__version__,
        "repeats": config.repeats,
        "cold_repeats": config.cold_repeats,
        "batch_size": BATCH_SIZE,
        "num_workers": NUM_WORKERS,
        "workloads": {
            w.name: {"rows": w.rows, "shape": list(w.shape), "nbytes": w.nbytes}
            for w in (config.vectors, config.images)
        },
        "sections": {
            section.key: {
                "title": section.title,
                "results": [result.to_json() for result in section.results],
                "details": section.details,
            }
            for section in sections
        },
    }


def emit(sections: list[Section], section: Section) -> None:
    """Keep ``section`` and print it."""
    sections.append(section)
    print(render(section), end="\n\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement, print the report and optionally write it as JSON."""
    config = parse_args(argv)
    rng = np.random.default_rng(SEED)
    generator = torch.Generator().manual_seed(SEED)
    sections: list[Section] = []
    with scratch_directory(config.dir) as scratch:
        machine = machine_info(scratch)
        print(header(config, machine), end="\n\n", flush=True)
        vectors, npy_path = write_vectors(config, scratch, rng)
        emit(sections, run_vector_loaders(config, vectors, npy_path, generator))
        images, labelled, tensor = write_images(config, scratch, rng)
        emit(sections, run_image_loaders(config, images, tensor, generator))
        del tensor
        gc.collect()
        emit(sections, run_memory(config, {"vectors": vectors, "images": images}))
        emit(sections, run_mixing(labelled))
        emit(sections, run_cold(config, labelled))
    print(summary(sections), flush=True)
    if config.json:
        with open(config.json, "w") as file:
            json.dump(to_json(config, machine, sections), file, indent=2)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
