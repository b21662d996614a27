"""Compressed fields (issue 20): memshard uncompressed, zstd and blosc against LMDB + lz4,
Redis + ``savez_compressed`` blobs, zarr v3 + zstd and HDF5 + gzip / blosc, in one run.

Run from the repository root, on a quiet machine::

    python -m benchmarks.compressed --out docs/benchmarks   # about 2 GiB of rows (long)
    python -m benchmarks.compressed --scale 0.25             # a quarter of the rows
    python -m benchmarks.compressed --quick                  # seconds (the smoke test runs this)

Three workloads, generated from a seed by :mod:`benchmarks.codecs`: rasterised pen sketches
(uint8[1, 256, 256], a few strokes each, like the doodle dataset), frames (float32[3, 64, 64],
smooth fields plus noise) and embeddings (float32[768], unit Gaussian vectors, barely
compressible). Each is written in every format of :mod:`benchmarks.compressed_formats` from
the same batches of 1,024 rows, every reader checked against the rows generated, then
measured: the bytes stored (the compression ratio); a WARM random gather of 256 rows (files
read into the page cache first; memshard's compressed fields with their default threads and
with ``threads=1``); a COLD random gather of 256 rows (every format's files evicted from the
page cache with ``posix_fadvise(DONTNEED)`` first, what stayed checked with ``mincore``); a
DataLoader with 2 workers (memshard's loader against torch ``Dataset`` s over LMDB + lz4 and
zarr, the same batch sampler); and ``ms.from_numpy`` from a ``.npy`` file with 1 and 2 workers
next to the codec's own single-thread compression speed on the same blocks (the limit of one
worker). Every figure is the median of the repeats, the candidates in a rotated order within
each; speed goals are judged by reading the output, never by timed tests. The report, JSON and
markdown, goes to ``--out``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader
from torch.utils.data import Dataset as TorchDataset

import memshard as ms
import memshard.torch as mt
from memshard.blockcodec import BlockCodec
from memshard.compressedread import default_threads

from . import core
from .codecs import WORKLOADS, Workload
from .compressed_formats import (
    HF_NOT_MEASURED,
    LMDB,
    MEMSHARD,
    MEMSHARD_BLOSC,
    MEMSHARD_ZSTD,
    ZARR_1,
    ZARR_64,
    ZSTD_LEVEL,
    Format,
    MemshardFormat,
    Reader,
    Unavailable,
    blosc_codec,
    formats,
)
from .core import (
    BATCH_SIZE,
    SEED,
    Figure,
    Option,
    alternate,
    format_bytes,
    format_count,
    format_ns,
    format_rate,
    markdown,
    progress,
    timed,
    warm_page_cache,
)
from .loaders import Order, drain
from .ragged_loaders import sharing_file_system
from .system import EVICTION_TOLERANCE, aligned_empty, evict

#: Rows of each workload in a full run (1 GiB of sketches, 768 MiB of frames, 192 MiB of
#: embeddings) and in quick mode.
FULL_ROWS = {"sketches": 16_384, "frames": 16_384, "embeddings": 65_536}
QUICK_ROWS = {"sketches": 256, "frames": 256, "embeddings": 2_048}
#: Bytes of the rows ``from_numpy`` converts at most (the first rows of the workload).
CONVERT_BYTES = 256 << 20
WRITE_ROWS = 1024
#: Gathers of a timed warm run at most, and of the untimed run that sizes it.
GATHERS_PER_RUN = 100
GATHER_PROBE = 2
CHECK_ROWS = 64
NUM_WORKERS = 2
CONTEXT = multiprocessing.get_context("fork")
WARM_BATCHES = 2 * NUM_WORKERS
THREADS_1 = ", threads=1"
#: The DataLoader's candidates: memshard compressed and uncompressed, and the two peers.
LOADER_FORMATS = (MEMSHARD_ZSTD, MEMSHARD, LMDB, ZARR_1)
WORKER_COUNTS = (1, 2)


@dataclass(frozen=True)
class Goal:
    """A goal on ``workload``: ``candidate``'s figure of ``measurement`` over ``baseline``'s
    as a speed (or, for ``"ratio"``, the compression ratio itself) of at least
    ``min_ratio``."""

    workload: str
    measurement: str
    candidate: str
    baseline: str | None
    min_ratio: float
    text: str


GOALS = (
    Goal("sketches", "ratio", MEMSHARD_ZSTD, None, 50.0, "sketches compress >= 50x with zstd"),
    Goal("sketches", "gather", MEMSHARD_ZSTD, LMDB, 2.0, "warm gather >= 2x LMDB+lz4"),
    Goal("sketches", "gather", MEMSHARD_ZSTD, ZARR_1, 3.0, "warm gather >= 3x zarr-zstd"),
    Goal("sketches", "gather", MEMSHARD_ZSTD, ZARR_64, 3.0, "warm gather >= 3x zarr-zstd"),
    Goal("embeddings", "gather", MEMSHARD_ZSTD, MEMSHARD, 0.5,
         "compressed warm gather >= 0.5x uncompressed"),
    Goal("embeddings", "gather", MEMSHARD_BLOSC, MEMSHARD, 0.5,
         "compressed warm gather >= 0.5x uncompressed"),
    Goal("sketches", "cold", MEMSHARD_ZSTD, MEMSHARD, 1.0,
         "cold gather: compressed faster than uncompressed"),
    *(
        Goal(workload.name, "loader", MEMSHARD_ZSTD, peer, 1.0, f"DataLoader >= {peer}")
        for workload in WORKLOADS
        for peer in (LMDB, ZARR_1)
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    #: The command line's ``--scale`` (``None``: not given).
    scale: float | None
    run_seconds: float
    loader_batches: int
    out: str

    def rows(self, workload: Workload) -> int:
        """Rows of ``workload``: ``--scale`` times the full count, else the mode's."""
        full = FULL_ROWS[workload.name]
        if self.scale is not None:
            return max(BATCH_SIZE, round(self.scale * full))
        return QUICK_ROWS[workload.name] if self.quick else full

    def shard_bytes(self, workload: Workload) -> int:
        """memshard's default shard size; in quick mode the same fraction of the data as in
        a full run, so that quick mode crosses shard boundaries."""
        return core.shard_bytes_for(self.rows(workload), FULL_ROWS[workload.name], self.quick)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; options left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.compressed",
        __doc__,
        Option("--scale", float, "fraction of the full rows of each workload", None, None),
        Option("--run-seconds", float, "seconds each timed warm run aims at", 0.5, 0.02),
        Option("--loader-batches", int, "batches per timed DataLoader run", 20, 2),
        repeats=(5, 2),
    )
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    return Config(**options.parse(argv))


