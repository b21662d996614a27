"""Multi-node-style reading on one machine: real ``torch.distributed`` gloo process groups of 2
and 3 ranks, each rank a separate process that opens the shared dataset path on its own, builds
``ShardAwareSampler`` without ``num_replicas``/``rank`` and reads through a DataLoader.

The ranks exchange what they read with ``dist.all_gather_object`` and write it to a file; the
test checks, in the parent, that the partition follows ``DistributedSampler`` semantics (equal
counts, disjoint ranks but for the padding, every row covered once), that every value read is
the row's content, and that the orders change with the epoch and are reproducible from
``(seed, epoch)``. A failing rank fails the test with its traceback (``ProcessRaisedException``)
or its exit status (``ProcessExitedException``).
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist
from torch.multiprocessing.spawn import start_processes
from torch.utils.data import DataLoader

import memshard as ms
import memshard.torch as mt

SEED = 12345
WINDOW_SHARDS = 2
SHARD_ROWS = 64
BATCH_SIZE = 50
EPOCHS = (0, 1)

#: Dataset name -> appender sessions. Each session is closed at its end, so it ends in a short
#: sealed shard: "aligned" has 1008 rows (a multiple of 2 and 3: no padding) in shards of
#: 64 x 10, 60, 64 x 4, 52; "ragged" has 997 rows (prime: padding for every world size > 1)
#: in shards of 64 x 15, 37.
DATASETS = {"aligned": (700, 308), "ragged": (997,)}

#: What every rank reads, in this order: (dataset, how the rank opens it, DataLoader workers,
#: the sampler's drop_last). "broadcast" is the recipe of docs/multinode.md for pinning every
#: rank to one commit: rank 0 opens the dataset and sends the pickled Dataset to the others.
CASES: tuple[tuple[str, str, int, bool], ...] = (
    ("aligned", "loader", 0, False),
    ("aligned", "broadcast", 0, False),
    ("ragged", "dataset", 0, False),
    ("ragged", "loader", 2, False),
    ("ragged", "dataloader", 0, True),
)


def expected_x(rows: np.ndarray, dataset: str) -> np.ndarray:
    """The ``x`` written for rows ``rows`` of ``dataset`` (exact in float32 for these rows)."""
    tag = 1.0 if dataset == "aligned" else 2.0
    r = rows.astype(np.float32)
    return np.stack([r, r + 0.5, -r, np.full_like(r, tag)], axis=1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The datasets of ``DATASETS``: ``i`` is the row number, ``x`` is ``expected_x``."""
    root = tmp_path_factory.mktemp("shared")
    paths = {}
    for name, sessions in DATASETS.items():
        path = root / name
        fields = {"x": ("float32", (4,)), "i": ("int64", ())}
        writer = ms.create(path, fields, shard_bytes=SHARD_ROWS * (4 * 4 + 8))
        start = 0
        for position, count in enumerate(sessions):
            if position:
                writer = ms.append(path)
            rows = np.arange(start, start + count)
            writer.extend({"x": expected_x(rows, name), "i": rows})
            writer.close()
            start += count
        dataset = ms.open(path)
        assert len(dataset) == sum(sessions)
        # Full shards, then the short shard that closing each session sealed.
        expected = [
            size
            for count in sessions
            for size in [SHARD_ROWS] * (count // SHARD_ROWS) + [count % SHARD_ROWS]
        ]
        assert [shard.rows for shard in dataset.shards] == expected
        paths[name] = path
    return paths


# -- one rank (runs in a spawned process) ------------------------------------------------------


def run_rank(rank: int, world_size: int, store: str, paths: dict[str, str], out_dir: str) -> None:
    """Join the gloo group, read every case of ``CASES`` for every epoch of ``EPOCHS``,
    all-gather each epoch's reads and write them to ``out_dir/rank{rank}.pkl``."""
    warnings.simplefilter("error")  # as the test suite's filterwarnings = error
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        report = [
            _read_case(paths[name], opener, workers, drop_last)
            for name, opener, workers, drop_last in CASES
        ]
        with open(os.path.join(out_dir, f"rank{rank}.pkl.tmp"), "wb") as handle:
            pickle.dump(report, handle)
        os.rename(
            os.path.join(out_dir, f"rank{rank}.pkl.tmp"), os.path.join(out_dir, f"rank{rank}.pkl")
        )
    finally:
        dist.destroy_process_group()


def _read_case(path: str, opener: str, workers: int, drop_last: bool) -> dict[str, Any]:
    """One case on this rank: the rank opens ``path`` itself (or, for "broadcast", rank 0
    does and the others receive its Dataset)."""
    options: dict[str, Any] = {"seed": SEED, "window_shards": WINDOW_SHARDS, "drop_last": drop_last}
    if opener == "loader":  # a path everywhere: the sampler and loader() open it
        sampler = mt.ShardAwareSampler(path, **options)
        source: Any = path
    elif opener == "dataset":  # one memshard.Dataset shared by the sampler and the loader
        source = ms.open(path)
        sampler = mt.ShardAwareSampler(source, **options)
    elif opener == "broadcast":
        box = [ms.open(path) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        source = box[0]
        assert isinstance(source, ms.Dataset)
        assert source.uuid == ms.open(path).uuid
        sampler = mt.ShardAwareSampler(source, **options)
    else:  # a plain DataLoader over a MemshardDataset
        source = mt.MemshardDataset(path)
        sampler = mt.ShardAwareSampler(source, **options)
    if opener == "dataloader":
        loader: DataLoader[Any] = DataLoader(
            source, batch_size=BATCH_SIZE, sampler=sampler, collate_fn=mt.collate
        )
    else:
        # A spawned rank would spawn its workers too (each importing torch): fork them.
        extra: dict[str, Any] = (
            {"multiprocessing_context": "fork", "timeout": 60} if workers else {}
        )
        loader = mt.loader(
            source, batch_size=BATCH_SIZE, sampler=sampler, num_workers=workers, **extra
        )
    epochs = []
    for epoch in EPOCHS:
        sampler.set_epoch(epoch)
        batches = list(loader)
        i = np.concatenate([batch["i"].numpy() for batch in batches])
        x = np.concatenate([batch["x"].numpy() for batch in batches])
        # A fresh sampler for the same (seed, epoch), also without num_replicas/rank.
        again = mt.ShardAwareSampler(path, **options)
        again.set_epoch(epoch)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {"i": i, "x": x, "again": list(again)})
        epochs.append(gathered)
    del loader  # stops persistent workers before the process group goes away
    return {
        "num_replicas": sampler.num_replicas,
        "rank": sampler.rank,
        "len": len(sampler),
        "epochs": epochs,
    }


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_of_a_process_group_partition_the_shared_dataset(
    datasets: dict[str, Path], tmp_path: Path, world_size: int
) -> None:
    paths = {name: str(path) for name, path in datasets.items()}
    context = start_processes(
        run_rank,
        args=(world_size, str(tmp_path / "store"), paths, str(tmp_path)),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    # Raises with the rank's traceback, or its exit status, as soon as one rank fails (and
    # ends the others); a stuck collective fails in the ranks after their 60 s timeout.
    while not context.join():
        pass
    reports = []
    for rank in range(world_size):
        result = tmp_path / f"rank{rank}.pkl"
        assert result.is_file(), f"rank {rank} exited with status 0 but wrote no result"
        with result.open("rb") as handle:
            reports.append(pickle.load(handle))

    for position, (name, _, _, drop_last) in enumerate(CASES):
        entries = [report[position] for report in reports]
        _check_case(datasets[name], name, world_size, drop_last, entries)


def _check_case(
    path: Path, name: str, world: int, drop_last: bool, entries: list[dict[str, Any]]
) -> None:
    rows = len(ms.open(path))
    per_rank = rows // world if drop_last else math.ceil(rows / world)
    total = per_rank * world
    for rank, entry in enumerate(entries):
        # The sampler took world size and rank from the process group.
        assert (entry["num_replicas"], entry["rank"]) == (world, rank)
        assert entry["len"] == per_rank
        # all_gather_object gave every rank the same view.
        assert _same(entry, entries[0]), f"rank {rank} gathered another view than rank 0"

    orders = []
    for epoch, gathered in zip(EPOCHS, entries[0]["epochs"], strict=True):
        parts = [np.asarray(got["i"]) for got in gathered]
        for rank, got in enumerate(gathered):
            where = f"{name}, world {world}, rank {rank}, epoch {epoch}"
            assert len(got["i"]) == len(got["x"]) == per_rank, where
            assert got["i"].dtype == np.int64, where
            assert got["x"].dtype == np.float32, where
            assert got["x"].shape == (per_rank, 4), where
            # The values read are the rows' contents.
            assert ((got["i"] >= 0) & (got["i"] < rows)).all(), where
            np.testing.assert_array_equal(got["x"], expected_x(got["i"], name), err_msg=where)
            # The same (seed, epoch) gives the same order: in the rank, and here.
            assert got["i"].tolist() == got["again"], where
            sampler = mt.ShardAwareSampler(
                path,
                seed=SEED,
                window_shards=WINDOW_SHARDS,
                num_replicas=world,
                rank=rank,
                drop_last=drop_last,
            )
            sampler.set_epoch(epoch)
            assert got["i"].tolist() == list(sampler), where

        # Position k * world + r of the epoch's order went to rank r.
        order = np.empty(total, dtype=np.int64)
        for rank, part in enumerate(parts):
            order[rank::world] = part
        counts = collections.Counter(order.tolist())
        if drop_last:
            assert len(counts) == total == rows - rows % world
            assert max(counts.values()) == 1
        else:
            # Every row exactly once, then the padding: the start of the order repeated.
            padding = total - rows
            assert padding == (-rows) % world
            assert sorted(order[:rows].tolist()) == list(range(rows))
            assert order[rows:].tolist() == order[:padding].tolist()
            assert counts == collections.Counter([*range(rows), *order[:padding].tolist()])
            for first in range(world):
                for second in range(first + 1, world):
                    shared = set(parts[first].tolist()) & set(parts[second].tolist())
                    assert shared <= set(order[:padding].tolist()), (name, first, second)
            if name == "aligned":
                assert padding == 0
            else:
                assert padding > 0
        orders.append(parts)

    # Each rank's order changes with the epoch.
    for rank in range(world):
        assert orders[0][rank].tolist() != orders[1][rank].tolist(), (name, rank)


def _same(entry: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether two ranks' all-gathered views are equal (numpy arrays compared by value)."""
    for mine, theirs in zip(entry["epochs"], reference["epochs"], strict=True):
        for a, b in zip(mine, theirs, strict=True):
            if a["again"] != b["again"]:
                return False
            if not (np.array_equal(a["i"], b["i"]) and np.array_equal(a["x"], b["x"])):
                return False
    return True
