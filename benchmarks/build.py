"""Building a dataset from raw inputs with your own function: ``ms.build`` against itself
(1 and 2 worker processes, a 2-process Dask ``LocalCluster``), against the tools a user would
pick instead, and modelled at full size: 50 million drawings rasterised to 256x256.

Run from the repository root::

    python -m benchmarks.build                  # 40,000 drawings, 9,000 images, 3 repeats
    python -m benchmarks.build --scale 0.5 --peer-repeats 1     # half of each job, faster
    python -m benchmarks.build --quick          # a few hundred rows, 1 repeat (CI runs this)

The jobs are those of :mod:`benchmarks.build_peers`: ``drawings``, CPU-bound, the doodles
recipe's function (``examples/doodles.py``: an input is a chunk of lines of a
newline-delimited JSON file, its rows a 256x256 image, the ragged strokes, a label and an
id), and ``images``, I/O-bound, the image-folder recipe's (``examples/image_folder.py``: an
input is one JPEG or PNG file, decoded and resized to 64x64).

1. **Scaling**, in this process: ``ms.build`` with ``workers=1`` (the function runs here),
   ``workers=2`` (two worker processes, started by the call, their start timed with it) and
   ``client=`` a ``LocalCluster`` of 2 single-threaded worker processes (started and closed
   around each run, untimed, its workers having imported the function's module, as this
   process has, before the timed run); the drawings also with their images compressed
   (zstd, level 3, as ``examples/doodles.py --compress`` stores them). CPU seconds of every
   process that worked are measured with the wall seconds. Goals: on the drawings, 2
   workers at least 1.8x as fast as 1, the cluster at least 1.6x.
2. **Peers**, each run in a fresh child process whose process tree is sampled for its
   memory (:func:`benchmarks.build_peers.measure`): ``ms.build(workers=2)``,
   ``litdata.optimize(num_workers=2)``, HF ``datasets`` ``map(num_proc=2)`` +
   ``save_to_disk``, and a ``multiprocessing.Pool(2)`` feeding one LMDB writer, with the same
   function on the same inputs. Goal: memshard at least as fast as each (1.0x), on both jobs.
3. **Overheads**, in this process, with a function that does nothing (one int64 row per
   input): the fixed cost of a build, its cost per part (writing a part and committing it,
   one after the other here: an upper bound of the commit's share, which is serial in the
   parent), its cost per 1,000 inputs, and the start of 2 worker processes; the rate at
   which ``examples.doodles.chunks`` cuts a file into inputs; the disk's sequential write
   speed (``os.write`` + ``fsync``).
4. **The full-size model** (:mod:`benchmarks.build_model`): the hours to rasterise 50
   million drawings on 8 workers of one machine and the minutes on 64 Dask workers sharing
   a file system, from the figures above; the formula, its inputs and where it stops
   scaling are printed with it. Goals: under 1 hour and under 10 minutes, with the images
   compressed and plain.

Every figure is the median of the repeats (``--repeats``; ``--peer-repeats`` for the tools
in child processes, whose fixed costs make them slow to repeat), the candidates alternating
within each (a different one first each time). The machine is shared: the load average is sampled at
every measurement and printed. Speed goals are judged by reading the output, never by
timed tests; a run exits with 1 only when a build's rows are wrong.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import memshard as ms
from examples import doodles

from . import build_peers, core, limits
from .build_model import (
    POINT_BYTES,
    SCALAR_BYTES,
    ModelInputs,
    Projection,
    efficiency,
    model_text,
    projections,
)
from .build_peers import (
    FULL_DRAWINGS,
    FULL_IMAGES_PER_CLASS,
    FULL_LINES_PER_CHUNK,
    MEMSHARD,
    PEERS,
    QUICK_DRAWINGS,
    QUICK_IMAGES_PER_CLASS,
    QUICK_LINES_PER_CHUNK,
    Job,
    PeerResult,
)
from .core import (
    Option,
    format_bytes,
    format_count,
    format_duration,
    format_ns,
    format_rate,
    markdown,
    progress,
)
from .formats.base import Unavailable

ONE, TWO, DASK = "1 worker", "2 workers", "Dask, 2 processes"
ONE_ZSTD, TWO_ZSTD = "1 worker, zstd", "2 workers, zstd"
#: The scaling candidates of each job.
SCALING = {"drawings": (ONE, TWO, DASK, ONE_ZSTD, TWO_ZSTD), "images": (ONE, TWO, DASK)}
#: Speed over 1 worker on the drawings that the goals ask for.
TWO_WORKERS_GOAL, DASK_GOAL, PEER_GOAL = 1.8, 1.6, 1.0
#: The trivial build of the overheads: inputs, and the parts they are cut into.
FULL_OVERHEAD_INPUTS, QUICK_OVERHEAD_INPUTS = 20_000, 1_000
FULL_OVERHEAD_PARTS, QUICK_OVERHEAD_PARTS = 200, 20


def tiny(n: int) -> dict[str, int]:
    """The function of the overhead builds: one row of one int64 per input."""
    return {"n": n}


TINY_FIELDS = {"n": ("int64", ())}


# -- the configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    scale: float
    peer_repeats: int
    out: str

    @property
    def drawings(self) -> int:
        """Drawings of the drawings job."""
        return QUICK_DRAWINGS if self.quick else max(1, round(FULL_DRAWINGS * self.scale))

    @property
    def per_class(self) -> int:
        """Images of each of the 3 classes of the images job."""
        full = max(1, round(FULL_IMAGES_PER_CLASS * self.scale))
        return QUICK_IMAGES_PER_CLASS if self.quick else full

    @property
    def lines_per_chunk(self) -> int:
        """Lines of the drawings file per input."""
        return QUICK_LINES_PER_CHUNK if self.quick else FULL_LINES_PER_CHUNK

    @property
    def overhead_inputs(self) -> int:
        """Inputs of the trivial builds."""
        return QUICK_OVERHEAD_INPUTS if self.quick else FULL_OVERHEAD_INPUTS

    @property
    def overhead_parts(self) -> int:
        """Parts the trivial build's inputs are cut into to measure the cost per part."""
        return QUICK_OVERHEAD_PARTS if self.quick else FULL_OVERHEAD_PARTS

    @property
    def command(self) -> str:
        """The command line that runs this configuration again.

        Example:
            >>> parse_args(["--scale", "0.5"]).command
            'python -m benchmarks.build --scale 0.5'
        """
        words = ["python -m benchmarks.build"]
        words += ["--quick"] if self.quick else []
        words += [f"--scale {self.scale:g}"] if self.scale != 1.0 and not self.quick else []
        if self.repeats != (1 if self.quick else 3):
            words.append(f"--repeats {self.repeats}")
        if self.peer_repeats != (1 if self.quick else 3):
            words.append(f"--peer-repeats {self.peer_repeats}")
        return " ".join(words)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line."""
    options = core.CommandLine(
        "python -m benchmarks.build",
        __doc__,
        Option("--scale", float, "fraction of the full jobs (not in quick mode)", 1.0, 1.0),
        Option("--peer-repeats", int, "runs of each tool in a child process", 3, 1),
        repeats=(3, 1),
    )
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    return Config(**options.parse(argv))


# -- running builds ------------------------------------------------------------------------


@dataclass
class Timings:
    """The timed runs of one candidate: wall seconds, CPU seconds (of every process that
    worked on it, see :func:`time_candidate`), the load average (1 min) when each started,
    and the bytes of its output."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    output_bytes: int = 0

    @property
    def median(self) -> float:
        """Median wall seconds."""
        return float(statistics.median(self.seconds))

    @property
    def median_cpu(self) -> float:
        """Median CPU seconds."""
        return float(statistics.median(self.cpu))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread: a LocalCluster's scheduler
    runs in one) and of its children that have been waited for (the worker processes of a
    finished build)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def process_cpu_seconds() -> float:
    """User + system CPU seconds of the calling process (run on each Dask worker)."""
    times = os.times()
    return times.user + times.system


