"""One DDP rank of ``tests/test_torch.py::test_ddp_ranks_partition_every_epoch_through_loader``.

Spawned processes import this module by name, so it imports nothing from the test suite and
only what a rank needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import timedelta

import torch.distributed as dist

import memshard.torch as mt


def run_rank(
    rank: int, world_size: int, port: int, paths: Sequence[str], seed: int, out_dir: str
) -> None:
    """Join a gloo group on 127.0.0.1:``port``, read this rank's partition of every dataset in
    ``paths`` through :func:`memshard.torch.loader`, gather every rank's rows on every rank and
    write them to ``out_dir/rank{rank}.json`` for the test to check."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        report = []
        for path in paths:
            # num_replicas and rank are left out on purpose: they come from torch.distributed.
            sampler = mt.ShardAwareSampler(path, seed=seed, window_shards=2)
            # A spawned rank would spawn its workers too (each importing torch): fork them.
            loader = mt.loader(
                path,
                batch_size=4,
                fields=["i"],
                sampler=sampler,
                num_workers=2,
                multiprocessing_context="fork",
                timeout=60,
            )
            rows = [row for batch in loader for row in batch["i"].tolist()]
            del loader  # stops the persistent workers before the group goes away
            gathered: list[object] = [None] * world_size
            dist.all_gather_object(gathered, rows)
            report.append(
                {
                    "num_replicas": sampler.num_replicas,
                    "rank": sampler.rank,
                    "len": len(sampler),
                    "gathered": gathered,
                }
            )
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(report, handle)
    finally:
        dist.destroy_process_group()
