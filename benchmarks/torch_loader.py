"""The PyTorch job: memshard's DataLoader path against the loaders people write by hand.

Run from the repository root::

    python -m benchmarks.torch_loader            # full: 1M vectors, ~1 GiB of images (minutes)
    python -m benchmarks.torch_loader --quick    # small sizes, well under a minute (CI runs this)

Every loader has ``num_workers=2`` and ``batch_size=256`` and reads a shuffled order shared by
the candidates of a comparison. Measured: :func:`memshard.torch.loader` against the same
vectors one item at a time, one ``np.memmap`` file and (images) an in-RAM tensor, with its
``prefetch`` and ``sharing_strategy`` options, and where a worker's time goes; each worker's
``Private_Dirty + Swap`` growth against a list-of-``(file, row)`` index; how well
:class:`memshard.torch.ShardAwareSampler` mixes shards and labels, and its speed on a cold
page cache (shards evicted, checked with ``mincore``) against torch's ``RandomSampler``.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

import memshard as ms
import memshard.torch as mt

from . import core
from .core import BATCH_SIZE, SEED, Option, Target, format_bytes, markdown, progress
from .loaders import Order, WorkerProbe, drain
from .system import EVICTION_TOLERANCE, PAGE, disk_counters, evict, memory_of

NUM_WORKERS = 2
#: Batches fetched per timed run of :func:`fetch_profile`.
PROFILE_BATCHES = 50
#: Epochs of the worker-memory measurement.
MEMORY_EPOCHS = 2
#: The goal on each worker's growth of anonymous private memory over the epochs.
MAX_WORKER_GROWTH = 16 << 20
#: Shards of the dataset of the shuffling measurements, and the label classes it holds,
#: written class by class (as a conversion of a folder-per-class image set would).
SHUFFLE_SHARDS = 64
CLASSES = 10
WINDOWS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Config(core.WorkloadRun):
    """What to run, resolved from the command line."""

    #: Samples per timed run of the vectors loaders (the one-item-at-a-time loader is slow).
    samples: int
    cold_repeats: int
    #: Batches per cold-cache run (``None``: an epoch).
    cold_batches: int | None

    @property
    def vector_samples(self) -> int:
        """Samples per timed run of the vectors loaders: at most every row."""
        return min(self.samples, self.rows_vectors)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.torch_loader",
        __doc__,
        *core.workload_options(quick_images=2_000, quick_vectors=100_000),
        Option("--samples", int, "samples per timed run of the vector loaders", 1000 * 256, 25600),
        Option("--cold-repeats", int, "repeats of each cold-cache run", 3, 1),
        Option("--cold-batches", int, "batches per cold-cache run", 40, None),
        repeats=(5, 2),
    )
    return Config(**options.parse(argv))


# -- results ---------------------------------------------------------------------------------
def format_value(value: float, unit: str) -> str:
    """A figure with its unit.

    Example:
        >>> format_value(123456.0, "samples/s"), format_value(3 << 20, "bytes")
        ('123k samples/s', '3.00 MiB')
    """
    return format_bytes(value) if unit == "bytes" else f"{core.format_count(value)} {unit}"


@dataclass(frozen=True)
class Comparison:
    """One measurement: memshard's figure against a baseline's from the same run.

    ``unit`` is ``"samples/s"`` (higher is better) or ``"bytes"`` (lower is better);
    ``ratio`` is always "how many times better memshard is" (1.00x = as good).
    """

    key: str
    measurement: str
    memshard: float
    baseline: float
    baseline_name: str
    target: Target = field(default_factory=Target)
    unit: str = "samples/s"

    @property
    def ratio(self) -> float:
        """memshard / baseline for speeds; baseline / memshard (floored at a page) for sizes."""
        if self.unit == "bytes":
            return max(self.baseline, PAGE) / max(self.memshard, PAGE)
        return self.memshard / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (None without a goal)."""
        return self.target.met(self.ratio, self.memshard)

    def goal(self) -> str:
        """The goal as printed."""
        return self.target.describe(partial(format_value, unit=self.unit))

    def cells(self) -> list[str]:
        """The table row."""
        shown = [format_value(value, self.unit) for value in (self.memshard, self.baseline)]
        met = core.yes_no(self.met)
        return [
            self.measurement,
            *shown,
            self.baseline_name,
            f"{self.ratio:.3f}x",
            self.goal(),
            met,
        ]

    def to_json(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        return {**asdict(self), "goal": self.goal(), "ratio": self.ratio, "met": self.met}


@dataclass
class Section:
    """A titled table of comparisons, with notes printed under it and extra data for JSON."""

    key: str
    title: str
    results: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        """The title, the comparison table, then the notes."""
        head = ["measurement", "memshard", "baseline", "baseline name", "ratio", "goal", "met"]
        table = markdown(head, [result.cells() for result in self.results]) if self.results else ""
        return "\n\n".join(filter(None, [f"## {self.title}", table, "\n".join(self.notes)]))

    def to_json(self) -> dict[str, Any]:
        """The title, every comparison and the details."""
        results = [result.to_json() for result in self.results]
        return {"title": self.title, "results": results, "details": self.details}


# -- the baselines' datasets -----------------------------------------------------------------
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
        return {"x": torch.from_numpy(self._memmap[np.asarray(indices, dtype=np.int64)])}


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
            if path not in self._memmaps:
                self._memmaps[path] = np.load(path, mmap_mode="r")
            rows.append(self._memmaps[path][row])
        return {"x": torch.from_numpy(np.stack(rows))}


# -- 1 and 2: loader speed -------------------------------------------------------------------
def warm_medians(count: int, repeats: int, run: Callable[[int, int], float]) -> list[float]:
    """The median of each of ``count`` candidates' :func:`~benchmarks.core.alternate_warm`."""
    samples = core.alternate_warm(range(count), repeats, run)
    return [float(statistics.median(values)) for values in samples.values()]


def fetch_profile(
    fetches: Sequence[Callable[[list[int]], object]], rows: int, repeats: int
) -> list[float]:
    """Nanoseconds per batch of each fetch (``__getitems__`` or ``__getitem__`` per sample,
    then the collate) in this process, without workers: the part of a worker's time that is the
    dataset's own; the rest is the DataLoader's transfer of the batch to the main process."""
    rng = np.random.default_rng(SEED)
    orders = [rng.permutation(rows)[: PROFILE_BATCHES * BATCH_SIZE] for _ in range(repeats + 1)]
    batches = [[chunk.tolist() for chunk in core.batches_of(order, BATCH_SIZE)] for order in orders]

    def run(candidate: int, repeat: int) -> float:
        fetch = fetches[candidate]
        gc.collect()
        return core.timed(lambda: [fetch(batch) for batch in batches[repeat + 1]]) / PROFILE_BATCHES

    return warm_medians(len(fetches), repeats, run)


def loader_speeds(
    loaders: Sequence[DataLoader[Any]], sampler: Order, rows: int, samples: int, repeats: int
) -> list[float]:
    """Samples per second of each loader (persistent workers, warmed up by an untimed pass),
    all reading the same fresh random order each repeat; medians of ``repeats``."""
    rng = np.random.default_rng(SEED)
    sampler.rows = rng.permutation(rows)[:BATCH_SIZE]
    firsts = [next(iter(loader))["x"] for loader in loaders]
    if not all(torch.equal(firsts[0], other) for other in firsts[1:]):
        raise AssertionError("the loaders returned different rows for the same indices")
    orders = [rng.permutation(rows)[:samples] for _ in range(repeats)]

    def run(candidate: int, repeat: int) -> float:
        sampler.rows = orders[max(repeat, 0)]
        gc.collect()
        return samples / (core.timed(partial(drain, loaders[candidate])) / 1e9)

    return warm_medians(len(loaders), repeats, run)


PREFETCH = "`prefetch=True` (`MADV_WILLNEED` per run of rows), then the gather"
AS_IS = "`mt.loader` as is (the cost of advising, warm cache)"
TORCH_STRATEGY = "`sharing_strategy=None`: torch's default strategy, as the baseline's"


def loader_title(workload: core.Workload, path: str) -> str:
    """The title of a loader-speed section."""
    shards = len(ms.open(path).shards)
    return f"loader speed, {workload.name}: {workload.describe()}, {shards} shards"


def run_vector_loaders(config: Config, path: str, npy_path: str) -> Section:
    """Measurement 1: memshard's batched loader against one-by-one and np.memmap loaders."""
    sampler, dataset = Order(), mt.MemshardDataset(path)
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
    samples, rows = config.vector_samples, config.rows_vectors
    progress(f"vectors: timing 5 loaders, {samples:,} samples x {config.repeats}")
    speeds = loader_speeds(loaders, sampler, rows, samples, config.repeats)
    batched, one_by_one, memmap, advised, torch_strategy = speeds
    del loaders
    one_by_one_dataset, memmap_dataset = OneByOne(dataset), MemmapBatched(npy_path)
    profile = fetch_profile(
        [
            lambda batch: mt.collate(dataset.__getitems__(batch)),
            lambda batch: default_collate([one_by_one_dataset[i] for i in batch]),
            lambda batch: passthrough(memmap_dataset.__getitems__(batch)),
        ],
        rows,
        config.repeats,
    )
    section = Section("loader_vectors", loader_title(config.vectors, path))
    items = "same dataset, `__getitem__` per sample + `default_collate`"
    npy = "one np.memmap `.npy`, batched `mm[idx]`, same collate"
    mine = "`mt.loader`, batched `__getitems__`"
    section.results = [
        Comparison("loader_vectors_vs_items", mine, batched, one_by_one, items, Target(2.0)),
        Comparison("loader_vectors_vs_memmap", mine, batched, memmap, npy, Target(1.0)),
        Comparison("loader_vectors_madvise", PREFETCH, advised, batched, AS_IS),
        Comparison(
            "loader_vectors_torch_strategy_vs_memmap", TORCH_STRATEGY, torch_strategy, memmap, npy
        ),
    ]
    names = ["memshard batched", "memshard one item at a time", "np.memmap batched"]
    profile_rows = []
    for name, ns, speed in zip(names, profile, speeds, strict=False):
        seconds = NUM_WORKERS * BATCH_SIZE / speed  # the loader's time per batch per worker
        share = f"{ns / 1e7 / seconds:.0f}%"
        profile_rows.append(
            [name, f"{ns / 1e3:.0f} us/batch", f"{seconds * 1e6:.0f} us/batch", share]
        )
    section.notes = [
        f"{samples:,} samples per timed run, `num_workers={NUM_WORKERS}`, "
        f"`batch_size={BATCH_SIZE}`, persistent workers, one shared random order per repeat; "
        "page cache warm.",
        "",
        "Where a worker's time goes: the fetch alone (same indices, in one process, no "
        "workers) against the loader's time per batch per worker "
        f"({NUM_WORKERS} x {BATCH_SIZE} / samples per second); the rest is the DataLoader "
        "moving the batch to the main process and the main process receiving it.",
        "",
        markdown(
            ["loader", "fetch + collate alone", "loader, per batch per worker", "fetch share"],
            profile_rows,
        ),
    ]
    section.details = {
        "fetch_ns_per_batch": dict(zip(["batched", "items", "memmap"], profile, strict=True))
    }
    return section


def run_image_loaders(config: Config, path: str, tensor: torch.Tensor) -> Section:
    """Measurement 2: memshard's batched loader against an in-RAM tensor, full epochs."""
    rows, sampler = config.rows_images, Order()
    common: dict[str, Any] = dict(batch_size=BATCH_SIZE, num_workers=NUM_WORKERS, sampler=sampler)
    loaders = [
        mt.loader(path, **common),
        DataLoader(
            TensorBatched(tensor), collate_fn=passthrough, persistent_workers=True, **common
        ),
        mt.loader(path, prefetch=True, **common),
        mt.loader(path, sharing_strategy=None, **common),
    ]
    progress(f"images: timing 4 loaders, epochs of {rows:,} samples x {config.repeats}")
    memshard, in_ram, advised, torch_strategy = loader_speeds(
        loaders, sampler, rows, rows, config.repeats
    )
    del loaders
    ram = "in-RAM tensor, batched `t[idx]`, same sampler"
    mine = "`mt.loader`, batched `__getitems__`, one epoch"
    section = Section("loader_images", loader_title(config.images, path))
    section.results = [
        Comparison("loader_images_vs_ram", mine, memshard, in_ram, ram, Target(0.95)),
        Comparison("loader_images_madvise", PREFETCH, advised, memshard, AS_IS),
        Comparison(
            "loader_images_torch_strategy_vs_ram", TORCH_STRATEGY, torch_strategy, in_ram, ram
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
    worker's memory at its start and after every epoch, and its growth."""
    probe = WorkerProbe()
    order = RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(SEED))  # type: ignore[arg-type]
    options = probe.options(NUM_WORKERS)
    loader = DataLoader(dataset, BATCH_SIZE, sampler=order, collate_fn=collate, **options)
    workers: list[dict[str, Any]] = []
    for epoch in range(MEMORY_EPOCHS):
        drain(loader)
        if epoch == 0:
            started = probe.started(NUM_WORKERS)
            workers = [{"pid": pid, "start": start, "epochs": []} for _, pid, start in started]
        for worker in workers:
            worker["epochs"].append(memory_of(worker["pid"]))
    del loader
    gc.collect()
    for worker in workers:
        worker["growth"] = worker["epochs"][-1]["private"] - worker["start"]["private"]
    return {"workers": workers}


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
        progress(f"{workload.name}: worker memory over {MEMORY_EPOCHS} epochs")
        gc.collect()
        memshard = worker_memory(mt.MemshardDataset(path), mt.collate)
        naive = worker_memory(NaiveIndex(ms.open(path)), passthrough)
        gc.collect()
        section.details[workload.name] = {"memshard": memshard, "naive": naive}
        for name, figures in (("memshard", memshard), ("list index", naive)):
            for number, worker in enumerate(figures["workers"]):
                start, end = worker["start"], worker["epochs"][-1]
                change = [f"{format_bytes(start[k])} -> {format_bytes(end[k])}" for k in end]
                row = [workload.name, name, str(number), *change, format_bytes(worker["growth"])]
                rows.append(row)
        growth = [max(w["growth"] for w in figures["workers"]) for figures in (memshard, naive)]
        section.results.append(
            Comparison(
                f"memory_{workload.name}",
                f"{workload.name} ({workload.rows:,} rows, {format_bytes(workload.nbytes)}): "
                "largest growth of a worker's Private_Dirty + Swap",
                growth[0],
                growth[1],
                "list of `(file, row)` tuples + np.memmap",
                Target(max_value=MAX_WORKER_GROWTH),
                unit="bytes",
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
def batch_mixing(
    order: np.ndarray, shard_starts: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
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
    orders = {"random": torch.randperm(len(dataset), generator=generator).numpy()}
    for window in WINDOWS:
        sampler = mt.ShardAwareSampler(dataset, window_shards=window, seed=SEED)
        orders[f"window_{window}"] = sampler.indices()
    section = Section(
        "mixing",
        f"shuffle quality: {len(dataset):,} rows in {len(dataset.shards)} shards, "
        f"{CLASSES} classes written class by class",
    )
    rows = []
    for key, order in orders.items():
        shards, mixed = batch_mixing(order, starts, labels)
        section.details[key] = {"shards": shards, "labels": mixed}
        name = "random permutation" if key == "random" else f"ShardAwareSampler, {key}"
        rows.append([name.replace("window_", "window_shards="), f"{shards:.1f}", f"{mixed:.2f}"])
    head = ["order", f"distinct shards per batch of {BATCH_SIZE}", "distinct labels per batch"]
    section.notes = [markdown(head, rows)]
    return section


@dataclass(frozen=True)
class ColdCandidate:
    """A way to read cold data: the dataset and the sampler (given the dataset and the repeat
    number, which is the sampler's epoch)."""

    key: str
    name: str
    dataset: Callable[[ms.Dataset], mt.MemshardDataset]
    sampler: Callable[[ms.Dataset, int], Sampler[int]]


def random_sampler(dataset: ms.Dataset, repeat: int) -> Sampler[int]:
    """torch's ``RandomSampler`` with a fixed seed per repeat."""
    return RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(repeat))


def shard_aware(
    dataset: ms.Dataset, repeat: int, window: int = mt.DEFAULT_WINDOW_SHARDS
) -> Sampler[int]:
    """memshard's sampler with ``window`` shards per window, epoch ``repeat``."""
    sampler = mt.ShardAwareSampler(dataset, seed=SEED, window_shards=window)
    sampler.set_epoch(repeat)
    return sampler


PREFETCHING = partial(mt.MemshardDataset, prefetch=True)
#: The first candidate is the baseline; ``GOAL_KEY`` is the configuration memshard recommends
#: for cold data. Tried before and dropped for doing no better than the plain shard-aware
#: loader: sorting each batch before the gather (0.97-1.25x of random), 8 threads gathering
#: pieces of a batch (1.07-1.68x), ``posix_fadvise(WILLNEED)`` on a window's files
#: (1.28-1.90x).
COLD_CANDIDATES = (
    ColdCandidate("random", "RandomSampler", mt.MemshardDataset, random_sampler),
    ColdCandidate("shard_aware", "ShardAwareSampler", mt.MemshardDataset, shard_aware),
    ColdCandidate("madvise", "ShardAwareSampler + `prefetch=True`", PREFETCHING, shard_aware),
    ColdCandidate("random_madvise", "RandomSampler + `prefetch=True`", PREFETCHING, random_sampler),
    *(
        ColdCandidate(
            f"window_{window}",
            f"ShardAwareSampler(window_shards={window}) + `prefetch=True`",
            PREFETCHING,
            partial(shard_aware, window=window),
        )
        for window in (1, 2, 8)
    ),
)
GOAL_KEY = "madvise"
COLD = {candidate.key: candidate for candidate in COLD_CANDIDATES}


def cold_run(
    candidate: ColdCandidate, path: str, files: Sequence[str], repeat: int, batches: int | None
) -> dict[str, Any]:
    """Evict every shard file (checked with ``mincore``), then time ``batches`` batches of a
    fresh loader (workers started inside the timing, for every candidate alike)."""
    dataset = ms.open(path)
    torch_dataset, sampler = candidate.dataset(dataset), candidate.sampler(dataset, repeat)
    resident = evict(files)
    options: dict[str, Any] = dict(batch_size=BATCH_SIZE, num_workers=NUM_WORKERS)
    loader = mt.loader(torch_dataset, sampler=sampler, persistent_workers=False, **options)
    before = disk_counters(files[0])
    gc.collect()
    times = os.times()
    start = time.perf_counter_ns()
    iterator = iter(loader)  # held past the timing: stopping the workers early is not timed
    samples = sum(len(batch["x"]) for batch in itertools.islice(iterator, batches))
    elapsed = time.perf_counter_ns() - start
    after, main_cpu = disk_counters(files[0]), os.times()
    del iterator
    gc.collect()
    ended = os.times()  # the workers' CPU time counts once they are joined
    workers_sys = ended.children_system - times.children_system
    workers_cpu = ended.children_user - times.children_user + workers_sys
    main_cpu_s = (main_cpu.user - times.user) + (main_cpu.system - times.system)
    return {
        "ns": elapsed,
        "cpu": (main_cpu_s + workers_cpu) * 1e9 / elapsed / (os.cpu_count() or 1),
        "workers_sys": workers_sys / max(workers_cpu, 1e-9),
        "samples": samples,
        "resident_before": resident,
        "disk_reads": after["reads"] - before["reads"],
        "disk_bytes": (after["sectors"] - before["sectors"]) * 512,
        "disk_busy": (after["busy_ms"] - before["busy_ms"]) * 1e6 / elapsed,
    }


def run_cold(config: Config, path: str) -> Section:
    """Measurement 4b: cold-page-cache speed of each :data:`COLD_CANDIDATES` entry."""
    files = [name for name in core.files_under(path) if name.endswith(".npy")]
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in COLD}
    what = "an epoch" if config.cold_batches is None else f"{config.cold_batches} batches"
    progress(f"cold cache: {config.cold_repeats} repeats, {what} per run")

    def run(key: str, repeat: int) -> float:
        runs[key].append(cold_run(COLD[key], path, files, repeat, config.cold_batches))
        return float(runs[key][-1]["ns"])

    core.alternate(list(COLD), config.cold_repeats, run)

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
    baseline = "RandomSampler (plain memshard loader)"
    for key, candidate in list(COLD.items())[1:]:
        target = Target(min_ratio=2.0) if key == GOAL_KEY else Target()
        comparison = Comparison(
            f"cold_{key}", candidate.name, speed(key), speed("random"), baseline, target
        )
        section.results.append(comparison)
    rows = []
    for key, candidate in COLD.items():
        read, reads = median(key, "disk_bytes"), median(key, "disk_reads")
        rows.append(
            [candidate.name, format_value(speed(key), "samples/s"), format_bytes(read)]
            + [f"{reads:,.0f}", format_bytes(read / max(reads, 1))]
            + [f"{100 * median(key, name):.0f}%" for name in ("disk_busy", "cpu", "workers_sys")]
        )
    worst = max(run["resident_before"] for key in runs for run in runs[key])
    head = ["candidate", "speed", "read from disk", "disk reads", "mean read", "disk busy"]
    section.notes = [
        f"Before every run each shard file was synced and dropped with "
        f"`posix_fadvise(POSIX_FADV_DONTNEED)`; `mincore` then found at most "
        f"{100 * worst:.2f}% of the shard bytes still in the page cache. Medians of "
        f"{config.cold_repeats} runs; loader start-up (fork of {NUM_WORKERS} workers) is inside "
        "every timing. Disk figures come from /proc/diskstats (the whole disk), CPU busy is "
        "the CPU time of the main process and the workers over the run's wall time on all "
        f"{os.cpu_count()} CPUs (workers' time includes their shutdown); medians:",
        "",
        markdown([*head, "CPU busy", "workers' CPU in kernel"], rows),
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
    data = core.random_rows(workload, rng)
    path, npy_path = os.path.join(scratch, "vectors"), os.path.join(scratch, "vectors.npy")
    progress(f"vectors: writing {format_bytes(workload.nbytes)} twice (memshard, .npy)")
    core.write_dataset(path, workload, core.batches_of(data, 65536))
    np.save(npy_path, data)
    core.warm_page_cache([path, npy_path])
    return path, npy_path


def write_images(config: Config, scratch: str, rng: np.random.Generator) -> tuple[str, str, Any]:
    """The images workload twice: default shards, and :data:`SHUFFLE_SHARDS` shards with a
    label field ``y`` of :data:`CLASSES` classes written in order. Returns the paths and the
    rows as an in-RAM tensor."""
    workload = config.images
    data = core.random_rows(workload, rng)
    path, labelled = os.path.join(scratch, "images"), os.path.join(scratch, "images-labelled")
    progress(f"images: writing {format_bytes(workload.nbytes)} twice")
    core.write_dataset(path, workload, core.batches_of(data, BATCH_SIZE))
    labels = np.arange(workload.rows, dtype=np.int64) * CLASSES // workload.rows
    with ms.create(
        labelled,
        fields={**workload.fields, "y": ("int64", ())},
        labels={"y": [f"class{k}" for k in range(CLASSES)]},
        shard_bytes=-(-workload.rows // SHUFFLE_SHARDS) * (workload.row_bytes + labels.itemsize),
    ) as appender:
        for start in range(0, workload.rows, BATCH_SIZE):
            rows = slice(start, start + BATCH_SIZE)
            appender.extend({"x": data[rows], "y": labels[rows]})
    core.warm_page_cache([path])
    return path, labelled, torch.from_numpy(data)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement, print the report and optionally write it as JSON."""
    config = parse_args(argv)
    method = [
        f"torch: {torch.__version__}; every loader: `num_workers={NUM_WORKERS}`, "
        f"`batch_size={BATCH_SIZE}`, shuffled",
        f"speed figures: median of {config.repeats} repeats (cold cache: "
        f"{config.cold_repeats}); the candidates alternate within every repeat",
        "ratio: how many times better memshard is than the baseline (memshard / baseline "
        "speed; baseline / memshard memory growth); 1.00x = as good",
    ]
    rng = np.random.default_rng(SEED)
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard PyTorch loader benchmark", config.mode, scratch, method)
        vectors, npy_path = write_vectors(config, scratch, rng)
        sections = [run_vector_loaders(config, vectors, npy_path)]
        out.add(sections[-1].render())
        images, labelled, tensor = write_images(config, scratch, rng)
        sections.append(run_image_loaders(config, images, tensor))
        out.add(sections[-1].render())
        del tensor
        gc.collect()
        for measure in (
            partial(run_memory, config, {"vectors": vectors, "images": images}),
            partial(run_mixing, labelled),
            partial(run_cold, config, labelled),
        ):
            sections.append(measure())
            out.add(sections[-1].render())
    for result in itertools.chain.from_iterable(section.results for section in sections):
        if result.met is not None:
            out.goal(result.key, result.met)
    out.record.update(
        torch=torch.__version__,
        repeats=config.repeats,
        cold_repeats=config.cold_repeats,
        batch_size=BATCH_SIZE,
        num_workers=NUM_WORKERS,
        workloads={
            w.name: {"rows": w.rows, "shape": list(w.shape), "nbytes": w.nbytes}
            for w in (config.vectors, config.images)
        },
        sections={section.key: section.to_json() for section in sections},
    )
    return out.finish(config.json)


if __name__ == "__main__":
    sys.exit(main())
