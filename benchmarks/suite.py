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

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import compare, limits, loaders, report
from .compare import Effort, Figure
from .core import (
    FULL_IMAGE_ROWS,
    FULL_VECTOR_ROWS,
    IMAGE_SHAPE,
    SEED,
    VECTOR_SHAPE,
    Workload,
    batches_of,
    format_bytes,
    machine_info,
    progress,
    random_rows,
    scratch_directory,
    shard_bytes_for,
)
from .formats import MEMSHARD, Format, Unavailable, peers
from .report import GoalResult, Measurement, WorkloadResults

QUICK_IMAGE_ROWS = 1024
QUICK_VECTOR_ROWS = 4_096
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
BY_KEY = {measurement.key: measurement for measurement in MEASUREMENTS}


@dataclass(frozen=True)
class Config:
    """What to run and how much."""

    quick: bool
    images: Workload
    vectors: Workload
    effort: Effort
    loader_seconds: float
    limit_bytes: int
    scratch_parent: str | None
    out: str

    @property
    def mode(self) -> str:
        """``quick`` or ``full``."""
        return "quick" if self.quick else "full"


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes and repeats left unset default to the mode's."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute (CI)")
    parser.add_argument("--rows-images", type=int, help="rows of float32[3,64,64] images")
    parser.add_argument("--rows-vectors", type=int, help="rows of float32[128] vectors")
    parser.add_argument("--repeats", type=int, help="repeats of each warm read measurement")
    parser.add_argument(
        "--slow-repeats", type=int, help="repeats of writes, DataLoader epochs and cold gathers"
    )
    parser.add_argument("--dir", help="scratch directory (a temporary folder inside is removed)")
    parser.add_argument("--out", default="benchmark-results", help="folder for the report")
    args = parser.parse_args(argv)
    for name in ("rows_images", "rows_vectors", "repeats", "slow_repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    quick = bool(args.quick)
    image_rows = args.rows_images or (QUICK_IMAGE_ROWS if quick else FULL_IMAGE_ROWS)
    vector_rows = args.rows_vectors or (QUICK_VECTOR_ROWS if quick else FULL_VECTOR_ROWS)
    effort = Effort(
        repeats=args.repeats or (3 if quick else 7),
        slow_repeats=args.slow_repeats or (1 if quick else 3),
        run_seconds=0.01 if quick else 0.1,
    )
    return Config(
        quick=quick,
        images=Workload(
            "images", IMAGE_SHAPE, image_rows, shard_bytes_for(image_rows, FULL_IMAGE_ROWS, quick)
        ),
        vectors=Workload(
            "vectors",
            VECTOR_SHAPE,
            vector_rows,
            shard_bytes_for(vector_rows, FULL_VECTOR_ROWS, quick),
        ),
        effort=effort,
        loader_seconds=0.2 if quick else 3.0,
        limit_bytes=(32 << 20) if quick else (512 << 20),
        scratch_parent=args.dir,
        out=args.out,
    )


# -- running ---------------------------------------------------------------------------------
@contextlib.contextmanager
def started(formats: list[Format], results: WorkloadResults) -> Iterator[list[Format]]:
    """The formats that could start (the others are recorded as skipped, with why); each is
    stopped at the end, whatever happens."""
    running = []
    try:
        for fmt in formats:
            try:
                fmt.start()
            except Unavailable as error:
                results.skipped[fmt.name] = str(error)
                progress(f"{fmt.name}: skipped: {error}")
                continue
            running.append(fmt)
        yield running
    finally:
        for fmt in running:
            fmt.remove()
            fmt.stop()


def writable(formats: list[Format], results: WorkloadResults) -> list[Format]:
    """The formats whose package is installed: each writes nothing, untimed, as a probe."""
    usable = []
    for fmt in formats:
        try:
            fmt.write([])
        except Unavailable as error:
            results.skipped[fmt.name] = str(error)
            progress(f"{fmt.name}: skipped: {error}")
            continue
        fmt.remove()
        usable.append(fmt)
    return usable


def run_workload(
    config: Config, workload: Workload, scratch: str, rng: np.random.Generator
) -> WorkloadResults:
    """Every measurement of one workload over every format."""
    effort = config.effort
    size = format_bytes(workload.nbytes)
    results = WorkloadResults(
        workload.name,
        f"{workload.rows:,} rows of float32{list(workload.shape)} ({size})",
        workload.nbytes,
    )
    progress(f"{workload.name}: generating {format_bytes(workload.nbytes)} of random rows")
    data = random_rows(workload, rng)
    batch_rows = max(1, WRITE_BATCH_BYTES[workload.name] // workload.row_bytes)
    batches = batches_of(data, batch_rows)
    with started(peers(scratch, workload), results) as running:
        formats = writable(running, results)
        results.formats = {fmt.name: fmt.description for fmt in formats}
        progress(f"{workload.name}: writing every format, {effort.slow_repeats} repeats")
        results.figures["write"] = compare.measure_writes(
            formats, batches, workload.nbytes, effort.slow_repeats
        )
        progress(f"{workload.name}: warm reads, {effort.repeats} repeats")
        readers = compare.open_warm(formats)
        try:
            seed = int(rng.integers(1 << 31))
            compare.check_readers(formats, readers, data, seed)
            results.figures["row"] = compare.measure_rows(
                readers, workload.rows, ROW_ACCESSES, effort, seed
            )
            gather_rows = min(GATHER_ROWS[workload.name], workload.rows)
            results.figures["gather"] = compare.measure_gathers(
                formats, readers, gather_rows, GATHERS_PER_RUN, effort, seed
            )
            window = min(workload.rows, max(1, SCAN_WINDOW_BYTES // workload.row_bytes))
            results.figures["scan"] = compare.measure_scans(formats, readers, window, effort)
        finally:
            compare.close_all(readers)
        progress(f"{workload.name}: DataLoader epochs, {effort.slow_repeats} repeats")
        loader_effort = Effort(effort.repeats, effort.slow_repeats, config.loader_seconds / 10)
        results.figures.update(
            loaders.measure_loaders(
                formats,
                results.figures["gather"],
                gather_rows,
                min(workload.rows, EPOCH_ROWS),
                loader_effort,
                seed,
            )
        )
        progress(f"{workload.name}: cold-cache gathers, {effort.slow_repeats} repeats")
        cold_rows = min(COLD_ROWS[workload.name], workload.rows)
        cold, failures = compare.measure_cold(formats, data, cold_rows, effort.slow_repeats, seed)
        results.figures["cold"] = cold
        results.notes["cold"] = {name: f"not cold: {why}" for name, why in failures.items()}
        for fmt in formats:
            if not fmt.on_disk:
                results.notes["cold"][fmt.name] = "n/a: not in files"
        h5 = next((fmt for fmt in formats if fmt.name == "h5py contiguous"), None)
        if h5 is not None:
            progress(f"{workload.name}: HDF5 -> memshard conversion")
            results.conversion = compare.measure_conversion(h5, scratch, effort.slow_repeats)
    progress(f"{workload.name}: memshard extend vs f.write, {effort.slow_repeats} repeats")
    results.extend = compare.measure_extend(workload, batches, effort.slow_repeats, scratch)
    return results


# -- goals -----------------------------------------------------------------------------------
def speed_goal(
    results: WorkloadResults, key: str, peer: str, minimum: float, goal: str
) -> GoalResult | None:
    """memshard's speed over ``peer``'s in measurement ``key`` must reach ``minimum``."""
    figures = results.figures.get(key, {})
    if MEMSHARD not in figures or peer not in figures:
        return None
    measurement = BY_KEY[key]
    ratio = measurement.speed(figures[MEMSHARD], figures[peer])
    return GoalResult(
        results.name,
        goal,
        measurement.format(figures[MEMSHARD]),
        peer,
        measurement.format(figures[peer]),
        ratio,
        f">= {minimum:.2f}x",
        ratio >= minimum,
    )


def write_goals(results: WorkloadResults) -> list[GoalResult]:
    """``extend`` against ``f.write`` into the page cache, and with commit against fsync."""
    figures = results.extend
    goals = []
    for mine, theirs, minimum, goal in (
        (compare.EXTEND, compare.PLAIN_WRITE, 0.7, "write into the page cache"),
        (compare.EXTEND_CLOSE, compare.PLAIN_WRITE_FSYNC, 0.8, "write, committed (fsync)"),
    ):
        ratio = figures[mine].value / figures[theirs].value
        goals.append(
            GoalResult(
                results.name,
                goal,
                f"{format_bytes(figures[mine].value)}/s",
                theirs,
                f"{format_bytes(figures[theirs].value)}/s",
                ratio,
                f">= {minimum:.2f}x",
                ratio >= minimum,
            )
        )
    return goals


def judge(all_results: Sequence[WorkloadResults]) -> list[GoalResult]:
    """Every goal of the issue that the figures of this run can judge."""
    goals: list[GoalResult | None] = []
    for results in all_results:
        if results.name == "images":
            goals += [
                speed_goal(results, "gather", "h5py contiguous", 3.0, "random gather"),
                speed_goal(results, "gather", "LMDB", 1.5, "random gather"),
                speed_goal(results, "gather", "in-RAM", 0.9, "random gather"),
            ]
            loader2 = results.figures.get("loader2", {})
            best = max(
                (name for name in loader2 if name != MEMSHARD),
                key=lambda name: loader2[name].value,
                default=None,
            )
            if best is not None:
                goals.append(speed_goal(results, "loader2", best, 1.0, "DataLoader, 2 workers"))
        else:
            goals += [
                speed_goal(results, "gather", "LMDB", 10.0, "random gather"),
                speed_goal(results, "gather", "h5py contiguous", 30.0, "random gather"),
                speed_goal(results, "gather", "h5py chunked", 30.0, "random gather"),
                speed_goal(results, "loader2", "LMDB", 2.0, "DataLoader, 2 workers"),
            ]
        goals += [
            speed_goal(results, "row", "np.memmap", 1 / 1.2, "single row within 1.2x"),
            speed_goal(results, "scan", "np.memmap", 0.9, "sequential scan"),
            speed_goal(results, "cold", compare.PREAD, 1.0, "cold-cache random gather"),
        ]
        goals += write_goals(results)
    return [goal for goal in goals if goal is not None]


# -- output ----------------------------------------------------------------------------------
def header(config: Config, machine: dict[str, str]) -> str:
    """What ran where, and how to read the tables."""
    effort = config.effort
    lines = [f"# memshard comparison benchmark ({config.mode} mode)", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += [
        f"- command: `python -m benchmarks{' --quick' if config.quick else ''}`",
        f"- warm reads: median of {effort.repeats} repeats; writes, DataLoader epochs, cold "
        f"gathers and conversions: median of {effort.slow_repeats}; every format runs within "
        "each repeat, a different one first each time",
        "- in brackets: speed relative to np.memmap in this run (higher is better)",
    ]
    return "\n".join(lines)


def legend(results: WorkloadResults) -> str:
    """How each format stores the rows, and which were skipped."""
    lines = [f"- **{name}**: {text}" for name, text in results.formats.items()]
    lines += [f"- {name}: skipped: {why}" for name, why in results.skipped.items()]
    return "\n".join(lines)


def workload_section(config: Config, results: WorkloadResults) -> str:
    """The markdown of one workload."""
    gather = GATHER_ROWS[results.name]
    cold = COLD_ROWS[results.name]
    lines = [
        f"## {results.name}: {results.description}",
        "",
        report.workload_table(results, MEASUREMENTS),
        "",
        f"Random gather: {gather} unsorted rows into a ready array (time per gather). Cold: "
        f"{cold} random rows right after evicting the format's files from the page cache "
        "(checked with `mincore`). DataLoader: batches of 256 in one random order; a slow "
        "format covers fewer samples. Growth: the largest increase of a worker's "
        "`Private_Dirty` (anonymous memory) over an epoch; RSS and USS at its end include "
        "the page cache the worker mapped, which the kernel can drop and is not a leak.",
        "",
        legend(results),
    ]
    if results.extend:
        lines += ["", report.extend_table(results)]
    if results.conversion:
        lines += ["", report.conversion_table(results)]
    return "\n".join(lines)


def to_json(
    config: Config,
    machine: dict[str, str],
    limit_figures: dict[str, Figure],
    all_results: Sequence[WorkloadResults],
    goals: Sequence[GoalResult],
) -> dict[str, Any]:
    """Everything the report shows, and every repeat's value, as plain data."""
    return {
        "mode": config.mode,
        "machine": machine,
        "effort": asdict(config.effort),
        "limits": report.figures_json(limit_figures),
        "workloads": {results.name: report.results_json(results) for results in all_results},
        "goals": [asdict(goal) for goal in goals],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run both workloads and the limits; print the report and write it to ``--out``."""
    config = parse_args(argv)
    started_at = time.monotonic()
    rng = np.random.default_rng(SEED)
    with scratch_directory(config.scratch_parent) as scratch:
        machine = machine_info(scratch)
        print(header(config, machine), end="\n\n", flush=True)
        progress("physical limits")
        limit_figures = limits.measure_limits(scratch, config.limit_bytes, config.effort.repeats)
        all_results = []
        for workload in (config.images, config.vectors):
            results = run_workload(config, workload, scratch, rng)
            all_results.append(results)
            print(workload_section(config, results), end="\n\n", flush=True)
    cold_pread = {
        r.name: r.figures["cold"][compare.PREAD]
        for r in all_results
        if compare.PREAD in r.figures.get("cold", {})
    }
    goals = judge(all_results)
    text = [
        header(config, machine),
        "## Physical limits",
        report.limits_table(limit_figures, cold_pread),
        *(workload_section(config, results) for results in all_results),
        "## Goals",
        report.goals_table(goals),
    ]
    met = sum(goal.met for goal in goals)
    summary = f"goals met: {met} of {len(goals)}; took {time.monotonic() - started_at:.0f} s"
    print("## Physical limits", report.limits_table(limit_figures, cold_pread), sep="\n\n")
    print("\n## Goals\n", report.goals_table(goals), "", summary, sep="\n", flush=True)
    os.makedirs(config.out, exist_ok=True)
    with open(os.path.join(config.out, "results.md"), "w") as file:
        file.write("\n\n".join([*text, summary]) + "\n")
    with open(os.path.join(config.out, "results.json"), "w") as file:
        json.dump(to_json(config, machine, limit_figures, all_results, goals), file, indent=1)
        file.write("\n")
    for results in all_results:
        report.chart(
            results,
            MEASUREMENTS,
            os.path.join(config.out, f"{results.name}.png"),
            f"{results.name}: {results.description} ({config.mode} mode)",
        )
    progress(f"report, JSON and charts in {config.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
