"""``python -m benchmarks``: memshard against the formats its users would otherwise pick.

Run from the repository root::

    python -m benchmarks               # full: ~1 GiB of images, 1M vectors (about 20 minutes)
    python -m benchmarks --quick       # small sizes, under a minute (CI runs this)

Both workloads are written in every format (memshard, an in-RAM ndarray, one ``np.memmap``
``.npy``, h5py contiguous and chunked, zarr v3, LMDB and Redis with one key per row, and one
``.npy`` file per row), then read back: single rows, random gathers, sequential scans,
DataLoader epochs with 0 and 2 workers and their memory, gathers on a cold page cache, and
HDF5 -> memshard conversion; the machine's physical limits are measured in the same run.
The report (markdown), every figure (JSON) and one bar chart per workload (PNG) go to
``--out``. Speed goals are judged on ratios of figures from this one run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from . import compare, core, limits, loaders, report
from .compare import (
    EXTEND,
    EXTEND_CLOSE,
    MEMSHARD_PLAIN,
    PLAIN_WRITE,
    PLAIN_WRITE_FSYNC,
    PREAD,
    PREAD_PARALLEL,
    PREAD_THREADS,
    Effort,
)
from .core import BATCH_SIZE, Figures, Option, Workload, format_bytes, progress
from .formats import BASELINE, MEMSHARD, Format, Unavailable, peers
from .report import GoalResult, Measurement, WorkloadResults

#: Rows per write batch: 12 MiB of images, 4 MiB of vectors.
WRITE_BATCH_BYTES = {"images": 12 << 20, "vectors": 4 << 20}
GATHER_ROWS = {"images": 256, "vectors": 1024}
COLD_ROWS = {"images": 1024, "vectors": 4096}
GATHERS_PER_RUN = 20
ROW_ACCESSES = 100_000
SCAN_WINDOW_BYTES = 256 << 20
#: Samples a DataLoader epoch covers at most (fewer for a slow format).
EPOCH_ROWS = 262_144

MEASUREMENTS = (
    Measurement("write", "write + close", "rate"),
    Measurement("row", "single row, get + copy", "time"),
    Measurement("gather", "random gather", "time"),
    Measurement("scan", "sequential scan", "rate"),
    Measurement("loader0", "DataLoader, 0 workers", "samples"),
    Measurement("loader2", "DataLoader, 2 workers", "samples"),
    Measurement("growth", "worker Private_Dirty growth", "bytes"),
    Measurement("cold", "cold-cache random gather", "rate"),
)
BY_KEY = {m.key: m for m in (*MEASUREMENTS, Measurement("extend", "extend", "rate"))}
#: Stands for the fastest peer of a measurement in :data:`GOALS`.
BEST_PEER = "the best peer"
#: The goals of the issue: workload (``None``: both), measurement key, memshard's figure, the
#: peer's, the least ratio of memshard's speed to the peer's, and what the goal is.
GOALS = (
    ("images", "gather", MEMSHARD, "h5py contiguous", 3.0, "random gather"),
    ("images", "gather", MEMSHARD, "LMDB", 1.5, "random gather"),
    ("images", "gather", MEMSHARD, "in-RAM", 0.9, "random gather"),
    ("images", "loader2", MEMSHARD, BEST_PEER, 1.0, "DataLoader, 2 workers"),
    ("vectors", "gather", MEMSHARD, "LMDB", 10.0, "random gather"),
    ("vectors", "gather", MEMSHARD, "h5py contiguous", 30.0, "random gather"),
    ("vectors", "gather", MEMSHARD, "h5py chunked", 30.0, "random gather"),
    ("vectors", "loader2", MEMSHARD, "LMDB", 2.0, "DataLoader, 2 workers"),
    (None, "row", MEMSHARD, BASELINE, 1 / 1.2, "single row within 1.2x"),
    (None, "scan", MEMSHARD, BASELINE, 0.9, "sequential scan"),
    (None, "cold", MEMSHARD, PREAD, 1.0, "cold-cache random gather"),
    (None, "cold", MEMSHARD_PLAIN, PREAD_PARALLEL, 0.8, "cold gather, no prefetch call"),
    (None, "extend", EXTEND, PLAIN_WRITE, 0.7, "write into the page cache"),
    (None, "extend", EXTEND_CLOSE, PLAIN_WRITE_FSYNC, 0.8, "write, committed (fsync)"),
)


@dataclass(frozen=True)
class Config(core.WorkloadRun):
    """What to run and how much."""

    slow_repeats: int
    out: str

    @property
    def effort(self) -> Effort:
        """How much each measurement does."""
        return Effort(self.repeats, self.slow_repeats, run_seconds=0.01 if self.quick else 0.1)

    @property
    def loader_seconds(self) -> float:
        """Seconds a DataLoader epoch aims at."""
        return 0.2 if self.quick else 3.0

    @property
    def limit_bytes(self) -> int:
        """Bytes each physical limit moves."""
        return limits.QUICK_BYTES if self.quick else limits.FULL_BYTES


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes and repeats left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks",
        __doc__,
        *core.workload_options(quick_images=1024, quick_vectors=4096),
        Option("--slow-repeats", int, "repeats of writes, epochs, cold gathers, conversions", 3, 1),
        repeats=(7, 3),
    )
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    return Config(**options.parse(argv))


# -- running ---------------------------------------------------------------------------------
@contextlib.contextmanager
def usable(formats: list[Format], results: WorkloadResults) -> Iterator[list[Format]]:
    """The formats that can run here: each is started and writes nothing, untimed, as a probe
    (the others are recorded as skipped, with why); each is stopped at the end, whatever
    happens."""
    running: list[Format] = []
    try:
        for fmt in formats:
            running.append(fmt)
            try:
                fmt.start()
                fmt.write([])
                fmt.remove()
            except Unavailable as error:
                running.pop().stop()
                results.skipped[fmt.name] = str(error)
                progress(f"{fmt.name}: skipped: {error}")
        yield running
    finally:
        for fmt in running:
            fmt.remove()
            fmt.stop()


def run_workload(
    config: Config, workload: Workload, scratch: str, rng: np.random.Generator
) -> WorkloadResults:
    """Every measurement of one workload over every format."""
    effort, name, figures = config.effort, workload.name, dict[str, Figures]()
    size = format_bytes(workload.nbytes)
    description = f"{workload.rows:,} rows of float32{list(workload.shape)} ({size})"
    results = WorkloadResults(name, description, workload.nbytes, figures)
    progress(f"{name}: generating {size} of random rows")
    data = core.random_rows(workload, rng)
    batches = core.batches_of(data, max(1, WRITE_BATCH_BYTES[name] // workload.row_bytes))
    seed = int(rng.integers(1 << 31))
    gather_rows = min(GATHER_ROWS[name], workload.rows)
    with usable(peers(scratch, workload), results) as formats:
        results.formats = {fmt.name: fmt.description for fmt in formats}
        progress(f"{name}: writing every format, {effort.slow_repeats} repeats")
        figures["write"] = compare.measure_writes(
            formats, batches, workload.nbytes, effort.slow_repeats
        )
        progress(f"{name}: warm reads, {effort.repeats} repeats")
        readers = compare.open_warm(formats)
        try:
            compare.check_readers(formats, readers, data, seed)
            figures["row"] = compare.measure_rows(
                readers, workload.rows, ROW_ACCESSES, effort, seed
            )
            figures["gather"] = compare.measure_gathers(
                formats, readers, gather_rows, GATHERS_PER_RUN, effort, seed
            )
            window = min(workload.rows, max(1, SCAN_WINDOW_BYTES // workload.row_bytes))
            figures["scan"] = compare.measure_scans(formats, readers, window, effort)
        finally:
            compare.close_all(readers)
        progress(f"{name}: DataLoader epochs, {effort.slow_repeats} repeats")
        loader_effort = Effort(effort.repeats, effort.slow_repeats, config.loader_seconds / 10)
        epoch_rows = min(workload.rows, EPOCH_ROWS)
        figures.update(
            loaders.measure_loaders(
                formats, figures["gather"], gather_rows, epoch_rows, loader_effort, seed
            )
        )
        progress(f"{name}: cold-cache gathers, {effort.slow_repeats} repeats")
        cold_rows = min(COLD_ROWS[name], workload.rows)
        figures["cold"], failures = compare.measure_cold(
            formats, data, cold_rows, effort.slow_repeats, seed
        )
        results.notes["cold"] = {fmt: f"not cold: {why}" for fmt, why in failures.items()}
        results.notes["cold"].update(
            {f.name: "n/a: not in files" for f in formats if not f.on_disk}
        )
        h5 = next((fmt for fmt in formats if fmt.name == "h5py contiguous"), None)
        if h5 is not None:
            progress(f"{name}: HDF5 -> memshard conversion")
            results.conversion = compare.measure_conversion(h5, scratch, effort.slow_repeats)
    progress(f"{name}: memshard extend vs f.write, {effort.slow_repeats} repeats")
    results.extend = compare.measure_extend(workload, batches, effort.slow_repeats, scratch)
    return results


# -- goals -----------------------------------------------------------------------------------
def judge(all_results: Sequence[WorkloadResults]) -> list[GoalResult]:
    """Every goal of :data:`GOALS` whose figures this run has."""
    goals = []
    for results in all_results:
        for workload, key, mine, peer, minimum, goal in GOALS:
            figures = results.extend if key == "extend" else results.figures.get(key, {})
            if peer == BEST_PEER:
                others = [name for name in figures if name != mine]
                peer = max(others, key=lambda name: figures[name].value, default=peer)
            if workload in (None, results.name) and {mine, peer} <= figures.keys():
                ratio = BY_KEY[key].speed(figures[mine], figures[peer])
                mine_shown, peer_shown = (BY_KEY[key].format(figures[n]) for n in (mine, peer))
                target, met = f">= {minimum:.2f}x", ratio >= minimum
                row = (results.name, goal, mine_shown, peer, peer_shown, ratio, target, met)
                goals.append(GoalResult(*row))
    return goals


# -- output ----------------------------------------------------------------------------------
def workload_section(results: WorkloadResults) -> str:
    """The markdown of one workload."""
    lines = [
        f"## {results.name}: {results.description}",
        report.workload_table(results, MEASUREMENTS),
        f"Random gather: {GATHER_ROWS[results.name]} unsorted rows into a ready array (time per "
        f"gather). Cold: {COLD_ROWS[results.name]} random rows right after evicting the "
        "format's files from the page cache (checked with `mincore`). DataLoader: batches of "
        f"{BATCH_SIZE} in one random order; a slow format covers fewer samples. Growth: the "
        "largest increase of a worker's `Private_Dirty` (anonymous memory) over an epoch; RSS "
        "and USS at its end include the page cache the worker mapped, which the kernel can "
        "drop and is not a leak.",
        "\n".join(
            [f"- **{name}**: {text}" for name, text in results.formats.items()]
            + [f"- {name}: skipped: {why}" for name, why in results.skipped.items()]
        ),
    ]
    if results.extend:
        lines.append(report.rates_table("writing the same batches", results.extend))
    if results.conversion:
        lines.append(report.conversion_table(results))
    return "\n\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both workloads and the limits; print the report and write it to ``--out``."""
    config = parse_args(argv)
    effort = config.effort
    method = [
        f"command: `python -m benchmarks{' --quick' if config.quick else ''}`",
        f"warm reads: median of {effort.repeats} repeats; writes, DataLoader epochs, cold "
        f"gathers and conversions: median of {effort.slow_repeats}; every format runs within "
        "each repeat, a different one first each time",
        "in brackets: speed relative to np.memmap in this run (higher is better)",
    ]
    rng = np.random.default_rng(core.SEED)
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard comparison benchmark", config.mode, scratch, method)
        progress("physical limits")
        limit_figures = limits.measure_limits(scratch, config.limit_bytes, effort.repeats)
        all_results = []
        for workload in (config.images, config.vectors):
            all_results.append(run_workload(config, workload, scratch, rng))
            out.add(workload_section(all_results[-1]))
    bounds = dict(limit_figures)
    for results in all_results:
        for baseline, threads in (
            (PREAD, "1 thread"),
            (PREAD_PARALLEL, f"{PREAD_THREADS} threads"),
        ):
            if baseline in results.figures["cold"]:
                name = f"disk, cold random `pread` of {results.name} rows, {threads}"
                bounds[name] = results.figures["cold"][baseline]
    out.add("## Physical limits", report.rates_table("limit", bounds), at=1)
    goals = judge(all_results)
    for goal in goals:
        out.goal(f"{goal.workload} {goal.goal} vs {goal.peer}", goal.met)
    out.add("## Goals", report.goals_table(goals))
    out.record.update(
        effort=asdict(effort),
        limits=report.figures_json(limit_figures),
        workloads={results.name: report.results_json(results) for results in all_results},
        goals=[asdict(goal) for goal in goals],
    )
    os.makedirs(config.out, exist_ok=True)
    for results in all_results:
        title = f"{results.name}: {results.description} ({config.mode} mode)"
        report.chart(results, MEASUREMENTS, os.path.join(config.out, f"{results.name}.png"), title)
    progress(f"report, JSON and charts in {config.out}/")
    json_path = os.path.join(config.out, "results.json")
    code = out.finish(json_path, os.path.join(config.out, "results.md"))
    if config.json is not None:
        shutil.copyfile(json_path, config.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