# -- writing and checking ---------------------------------------------------------------------
def build(candidates: Sequence[Format], batches: Sequence[np.ndarray],
          skipped: dict[str, str]) -> tuple[list[Format], dict[str, float]]:  # fmt: skip
    """Write every format once (context, not a goal); those written and their seconds. A
    format that cannot run here goes to ``skipped`` with the reason."""
    written, seconds = [], {}
    for fmt in candidates:
        progress(f"writing {fmt.name}")
        start = time.perf_counter()
        try:
            fmt.write(batches)
        except Unavailable as why:
            fmt.remove()
            skipped[fmt.name] = str(why)
            continue
        seconds[fmt.name] = time.perf_counter() - start
        written.append(fmt)
    return written, seconds


def open_readers(written: Sequence[Format]) -> dict[str, Reader]:
    """A warm reader of every format (its files read into the page cache, every row gathered
    once), and of memshard's compressed fields also one with ``threads=1``."""
    readers: dict[str, Reader] = {}
    for fmt in written:
        warm_page_cache(fmt.files())
        readers[fmt.name] = fmt.open()
        if isinstance(fmt, MemshardFormat) and fmt.codec:
            readers[fmt.name + THREADS_1] = fmt.open(threads=1)
        out = aligned_empty((BATCH_SIZE, *fmt.shape), fmt.dtype)
        for start in range(0, fmt.rows - BATCH_SIZE + 1, BATCH_SIZE):
            readers[fmt.name].gather(np.arange(start, start + BATCH_SIZE), out)
    return readers


def check_readers(readers: dict[str, Reader], data: np.ndarray, out: core.Report,
                  workload: str) -> None:  # fmt: skip
    """Untimed: every reader gathers the rows generated (random rows, a repeat included)."""
    indices = np.random.default_rng([SEED, 2]).integers(0, len(data), CHECK_ROWS)
    indices[-1] = indices[0]
    for name, reader in readers.items():
        got = np.empty((CHECK_ROWS, *data.shape[1:]), data.dtype)
        reader.gather(indices, got)
        key = f"{workload}_{name}_rows".replace(" ", "_").replace(",", "").replace("=", "")
        out.check(key, bool(np.array_equal(got, data[indices])))