def loaded(function: Any) -> None:
    """Nothing: run on each Dask worker with a job's function as its argument, which the
    worker unpickles, importing its module (as the build's first task would)."""


def cluster_cpu_seconds(client: Any) -> float:
    """CPU seconds of the worker processes of ``client``'s cluster so far (0 without one)."""
    if client is None:
        return 0.0
    return float(sum(client.run(process_cpu_seconds).values()))


@contextlib.contextmanager
def dask_client() -> Iterator[Any]:
    """A client of a new ``LocalCluster`` of 2 single-threaded worker processes (closed at
    the end), as :mod:`benchmarks.dask_write` starts them."""
    from .dask_write import start_cluster

    cluster = start_cluster(2)
    try:
        yield cluster.client
    finally:
        cluster.close()


def build_with(candidate: str, job: Job, out: str) -> Callable[[Any], ms.BuildReport]:
    """The call of ``ms.build`` that ``candidate`` makes on ``job``, given the client of its
    cluster (``None`` but for :data:`DASK`, whose cluster :func:`time_candidate` starts)."""
    fields = doodles.fields(doodles.SIZE, compress=True) if "zstd" in candidate else job.fields
    workers = None if candidate == DASK else 1 if candidate in (ONE, ONE_ZSTD) else 2

    def run(client: Any) -> ms.BuildReport:
        return ms.build(job.function, job.inputs, out, fields=fields, workers=workers,
                        client=client, progress=False)  # fmt: skip

    return run


