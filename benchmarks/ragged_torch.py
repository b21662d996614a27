"""Ragged fields through PyTorch: the padding that length-grouped batches save, and the tokens
per second of each ragged mode through a DataLoader with workers.

Run from the repository root::

    python -m benchmarks.ragged_torch            # full: 200k sequences, ~100M tokens (minutes)
    python -m benchmarks.ragged_torch --quick    # small sizes, seconds (CI runs this)

Workload: int32 token sequences whose lengths are long-tailed (log-normal, median 300,
clipped to 1..8192), as in issue 19. Measured:

1. Padding waste (:func:`memshard.torch.padding_waste`): the share of padding when every batch
   of 256 rows is padded to its longest row, for random batches and for
   :class:`memshard.torch.LengthGroupedSampler` batches of several windows; computed from the
   lengths alone (no data is read).
2. DataLoader speed: tokens per second (the rows' own tokens; padding is not counted) of
   :func:`memshard.torch.loader` with 2 workers, batches of 256, in each mode (``"pad"``,
   ``"packed"``, ``"nested"``, and ``"pad"`` over length-grouped batches), against a
   hand-rolled flat ``np.memmap`` of the values with an offsets array, gathered into the same
   packed tensors (values and int32 offsets, made in shared memory as torch's collate makes
   them): the physical bound of this layout. Every candidate reads the same batches.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info
from torch.utils.data import Dataset as TorchDataset

import memshard as ms
import memshard.torch as mt

from . import core
from .core import BATCH_SIZE, SEED, Option, Target, markdown, progress

NUM_WORKERS = 2
#: The length distribution: log-normal around MEDIAN_LENGTH, clipped to 1..MAX_LENGTH.
MEDIAN_LENGTH = 300
LENGTH_SIGMA = 1.0
MAX_LENGTH = 8192
#: Token ids are drawn below this (a vocabulary).
VOCABULARY = 50_000
#: Windows (in batches) of the length-grouped samplers of the padding-waste section.
WINDOWS = (8, mt.DEFAULT_WINDOW_BATCHES, 256)
#: The goal of the packed mode against the flat memmap (issue 19).
PACKED_GOAL = 0.9
#: Rows written per extend.
WRITE_ROWS = 10_000
#: Shard sizes: a full run's ~400 MB of tokens in a dozen shards, so that a batch of random
#: rows spans shards as it does in a large dataset; a quick run's few MB in a few.
FULL_SHARD_BYTES = 32 << 20
QUICK_SHARD_BYTES = 1 << 20
#: The DataLoader candidates: key, what it is.
CANDIDATES = {
    "memmap": "flat np.memmap values + offsets, packed gather (baseline)",
    "packed": '`ragged={"tokens": "packed"}`: values + int32 offsets',
    "nested": '`ragged={"tokens": "nested"}`: a jagged nested tensor',
    "pad": '`ragged={"tokens": "pad"}`: padded + lengths, random batches',
    "pad_grouped": '`"pad"` over `LengthGroupedSampler` batches',
}
#: The ragged mode of each memshard candidate.
MODES: dict[str, mt.RaggedMode] = {
    "packed": "packed", "nested": "nested", "pad": "pad", "pad_grouped": "pad"
}  # fmt: skip


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    rows: int
    length_rows: int
    batches: int


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.ragged_torch",
        __doc__,
        Option("--rows", int, "sequences written for the DataLoader runs", 200_000, 3_000),
        Option("--length-rows", int, "lengths of the padding-waste section", 2_000_000, 50_000),
        Option("--batches", int, "batches of 256 per timed DataLoader run", 200, 6),
        repeats=(3, 1),
    )
    return Config(**options.parse(argv))


def long_tailed_lengths(rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` lengths, log-normal around :data:`MEDIAN_LENGTH`, clipped to 1..MAX_LENGTH.

    Example:
        >>> lengths = long_tailed_lengths(100_000, np.random.default_rng(0))
        >>> 280 < np.median(lengths) < 320, int(lengths.min()) >= 1, int(lengths.max()) <= 8192
        (True, True, True)
    """
    drawn = rng.lognormal(np.log(MEDIAN_LENGTH), LENGTH_SIGMA, rows)
    return np.clip(np.rint(drawn), 1, MAX_LENGTH).astype(np.int64)