# -- the measurements -------------------------------------------------------------------------
def measure_warm(readers: dict[str, Reader], data: np.ndarray, config: Config) -> dict[str, Figure]:
    """Nanoseconds of one warm gather of 256 random rows (unsorted, repeats allowed).

    Each reader's gathers per timed run last about ``run_seconds``, judged by an untimed run
    of :data:`GATHER_PROBE`; every repeat reads fresh rows, the same for every reader."""
    rng = np.random.default_rng([SEED, 4])
    indices = rng.integers(0, len(data), (config.repeats + 1, GATHERS_PER_RUN, BATCH_SIZE))
    out = aligned_empty((BATCH_SIZE, *data.shape[1:]), data.dtype)

    def gather(name: str, count: int, repeat: int) -> None:
        for chosen in indices[repeat + 1][:count]:
            readers[name].gather(chosen, out)

    counts = {}
    for name in readers:
        per_gather = max(timed(partial(gather, name, GATHER_PROBE, -1)), 1) / GATHER_PROBE
        counts[name] = int(min(GATHERS_PER_RUN, max(1, config.run_seconds * 1e9 / per_gather)))

    def run(name: str, repeat: int) -> float:
        return timed(partial(gather, name, counts[name], repeat)) / counts[name]

    samples = alternate(list(readers), config.repeats, run)
    return {name: Figure.of(values, counts[name]) for name, values in samples.items()}


def measure_cold(written: Sequence[Format], data: np.ndarray, repeats: int) -> dict[str, Figure]:
    """Nanoseconds of one gather of 256 random rows after every format's files were evicted
    from the page cache (the reader opened just before the eviction); ``extra["cached"]``:
    the largest fraction of the files still cached after an eviction."""
    on_disk = [fmt for fmt in written if fmt.on_disk]
    files = [path for fmt in on_disk for path in fmt.files()]
    by_name = {fmt.name: fmt for fmt in on_disk}
    rng = np.random.default_rng([SEED, 5])
    indices = rng.integers(0, len(data), (repeats, BATCH_SIZE))
    out = aligned_empty((BATCH_SIZE, *data.shape[1:]), data.dtype)
    cached: dict[str, list[float]] = {name: [] for name in by_name}

    def run(name: str, repeat: int) -> float:
        fmt = by_name[name]
        for each in on_disk:
            each.drop_caches()
        gc.collect()
        reader = fmt.open(cold=True) if isinstance(fmt, MemshardFormat) else fmt.open()
        try:
            cached[name].append(evict(files))
            return float(timed(partial(reader.gather, indices[repeat], out)))
        finally:
            reader.close()

    samples = alternate(list(by_name), repeats, run)
    return {
        name: Figure.of(values, 1, cached=max(cached[name])) for name, values in samples.items()
    }


class PeerBatches(TorchDataset[dict[str, torch.Tensor]]):
    """A peer's batched ``Dataset``: ``dataset[list_of_rows]`` is one gather, as a tensor;
    the reader is opened on first use in each process (nothing crosses a fork)."""

    def __init__(self, fmt: Format) -> None:
        self.format = fmt
        self._reader: Reader | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.format.rows

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = self.format.open(), os.getpid()
        out = np.empty((len(rows), *self.format.shape), self.format.dtype)
        self._reader.gather(np.asarray(rows), out)
        return {"x": torch.from_numpy(out)}


def make_loader(fmt: Format, order: Order) -> DataLoader[Any]:
    """``fmt``'s loader: 2 forked persistent workers, batches of 256 by one ``BatchSampler``
    over ``order``; memshard through :func:`memshard.torch.loader`."""
    batches = BatchSampler(order, BATCH_SIZE, drop_last=False)
    if isinstance(fmt, MemshardFormat):
        return mt.loader(
            mt.MemshardDataset(fmt.root), batch_sampler=batches, num_workers=NUM_WORKERS,
            multiprocessing_context=CONTEXT,
        )  # fmt: skip
    return DataLoader(
        PeerBatches(fmt), batch_size=None, sampler=batches, num_workers=NUM_WORKERS,
        persistent_workers=True, multiprocessing_context=CONTEXT,
        worker_init_fn=sharing_file_system,
    )  # fmt: skip