@dataclass(frozen=True)
class Run:
    """One timed build: wall and CPU seconds, the bytes of its output, its report."""

    seconds: float
    cpu: float
    output_bytes: int
    report: ms.BuildReport


def time_candidate(candidate: str, job: Job, scratch: str) -> Run:
    """One build by ``candidate`` (a cluster started before, its workers given the function
    to import as this process has, and closed after, untimed); the output is removed. Its
    CPU seconds are those of this process, of the worker processes it started, and of a
    cluster's workers (asked before and after)."""
    out = os.path.join(scratch, "built")
    core.clean_slate([out], 64 << 20)
    run = build_with(candidate, job, out)
    with dask_client() if candidate == DASK else contextlib.nullcontext() as client:
        if client is not None:  # a cluster in use: its workers have imported the function
            client.run(loaded, job.function)
        cpu = cpu_seconds() + cluster_cpu_seconds(client)
        ns, report = core.timed_call(lambda: run(client))
        cpu = cpu_seconds() + cluster_cpu_seconds(client) - cpu
    size = sum(os.path.getsize(path) for path in core.files_under(out))
    core.remove(out)
    return Run(ns / 1e9, cpu, size, report)


def measure_scaling(job: Job, scratch: str, repeats: int, out: core.Report) -> dict[str, Timings]:
    """Every scaling candidate of ``job``, alternating; each output's rows are checked."""
    candidates = SCALING[job.name]
    timings = {candidate: Timings() for candidate in candidates}
    # Untimed: import what the function needs in this process (PIL, the recipe).
    list(job.function(job.inputs[0]))

    def run(candidate: str, repeat: int) -> float:
        progress(f"{job.name}: {candidate} (repeat {repeat + 1})")
        timings[candidate].load.append(os.getloadavg()[0])
        done = time_candidate(candidate, job, scratch)
        out.check(f"{job.name}_{candidate}_rows", done.report.rows == job.rows)
        timings[candidate].seconds.append(done.seconds)
        timings[candidate].cpu.append(done.cpu)
        timings[candidate].output_bytes = done.output_bytes
        return done.seconds

    core.alternate(list(candidates), repeats, run)
    return timings


def measure_peers(
    job: Job, scratch: str, repeats: int, out: core.Report, skipped: dict[str, str]
) -> dict[str, list[PeerResult]]:
    """memshard and every peer on ``job`` with 2 workers, each run in a fresh child
    (:func:`benchmarks.build_peers.measure`), alternating; a peer not installed is left out
    (``skipped`` says why)."""
    results: dict[str, list[PeerResult]] = {}

    def run(name: str, repeat: int) -> float:
        if name in skipped:
            return math.nan
        progress(f"{job.name}: {name}, child process (repeat {repeat + 1})")
        try:
            result = build_peers.measure(name, job, scratch, workers=2)
        except Unavailable as error:
            skipped[name] = str(error)
            progress(f"{name}: skipped: {error}")
            return math.nan
        out.check(f"{job.name}_{name}_rows".replace(" ", "_"), result.ok)
        results.setdefault(name, []).append(result)
        return result.seconds

    core.alternate([MEMSHARD, *PEERS], repeats, run)
    return results


