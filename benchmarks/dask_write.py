"""Writing a dataset from dask with :func:`memshard.dask.from_dask` on a real dask cluster.

Run from the repository root::

    python -m benchmarks.dask_write                      # full: ~4 GiB of images (minutes)
    python -m benchmarks.dask_write --quick              # ~256 MiB, well under a minute
    python -m benchmarks.dask_write --storage-gbps 25    # another storage cap for the estimate

The dataset: float32[3, 64, 64] images (49,152 bytes a row) plus an int64 ``labels`` field with
a vocabulary of 1,000 class names (every value is checked against it), 49,160 bytes a row. The
source is a dask array generated on the workers: ``da.arange`` of the row indices in blocks of
``--block-shards`` shards (64 MiB shards of 1,024 rows; 4 shards a block in full mode, 1 in
quick mode), mapped block by block to images (a fixed pattern plus the row index modulo 1000,
one pass over the block) and labels, so any row can be recomputed to check it.

Clusters: ``distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`` for
N = 1 and N = 2, both started once before anything is timed (each with its own client, made
current for its own runs) and warmed up with an untimed small write. In every repeat, in the
same run, with the order of N (and of the two measurements of an N) flipped every repeat:

* ``from_dask`` end to end: every block becomes a part written on a worker (shard files,
  checksums, ``fsync``), then one ordered commit, the move into place and the reopen;
* generation only: the same blocks, computed on the same cluster as the same ``to_delayed``
  graph, each handed to a task that returns its row count (the block is thrown away), so the
  difference to ``from_dask`` is what writing costs;
* in one process, for context: ``memshard.create(...).extend()`` of the same rows from a
  preallocated in-RAM array, then ``close()``.

Before every timed write the earlier output is deleted, dirty pages are flushed (``os.sync``)
and memory of the output's size is touched and freed (:func:`benchmarks.core.clean_slate`).
The first ``from_dask`` output of each N is checked untimed: its rows, every label, and the
images of a sample of rows (every block's first and last row and random ones).

Throughput is rows/s and MB/s (10**6 bytes) of data (images and labels). The goal of the issue
is a ``from_dask`` speedup of at least 1.6x from one worker to two.

Finally, the time to build a 50,000,000-row dataset of these images is estimated from the
measured per-worker rate (``time = rows / (N * per-worker rate)``, capped by an aggregate
storage bandwidth ``--storage-gbps``), plus the commit, whose cost per part is measured here by
committing many one-row parts the way ``from_dask`` does.

Goals are judged by reading this output (or ``--json``), never by timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
import dask.array as da
import distributed
import numpy as np
from dask.utils import key_split
from distributed import Client, LocalCluster, get_task_stream

import memshard as ms
from benchmarks.convert import CLASS_NAMES, LABEL_CLASSES, measure_disk, rows_for_gib
from benchmarks.core import (
    IMAGE_SHAPE,
    SEED,
    Run,
    Setup,
    clean_slate,
    format_bytes,
    format_ns,
    goals_summary,
    machine_info,
    markdown,
    parse_positive,
    progress,
    remove,
    scratch_directory,
    three_digits,
    time_once,
)
from memshard.dask import from_dask
from memshard.parts import PartTarget

DTYPE = np.dtype("float32")
LABEL_DTYPE = np.dtype("int64")
IMAGES = "images"
LABELS = "labels"
FIELDS = {IMAGES: (DTYPE.name, IMAGE_SHAPE), LABELS: (LABEL_DTYPE.name, ())}
IMAGE_BYTES = DTYPE.itemsize * math.prod(IMAGE_SHAPE)
#: Bytes of data per row: one image and one label.
ROW_BYTES = IMAGE_BYTES + LABEL_DTYPE.itemsize

FULL_SIZE_GIB = 4.0
QUICK_SIZE_GIB = 0.25
FULL_REPEATS = 3
QUICK_REPEATS = 2
#: 64 MiB shards: 1,024 rows (48 MiB of images) once rounded down to whole huge pages.
SHARD_MIB = 64
#: Shards per dask block (and so per part): 4 (192 MiB blocks) wrote fastest of 1, 2, 4 and 8
#: (``docs/scaling.md``): every part has fixed costs (a few tasks, a lock, a record, fsyncs,
#: a scheduler round trip in which a single-threaded worker idles), which one worker alone
#: pays in full. Quick mode keeps one shard per block, so that its 256 MiB still make 6 blocks.
FULL_BLOCK_SHARDS = 4
QUICK_BLOCK_SHARDS = 1
WORKER_COUNTS = (1, 2)
GOAL_SPEEDUP = 1.6
#: One-row parts committed to measure the commit's cost per part.
FULL_COMMIT_PARTS = 1000
QUICK_COMMIT_PARTS = 200
#: Threads that write the one-row parts (untimed; each part close is a handful of fsyncs).
PART_WRITER_THREADS = 8
#: Rows of the output whose images are compared with the generator's (besides block edges).
SAMPLE_ROWS = 512

#: The estimate: a dataset of this many rows, built by this many workers; its commit is also
#: extrapolated to one part per shard of :data:`SHARD_MIB`.
TARGET_ROWS = 50_000_000
TARGET_WORKERS = (1, 2, 8, 32, 100, 500)
DEFAULT_STORAGE_GBPS = 10.0

#: distributed's log level: its INFO chatter on every cluster start would drown the report.
CLUSTER_LOG_LEVEL = logging.ERROR
#: The fixed part of every image: one value per pixel, the same for every row.
PATTERN = (np.arange(IMAGE_BYTES // DTYPE.itemsize, dtype=DTYPE) % 251 / 251).reshape(IMAGE_SHAPE)


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """What to run, resolved from the command line."""

    mode: str
    rows: int
    repeats: int
    shard_bytes: int
    block_shards: int
    commit_parts: int
    storage_gbps: float
    dir: str | None
    json: str | None

    @property
    def shard_rows(self) -> int:
        """Rows of a full shard of the dataset (memshard rounds ``shard_bytes`` down)."""
        return rows_per_shard(self.shard_bytes)

    @property
    def block_rows(self) -> int:
        """Rows of a dask block: a whole number of shards."""
        return self.shard_rows * self.block_shards

    @property
    def blocks(self) -> int:
        """Blocks (and so parts) of the dataset."""
        return -(-self.rows // self.block_rows)

    @property
    def data_bytes(self) -> int:
        """Bytes of data written: every image and label."""
        return self.rows * ROW_BYTES


def rows_per_shard(shard_bytes: int) -> int:
    """Rows of a full shard of the benchmark's fields for ``shard_bytes``.

    Example:
        >>> rows_per_shard(64 << 20), rows_per_shard(256 << 20)
        (1024, 5120)
    """
    from memshard.schema import field_specs
    from memshard.schema import rows_per_shard as memshard_rows_per_shard

    return memshard_rows_per_shard(field_specs(FIELDS), shard_bytes)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes default to the mode's."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dask_write",
        description="Write float32[3,64,64] images + int64 labels generated on a dask "
        "LocalCluster with memshard.dask.from_dask, with 1 and 2 workers; compare with "
        "generation alone and an in-process write; estimate a 50M-row build.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument(
        "--rows",
        type=int,
        help=f"rows to write (full: {FULL_SIZE_GIB:g} GiB of images = "
        f"{rows_for_gib(FULL_SIZE_GIB):,}; quick: {QUICK_SIZE_GIB:g} GiB)",
    )
    parser.add_argument("--repeats", type=int, help="repeats per measurement (median reported)")
    parser.add_argument(
        "--dir", help="scratch directory (a temporary directory is made inside it and removed)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument(
        "--storage-gbps",
        type=float,
        default=DEFAULT_STORAGE_GBPS,
        help="aggregate storage write bandwidth (GB/s, 10**9 bytes) that caps the 50M-row "
        f"estimate (default {DEFAULT_STORAGE_GBPS:g}, a parallel file system)",
    )
    parser.add_argument(
        "--shard-mib", type=int, default=SHARD_MIB, help=f"shard_bytes in MiB (default {SHARD_MIB})"
    )
    parser.add_argument(
        "--block-shards",
        type=int,
        help=f"shards per dask block, i.e. per part (full {FULL_BLOCK_SHARDS}, "
        f"quick {QUICK_BLOCK_SHARDS})",
    )
    parser.add_argument(
        "--commit-parts",
        type=int,
        help=f"one-row parts to commit when timing the commit (full {FULL_COMMIT_PARTS}, "
        f"quick {QUICK_COMMIT_PARTS}; at least 2)",
    )
    args = parse_positive(
        parser, argv, ("rows", "repeats", "shard_mib", "block_shards", "commit_parts")
    )
    if not (args.storage_gbps > 0 and math.isfinite(args.storage_gbps)):
        parser.error(f"--storage-gbps must be > 0, got {args.storage_gbps}")
    if args.commit_parts == 1:
        parser.error("--commit-parts must be >= 2 (one commit of 1 part is the fixed cost)")
    quick = bool(args.quick)
    return Config(
        mode="quick" if quick else "full",
        rows=args.rows or rows_for_gib(QUICK_SIZE_GIB if quick else FULL_SIZE_GIB),
        repeats=args.repeats or (QUICK_REPEATS if quick else FULL_REPEATS),
        shard_bytes=args.shard_mib << 20,
        block_shards=args.block_shards or (QUICK_BLOCK_SHARDS if quick else FULL_BLOCK_SHARDS),
        commit_parts=args.commit_parts or (QUICK_COMMIT_PARTS if quick else FULL_COMMIT_PARTS),
        storage_gbps=args.storage_gbps,
        dir=args.dir,
        json=args.json,
    )


# -- the data (computed on the workers) ------------------------------------------------------
def image_rows(index: np.ndarray) -> np.ndarray:
    """The images of rows ``index``: :data:`PATTERN` plus ``index % 1000`` (one pass).

    Example:
        >>> image_rows(np.array([0, 1001]))[:, 0, 0, :2].astype(float).round(4).tolist()
        [[0.0, 0.004], [1.0, 1.004]]
    """
    offsets = (index % 1000).astype(DTYPE).reshape(-1, 1, 1, 1)
    return np.add(PATTERN, offsets, dtype=DTYPE)


def label_rows(index: np.ndarray) -> np.ndarray:
    """The labels of rows ``index``: class indices below :data:`LABEL_CLASSES`.

    Example:
        >>> label_rows(np.array([0, 1, 2])).tolist()
        [0, 919, 838]
    """
    return (index * 7919 % LABEL_CLASSES).astype(LABEL_DTYPE)


def source_arrays(rows: int, block_rows: int) -> dict[str, Any]:
    """``{field: dask array}`` of ``rows`` rows in blocks of ``block_rows``, computed on the
    workers from the row indices (nothing but the block index travels in the graph)."""
    index = da.arange(rows, chunks=block_rows, dtype=np.int64)
    images = index.map_blocks(
        image_rows,
        new_axis=[1, 2, 3],
        chunks=(index.chunks[0], *((size,) for size in IMAGE_SHAPE)),
        dtype=DTYPE,
        meta=np.empty((0, *IMAGE_SHAPE), dtype=DTYPE),
    )
    labels = index.map_blocks(label_rows, dtype=LABEL_DTYPE, meta=np.empty(0, LABEL_DTYPE))
    return {IMAGES: images, LABELS: labels}


def block_rows_of(*blocks: np.ndarray) -> int:
    """The generation-only task: take a block of every field, keep only its row count."""
    return len(blocks[0])


def generate_only(arrays: dict[str, Any]) -> int:
    """Compute every block as :func:`memshard.dask.from_dask` does (``to_delayed`` blocks, one
    task per block taking every field's block), but throw the blocks away; the rows seen."""
    names = list(arrays)
    blocks = {name: list(array.to_delayed().ravel()) for name, array in arrays.items()}
    tasks = [
        dask.delayed(block_rows_of, pure=False)(*(blocks[name][index] for name in names))
        for index in range(len(blocks[names[0]]))
    ]
    return sum(dask.compute(*tasks))


# -- clusters --------------------------------------------------------------------------------
@dataclass
class Cluster:
    """A running LocalCluster of ``workers`` single-threaded worker processes and its client."""

    workers: int
    cluster: Any
    client: Any

    def close(self) -> None:
        """Close the client, then the cluster (its worker processes)."""
        self.client.close()
        self.cluster.close()


def start_cluster(workers: int) -> Cluster:
    """A LocalCluster with ``workers`` worker processes of one thread, no dashboard, and
    distributed's logging at :data:`CLUSTER_LOG_LEVEL` (in this process and the workers).

    Close clusters in the reverse order of their start: each restores the log level it found
    when it closes, so closing the first one early would let the others log at INFO."""
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # No dashboard, but the scheduler still serves /health on an HTTP port: a free one,
        # not 8787, which the first cluster takes (a second would warn that it is in use).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=CLUSTER_LOG_LEVEL,
    )
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return Cluster(workers, cluster, client)