def measure_loaders(written: Sequence[Format], data: np.ndarray, config: Config,
                    out: core.Report, workload: str) -> dict[str, Figure]:  # fmt: skip
    """Samples per second of each loader of :data:`LOADER_FORMATS`; an untimed pass of
    :data:`WARM_BATCHES` batches first starts the workers and checks the rows they return."""
    by_name = {fmt.name: fmt for fmt in written if fmt.name in LOADER_FORMATS}
    rows = min(len(data), config.loader_batches * BATCH_SIZE)
    rng = np.random.default_rng([SEED, 6])
    order = Order(rng.permutation(len(data))[: WARM_BATCHES * BATCH_SIZE])
    orders = [rng.permutation(len(data))[:rows] for _ in range(config.repeats)]
    loaders = {name: make_loader(fmt, order) for name, fmt in by_name.items()}
    for name, loader in loaders.items():
        got = torch.cat([batch["x"] for batch in loader]).numpy()
        out.check(f"{workload}_loader_{name}".replace(" ", "_"),
                  bool(np.array_equal(got, data[order.rows])))  # fmt: skip

    def run(name: str, repeat: int) -> float:
        order.rows = orders[repeat]
        gc.collect()
        elapsed = timed(partial(drain, loaders[name]))
        return rows / (elapsed / 1e9)

    samples = alternate(list(loaders), config.repeats, run)
    loaders.clear()  # stops their workers
    gc.collect()
    return {name: Figure.of(values, rows) for name, values in samples.items()}