# -- 1: padding waste ------------------------------------------------------------------------
def random_batches(rows: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Every row once, in random batches of :data:`BATCH_SIZE`."""
    order = rng.permutation(rows)
    return [order[start : start + BATCH_SIZE] for start in range(0, rows, BATCH_SIZE)]


def run_waste(config: Config, rng: np.random.Generator) -> dict[str, Any]:
    """Section 1: padding waste of random and length-grouped batches of the same lengths."""
    lengths = long_tailed_lengths(config.length_rows, rng)
    progress(f"padding waste: {lengths.size:,} lengths")
    orders: dict[str, tuple[str, list[Any]]] = {
        "random": ("random batches", random_batches(lengths.size, rng))
    }
    for window in WINDOWS:
        sampler = mt.LengthGroupedSampler(lengths, BATCH_SIZE, window=window, seed=SEED)
        default = " (default)" if window == mt.DEFAULT_WINDOW_BATCHES else ""
        orders[f"window_{window}"] = (
            f"`LengthGroupedSampler(window={window})`{default}",
            sampler.batches(),
        )
    waste = {key: mt.padding_waste(lengths, batches) for key, (_, batches) in orders.items()}
    rows = [
        [name, f"{100 * waste[key]:.1f}%", f"{1 / (1 - waste[key]):.2f}x"]
        for key, (name, _) in orders.items()
    ]
    head = ["batches of 256", "padding waste", "padded elements per token"]
    summary = (
        f"{lengths.size:,} lengths: median {int(np.median(lengths))}, mean "
        f"{lengths.mean():.0f}, max {int(lengths.max())}"
    )
    return {
        "title": "padding waste",
        "table": markdown(head, rows),
        "notes": [summary],
        "details": {"rows": int(lengths.size), "waste": waste},
    }


# -- 2: DataLoader speed ---------------------------------------------------------------------
class Batches(Sampler[list[int]]):
    """A batch sampler yielding :attr:`batches`, which may be set again between runs."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FlatMemmap(TorchDataset[dict[str, torch.Tensor]]):
    """The hand-rolled baseline: one ``.npy`` of every token and one of int64 offsets, mapped
    lazily in each worker; a batch is gathered row by row into one values tensor made in
    shared memory in a worker (as torch's collate makes its tensors), with int32 offsets."""

    def __init__(self, values: str, offsets: str) -> None:
        self.paths = (values, offsets)
        self.rows = int(np.load(offsets, mmap_mode="r").shape[0]) - 1
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.rows

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        if self._arrays is None:
            mapped = np.load(self.paths[0], mmap_mode="r").view(np.ndarray)  # no memmap per slice
            self._arrays = (mapped, np.load(self.paths[1]))
        values, offsets = self._arrays
        rows = np.asarray(indices, dtype=np.int64)
        starts, stops = offsets[rows], offsets[rows + 1]
        out_offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(stops - starts, out=out_offsets[1:])
        total = int(out_offsets[-1])
        if get_worker_info() is None:
            tensor = torch.empty(total, dtype=torch.int32)
        else:
            storage = torch.UntypedStorage._new_shared(4 * total)  # type: ignore[no-untyped-call]
            tensor = torch.empty(0, dtype=torch.int32).set_(storage)
        out = tensor.numpy()
        bounds = zip(out_offsets.tolist(), starts.tolist(), stops.tolist(), strict=False)
        for target, start, stop in bounds:  # out_offsets has one more entry
            out[target : target + stop - start] = values[start:stop]
        return {"tokens": tensor, "tokens_offsets": torch.from_numpy(out_offsets.astype(np.int32))}


def passthrough(batch: Any) -> Any:
    """Collate of the baseline: its ``__getitems__`` returns the batch already."""
    return batch


def set_file_system_sharing(worker_id: int) -> None:
    """The baseline's workers hand batches over as memshard's loader does by default."""
    torch.multiprocessing.set_sharing_strategy(mt.WORKER_SHARING_STRATEGY)  # type: ignore[no-untyped-call]


def tokens_of(batch: dict[str, torch.Tensor]) -> int:
    """The rows' own tokens in ``batch`` (padding not counted), in any mode."""
    if "tokens_lengths" in batch:
        return int(batch["tokens_lengths"].sum())
    if "tokens_offsets" in batch:
        return int(batch["tokens_offsets"][-1])
    return int(batch["tokens"].values().shape[0])


def elements_of(batch: dict[str, torch.Tensor]) -> int:
    """Elements of the tokens tensor as handed over (padding counted)."""
    tensor = batch["tokens"]
    return int(tensor.values().numel() if tensor.is_nested else tensor.numel())


def write_tokens(config: Config, scratch: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """The dataset, and the baseline's values and offsets ``.npy`` files, of the same rows."""
    lengths = long_tailed_lengths(config.rows, rng)
    total = int(lengths.sum())
    progress(f"writing {config.rows:,} sequences, {total:,} tokens")
    path = os.path.join(scratch, "tokens")
    values_path, offsets_path = (
        os.path.join(scratch, name) for name in ("values.npy", "offsets.npy")
    )
    offsets = np.zeros(config.rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(offsets_path, offsets)
    flat = np.lib.format.open_memmap(values_path, mode="w+", dtype=np.int32, shape=(total,))
    shard_bytes = QUICK_SHARD_BYTES if config.quick else FULL_SHARD_BYTES
    fields = {"tokens": ("int32", (None,))}
    with ms.create(path, fields, shard_bytes=shard_bytes) as appender:
        for start in range(0, config.rows, WRITE_ROWS):
            part = lengths[start : start + WRITE_ROWS]
            tokens = rng.integers(0, VOCABULARY, int(part.sum()), dtype=np.int32)
            flat[offsets[start] : offsets[start] + tokens.size] = tokens
            appender.extend({"tokens": {"values": tokens, "lengths": part}})
    flat.flush()
    del flat
    return path, values_path, offsets_path


def batch_orders(
    config: Config, dataset: ms.Dataset, count: int, rng: np.random.Generator
) -> dict[str, list[list[list[int]]]]:
    """``count`` batches for each run (the untimed first one included): random batches, and
    length-grouped ones (:class:`memshard.torch.LengthGroupedSampler`, an epoch per run)."""
    runs = config.repeats + 1
    grouped = mt.LengthGroupedSampler(dataset["tokens"], BATCH_SIZE, seed=SEED)
    orders: dict[str, list[list[list[int]]]] = {"random": [], "grouped": []}
    for epoch in range(runs):
        orders["random"].append([b.tolist() for b in random_batches(config.rows, rng)[:count]])
        grouped.set_epoch(epoch)
        orders["grouped"].append([b.tolist() for b in grouped.batches()[:count]])
    return orders


def build_loaders(
    dataset: ms.Dataset, values_path: str, offsets_path: str, samplers: dict[str, Batches]
) -> dict[str, DataLoader[Any]]:
    """Every candidate's DataLoader: 2 forked persistent workers, batches from ``samplers``."""
    common: dict[str, Any] = dict(
        num_workers=NUM_WORKERS, persistent_workers=True, multiprocessing_context="fork"
    )
    flat = FlatMemmap(values_path, offsets_path)
    return {
        "memmap": DataLoader(
            flat, batch_sampler=samplers["memmap"], collate_fn=passthrough,
            worker_init_fn=set_file_system_sharing, **common,
        ),
        **{
            key: mt.loader(dataset, ragged={"tokens": mode}, batch_sampler=samplers[key], **common)
            for key, mode in MODES.items()
        },
    }  # fmt: skip


def run_loaders(
    config: Config, scratch: str, rng: np.random.Generator
) -> tuple[dict[str, Any], list[tuple[str, bool]]]:
    """Section 2: tokens per second of each candidate, and the checks that each read the
    tokens it was asked for."""
    path, values_path, offsets_path = write_tokens(config, scratch, rng)
    core.warm_page_cache([path, values_path, offsets_path])
    dataset = ms.open(path)
    lengths = dataset["tokens"].lengths
    count = min(config.batches, -(-config.rows // BATCH_SIZE))
    orders = batch_orders(config, dataset, count, rng)
    samplers = {key: Batches() for key in CANDIDATES}
    loaders = build_loaders(dataset, values_path, offsets_path, samplers)
    received: dict[str, list[dict[str, int]]] = {key: [] for key in CANDIDATES}
    checks = []

    def run(key: str, repeat: int) -> float:
        order = orders["grouped" if key == "pad_grouped" else "random"][repeat + 1]
        samplers[key].batches = order
        gc.collect()
        counted = {"tokens": 0, "elements": 0}

        def drain() -> None:
            for batch in loaders[key]:
                counted["tokens"] += tokens_of(batch)
                counted["elements"] += elements_of(batch)

        ns = core.timed(drain)
        expected = int(lengths[np.concatenate(order)].sum())
        checks.append((f"{key}_tokens", counted["tokens"] == expected))
        received[key].append({**counted, "ns": ns})
        return counted["tokens"] / (ns / 1e9)

    progress(f"timing {len(loaders)} loaders, {count} batches x {config.repeats}")
    speeds = core.alternate_warm(list(CANDIDATES), config.repeats, run)
    notes = [
        f"{config.rows:,} sequences, {int(lengths.sum()):,} tokens, {len(dataset.shards)} "
        f"shards; {count} batches per run, median of {config.repeats} runs",
        "elements per token: elements handed over per token of the rows (1.00 = no padding)",
    ]
    section = loader_section(speeds, received, count, notes)
    section["details"].update(
        rows=config.rows, tokens=int(lengths.sum()), shards=len(dataset.shards)
    )
    return section, checks


def loader_section(
    speeds: dict[str, list[float]],
    received: dict[str, list[dict[str, int]]],
    count: int,
    notes: list[str],
) -> dict[str, Any]:
    """The table of section 2: each candidate's median speed, against the flat memmap."""
    medians = {key: float(statistics.median(values)) for key, values in speeds.items()}
    rows, results = [], []
    for key, name in CANDIDATES.items():
        timed_runs = received[key][1:]  # the first was the untimed warm-up
        tokens = sum(run["tokens"] for run in timed_runs)
        elements = sum(run["elements"] for run in timed_runs)
        batches_per_s = count / statistics.median(run["ns"] / 1e9 for run in timed_runs)
        ratio = medians[key] / medians["memmap"]
        target = Target(min_ratio=PACKED_GOAL) if key == "packed" else Target()
        met = target.met(ratio, medians[key])
        rows.append([
            name, f"{core.format_count(medians[key])} tokens/s", f"{batches_per_s:.1f}",
            f"{elements / tokens:.2f}", f"{ratio:.3f}x", target.describe(str), core.yes_no(met),
        ])  # fmt: skip
        results.append({
            "key": key, "measurement": name, "tokens_per_s": medians[key],
            "batches_per_s": batches_per_s, "elements_per_token": elements / tokens,
            "ratio": ratio, "goal": target.describe(str), "min_ratio": target.min_ratio,
            "met": met, "samples": speeds[key],
        })  # fmt: skip
    head = ["loader (2 workers, batches of 256)", "tokens/s", "batches/s", "elements per token"]
    table = markdown([*head, "vs memmap", "goal", "met"], rows)
    details = {"batches": count, "results": results}
    return {"title": "DataLoader speed by ragged mode", "table": table, "notes": notes,
            "details": details}  # fmt: skip


def render(section: dict[str, Any]) -> str:
    """A section as markdown: title, table, notes."""
    return "\n\n".join([f"## {section['title']}", section["table"], "\n".join(section["notes"])])


def main(argv: Sequence[str] | None = None) -> int:
    """Run both measurements, print the report and optionally write it as JSON."""
    config = parse_args(argv)
    method = [
        f"torch: {torch.__version__}; loaders: `num_workers={NUM_WORKERS}` (fork), "
        f"`batch_size={BATCH_SIZE}`, persistent workers, warm page cache",
        f"lengths: log-normal, median {MEDIAN_LENGTH}, sigma {LENGTH_SIGMA}, clipped to "
        f"1..{MAX_LENGTH}",
        "tokens/s: the rows' own tokens per second, padding not counted; the candidates "
        "alternate within every repeat",
    ]
    rng = np.random.default_rng(SEED)
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard ragged PyTorch benchmark", config.mode, scratch, method)
        waste = run_waste(config, rng)
        out.add(render(waste))
        waste_figures = waste["details"]["waste"]
        out.check(
            "grouped_waste_below_random",
            max(v for k, v in waste_figures.items() if k != "random") < waste_figures["random"],
        )
        loaders, checks = run_loaders(config, scratch, rng)
        out.add(render(loaders))
    for key, passed in checks:
        out.check(key, passed)
    for result in loaders["details"]["results"]:
        if result["met"] is not None:
            out.goal(result["key"], result["met"])
    out.record.update(
        torch=torch.__version__,
        repeats=config.repeats,
        batch_size=BATCH_SIZE,
        num_workers=NUM_WORKERS,
        sections={
            "waste": {k: v for k, v in waste.items() if k != "table"},
            "loader": {k: v for k, v in loaders.items() if k != "table"},
        },
    )
    return out.finish(config.json)


if __name__ == "__main__":
    sys.exit(main())