def on(cluster: Cluster, run: Callable[[], Any]) -> Callable[[], Any]:
    """``run`` with ``cluster``'s client as the scheduler of every dask computation in it."""

    def call() -> Any:
        with cluster.client.as_current(), dask.config.set(scheduler=cluster.client):
            return run()

    return call


# -- measurements ----------------------------------------------------------------------------
@dataclass
class Measurement:
    """The timed runs of one candidate."""

    key: str
    label: str
    workers: int | None
    rows: int
    samples_ns: list[int] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        """Median of the samples."""
        return float(statistics.median(self.samples_ns))

    @property
    def rows_per_s(self) -> float:
        """Rows per second at the median time."""
        return self.rows / (self.median_ns / 1e9)

    @property
    def bytes_per_s(self) -> float:
        """Bytes of data (images and labels) per second at the median time."""
        return self.rows * ROW_BYTES / (self.median_ns / 1e9)

    def to_json(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        record = asdict(self)
        record.update(
            median_ns=self.median_ns, rows_per_s=self.rows_per_s, bytes_per_s=self.bytes_per_s
        )
        return record


@dataclass
class Check:
    """The untimed check of the first ``from_dask`` output of one N."""

    workers: int
    rows: int
    expected_rows: int
    shards: int
    expected_shards: int
    sampled_rows: int
    images_equal: bool
    labels_equal: bool
    #: Blocks written by each worker of the cluster (from the task stream).
    blocks_per_worker: list[int]
    workers_of_cluster: bool
    #: Seconds the workers spent, all together, computing the tasks of each kind (dask's key
    #: prefix: ``write_block`` writes a part, the others generate the blocks), and moving
    #: data between workers.
    task_seconds: dict[str, float]
    transfer_seconds: float

    @property
    def passed(self) -> bool:
        """Whether the output is the generated data, in full."""
        return (
            self.rows == self.expected_rows
            and self.shards == self.expected_shards
            and self.images_equal
            and self.labels_equal
            and self.workers_of_cluster
        )

    def to_json(self) -> dict[str, Any]:
        """The check, for ``--json``."""
        return {**asdict(self), "passed": self.passed}


def check_output(
    config: Config, dataset: ms.Dataset, cluster: Cluster, stream: list[dict[str, Any]]
) -> Check:
    """Compare ``dataset`` with the generator: its rows and shards, every label, and the
    images of every block's first and last row plus :data:`SAMPLE_ROWS` random rows; count
    the blocks each worker wrote (``stream``: the task stream of the run)."""
    starts = np.arange(0, config.rows, config.block_rows, dtype=np.int64)
    ends = np.minimum(starts + config.block_rows, config.rows) - 1
    random_rows = np.random.default_rng(SEED).integers(0, config.rows, size=SAMPLE_ROWS)
    sample = np.unique(np.concatenate([starts, ends, random_rows]))
    rows = len(dataset)
    images_equal = labels_equal = False
    if rows == config.rows:
        images = dataset.take(sample, fields=[IMAGES])[IMAGES]
        images_equal = bool(np.array_equal(images, image_rows(sample)))
        labels = np.asarray(dataset[LABELS][:])
        labels_equal = bool(np.array_equal(labels, label_rows(np.arange(config.rows))))
    addresses = sorted(cluster.client.scheduler_info()["workers"])
    writers = [task["worker"] for task in stream if key_split(task["key"]) == "write_block"]
    task_seconds: dict[str, float] = {}
    transfer_seconds = 0.0
    for task in stream:
        for span in task["startstops"]:
            seconds = span["stop"] - span["start"]
            if span["action"] == "compute":
                prefix = key_split(task["key"])
                task_seconds[prefix] = task_seconds.get(prefix, 0.0) + seconds
            elif span["action"] == "transfer":
                transfer_seconds += seconds
    return Check(
        workers=cluster.workers,
        rows=rows,
        expected_rows=config.rows,
        shards=len(dataset.shards),
        expected_shards=-(-config.rows // config.shard_rows),
        sampled_rows=int(sample.size),
        images_equal=images_equal,
        labels_equal=labels_equal,
        blocks_per_worker=[writers.count(address) for address in addresses],
        workers_of_cluster=len(writers) == config.blocks and set(writers) <= set(addresses),
        task_seconds=dict(sorted(task_seconds.items(), key=lambda item: -item[1])),
        transfer_seconds=transfer_seconds,
    )


def timed_step(setup: Setup) -> tuple[int, Any]:
    """Nanoseconds of one run of ``setup()`` (the setup untimed, as
    :func:`benchmarks.core.time_once` does) and what the run returned."""
    result: list[Any] = []

    def keeping() -> Run:
        run = setup()
        return lambda: result.append(run())

    return time_once(keeping), result[0]


class Runs:
    """The candidates of :func:`measure`, each one timed run per call, collecting samples."""

    def __init__(self, config: Config, clusters: dict[int, Cluster], scratch: str) -> None:
        self.config = config
        self.clusters = clusters
        self.dst = os.path.join(scratch, "dataset.memshard")
        self.arrays = source_arrays(config.rows, config.block_rows)
        rows = config.rows
        self.results: dict[str, Measurement] = {}
        for n in WORKER_COUNTS:
            self.results[f"from_dask_workers_{n}"] = Measurement(
                f"from_dask_workers_{n}", "`from_dask` end to end", n, rows
            )
        for n in WORKER_COUNTS:
            self.results[f"generate_workers_{n}"] = Measurement(
                f"generate_workers_{n}", "generation only (same graph, blocks thrown away)", n, rows
            )
        self.results["extend_in_process"] = Measurement(
            "extend_in_process",
            "in one process: `create().extend()` + `close()` from RAM",
            None,
            rows,
        )
        self.checks: dict[int, Check] = {}
        self._in_ram: tuple[np.ndarray, np.ndarray] | None = None

    def from_dask(self, n: int) -> None:
        """``from_dask`` on the cluster of ``n`` workers; the first output of each N is
        checked, every output deleted and flushed (all untimed)."""
        config, cluster = self.config, self.clusters[n]

        def setup() -> Run:
            clean_slate([self.dst], config.data_bytes)
            return on(
                cluster,
                lambda: from_dask(
                    self.arrays,
                    self.dst,
                    shard_bytes=config.shard_bytes,
                    labels={LABELS: CLASS_NAMES},
                ),
            )

        with get_task_stream(cluster.client) as stream:
            ns, dataset = timed_step(setup)
        self.results[f"from_dask_workers_{n}"].samples_ns.append(ns)
        if n not in self.checks:
            self.checks[n] = check_output(config, dataset, cluster, stream.data)
        del dataset
        remove(self.dst)
        os.sync()

    def generate(self, n: int) -> None:
        """The same blocks computed on the cluster of ``n`` workers and thrown away."""
        config = self.config

        def setup() -> Run:
            clean_slate([], config.data_bytes)
            return on(self.clusters[n], lambda: generate_only(self.arrays))

        ns, seen = timed_step(setup)
        if seen != config.rows:
            raise AssertionError(f"generation on {n} workers saw {seen} rows, not {config.rows}")
        self.results[f"generate_workers_{n}"].samples_ns.append(ns)

    def extend(self) -> None:
        """One ``extend`` of every row from RAM in this process, then ``close``."""
        config = self.config
        if self._in_ram is None:
            progress(f"building the {format_bytes(config.data_bytes)} in-RAM copy (untimed)")
            self._in_ram = in_ram_rows(config)
        images, labels = self._in_ram

        def setup() -> Run:
            clean_slate([self.dst], config.data_bytes)

            def run() -> None:
                labels_of = {LABELS: CLASS_NAMES}
                with ms.create(
                    self.dst, FIELDS, shard_bytes=config.shard_bytes, labels=labels_of
                ) as appender:
                    appender.extend({IMAGES: images, LABELS: labels})

            return run

        ns, _ = timed_step(setup)
        self.results["extend_in_process"].samples_ns.append(ns)
        remove(self.dst)
        os.sync()

    def release(self) -> None:
        """Free the in-RAM copy."""
        self._in_ram = None


def in_ram_rows(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Every row of the dataset in RAM (for the in-process write), built block by block."""
    images = np.empty((config.rows, *IMAGE_SHAPE), dtype=DTYPE)
    for start in range(0, config.rows, config.shard_rows):
        index = np.arange(start, min(config.rows, start + config.shard_rows))
        images[start : start + index.size] = image_rows(index)
    return images, label_rows(np.arange(config.rows))


def schedule(repeat: int) -> list[tuple[str, int]]:
    """The order of the candidates in repeat ``repeat``: which N goes first, which of its two
    measurements goes first and whether the in-process write opens or closes the repeat all
    flip every repeat.

    Example:
        >>> schedule(0)
        [('extend', 0), ('generate', 1), ('from_dask', 1), ('generate', 2), ('from_dask', 2)]
        >>> schedule(1)
        [('from_dask', 2), ('generate', 2), ('from_dask', 1), ('generate', 1), ('extend', 0)]
    """
    flip = repeat % 2 == 1
    steps: list[tuple[str, int]] = []
    for n in WORKER_COUNTS[::-1] if flip else WORKER_COUNTS:
        pair = [("generate", n), ("from_dask", n)]
        steps += pair[::-1] if flip else pair
    return [*steps, ("extend", 0)] if flip else [("extend", 0), *steps]


def warm_up(config: Config, clusters: dict[int, Cluster], scratch: str) -> None:
    """An untimed small ``from_dask`` and generation on every cluster: the workers import
    memshard, pydantic and the generator before the first timed run."""
    rows = min(config.rows, 2 * max(WORKER_COUNTS) * config.block_rows)
    arrays = source_arrays(rows, config.block_rows)
    dst = os.path.join(scratch, "warm-up.memshard")
    for cluster in clusters.values():
        on(cluster, lambda: generate_only(arrays))()
        on(cluster, lambda: from_dask(arrays, dst, shard_bytes=config.shard_bytes))()
        remove(dst)
    os.sync()


def measure(config: Config, clusters: dict[int, Cluster], scratch: str) -> Runs:
    """Every candidate once per repeat, in the order :func:`schedule` gives."""
    runs = Runs(config, clusters, scratch)
    for repeat in range(config.repeats):
        steps = schedule(repeat)
        order = ", ".join(kind if kind == "extend" else f"{kind} N={n}" for kind, n in steps)
        progress(f"repeat {repeat + 1} of {config.repeats}: {order}")
        for kind, n in steps:
            if kind == "extend":
                runs.extend()
            elif kind == "generate":
                runs.generate(n)
            else:
                runs.from_dask(n)
    runs.release()
    return runs


# -- the commit ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommitCost:
    """What committing parts costs, as ``from_dask`` commits them (``commit_parts``,
    ``discard_parts`` of the job, ``close``, then reopening the dataset)."""

    parts: int
    #: Nanoseconds of the commit of one part, and of ``parts`` parts.
    one_part_ns: int
    many_parts_ns: int

    @property
    def per_part_ns(self) -> float:
        """The cost of one more part: the slope between the two commits."""
        return (self.many_parts_ns - self.one_part_ns) / (self.parts - 1)

    def seconds_for(self, parts: int) -> float:
        """The linear extrapolation to ``parts`` parts, in seconds."""
        return (self.one_part_ns + self.per_part_ns * (parts - 1)) / 1e9

    def to_json(self) -> dict[str, Any]:
        """The figures, for ``--json``."""
        return {**asdict(self), "per_part_ns": self.per_part_ns}


def write_one_row_part(target: PartTarget, group: str, index: int) -> ms.Part:
    """Part ``index`` of ``group``: row ``index`` of the generated data."""
    rows = np.array([index])
    with target.start(key=index, group=group) as part:
        part.extend({IMAGES: image_rows(rows), LABELS: label_rows(rows)})
    return part.close()


def time_commit(config: Config, scratch: str, parts: int) -> int:
    """Write ``parts`` one-row parts of a new dataset (untimed, on threads), then time their
    commit as ``from_dask`` does it."""
    path = os.path.join(scratch, "commit.memshard")
    remove(path)
    ms.create(path, FIELDS, shard_bytes=config.shard_bytes, labels={LABELS: CLASS_NAMES}).close()
    target, group = PartTarget.of(path), f"c{secrets.token_hex(4)}"
    with ThreadPoolExecutor(PART_WRITER_THREADS) as pool:
        records = list(pool.map(lambda i: write_one_row_part(target, group, i), range(parts)))
    os.sync()

    def run() -> None:
        with ms.append(path) as appender:
            ms.commit_parts(appender, records, order="key")
            ms.discard_parts(appender, group=group)
        ms.open(path)

    ns = time_once(lambda: run)
    rows = len(ms.open(path))
    remove(path)
    if rows != parts:
        raise AssertionError(f"the commit of {parts} one-row parts left {rows} rows")
    return ns


def measure_commit(config: Config, scratch: str) -> CommitCost:
    """One commit of one part and one of ``config.commit_parts`` parts."""
    progress(f"commit: writing and committing 1 and {config.commit_parts} one-row parts")
    one = time_commit(config, scratch, 1)
    many = time_commit(config, scratch, config.commit_parts)
    return CommitCost(config.commit_parts, one, many)


# -- the estimate ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """The time to build :data:`TARGET_ROWS` rows with ``workers`` workers of
    ``per_worker_rows_s`` rows/s each: ``rows / (workers * rate)``, at most
    ``storage_bps`` bytes/s in all, then the commit."""

    basis: str
    workers: int
    per_worker_rows_s: float
    storage_bps: float
    commit_s: float
    rows: int = TARGET_ROWS

    @property
    def uncapped_bps(self) -> float:
        """Bytes/s of all the workers together, without a storage limit."""
        return self.workers * self.per_worker_rows_s * ROW_BYTES

    @property
    def capped(self) -> bool:
        """Whether the storage, not the workers, limits the build."""
        return self.uncapped_bps > self.storage_bps

    @property
    def bps(self) -> float:
        """Bytes/s of the build: the workers' rate, at most the storage's."""
        return min(self.uncapped_bps, self.storage_bps)

    @property
    def uncapped_s(self) -> float:
        """Seconds of writing at the workers' rate: ``rows / (N * per-worker rate)``."""
        return self.rows / (self.workers * self.per_worker_rows_s)

    @property
    def write_s(self) -> float:
        """Seconds of writing at :attr:`bps`."""
        return self.rows * ROW_BYTES / self.bps

    @property
    def total_s(self) -> float:
        """Writing at :attr:`bps`, then the commit."""
        return self.write_s + self.commit_s

    def cells(self) -> list[str]:
        """The table row."""
        return [
            str(self.workers),
            f"{format_rate(self.uncapped_bps)}",
            format_duration(self.uncapped_s),
            f"{format_rate(self.bps)}" + (" (capped)" if self.capped else ""),
            format_duration(self.write_s),
            format_duration(self.commit_s),
            format_duration(self.total_s),
        ]

    def to_json(self) -> dict[str, Any]:
        """Every figure, for ``--json``."""
        return {
            **asdict(self),
            "uncapped_bps": self.uncapped_bps,
            "capped": self.capped,
            "bps": self.bps,
            "uncapped_s": self.uncapped_s,
            "write_s": self.write_s,
            "total_s": self.total_s,
        }


def target_parts(config: Config) -> int:
    """Parts of the :data:`TARGET_ROWS`-row build: one per block of ``config.block_rows``."""
    return -(-TARGET_ROWS // config.block_rows)


def estimates(
    config: Config, results: dict[str, Measurement], commit: CommitCost
) -> dict[str, list[Estimate]]:
    """The build time for every N of :data:`TARGET_WORKERS`, from two per-worker rates: the
    ``from_dask`` rate of one worker alone (``isolated``), and the two-worker rate halved
    (``shared_host``: two workers sharing this host's cores and disk)."""
    bases = {
        "isolated": results["from_dask_workers_1"].rows_per_s,
        "shared_host": results["from_dask_workers_2"].rows_per_s / 2,
    }
    commit_s = commit.seconds_for(target_parts(config))
    storage_bps = config.storage_gbps * 1e9
    return {
        basis: [Estimate(basis, n, rate, storage_bps, commit_s) for n in TARGET_WORKERS]
        for basis, rate in bases.items()
    }


# -- report ----------------------------------------------------------------------------------
def format_rate(bytes_per_s: float) -> str:
    """A throughput in MB/s or GB/s (powers of 10).

    Example:
        >>> format_rate(412_345_678.0), format_rate(12_300_000_000.0)
        ('412 MB/s', '12.3 GB/s')
    """
    if bytes_per_s >= 1e9:
        return f"{three_digits(bytes_per_s / 1e9)} GB/s"
    return f"{three_digits(bytes_per_s / 1e6)} MB/s"


def format_duration(seconds: float) -> str:
    """A duration in s, min, h or days.

    Example:
        >>> format_duration(42.0), format_duration(600.0), format_duration(7200.0)
        ('42.0 s', '10.0 min', '2.00 h')
    """
    for unit, scale in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= scale:
            return f"{three_digits(seconds / scale)} {unit}"
    return f"{three_digits(seconds)} s"


def speedups(results: dict[str, Measurement]) -> dict[str, float]:
    """Ratios of medians: N=2 over N=1 for ``from_dask`` and for generation, and how much of
    the generation speed ``from_dask`` keeps at each N."""
    figures = {
        "from_dask_2_over_1": results["from_dask_workers_1"].median_ns
        / results["from_dask_workers_2"].median_ns,
        "generate_2_over_1": results["generate_workers_1"].median_ns
        / results["generate_workers_2"].median_ns,
    }
    for n in WORKER_COUNTS:
        figures[f"from_dask_over_generate_{n}"] = (
            results[f"generate_workers_{n}"].median_ns / results[f"from_dask_workers_{n}"].median_ns
        )
    figures["from_dask_2_over_extend"] = (
        results["extend_in_process"].median_ns / results["from_dask_workers_2"].median_ns
    )
    return figures


def header(config: Config, machine: dict[str, str]) -> str:
    """What ran where, and how to read the tables."""
    lines = [f"# memshard from_dask benchmark ({config.mode} mode)", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += [
        f"- dask {dask.__version__}, distributed {distributed.__version__}; LocalCluster("
        "n_workers=N, threads_per_worker=1, processes=True), both clusters started before "
        "timing and warmed up",
        f"- data: {config.rows:,} rows of float32{list(IMAGE_SHAPE)} + int64 labels "
        f"({format_bytes(config.data_bytes)}, {ROW_BYTES:,} bytes a row), generated on the "
        "workers",
        f"- shard_bytes {format_bytes(config.shard_bytes)} -> {config.shard_rows:,} rows a shard; "
        f"dask blocks of {config.block_shards} shard(s) = {config.block_rows:,} rows -> "
        f"{config.blocks} blocks (parts)",
        f"- each figure: median of {config.repeats} repeats; the order of N, and of the "
        "candidates, flips every repeat",
        "- throughput: rows/s and MB/s (10**6 bytes) of images and labels; before every timed "
        "run the previous output is deleted, dirty pages flushed, and memory of the data's "
        "size touched and freed",
    ]
    return "\n".join(lines)


def render_writes(runs: Runs, disk: Any, figures: dict[str, float]) -> str:
    """The throughput table, the ratios and the checks."""
    head = ["measurement", "workers", "median time", "rows/s", "MB/s", "vs N=1"]
    rows = []
    for key, result in runs.results.items():
        first = key.rsplit("_", 1)[0] + "_1" if result.workers else None
        ratio = (
            f"{runs.results[first].median_ns / result.median_ns:.2f}x"
            if first in runs.results
            else "-"
        )
        rows.append(
            [
                result.label,
                "-" if result.workers is None else str(result.workers),
                format_ns(result.median_ns),
                f"{result.rows_per_s:,.0f}",
                three_digits(result.bytes_per_s / 1e6),
                ratio,
            ]
        )
    rows.append(
        [
            disk.measurement + " (context)",
            "-",
            format_ns(disk.details["median_ns"]),
            "-",
            three_digits(disk.value / 1e6),
            "-",
        ]
    )
    speedup = figures["from_dask_2_over_1"]
    notes = [
        f"- `from_dask` N=2 / N=1: {speedup:.2f}x (goal >= {GOAL_SPEEDUP}x: "
        f"{'met' if speedup >= GOAL_SPEEDUP else 'not met'}); generation alone N=2 / N=1: "
        f"{figures['generate_2_over_1']:.2f}x",
        "- `from_dask` speed / generation speed: "
        + ", ".join(f"N={n} {figures[f'from_dask_over_generate_{n}']:.2f}" for n in WORKER_COUNTS),
        f"- `from_dask` N=2 / in-process extend: {figures['from_dask_2_over_extend']:.2f}x",
    ]
    for n, check in runs.checks.items():
        notes.append(
            f"- check N={n}: {'passed' if check.passed else 'FAILED'} ({check.rows:,} rows of "
            f"{check.expected_rows:,}, {check.shards} shards of {check.expected_shards}, all "
            f"labels {'equal' if check.labels_equal else 'DIFFER'}, images of "
            f"{check.sampled_rows} sampled rows {'equal' if check.images_equal else 'DIFFER'}; "
            f"blocks written per worker {check.blocks_per_worker})"
        )
    for n, check in runs.checks.items():
        wall = runs.results[f"from_dask_workers_{n}"].samples_ns[0] / 1e9
        busy = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in check.task_seconds.items())
        notes.append(
            f"- task time on the workers, checked `from_dask` run with N={n} ({wall:.2f} s wall "
            f"x {n} worker(s) = {wall * n:.2f} s): {busy}; transfers {check.transfer_seconds:.2f} s"
        )
    table = markdown(head, rows)
    return "\n\n".join(["## Writing the dataset", table, "\n".join(notes)])


def commit_extrapolations(config: Config) -> dict[str, int]:
    """Parts of the :data:`TARGET_ROWS`-row build: with this run's blocks, and with one block
    per shard of :data:`SHARD_MIB` (the most parts a build with such shards has)."""
    shard_rows = rows_per_shard(SHARD_MIB << 20)
    return {
        f"1 part per block of {config.block_rows:,} rows (this run's)": target_parts(config),
        f"1 part per {SHARD_MIB} MiB shard ({shard_rows:,} rows)": -(-TARGET_ROWS // shard_rows),
    }


def render_commit(config: Config, commit: CommitCost) -> str:
    """The commit's cost and its extrapolations."""
    head = ["commit (as `from_dask`: commit_parts + discard_parts + close + open)", "time"]
    rows = [
        ["1 one-row part", format_ns(commit.one_part_ns)],
        [f"{commit.parts:,} one-row parts", format_ns(commit.many_parts_ns)],
        ["per part (slope)", format_ns(commit.per_part_ns)],
    ]
    rows += [
        [
            f"extrapolated to {TARGET_ROWS:,} rows: {parts:,} parts, {how}",
            format_duration(commit.seconds_for(parts)),
        ]
        for how, parts in commit_extrapolations(config).items()
    ]
    return "\n\n".join(["## The commit", markdown(head, rows)])


def render_estimates(config: Config, tables: dict[str, list[Estimate]]) -> str:
    """The 50M-row build tables and their assumptions."""
    cap = config.storage_gbps * 1e9
    first = next(iter(tables.values()))[0]
    lines = [
        f"## Estimate: building {TARGET_ROWS:,} rows of float32{list(IMAGE_SHAPE)} + int64 "
        f"labels ({TARGET_ROWS * IMAGE_BYTES / 1e12:.2f} TB of images, "
        f"{TARGET_ROWS * ROW_BYTES / 1e12:.2f} TB in all)",
        "",
        "- assumption: every worker writes at the measured per-worker rate, independently of "
        "the others: write time = rows / (N * per-worker rate); the aggregate is capped by the "
        f"storage's write bandwidth, --storage-gbps = {format_rate(cap)}: write time = "
        f"max(that, {TARGET_ROWS * ROW_BYTES / 1e12:.2f} TB / {format_rate(cap)} = "
        f"{format_duration(TARGET_ROWS * ROW_BYTES / cap)})",
        f"- then one commit of {target_parts(config):,} parts in one process, extrapolated "
        f"linearly from the measured commit: {format_duration(first.commit_s)}; not included: "
        "cluster start-up, generating the data (here it is a cheap function; real "
        "decoding or augmenting costs more than writing), the scheduler's overhead per task at "
        "that scale",
    ]
    head = [
        "workers",
        "aggregate (uncapped)",
        "write (uncapped)",
        "aggregate",
        "write",
        "commit",
        "total",
    ]
    titles = {
        "isolated": "per-worker rate = `from_dask` N=1 (one worker alone on this host)",
        "shared_host": "per-worker rate = `from_dask` N=2 / 2 (two workers sharing this host)",
    }
    for basis, table in tables.items():
        rate = table[0].per_worker_rows_s
        lines += [
            "",
            f"### {titles[basis]}: {rate:,.0f} rows/s = {format_rate(rate * ROW_BYTES)} per worker",
            "",
        ]
        lines.append(markdown(head, [estimate.cells() for estimate in table]))
    return "\n".join(lines)


def to_json(
    config: Config,
    machine: dict[str, str],
    runs: Runs,
    disk: Any,
    figures: dict[str, float],
    commit: CommitCost,
    tables: dict[str, list[Estimate]],
    seconds: float,
) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    return {
        "mode": config.mode,
        "machine": machine,
        "config": {
            **asdict(config),
            "shard_rows": config.shard_rows,
            "block_rows": config.block_rows,
            "blocks": config.blocks,
            "data_bytes": config.data_bytes,
            "row_bytes": ROW_BYTES,
        },
        "seconds": seconds,
        "results": {key: result.to_json() for key, result in runs.results.items()},
        "speedups": figures,
        "goal": {
            "from_dask_2_over_1": GOAL_SPEEDUP,
            "met": figures["from_dask_2_over_1"] >= GOAL_SPEEDUP,
        },
        "checks": {str(n): check.to_json() for n, check in runs.checks.items()},
        "disk": disk.to_json(),
        "commit": {
            **commit.to_json(),
            "extrapolated_s": {
                str(parts): commit.seconds_for(parts)
                for parts in commit_extrapolations(config).values()
            },
        },
        "estimate": {
            "rows": TARGET_ROWS,
            "row_bytes": ROW_BYTES,
            "parts": target_parts(config),
            "storage_bps": config.storage_gbps * 1e9,
            "tables": {basis: [e.to_json() for e in table] for basis, table in tables.items()},
        },
    }


def check_room(config: Config, scratch: str) -> None:
    """Refuse to start without room for one output on disk and the in-RAM copy in memory."""
    free_disk = shutil.disk_usage(scratch).free
    if free_disk < config.data_bytes * 1.1 + (1 << 30):
        raise SystemExit(
            f"{scratch}: {format_bytes(free_disk)} free, the run needs "
            f"{format_bytes(config.data_bytes)} plus room; pick another --dir or fewer --rows"
        )
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if available < config.data_bytes * 1.5:
        progress(
            f"warning: {format_bytes(available)} of RAM free for an in-RAM copy of "
            f"{format_bytes(config.data_bytes)}; the in-process write may swap or be evicted"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Start both clusters, measure, estimate, print the report, optionally write JSON."""
    config = parse_args(argv)
    started = time.monotonic()
    with scratch_directory(config.dir) as scratch:
        check_room(config, scratch)
        machine = machine_info(scratch)
        print(header(config, machine), end="\n\n", flush=True)
        progress("disk: timing os.write + fsync")
        disk = measure_disk(scratch, config.repeats)
        commit = measure_commit(config, scratch)
        clusters: dict[int, Cluster] = {}
        with contextlib.ExitStack() as stack:  # closes the clusters last started first
            for n in WORKER_COUNTS:
                progress(f"starting a LocalCluster of {n} worker process(es)")
                clusters[n] = start_cluster(n)
                stack.callback(clusters[n].close)
            warm_up(config, clusters, scratch)
            runs = measure(config, clusters, scratch)
    figures = speedups(runs.results)
    tables = estimates(config, runs.results, commit)
    print(render_writes(runs, disk, figures), end="\n\n", flush=True)
    print(render_commit(config, commit), end="\n\n", flush=True)
    print(render_estimates(config, tables), end="\n\n", flush=True)
    seconds = time.monotonic() - started
    judged = [("from_dask_2_over_1", figures["from_dask_2_over_1"] >= GOAL_SPEEDUP)]
    judged += [(f"check_workers_{n}", check.passed) for n, check in runs.checks.items()]
    print(goals_summary(judged), flush=True)
    print(f"ran in {seconds:.0f} s", flush=True)
    if config.json:
        with open(config.json, "w") as file:
            json.dump(
                to_json(config, machine, runs, disk, figures, commit, tables, seconds),
                file,
                indent=2,
            )
            file.write("\n")
    return 0 if all(check.passed for check in runs.checks.values()) else 1


if __name__ == "__main__":
    # Run as the importable module, so that the workers unpickle its functions by reference.
    from benchmarks.dask_write import main as module_main

    sys.exit(module_main())