# -- overheads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Overheads:
    """What a build costs besides its function, from builds of :func:`tiny` (medians, s)."""

    inputs: int
    parts: int
    #: One input in one part, in this process: create, probe-free start, commit, rename.
    fixed_s: float
    #: ``inputs`` inputs in one part, and in ``parts`` parts.
    one_part_s: float
    many_parts_s: float
    #: 2 inputs, a part each: with 2 worker processes, and in this process; wall and CPU.
    pool_s: float
    in_process_s: float
    pool_cpu_s: float
    in_process_cpu_s: float
    load: list[float]

    @property
    def per_part_s(self) -> float:
        """Seconds per part: the slope between one part and ``parts`` parts."""
        return (self.many_parts_s - self.one_part_s) / (self.parts - 1)

    @property
    def per_input_s(self) -> float:
        """Seconds per input (calling the function, checking and writing its row)."""
        return (self.one_part_s - self.fixed_s) / (self.inputs - 1)

    @property
    def pool_start_s(self) -> float:
        """Seconds the start of 2 worker processes adds to a build."""
        return self.pool_s - self.in_process_s

    @property
    def pool_start_cpu_s(self) -> float:
        """CPU seconds the start of 2 worker processes costs (each imports memshard and
        what the function needs, as a build's workers do)."""
        return self.pool_cpu_s - self.in_process_cpu_s

    def to_json(self) -> dict[str, Any]:
        """Every figure, with the derived ones."""
        derived = {"per_part_s": self.per_part_s, "per_1000_inputs_s": 1000 * self.per_input_s,
                   "pool_start_s": self.pool_start_s,
                   "pool_start_cpu_s": self.pool_start_cpu_s}  # fmt: skip
        return {**asdict(self), **derived}


