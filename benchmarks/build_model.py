"""The full-size model of :mod:`benchmarks.build`: 50 million drawings rasterised to 256x256
with ``ms.build``, on 8 workers of one machine and on 64 workers of a Dask cluster sharing a
file system, projected from the figures measured in the run.

``T = scan + start + max(compute, commit, disk)``: the parent cuts the input files into
inputs first (``scan``), the workers start (``start``), then three pipelines overlap -- the
workers rasterise (``compute = N c / (W e)``), the parent commits the parts one after the
other (``commit = (N / R) p``), the disk takes the bytes (``disk = N b / D``) -- and the
slowest sets the pace. It stops scaling where ``compute`` meets ``commit`` or ``disk``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import memshard as ms
from examples import doodles
from memshard.building import PART_FILL, PARTS_PER_WORKER

from . import core
from .core import format_bytes, format_duration, format_ns, format_rate, markdown

#: The full-size job, and the machines of the model.
MODEL_DRAWINGS = 50_000_000
MODEL_LINES_PER_INPUT = doodles.LINES_PER_CHUNK
ONE_MACHINE_WORKERS, CLUSTER_WORKERS = 8, 64
ONE_MACHINE_GOAL_S, CLUSTER_GOAL_S = 3600.0, 600.0
#: Bytes of one stroke point (x, y, stroke: int16) and of the scalar fields (label, key_id).
POINT_BYTES, SCALAR_BYTES = 6, 16


@dataclass(frozen=True)
class ModelInputs:
    """The measured figures the model takes (seconds, bytes)."""

    #: Seconds per drawing of ``ms.build`` with 1 worker (end to end: parse, rasterise,
    #: write), with plain and with zstd images.
    per_drawing_s: dict[str, float]
    #: Speed of 2 workers over 1, on the plain drawings: worker processes, the start of
    #: the processes left out (the model counts it once: ``pool_start_s``); Dask.
    two_worker_speedup: float
    dask_speedup: float
    #: Bytes each drawing takes stored, plain and zstd.
    stored_bytes: dict[str, float]
    #: Bytes of one drawing's row in memory (what sizes a part).
    row_bytes: float
    per_part_s: float
    pool_start_s: float
    disk_bytes_per_s: float
    #: Bytes of one input line, and the rate at which the inputs are cut from the files.
    line_bytes: float
    scan_bytes_per_s: float


@dataclass(frozen=True)
class Projection:
    """The model of one configuration: each term, the total and the goal."""

    machine: str
    variant: str
    workers: int
    efficiency: float
    rows_per_part: int
    parts: int
    scan_s: float
    start_s: float
    compute_s: float
    commit_s: float
    disk_s: float
    total_s: float
    bound: str
    workers_at_commit_bound: float
    workers_at_disk_bound: float
    disk_needed_bytes_per_s: float
    goal_s: float

    @property
    def met(self) -> bool:
        """Whether the projection is under the goal."""
        return self.total_s < self.goal_s


def rows_per_part(workers: int, row_bytes: float) -> int:
    """Rows of a part of the full-size build, as ``ms.build`` sizes parts by default: at
    least :data:`PARTS_PER_WORKER` parts per worker, rows of at most :data:`PART_FILL` of a
    shard of :data:`memshard.DEFAULT_SHARD_BYTES`."""
    inputs = math.ceil(MODEL_DRAWINGS / MODEL_LINES_PER_INPUT)
    spread = math.ceil(inputs / (PARTS_PER_WORKER * workers))
    fill = int(ms.DEFAULT_SHARD_BYTES * PART_FILL) // int(MODEL_LINES_PER_INPUT * row_bytes)
    return max(1, min(spread, fill)) * MODEL_LINES_PER_INPUT


def project(
    inputs: ModelInputs, machine: str, variant: str, workers: int, goal_s: float
) -> Projection:
    """``T = scan + start + max(compute, commit, disk)``: the inputs cut from the files
    (serial, before the build), the workers started, then three pipelines that overlap --
    the workers' compute ``N c / (W e)``, the parent's commits ``(N / R) p``, the disk's
    writes ``N b / D`` -- of which the slowest sets the pace."""
    dask = machine.startswith("Dask")
    speedup = inputs.dask_speedup if dask else inputs.two_worker_speedup
    efficiency = speedup / 2
    per_drawing = inputs.per_drawing_s[variant]
    stored = inputs.stored_bytes[variant]
    rows = rows_per_part(workers, inputs.row_bytes)
    parts = math.ceil(MODEL_DRAWINGS / rows)
    terms = {
        "compute": MODEL_DRAWINGS * per_drawing / (workers * efficiency),
        "commit": parts * inputs.per_part_s,
        "disk": MODEL_DRAWINGS * stored / inputs.disk_bytes_per_s,
    }
    scan_s = MODEL_DRAWINGS * inputs.line_bytes / inputs.scan_bytes_per_s
    start_s = 0.0 if dask else inputs.pool_start_s
    bound = max(terms, key=lambda name: terms[name])
    return Projection(
        machine=machine,
        variant=variant,
        workers=workers,
        efficiency=efficiency,
        rows_per_part=rows,
        parts=parts,
        scan_s=scan_s,
        start_s=start_s,
        compute_s=terms["compute"],
        commit_s=terms["commit"],
        disk_s=terms["disk"],
        total_s=scan_s + start_s + terms[bound],
        bound=bound,
        workers_at_commit_bound=per_drawing * rows / (efficiency * inputs.per_part_s),
        workers_at_disk_bound=per_drawing * inputs.disk_bytes_per_s / (efficiency * stored),
        disk_needed_bytes_per_s=MODEL_DRAWINGS * stored / max(1.0, goal_s - scan_s - start_s),
        goal_s=goal_s,
    )


def steady_speedup(one_s: float, two_s: float, start_s: float) -> float:
    """The speed of 2 workers over 1 once the workers have started: ``one_s / (two_s -
    start_s)``, at most 2 (a start measured longer than it was cannot make 2 workers more
    than twice as fast).

    Example:
        >>> steady_speedup(10.0, 6.0, 1.0), steady_speedup(10.0, 6.0, 3.0)
        (2.0, 2.0)
        >>> round(steady_speedup(10.0, 6.5, 0.5), 3)
        1.667
    """
    return min(2.0, one_s / max(two_s - start_s, one_s / 2))


def projections(inputs: ModelInputs) -> list[Projection]:
    """The four configurations: one machine and the cluster, plain and zstd images."""
    machines = [
        (f"one machine, {ONE_MACHINE_WORKERS} workers", ONE_MACHINE_WORKERS, ONE_MACHINE_GOAL_S),
        (f"Dask cluster, {CLUSTER_WORKERS} workers", CLUSTER_WORKERS, CLUSTER_GOAL_S),
    ]
    return [
        project(inputs, machine, variant, workers, goal)
        for machine, workers, goal in machines
        for variant in ("zstd", "plain")
    ]


def model_text(inputs: ModelInputs, found: list[Projection]) -> list[str]:
    """The model: formula, inputs, the table of projections, where it stops scaling."""
    plain, zstd = inputs.per_drawing_s["plain"], inputs.per_drawing_s["zstd"]
    formula = "\n".join([
        f"- N = {MODEL_DRAWINGS:,} drawings, {MODEL_LINES_PER_INPUT:,} lines per input; W "
        "workers; R rows per part (ms.build's default part size for W workers and rows of "
        f"{format_bytes(inputs.row_bytes)}: at least {PARTS_PER_WORKER} parts per worker, "
        f"at most {PART_FILL:g} of a {format_bytes(ms.DEFAULT_SHARD_BYTES)} shard)",
        "- T = scan + start + max(compute, commit, disk), the three overlapping:",
        "  scan = N x line bytes / scan rate (the parent cuts the files into inputs first); "
        "start = the start of the worker processes (none on a running cluster);",
        "  compute = N x c / (W x e); commit = (N / R) x p (serial, in the parent); "
        "disk = N x b / D",
        "- it stops scaling at W = c x R / (e x p) (the commits) or W = c x D / (e x b) (the "
        "disk), whichever is smaller",
    ])  # fmt: skip
    measured = "\n".join([
        f"- c, seconds per drawing with 1 worker (end to end): {format_ns(plain * 1e9)} plain, "
        f"{format_ns(zstd * 1e9)} zstd ({plain * MODEL_DRAWINGS / 3600:,.0f} and "
        f"{zstd * MODEL_DRAWINGS / 3600:,.0f} hours for N in one process)",
        f"- e, efficiency per worker = speed-up from 1 to 2 workers / 2: "
        f"{inputs.two_worker_speedup / 2:.2f} (worker processes, their start left out: "
        f"t1 / (2 (t2 - start)), at most 1), {inputs.dask_speedup / 2:.2f} (Dask, on a "
        "started cluster), carried unchanged to W workers",
        f"- b, bytes per drawing stored: {format_bytes(inputs.stored_bytes['plain'])} plain, "
        f"{format_bytes(inputs.stored_bytes['zstd'])} zstd",
        f"- p, per-part cost: {format_ns(inputs.per_part_s * 1e9)}; start of the workers: "
        f"{format_ns(inputs.pool_start_s * 1e9)}",
        f"- D, the disk's sequential write speed: {format_rate(inputs.disk_bytes_per_s)} "
        "(the cluster's shared file system is taken to write as fast; the table says what "
        "it would need)",
        f"- line bytes: {inputs.line_bytes:.0f} (the sample's drawings); scan rate: "
        f"{format_rate(inputs.scan_bytes_per_s)}",
    ])  # fmt: skip
    rows = [
        [p.machine, p.variant, f"{p.efficiency:.2f}", f"{p.rows_per_part:,}", f"{p.parts:,}",
         format_duration(p.scan_s), format_duration(p.compute_s), format_duration(p.commit_s),
         format_duration(p.disk_s), f"**{format_duration(p.total_s)}**", p.bound,
         f"{p.workers_at_commit_bound:,.0f} / {p.workers_at_disk_bound:,.0f}",
         format_rate(p.disk_needed_bytes_per_s), f"< {format_duration(p.goal_s)}",
         core.yes_no(p.met)]
        for p in found
    ]  # fmt: skip
    head = ["configuration", "images", "e", "R", "parts", "scan", "compute", "commit", "disk",
            "projected", "bound", "W at commit / disk bound", "disk needed for goal", "goal",
            "met"]  # fmt: skip
    return ["Model:", formula, "Measured inputs:", measured, markdown(head, rows)]