def codec_limit(path: str, data: np.ndarray) -> Callable[[], None]:
    """A call that compresses ``data`` once in one thread, in the blocks memshard's dataset
    at ``path`` uses (its field's codec, rows per block from its ``block_bytes``)."""
    dataset = ms.open(path)
    codec = dataset.manifest.fields["x"].codec
    dataset.close()
    assert codec is not None
    block = BlockCodec.of(codec.name, codec.params, data.dtype.itemsize)
    rows = max(1, codec.block_bytes // (data[0].nbytes or 1))

    def compress() -> None:
        for start in range(0, len(data), rows):
            block.compress(data[start : start + rows].data.cast("B"))

    return compress


def measure_convert(written: Sequence[Format], data: np.ndarray, config: Config,
                    shard_bytes: int, scratch: str) -> dict[str, Figure]:  # fmt: skip
    """Bytes (uncompressed) per second of ``ms.from_numpy(npy, dst, codecs=..., workers=N)``
    for each compressed memshard format's codec and 1 and 2 workers, from a ``.npy`` file in
    the page cache, to the commit (fsync included); and of the codec alone in one thread. At
    most the first :data:`CONVERT_BYTES` of ``data`` are converted."""
    data = data[: max(1, CONVERT_BYTES // data[0].nbytes)]
    source = os.path.join(scratch, "x.npy")
    target = os.path.join(scratch, "converted")
    np.save(source, data)
    warm_page_cache([source])
    runs: dict[str, Callable[[], object]] = {}
    for fmt in written:
        if isinstance(fmt, MemshardFormat) and fmt.codec:
            for workers in WORKER_COUNTS:
                runs[f"from_numpy {fmt.codec}, workers={workers}"] = partial(
                    ms.from_numpy, source, target, codecs=fmt.codec, workers=workers,
                    shard_bytes=shard_bytes, progress=False,
                )  # fmt: skip
            runs[f"{fmt.codec} alone, 1 thread"] = codec_limit(fmt.root, data)

    def run(name: str, repeat: int) -> float:
        core.remove(target)
        os.sync()
        return data.nbytes / (timed(runs[name]) / 1e9)

    try:
        samples = alternate(list(runs), config.repeats, run)
    finally:
        core.remove(target)
        core.remove(source)
    return {name: Figure.of(values) for name, values in samples.items()}


def run_workload(config: Config, workload: Workload, scratch: str, out: core.Report
                 ) -> dict[str, Any]:  # fmt: skip
    """Generate, write, check and measure one workload; its record (the formats removed)."""
    rows = config.rows(workload)
    progress(f"{workload.name}: generating {rows:,} rows")
    data = workload.make(np.random.default_rng([SEED, 1]), rows)
    batches = core.batches_of(data, WRITE_ROWS)
    shard_bytes = config.shard_bytes(workload)
    candidates = formats(scratch, workload.name, workload.dtype, workload.shape, shard_bytes)
    skipped: dict[str, str] = {}
    try:
        written, seconds = build(candidates, batches, skipped)
        readers = open_readers(written)
        check_readers(readers, data, out, workload.name)
        progress(f"{workload.name}: warm gathers, {config.repeats} repeats")
        warm = measure_warm(readers, data, config)
        for reader in readers.values():
            reader.close()
        readers.clear()
        progress(f"{workload.name}: cold gathers, {config.repeats} repeats")
        cold = measure_cold(written, data, config.repeats)
        progress(f"{workload.name}: DataLoaders, {config.repeats} repeats")
        loaders = measure_loaders(written, data, config, out, workload.name)
        progress(f"{workload.name}: from_numpy and the codecs alone, {config.repeats} repeats")
        convert = measure_convert(written, data, config, shard_bytes, scratch)
        stored = {fmt.name: fmt.stored_bytes() for fmt in written}
        descriptions = {fmt.name: fmt.description for fmt in candidates}
    finally:
        for fmt in candidates:
            fmt.remove()
    return {
        "workload": {
            "name": workload.name,
            "dtype": workload.dtype,
            "shape": workload.shape,
            "rows": rows,
            "description": workload.description,
        },
        "nbytes": int(data.nbytes),
        "formats": descriptions,
        "skipped": skipped,
        "stored": stored,
        "write_seconds": seconds,
        "gather": warm,
        "cold": cold,
        "loader": loaders,
        "convert": convert,
    }


# -- the report -------------------------------------------------------------------------------
def goal_ratio(goal: Goal, record: dict[str, Any]) -> float | None:
    """The figure :data:`GOALS` judges: a compression ratio, or ``goal.candidate``'s speed
    over ``goal.baseline``'s; ``None`` if either was not measured."""
    if goal.measurement == "ratio":
        stored = record["stored"].get(goal.candidate)
        return record["nbytes"] / stored if stored else None
    figures = record[goal.measurement]
    mine, theirs = figures.get(goal.candidate), figures.get(goal.baseline)
    if mine is None or theirs is None:
        return None
    if goal.measurement == "loader":
        return float(mine.value / theirs.value)
    return float(theirs.value / mine.value)


def judge(records: dict[str, dict[str, Any]], out: core.Report) -> list[dict[str, Any]]:
    """Every goal on its workload: the ratio and whether it is met (recorded in ``out``)."""
    results = []
    for goal in GOALS:
        if goal.workload not in records:
            continue
        ratio = goal_ratio(goal, records[goal.workload])
        met = None
        if ratio is not None:
            key = f"{goal.workload}_{goal.measurement}_{goal.candidate}_vs_{goal.baseline}"
            met = out.goal(key.replace(" ", "_"), ratio >= goal.min_ratio)
        results.append({**asdict(goal), "ratio": ratio, "met": met})
    return results


def goals_table(results: Sequence[dict[str, Any]]) -> str:
    """PASS or MISS for each goal."""
    rows = [
        [result["text"], result["workload"], result["candidate"], result["baseline"] or "-",
         "not measured" if result["ratio"] is None else f"{result['ratio']:.2f}x",
         f">= {result['min_ratio']:g}x",
         {True: "PASS", False: "**MISS**", None: "not measured"}[result["met"]]]
        for result in results
    ]  # fmt: skip
    head = ["goal", "workload", "memshard", "against", "ratio", "needed", "result"]
    return markdown(head, rows)


def ratio_cell(mine: Figure | None, theirs: Figure | None, higher_is_better: bool) -> str:
    """memshard zstd's speed over another's, or ``-``."""
    if mine is None or theirs is None or mine is theirs:
        return "-"
    ratio = mine.value / theirs.value if higher_is_better else theirs.value / mine.value
    return f"{ratio:.2f}x"


def sizes_table(record: dict[str, Any]) -> str:
    """Bytes stored, compression ratio and write time (once) of every format."""
    rows = [
        [name, format_bytes(stored), f"{record['nbytes'] / stored:.1f}x",
         core.format_duration(record["write_seconds"][name])]
        for name, stored in record["stored"].items()
    ]  # fmt: skip
    rows += [[name, "not measured", why, "-"] for name, why in record["skipped"].items()]
    return markdown(["format", "stored", "compression ratio", "write (once)"], rows)


def warm_table(record: dict[str, Any]) -> str:
    """Warm gathers: default threads and ``threads=1`` side by side."""
    figures = record["gather"]
    mine = figures.get(MEMSHARD_ZSTD)
    rows = []
    for name in record["stored"]:
        default, single = figures[name], figures.get(name + THREADS_1)
        rate = BATCH_SIZE / (default.value / 1e9)
        rows.append([
            name, format_ns(default.value), format_ns(single.value) if single else "-",
            f"{format_count(rate)} rows/s", ratio_cell(mine, default, higher_is_better=False),
            ratio_cell(figures.get(MEMSHARD_ZSTD + THREADS_1), default, higher_is_better=False)
            if name != MEMSHARD_ZSTD else "-",
        ])  # fmt: skip
    head = [
        "format", f"gather of {BATCH_SIZE}, default threads", "threads=1", "rows/s",
        "memshard zstd-3 speed vs this", "memshard zstd-3 threads=1 vs this",
    ]  # fmt: skip
    return markdown(head, rows)


def cold_table(record: dict[str, Any]) -> str:
    """Cold gathers, with what stayed in the page cache."""
    figures = record["cold"]
    mine = figures.get(MEMSHARD_ZSTD)
    rows = [
        [name, format_ns(figure.value), f"{figure.extra['cached']:.1%}",
         ratio_cell(mine, figure, higher_is_better=False)]
        for name, figure in figures.items()
    ]  # fmt: skip
    head = ["format (cold)", f"gather of {BATCH_SIZE}", "files still cached",
            "memshard zstd-3 speed vs this"]  # fmt: skip
    return markdown(head, rows)


def loader_table(record: dict[str, Any]) -> str:
    """Samples per second of each loader."""
    figures = record["loader"]
    mine = figures.get(MEMSHARD_ZSTD)
    rows = [
        [name, f"{format_count(figure.value)} samples/s",
         format_rate(figure.value * record["nbytes"] / record["workload"]["rows"]),
         ratio_cell(mine, figure, higher_is_better=True)]
        for name, figure in figures.items()
    ]  # fmt: skip
    return markdown(["loader", "samples/s", "decoded bytes/s", "memshard zstd-3 / this"], rows)


def convert_table(record: dict[str, Any]) -> str:
    """Conversion rates next to the codec alone."""
    figures = record["convert"]
    rows = []
    for name, figure in figures.items():
        codec = name.split()[1].rstrip(",") if name.startswith("from_numpy") else name.split()[0]
        limit = figures.get(f"{codec} alone, 1 thread")
        share = f"{figure.value / limit.value:.2f}x" if limit and limit is not figure else "-"
        rows.append([name, format_rate(figure.value), share])
    return markdown(["write (bytes before compression)", "rate", "of the codec alone"], rows)


def cold_warning(record: dict[str, Any]) -> str:
    """A warning if an eviction left more than the tolerance of some format's files cached."""
    short = {
        name: figure.extra["cached"]
        for name, figure in record["cold"].items()
        if figure.extra["cached"] > EVICTION_TOLERANCE
    }
    if not short:
        return ""
    listed = ", ".join(f"{name} {fraction:.0%}" for name, fraction in short.items())
    return f"WARNING: NOT COLD: files stayed in the page cache after eviction ({listed})."


def notes(config: Config) -> str:
    """How each figure is measured."""
    return "\n".join([
        "- Stored: the bytes of every file of the format (memshard: shards, offsets, "
        "manifest; LMDB: its data file, pages included; Redis: the blobs' bytes). Ratio: the "
        "rows' bytes over that.",
        f"- Warm gather: {BATCH_SIZE} random rows (unsorted, repeats allowed) into one "
        "page-aligned array; every file read into the page cache and every row gathered once "
        f"before. memshard: `take(indices, out=..., threads=...)` with the default threads "
        f"({default_threads()} here) and `threads=1`. Time per gather over a run of about "
        f"{config.run_seconds:g} s.",
        f"- Cold gather: one gather of {BATCH_SIZE} random rows right after every format's "
        "files were evicted (`posix_fadvise(DONTNEED)` after `sync`; the share still cached "
        "is measured with `mincore`); the reader was opened before the eviction. memshard: "
        "`prefetch` then `take`, the documented way to read rows not in the page cache.",
        f"- DataLoader: {NUM_WORKERS} forked persistent workers, one `BatchSampler` of "
        f"{BATCH_SIZE} over the same random order for every loader, {config.loader_batches} "
        "batches per run after an untimed pass that checks the rows. memshard: "
        "`mt.loader(mt.MemshardDataset(path), batch_sampler=...)`; the peers: a batched "
        "torch `Dataset` whose `__getitem__` gathers the batch's rows (`batch_size=None`).",
        "- Write: `ms.from_numpy(npy_path, dst, codecs=..., workers=N)` from a `.npy` file in "
        f"the page cache (its first {format_bytes(CONVERT_BYTES)} at most), to the commit "
        "(fsync included), in bytes before compression per second; next to it the codec "
        "alone compressing the same blocks in one thread (memshard's `BlockCodec`), the "
        "limit of one worker.",
        f"- {HF_NOT_MEASURED}.",
        f"- Every figure is the median of {config.repeats} repeats, the candidates in a "
        "rotated order within each (a different one first each time).",
    ])  # fmt: skip


def command(config: Config) -> str:
    """The command line that runs this configuration again (the defaults of its mode aside).

    Example:
        >>> command(parse_args(["--scale", "0.25", "--repeats", "3"]))
        'python -m benchmarks.compressed --scale 0.25 --repeats 3'
    """
    default = parse_args(["--quick"] if config.quick else [])
    words = ["python -m benchmarks.compressed", "--quick" if config.quick else ""]
    if config.scale is not None:
        words.append(f"--scale {config.scale:g}")
    for option in ("repeats", "run_seconds", "loader_batches"):
        value = getattr(config, option)
        if value != getattr(default, option):
            words.append(f"--{option.replace('_', '-')} {value:g}")
    return " ".join(word for word in words if word)


def method(config: Config) -> list[str]:
    """The header lines of the report."""
    rows = ", ".join(f"{config.rows(w):,} {w.name}" for w in WORKLOADS)
    full = ", ".join(f"{FULL_ROWS[w.name]:,}" for w in WORKLOADS)
    codecs = (
        f"zstd:{ZSTD_LEVEL}; blosc: {blosc_codec('uint8')} (sketches), "
        f"{blosc_codec('float32')} (floats)"
    )
    return [
        f"command: `{command(config)}`",
        f"rows: {rows} (a full run has {full})",
        f"memshard codecs: {codecs}",
        "ratios: memshard zstd-3's speed over the other's (above 1: memshard is faster)",
    ]


def to_json(value: Any) -> Any:
    """``value`` with every :class:`Figure` as plain data."""
    if isinstance(value, Figure):
        return asdict(value)
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every workload, print the report and write it, as markdown and JSON."""
    config = parse_args(argv)
    records: dict[str, dict[str, Any]] = {}
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard compressed fields", config.mode, scratch, method(config))
        for workload in WORKLOADS:
            record = run_workload(config, workload, scratch, out)
            records[workload.name] = record
            shape = "x".join(map(str, workload.shape))
            out.add(
                f"## {workload.name}: {record['workload']['rows']:,} rows of "
                f"{workload.dtype}[{shape}], {workload.description} "
                f"({format_bytes(record['nbytes'])})",
                "Stored size and compression ratio:",
                sizes_table(record),
                "Warm random gather (page cache full):",
                warm_table(record),
                "Cold random gather (every format's files evicted first):",
                cold_table(record),
                cold_warning(record),
                f"DataLoader, {NUM_WORKERS} workers:",
                loader_table(record),
                "Writing compressed (`ms.from_numpy`) and the codec alone:",
                convert_table(record),
            )
    results = judge(records, out)
    out.add("## Goals", goals_table(results))
    out.add("## How each figure is measured", notes(config))
    out.record.update(
        command=command(config),
        rows={w.name: config.rows(w) for w in WORKLOADS},
        repeats=config.repeats,
        batch_size=BATCH_SIZE,
        num_workers=NUM_WORKERS,
        default_threads=default_threads(),
        loader_batches=config.loader_batches,
        not_measured={"HF datasets": HF_NOT_MEASURED},
        workloads=to_json(records),
        goals=results,
    )
    os.makedirs(config.out, exist_ok=True)
    json_path = os.path.join(config.out, "compressed.json")
    code = out.finish(json_path, os.path.join(config.out, "compressed.md"))
    if config.json is not None and os.path.abspath(config.json) != os.path.abspath(json_path):
        shutil.copyfile(json_path, config.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