def measure_overheads(config: Config, scratch: str) -> Overheads:
    """The builds of :func:`tiny` of :class:`Overheads`, alternating."""
    count, parts = config.overhead_inputs, config.overhead_parts
    runs = {
        "fixed": (1, 1, 0),
        "one part": (count, count, 0),
        "many parts": (count, count // parts, 0),
        "pool": (2, 1, 2),
        "in process": (2, 1, 0),
    }
    out = os.path.join(scratch, "tiny")
    load: list[float] = []
    cpu: dict[str, list[float]] = {name: [] for name in runs}

    def run(name: str, repeat: int) -> float:
        inputs, per_part, workers = runs[name]
        core.remove(out)
        load.append(os.getloadavg()[0])
        before = cpu_seconds()
        ns, report = core.timed_call(
            lambda: ms.build(tiny, range(inputs), out, fields=TINY_FIELDS,
                             inputs_per_part=per_part, workers=workers, progress=False)
        )  # fmt: skip
        if repeat >= 0:
            cpu[name].append(cpu_seconds() - before)
        if report.rows != inputs:
            raise AssertionError(f"the trivial build of {inputs} inputs has {report.rows} rows")
        core.remove(out)
        return ns / 1e9

    progress("overheads: builds of a function that does nothing")
    samples = core.alternate_warm(list(runs), config.repeats, run)
    medians = {name: float(statistics.median(values)) for name, values in samples.items()}
    return Overheads(
        inputs=count,
        parts=parts,
        fixed_s=medians["fixed"],
        one_part_s=medians["one part"],
        many_parts_s=medians["many parts"],
        pool_s=medians["pool"],
        in_process_s=medians["in process"],
        pool_cpu_s=float(statistics.median(cpu["pool"])),
        in_process_cpu_s=float(statistics.median(cpu["in process"])),
        load=load,
    )


@dataclass(frozen=True)
class InputFile:
    """The drawings file: its bytes and lines, the points of its drawings, and how fast
    :func:`examples.doodles.chunks` cuts it into inputs (bytes/s, median)."""

    bytes: int
    lines: int
    points: int
    scan_bytes_per_s: float


def measure_input_file(job: Job, repeats: int) -> InputFile:
    """:class:`InputFile` of the drawings job's file."""
    path = job.inputs[0].path
    size = os.path.getsize(path)
    with open(path) as file:
        lines = file.readlines()
    points = sum(len(doodles.strokes_of(doodles.parse(line, path)["drawing"])) for line in lines)
    lines_per_chunk = job.inputs[0].line_count
    samples = [
        core.timed(lambda: doodles.chunks([path], lines_per_chunk)) / 1e9 for _ in range(repeats)
    ]
    return InputFile(size, len(lines), points, size / statistics.median(samples))


# -- the full-size model -------------------------------------------------------------------


def model_inputs(
    scaling: dict[str, Timings],
    job: Job,
    overheads: Overheads,
    disk_bytes_per_s: float,
    input_file: InputFile,
) -> ModelInputs:
    """The model's inputs from the run's figures."""
    mean_points = input_file.points / input_file.lines
    one = scaling[ONE].median_cpu
    return ModelInputs(
        cpu_per_drawing_s={
            "plain": one / job.rows,
            "zstd": scaling[ONE_ZSTD].median_cpu / job.rows,
        },
        efficiency={
            "workers": efficiency(one, scaling[TWO].median_cpu, overheads.pool_start_cpu_s),
            "dask": efficiency(one, scaling[DASK].median_cpu),
        },
        stored_bytes={
            "plain": scaling[ONE].output_bytes / job.rows,
            "zstd": scaling[ONE_ZSTD].output_bytes / job.rows,
        },
        row_bytes=doodles.SIZE * doodles.SIZE + SCALAR_BYTES + POINT_BYTES * mean_points,
        per_part_s=overheads.per_part_s,
        worker_start_s=overheads.pool_start_cpu_s / 2,
        disk_bytes_per_s=disk_bytes_per_s,
        line_bytes=input_file.bytes / input_file.lines,
        scan_bytes_per_s=input_file.scan_bytes_per_s,
    )


# -- the report ----------------------------------------------------------------------------


@dataclass
class Goal:
    """One goal: its key, what it is, the figure and the goal as printed, met or not."""

    key: str
    text: str
    figure: str
    goal: str
    met: bool


def judge_scaling(timings: dict[str, Timings]) -> list[Goal]:
    """The drawings' scaling goals."""
    one = timings[ONE].median
    two, dask = one / timings[TWO].median, one / timings[DASK].median
    return [
        Goal("drawings_2_workers", "drawings: 2 workers over 1", f"{two:.2f}x",
             f">= {TWO_WORKERS_GOAL:.2f}x", two >= TWO_WORKERS_GOAL),
        Goal("drawings_dask", "drawings: Dask LocalCluster, 2 processes, over 1 worker",
             f"{dask:.2f}x", f">= {DASK_GOAL:.2f}x", dask >= DASK_GOAL),
    ]  # fmt: skip


def judge_peers(job: str, results: dict[str, list[PeerResult]]) -> list[Goal]:
    """memshard's speed over each measured peer's, on ``job``."""
    if MEMSHARD not in results:
        return []
    mine = median_seconds(results[MEMSHARD])
    return [
        Goal(f"{job}_vs_{peer}".replace(" ", "_"), f"{job}: memshard over {peer}",
             f"{median_seconds(results[peer]) / mine:.2f}x", f">= {PEER_GOAL:.2f}x",
             median_seconds(results[peer]) / mine >= PEER_GOAL)
        for peer in PEERS
        if peer in results
    ]  # fmt: skip


def judge_model(found: list[Projection]) -> list[Goal]:
    """The full-size goals."""
    return [
        Goal(f"model_{p.workers}_workers_{p.variant}",
             f"50M drawings, {p.machine}, {p.variant} images",
             format_duration(p.total_s), f"< {format_duration(p.goal_s)}", p.met)
        for p in found
    ]  # fmt: skip


def median_seconds(results: Sequence[PeerResult]) -> float:
    """Median write seconds of a peer's runs."""
    return float(statistics.median(result.seconds for result in results))


def scaling_table(job: Job, timings: dict[str, Timings]) -> str:
    """One line per scaling candidate."""
    one = timings[ONE].median
    rows = [
        [
            candidate,
            f"{timing.median:.2f} s",
            f"{format_count(job.rows / timing.median)} rows/s",
            f"{one / timing.median:.2f}x",
            f"{timing.median_cpu:.2f} s",
            format_bytes(timing.output_bytes),
            " ".join(f"{value:.1f}" for value in timing.load),
        ]
        for candidate, timing in timings.items()
    ]
    head = ["ms.build", "median (wall)", "rows/s", "vs 1 worker", "CPU (all processes)",
            "output", "load (1 min) per run"]  # fmt: skip
    return markdown(head, rows)


def peers_table(job: Job, results: dict[str, list[PeerResult]]) -> str:
    """One line per tool: median time, speed, memshard's speed over it, memory."""
    if MEMSHARD not in results:
        return "(memshard was not measured)"
    mine = median_seconds(results[MEMSHARD])
    rows = []
    for name, runs in results.items():
        seconds = median_seconds(runs)
        rows.append([
            f"**{name}**" if name == MEMSHARD else name,
            f"{seconds:.2f} s",
            f"{format_count(job.rows / seconds)} rows/s",
            "-" if name == MEMSHARD else f"{seconds / mine:.2f}x",
            format_bytes(max(run.peak_rss for run in runs)),
            format_bytes(max(run.largest_process_rss for run in runs)),
            format_bytes(runs[-1].output_bytes),
        ])  # fmt: skip
    head = ["tool (2 workers)", "median write", "rows/s", "memshard's speed over it",
            "peak RSS (tree)", "largest process", "output"]  # fmt: skip
    return markdown(head, rows)


def overheads_table(overheads: Overheads, input_file: InputFile, disk: float) -> str:
    """The overheads and the rates the model uses."""
    rows = [
        ["fixed cost of a build (1 input, this process)", format_ns(overheads.fixed_s * 1e9)],
        ["per part (write + commit, serially)", format_ns(overheads.per_part_s * 1e9)],
        ["per 1,000 inputs", format_ns(overheads.per_input_s * 1e12)],
        ["start of 2 worker processes (wall)", format_ns(overheads.pool_start_s * 1e9)],
        ["start of 2 worker processes (CPU, both)", format_ns(overheads.pool_start_cpu_s * 1e9)],
        ["cutting the drawings file into inputs (`doodles.chunks`)",
         format_rate(input_file.scan_bytes_per_s)],
        ["disk: `os.write` + `fsync`, sequential", format_rate(disk)],
    ]  # fmt: skip
    return markdown(["overhead or rate", "median"], rows)


def goals_table(goals: Sequence[Goal]) -> str:
    """Every goal of the run."""
    rows = [[goal.text, goal.figure, goal.goal, core.yes_no(goal.met)] for goal in goals]
    return markdown(["goal", "measured", "goal", "met"], rows)


def method(config: Config, jobs: Sequence[Job]) -> list[str]:
    """The header lines of the report."""
    drawings, images = jobs
    return [
        f"command: `{config.command}`",
        f"drawings: {drawings.rows:,} at {doodles.SIZE}x{doodles.SIZE} in {len(drawings.inputs)} "
        f"inputs of {config.lines_per_chunk} lines; images: {images.rows:,} JPEG/PNG files "
        f"(3 classes) decoded and resized to {build_peers.IMAGE_SIZE}x{build_peers.IMAGE_SIZE}",
        f"median of {config.repeats} repeats ({config.peer_repeats} of the tools in child "
        "processes), the candidates alternating within each",
        "ratios: speed over the other's (above 1: faster)",
    ]


def scaling_json(scaling: dict[str, dict[str, Timings]]) -> dict[str, Any]:
    """The scaling figures of every job, by candidate, with their medians."""
    return {
        name: {
            candidate: {**asdict(t), "median": t.median, "median_cpu": t.median_cpu}
            for candidate, t in timings.items()
        }
        for name, timings in scaling.items()
    }


def peers_json(peers: dict[str, dict[str, list[PeerResult]]]) -> dict[str, Any]:
    """Every run of every tool on every job."""
    return {
        name: {
            tool: [{**asdict(run), "ok": run.ok} for run in runs] for tool, runs in results.items()
        }
        for name, results in peers.items()
    }


# -- the run -------------------------------------------------------------------------------


def run_jobs(
    config: Config, scratch: str, out: core.Report, jobs: Sequence[Job]
) -> tuple[dict[str, dict[str, Timings]], dict[str, dict[str, list[PeerResult]]], dict[str, str]]:
    """The scaling and the peers of each job, printed as they come."""
    scaling: dict[str, dict[str, Timings]] = {}
    peers: dict[str, dict[str, list[PeerResult]]] = {}
    skipped: dict[str, str] = {}
    for job in jobs:
        scaling[job.name] = measure_scaling(job, scratch, config.repeats, out)
        peers[job.name] = measure_peers(job, scratch, config.peer_repeats, out, skipped)
        out.add(
            f"## {job.name}: {job.rows:,} rows from {len(job.inputs):,} inputs",
            "`ms.build` in this process (1 worker), with 2 worker processes and on a Dask "
            "LocalCluster of 2 processes:",
            scaling_table(job, scaling[job.name]),
            "The same function on the same inputs, each tool in a fresh child process:",
            peers_table(job, peers[job.name]),
        )
    if skipped:
        out.add("\n".join(f"- {peer}: not measured ({why})" for peer, why in skipped.items()))
    return scaling, peers, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement, print the report, write it as markdown and JSON."""
    config = parse_args(argv)
    with core.scratch_directory(config.dir) as scratch:
        jobs = [
            build_peers.drawings_job(scratch, config.drawings, config.lines_per_chunk),
            build_peers.images_job(scratch, config.per_class),
        ]
        out = core.Report("Building a dataset: ms.build", config.mode, scratch,
                          method(config, jobs))  # fmt: skip
        scaling, peers, skipped = run_jobs(config, scratch, out, jobs)
        overheads = measure_overheads(config, scratch)
        progress("the disk's sequential write speed; cutting the drawings file into inputs")
        disk = limits.disk_result(scratch, config.quick, config.repeats)
        input_file = measure_input_file(jobs[0], config.repeats)
    out.add("## Overheads (a function that does nothing)",
            overheads_table(overheads, input_file, disk.value))  # fmt: skip
    inputs = model_inputs(scaling["drawings"], jobs[0], overheads, disk.value, input_file)
    found = projections(inputs)
    out.add("## The full-size job: 50 million drawings at 256x256", *model_text(inputs, found))
    goals = judge_scaling(scaling["drawings"])
    goals += [goal for job in jobs for goal in judge_peers(job.name, peers[job.name])]
    goals += judge_model(found)
    for goal in goals:
        out.goal(goal.key, goal.met)
    loads = [load for timings in scaling.values() for t in timings.values() for load in t.load]
    out.add("## Goals", goals_table(goals),
            f"load average (1 min) at the scaling runs: min {min(loads):.2f}, median "
            f"{statistics.median(loads):.2f}, max {max(loads):.2f} on "
            f"{os.cpu_count()} CPUs shared with other work")  # fmt: skip
    out.record.update(
        command=config.command,
        repeats=config.repeats,
        peer_repeats=config.peer_repeats,
        jobs={job.name: {"inputs": len(job.inputs), "rows": job.rows} for job in jobs},
        scaling=scaling_json(scaling),
        peers=peers_json(peers),
        skipped=skipped,
        overheads=overheads.to_json(),
        disk=disk.to_json(),
        input_file=asdict(input_file),
        model={"inputs": asdict(inputs), "projections": [asdict(p) for p in found]},
        goals=[asdict(goal) for goal in goals],
    )
    os.makedirs(config.out, exist_ok=True)
    json_path = os.path.join(config.out, "build.json")
    code = out.finish(json_path, os.path.join(config.out, "build.md"))
    if config.json is not None and os.path.abspath(config.json) != os.path.abspath(json_path):
        shutil.copyfile(json_path, config.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
