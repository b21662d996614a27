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
    """The measured figures the model takes (seconds, bytes).

    The machines of the model give every worker a core of its own, which the shared machine
    of the run does not: a worker's costs are taken in CPU seconds, which the other work on
    the machine does not inflate as it does wall seconds.
    """

    #: CPU seconds per drawing of ``ms.build`` with 1 worker (in the calling process:
    #: parse, rasterise, check, write, commit), with plain and with zstd images.
    cpu_per_drawing_s: dict[str, float]
    #: The share of a worker's CPU that goes to drawings: the CPU seconds of 1 worker over
    #: those of 2 (less their start), at most 1; for worker processes and for Dask.
    efficiency: dict[str, float]
    #: Bytes each drawing takes stored, plain and zstd.
    stored_bytes: dict[str, float]
    #: Bytes of one drawing's row in memory (what sizes a part).
    row_bytes: float
    #: Seconds per part (wall, in one process: writing it and committing it).
    per_part_s: float
    #: Seconds a worker process takes to start (its CPU seconds: it has a core).
    worker_start_s: float
    disk_bytes_per_s: float
    #: Bytes of one input line, and the rate at which the inputs are cut from the files.
    line_bytes: float
    scan_bytes_per_s: float

    def per_drawing_s(self, variant: str) -> float:
        """``c``: a worker's seconds per drawing, its CPU seconds and its wait for the disk
        to take its bytes (the ``fsync`` of its part, counted as not overlapping)."""
        return self.cpu_per_drawing_s[variant] + self.stored_bytes[variant] / self.disk_bytes_per_s


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
    share = inputs.efficiency["dask" if dask else "workers"]
    per_drawing = inputs.per_drawing_s(variant)
    stored = inputs.stored_bytes[variant]
    rows = rows_per_part(workers, inputs.row_bytes)
    parts = math.ceil(MODEL_DRAWINGS / rows)
    terms = {
        "compute": MODEL_DRAWINGS * per_drawing / (workers * share),
        "commit": parts * inputs.per_part_s,
        "disk": MODEL_DRAWINGS * stored / inputs.disk_bytes_per_s,
    }
    scan_s = MODEL_DRAWINGS * inputs.line_bytes / inputs.scan_bytes_per_s
    start_s = 0.0 if dask else inputs.worker_start_s
    bound = max(terms, key=lambda name: terms[name])
    return Projection(
        machine=machine,
        variant=variant,
        workers=workers,
        efficiency=share,
        rows_per_part=rows,
        parts=parts,
        scan_s=scan_s,
        start_s=start_s,
        compute_s=terms["compute"],
        commit_s=terms["commit"],
        disk_s=terms["disk"],
        total_s=scan_s + start_s + terms[bound],
        bound=bound,
        workers_at_commit_bound=per_drawing * rows / (share * inputs.per_part_s),
        workers_at_disk_bound=per_drawing * inputs.disk_bytes_per_s / (share * stored),
        disk_needed_bytes_per_s=MODEL_DRAWINGS * stored / max(1.0, goal_s - scan_s - start_s),
        goal_s=goal_s,
    )


def efficiency(one_cpu: float, many_cpu: float, start_cpu: float = 0.0) -> float:
    """The share of the workers' CPU that goes to the job: the CPU seconds of the job done by
    one process (``one_cpu``) over those of the same job done by several (``many_cpu``),
    less what their start took (``start_cpu``); at most 1 (a start measured longer than it
    was does not make the work cheaper than in one process).

    Example:
        >>> efficiency(10.0, 12.0, 1.0), efficiency(10.0, 10.5, 2.0)
        (0.9090909090909091, 1.0)
    """
    return min(1.0, one_cpu / max(many_cpu - start_cpu, one_cpu))


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
    formula = "\n".join([
        f"- N = {MODEL_DRAWINGS:,} drawings, {MODEL_LINES_PER_INPUT:,} lines per input; W "
        "workers, each with a core of its own; R rows per part (ms.build's default for W "
        f"workers and rows of {format_bytes(inputs.row_bytes)}: at least {PARTS_PER_WORKER} "
        f"parts per worker, at most {PART_FILL:g} of a {format_bytes(ms.DEFAULT_SHARD_BYTES)} "
        "shard)",
        "- T = scan + start + max(compute, commit, disk), the three overlapping:",
        "  scan = N x line bytes / scan rate (the parent cuts the files into inputs first); "
        "start = a worker's start (none on a running cluster);",
        "  compute = N x c / (W x e); commit = (N / R) x p (serial, in the parent); "
        "disk = N x b / D",
        "- it stops scaling at W = c x R / (e x p) (the commits) or W = c x D / (e x b) (the "
        "disk), whichever is smaller",
    ])  # fmt: skip
    cpu = inputs.cpu_per_drawing_s
    measured = "\n".join([
        f"- c, a worker's seconds per drawing = its CPU seconds with 1 worker "
        f"({format_ns(cpu['plain'] * 1e9)} plain, {format_ns(cpu['zstd'] * 1e9)} zstd; CPU, "
        "not wall: this machine is shared) + b / D, its wait for the disk: "
        f"{format_ns(inputs.per_drawing_s('plain') * 1e9)} plain, "
        f"{format_ns(inputs.per_drawing_s('zstd') * 1e9)} zstd "
        f"({inputs.per_drawing_s('plain') * MODEL_DRAWINGS / 3600:,.0f} and "
        f"{inputs.per_drawing_s('zstd') * MODEL_DRAWINGS / 3600:,.0f} hours for N in one "
        "process)",
        f"- e, the share of a worker's CPU that goes to drawings = CPU seconds of 1 worker / "
        f"CPU seconds of 2 (less their start), at most 1: {inputs.efficiency['workers']:.2f} "
        f"(worker processes), {inputs.efficiency['dask']:.2f} (Dask, on a started cluster), "
        "carried unchanged to W workers",
        f"- b, bytes per drawing stored: {format_bytes(inputs.stored_bytes['plain'])} plain, "
        f"{format_bytes(inputs.stored_bytes['zstd'])} zstd",
        f"- p, per-part cost (wall): {format_ns(inputs.per_part_s * 1e9)}; a worker's start "
        f"(CPU): {format_ns(inputs.worker_start_s * 1e9)}",
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
