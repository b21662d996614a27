"""Which codec library memshard's compressed fields (issue 20) should use for zstd, lz4 and
blosc: every candidate installed, on the issue's three workloads, at three block sizes, and
what each library's decompression call does with hostile frames.

Run from the repository root::

    python -m benchmarks.codecs --out docs/benchmarks   # 32 MiB a workload, 1 GiB bombs (minutes)
    python -m benchmarks.codecs --quick                 # tiny sizes (the smoke test runs this)

Workloads (seeded): rasterised pen sketches (uint8[1, 256, 256], a few random polyline strokes
two pixels wide on a zero image, like the doodle dataset), frames with structure (float32[3,
64, 64], a sum of smooth sinusoidal fields plus Gaussian noise) and embeddings (float32[768],
unit Gaussian vectors, barely compressible). Each is cut into blocks of one row, of as many
rows as make 64 KiB and as make 256 KiB (block sizes that come to the same row count are
measured once). For every candidate of :mod:`benchmarks.codec_candidates` and block size: the
compression ratio, single-thread compression and decompression speed (CPU time), the latency
of one row (decompress its block, copy the row out), and the speed-up of decompressing 256
random blocks with 2 threads over 1, next to the speed-up SHA-256 gets on the same blocks in
the same run (two threads that never wait for each other: what the machine gives now). As the
speed-up also needs idle cores, :mod:`benchmarks.gil_probe` says whether each call releases
the GIL whatever the load. Then :mod:`benchmarks.codec_hostile`: each library's calls on a
bomb, a lying header, a truncated and a short frame, in a fresh process, with its peak memory.
The report ends with the choice these figures support.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from . import codec_hostile, codec_report, core, gil_probe
from .codec_candidates import Candidate, Codec, candidates
from .core import SEED, Option, Returned, format_bytes, progress, rotated, timed, timed_call

SKETCH_SHAPE = (1, 256, 256)
FRAME_SHAPE = (3, 64, 64)
EMBEDDING_SHAPE = (768,)
#: Block sizes: one row (``None``), or as many rows as fit in this many bytes (at least one).
BLOCK_TARGETS = (None, 64 << 10, 256 << 10)
THREADS = 2


# -- workloads -------------------------------------------------------------------------------
def polyline_pixels(points: np.ndarray) -> np.ndarray:
    """The pixels (``x, y`` integer pairs) of the line through ``points`` (float ``x, y``
    pairs), one per unit step along each segment's longer axis."""
    starts, ends = points[:-1], points[1:]
    steps = np.ceil(np.abs(ends - starts).max(axis=1)).astype(np.int64) + 1
    segment = np.repeat(np.arange(len(steps)), steps)
    first = np.repeat(np.cumsum(steps) - steps, steps)
    fraction = (np.arange(segment.size) - first) / np.maximum(steps[segment] - 1, 1)
    along = starts[segment] + fraction[:, None] * (ends - starts)[segment]
    pixels: np.ndarray = np.rint(along).astype(np.int64)
    return pixels


def sketches(rng: np.random.Generator, rows: int) -> np.ndarray:
    """``rows`` sketches: 2 to 6 strokes each, a stroke a random walk of 3 to 11 points."""
    images = np.zeros((rows, *SKETCH_SHAPE), dtype=np.uint8)
    size = SKETCH_SHAPE[-1]
    for image in images[:, 0]:
        for _ in range(rng.integers(2, 7)):
            start = rng.uniform(32, size - 32, 2)
            walk = start + np.cumsum(rng.normal(0, 24, (rng.integers(3, 12), 2)), axis=0)
            pixels = polyline_pixels(np.clip(walk, 0, size - 2))
            x, y = pixels[:, 0], pixels[:, 1]
            image[y, x] = image[y + 1, x] = image[y, x + 1] = image[y + 1, x + 1] = 255
    return images


def smooth_frames(rng: np.random.Generator, rows: int) -> np.ndarray:
    """``rows`` frames: per channel, four 2-D sinusoids of 0.5-3 cycles a frame plus noise of
    standard deviation 0.01."""
    frames = np.empty((rows, *FRAME_SHAPE), dtype=np.float32)
    y, x = np.mgrid[0 : FRAME_SHAPE[1], 0 : FRAME_SHAPE[2]] / FRAME_SHAPE[-1]
    for start in range(0, rows, 64):
        count = min(64, rows - start)
        field = np.zeros((count, *FRAME_SHAPE))
        for _ in range(4):
            fx, fy, phase, amplitude = (
                rng.uniform(low, high, (count, FRAME_SHAPE[0], 1, 1))
                for low, high in ((0.5, 3), (0.5, 3), (0, 2 * math.pi), (0.2, 1))
            )
            field += amplitude * np.sin(2 * math.pi * (fx * x + fy * y) + phase)
        frames[start : start + count] = field + rng.normal(0, 0.01, field.shape)
    return frames


def embeddings(rng: np.random.Generator, rows: int) -> np.ndarray:
    """``rows`` unit-length Gaussian vectors."""
    vectors = rng.standard_normal((rows, *EMBEDDING_SHAPE), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@dataclass(frozen=True)
class Workload:
    """Rows of ``dtype[shape]`` made by ``make(rng, rows)``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[np.random.Generator, int], np.ndarray]
    description: str

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)

    def rows_for(self, nbytes: float) -> int:
        """Rows in ``nbytes`` (at least one)."""
        return max(1, int(nbytes) // self.row_bytes)


WORKLOADS = (
    Workload("sketches", "uint8", SKETCH_SHAPE, sketches, "rasterised pen sketches"),
    Workload("frames", "float32", FRAME_SHAPE, smooth_frames, "smooth fields plus noise"),
    Workload("embeddings", "float32", EMBEDDING_SHAPE, embeddings, "unit Gaussian vectors"),
)


@dataclass(frozen=True)
class Blocking:
    """Rows per block, and the block sizes asked for that come to it."""

    rows: int
    labels: tuple[str, ...]

    def describe(self, row_bytes: int) -> str:
        """``5 rows, 240 KiB (for 256 KiB)``: the rows, the bytes, the sizes asked for."""
        rows = f"{self.rows} row{'s' if self.rows > 1 else ''}"
        return f"{rows}, {format_bytes(self.rows * row_bytes)} (for {', '.join(self.labels)})"


def blockings(row_bytes: int) -> list[Blocking]:
    """The distinct rows per block of :data:`BLOCK_TARGETS` for rows of ``row_bytes``.

    Example:
        >>> [(b.rows, b.labels) for b in blockings(49_152)]
        [(1, ('1 row', '64 KiB')), (5, ('256 KiB',))]
    """
    found: dict[int, list[str]] = {}
    for target in BLOCK_TARGETS:
        rows = 1 if target is None else max(1, target // row_bytes)
        found.setdefault(rows, []).append("1 row" if target is None else f"{target >> 10} KiB")
    return [Blocking(rows, tuple(labels)) for rows, labels in found.items()]


# -- the command line ------------------------------------------------------------------------
@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    mib: float
    latency_calls: int
    gather_blocks: int
    bomb_mib: int
    probe_mib: float
    probe_seconds: float
    out: str


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; options left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.codecs",
        __doc__,
        Option("--mib", float, "MiB of rows in each workload", 32.0, 0.75),
        Option("--latency-calls", int, "one-row reads timed per repeat", 500, 20),
        Option("--gather-blocks", int, "random blocks a gather decompresses", 256, 16),
        Option("--bomb-mib", int, "MiB a bomb frame inflates to", 1024, 16),
        Option("--probe-mib", float, "MiB of the block the GIL probe decompresses", 48.0, 2.0),
        Option("--probe-seconds", float, "seconds of calls in each GIL probe", 0.3, 0.05),
        repeats=(5, 1),
    )
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    return Config(**options.parse(argv))


# -- measuring -------------------------------------------------------------------------------
@dataclass
class Blocks:
    """A workload's rows cut into blocks, the buffers every candidate decompresses into, and
    the blocks that the latency and gather measurements read (the same for every candidate)."""

    workload: Workload
    blocking: Blocking
    data: np.ndarray
    training: list[bytes]
    latency: np.ndarray
    gather: np.ndarray

    @classmethod
    def cut(
        cls,
        workload: Workload,
        blocking: Blocking,
        rows: np.ndarray,
        training: np.ndarray,
        config: Config,
    ) -> Blocks:
        """Whole blocks of ``rows`` (a trailing part block is dropped)."""
        count = max(1, len(rows) // blocking.rows)
        data = rows[: count * blocking.rows].reshape(count, blocking.rows, *workload.shape)
        whole = len(training) // blocking.rows * blocking.rows
        samples = training[:whole].reshape(-1, blocking.rows, *workload.shape)
        rng = np.random.default_rng(SEED + blocking.rows)
        latency = rng.integers(count, size=config.latency_calls)
        gather = rng.integers(count, size=config.gather_blocks)
        return cls(workload, blocking, data, [s.tobytes() for s in samples], latency, gather)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block."""
        return self.blocking.rows * self.workload.row_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of every block."""
        return self.data.nbytes

    def raw(self) -> np.ndarray:
        """Every block's bytes: ``(blocks, block_bytes)`` uint8."""
        return self.data.reshape(len(self.data), -1).view(np.uint8)


@dataclass
class Samples:
    """A candidate's frames, and every repeat's figures on one :class:`Blocks`: CPU time of
    the single-thread work, wall time of the gathers (ns)."""

    frames: list[bytes]
    compress: list[float] = field(default_factory=list)
    decompress: list[float] = field(default_factory=list)
    row: list[float] = field(default_factory=list)
    gather_1: list[float] = field(default_factory=list)
    gather_2: list[float] = field(default_factory=list)


def cpu_timed(run: Callable[[], Returned]) -> tuple[int, Returned]:
    """This thread's CPU nanoseconds in one call of ``run``, garbage collection paused, and
    what it returned. CPU time, not wall time: on a shared machine, time spent waiting for a
    core is not the codec's."""
    gc.disable()
    try:
        start = time.thread_time_ns()
        result = run()
        return time.thread_time_ns() - start, result
    finally:
        gc.enable()


def compress_all(codec: Codec, blocks: Blocks) -> tuple[int, list[bytes]]:
    """CPU nanoseconds to compress every block, and the frames."""
    return cpu_timed(lambda: [codec.compress(block) for block in blocks.data])


def decompress_all(codec: Codec, frames: Sequence[bytes], out: np.ndarray) -> int:
    """CPU nanoseconds to decompress every frame into its row of ``out``."""

    def run() -> None:
        for frame, target in zip(frames, out, strict=True):
            codec.decompress_into(frame, target)

    return cpu_timed(run)[0]


def row_latency(codec: Codec, frames: Sequence[bytes], blocks: Blocks) -> float:
    """CPU nanoseconds per one-row read: decompress a block (those of ``blocks.latency``)
    into a scratch buffer and copy its middle row out."""
    scratch = np.zeros(blocks.block_bytes, dtype=np.uint8)
    rows = scratch.reshape(blocks.blocking.rows, -1)
    middle = blocks.blocking.rows // 2

    def run() -> None:
        for index in blocks.latency:
            codec.decompress_into(frames[index], scratch)
            rows[middle].copy()

    return cpu_timed(run)[0] / len(blocks.latency)


def gather(
    codec: Codec,
    frames: Sequence[bytes],
    blocks: Blocks,
    out: np.ndarray,
    pool: ThreadPoolExecutor | None,
) -> int:
    """Wall nanoseconds to decompress the blocks of ``blocks.gather`` into ``out``, in this
    thread or split in :data:`THREADS` contiguous parts run by ``pool``."""
    indices = blocks.gather

    def part(first: int, stop: int) -> None:
        for slot in range(first, stop):
            codec.decompress_into(frames[indices[slot]], out[slot])

    if pool is None:
        return timed(lambda: part(0, len(indices)))
    edges = np.linspace(0, len(indices), THREADS + 1).astype(int)

    def run() -> None:
        futures = [pool.submit(part, first, stop) for first, stop in itertools.pairwise(edges)]
        for future in futures:
            future.result()

    return timed(run)


class Measurer:
    """Measures candidates on one :class:`Blocks`, each check recorded in ``report``; the
    output buffers are written once before any timing (a first touch is a page fault)."""

    def __init__(self, blocks: Blocks, pool: ThreadPoolExecutor, report: core.Report) -> None:
        self.blocks = blocks
        self.raw = blocks.raw()
        self.pool = pool
        self.report = report
        self.out = np.zeros((len(blocks.data), blocks.block_bytes), dtype=np.uint8)
        self.gathered = np.zeros((len(blocks.gather), blocks.block_bytes), dtype=np.uint8)

    def check(self, name: str, what: str, passed: bool) -> None:
        """Record a correctness check named after the workload, blocking and candidate."""
        key = f"{self.blocks.workload.name}/{self.blocks.blocking.rows}/{name}/{what}"
        self.report.check(key, passed)

    def warm(self, candidate: Candidate, codec: Codec) -> Samples:
        """An untimed round trip (its frames are the ones measured), rows checked."""
        candidate.activate()
        _, frames = compress_all(codec, self.blocks)
        decompress_all(codec, frames, self.out)
        self.check(candidate.name, "round trip", np.array_equal(self.out, self.raw))
        return Samples(frames)

    def repeat(self, candidate: Candidate, codec: Codec, samples: Samples) -> None:
        """One repeat of every measurement, gathered rows checked."""
        candidate.activate()
        blocks, frames = self.blocks, samples.frames
        samples.compress.append(compress_all(codec, blocks)[0])
        samples.decompress.append(decompress_all(codec, frames, self.out))
        samples.row.append(row_latency(codec, frames, blocks))
        for pool, times in ((None, samples.gather_1), (self.pool, samples.gather_2)):
            self.gathered.fill(0)
            times.append(gather(codec, frames, blocks, self.gathered, pool))
            expected = self.raw[blocks.gather]
            self.check(candidate.name, "gather", np.array_equal(self.gathered, expected))


def figures(
    candidate: Candidate, blocks: Blocks, samples: Samples, setup_s: float
) -> dict[str, Any]:
    """One candidate's figures on ``blocks``: medians, and every repeat's values."""
    compressed = sum(len(frame) for frame in samples.frames)
    compress, decompress = (statistics.median(s) for s in (samples.compress, samples.decompress))
    gather_1, gather_2 = (statistics.median(s) for s in (samples.gather_1, samples.gather_2))
    return {
        "candidate": candidate.name,
        "family": candidate.family,
        "workload": blocks.workload.name,
        "rows_per_block": blocks.blocking.rows,
        "block_bytes": blocks.block_bytes,
        "blocks": len(blocks.data),
        "compressed_bytes": compressed,
        "ratio": blocks.nbytes / compressed,
        "compress_bytes_per_s": blocks.nbytes / (compress / 1e9),
        "decompress_bytes_per_s": blocks.nbytes / (decompress / 1e9),
        "row_ns": statistics.median(samples.row),
        "gather_1_thread_ns": gather_1,
        "gather_2_threads_ns": gather_2,
        "speedup_2_threads": gather_1 / gather_2,
        "setup_s": setup_s,
        "samples_ns": {
            key: getattr(samples, key)
            for key in ("compress", "decompress", "row", "gather_1", "gather_2")
        },
    }


def reference_speedup(blocks: Blocks, pool: ThreadPoolExecutor, repeats: int) -> float:
    """The 2-thread speed-up of SHA-256 over the gather's blocks (``hashlib`` releases the GIL
    for inputs over 2 KiB): what this machine gives two threads that never wait for each
    other, in this run; the median of ``repeats`` alternations."""
    chosen = [blocks.data[index] for index in blocks.gather]

    def part(first: int, stop: int) -> None:
        for block in chosen[first:stop]:
            hashlib.sha256(block.data).digest()

    edges = np.linspace(0, len(chosen), THREADS + 1).astype(int)

    def run(threads: int, _: int) -> float:
        if threads == 1:
            return timed(lambda: part(0, len(chosen)))
        futures = [pool.submit(part, first, stop) for first, stop in itertools.pairwise(edges)]
        return timed(lambda: [future.result() for future in futures])

    samples = core.alternate_warm([1, THREADS], repeats, run)
    return float(statistics.median(samples[1]) / statistics.median(samples[THREADS]))


@dataclass
class Measured:
    """Every candidate's figures on the blocks measured, the candidates skipped and why, and
    the same-run reference speed-up of each workload and block size."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)


def measure_blocks(
    blocks: Blocks,
    found: Sequence[Candidate],
    config: Config,
    pool: ThreadPoolExecutor,
    report: core.Report,
    measured: Measured,
) -> None:
    """Every candidate on ``blocks``, after an untimed round trip of each, the candidates
    rotating within each repeat so that a slow spell of the machine hits them alike, added to
    ``measured``; a candidate whose codec cannot be made is skipped."""
    codecs, setup = {}, {}
    where: dict[str, Any] = {
        "workload": blocks.workload.name,
        "rows_per_block": blocks.blocking.rows,
    }
    for candidate in found:
        try:
            made = timed_call(partial(candidate.make, blocks.training))
        except Exception as error:  # a dictionary that cannot be trained on these samples
            why = f"{type(error).__name__}: {error}"
            measured.skipped.append({"candidate": candidate.name, **where, "why": why})
            progress(f"  {candidate.name} skipped: {why}")
            continue
        setup[candidate.name], codecs[candidate.name] = made
    measurer = Measurer(blocks, pool, report)
    by_name = {candidate.name: candidate for candidate in found if candidate.name in codecs}
    samples = {name: measurer.warm(by_name[name], codecs[name]) for name in by_name}
    for repeat in range(config.repeats):
        for name in rotated(list(by_name), repeat):
            measurer.repeat(by_name[name], codecs[name], samples[name])
    measured.results += [
        figures(by_name[name], blocks, samples[name], setup[name] / 1e9) for name in by_name
    ]
    speedup = reference_speedup(blocks, pool, config.repeats)
    measured.references.append({**where, "speedup_2_threads": speedup})


def measure(config: Config, found: Sequence[Candidate], report: core.Report) -> Measured:
    """Every workload at every block size."""
    measured = Measured()
    with ThreadPoolExecutor(THREADS) as pool:
        for index, workload in enumerate(WORKLOADS):
            rows = workload.rows_for(config.mib * (1 << 20))
            data = workload.make(np.random.default_rng(SEED + index), rows)
            training = workload.make(np.random.default_rng(SEED + 100 + index), rows)
            for blocking in blockings(workload.row_bytes):
                progress(f"{workload.name}: {blocking.describe(workload.row_bytes)}")
                blocks = Blocks.cut(workload, blocking, data, training, config)
                measure_blocks(blocks, found, config, pool, report, measured)
    return measured


def probe_gil(
    config: Config, found: Sequence[Candidate], report: core.Report
) -> list[dict[str, Any]]:
    """Each candidate's :func:`benchmarks.gil_probe.main_share` (``repeats`` times), the call
    decompressing one block of ``--probe-mib`` of frames: long enough (tens of milliseconds)
    that the GIL hand-offs at its edges fade, where calls on many small blocks would be mostly
    hand-offs."""
    workload = WORKLOADS[1]
    rows = workload.make(
        np.random.default_rng(SEED + 200), workload.rows_for(config.probe_mib * (1 << 20))
    )
    samples = [row.tobytes() for row in rows]
    out = np.zeros(rows.nbytes, dtype=np.uint8)
    raw = rows.reshape(-1).view(np.uint8)
    records: list[dict[str, Any]] = []
    for candidate in found:
        progress(f"GIL probe: {candidate.name}")
        try:
            codec = candidate.make(samples)
        except Exception as error:  # a dictionary that cannot be trained on these samples
            why = f"{type(error).__name__}: {error}"
            records.append({"candidate": candidate.name, "skipped": why})
            continue
        candidate.activate()
        call = partial(codec.decompress_into, codec.compress(rows), out)
        call_ns, _ = cpu_timed(call)
        report.check(f"gil probe/{candidate.name}", np.array_equal(out, raw))
        shares = [gil_probe.main_share(call, config.probe_seconds) for _ in range(config.repeats)]
        records.append({
            "candidate": candidate.name, "block_bytes": rows.nbytes, "call_ns": call_ns,
            "share": statistics.median(shares), "samples": shares,
        })  # fmt: skip
    return records


def method(config: Config) -> list[str]:
    """The header lines of the report."""
    return [
        f"command: `python -m benchmarks.codecs{' --quick' if config.quick else ''}`"
        + ("" if config.quick else f" (--mib {config.mib:g} --bomb-mib {config.bomb_mib})"),
        f"each workload: {format_bytes(config.mib * (1 << 20))} of rows, seeded; "
        f"{config.repeats} repeats, the candidates rotating within each",
        f"threads: a single thread except the {THREADS}-thread gathers; blosc's own threads off",
        f"hostile frames: bombs of {format_bytes(config.bomb_mib << 20)}, a bound of "
        f"{format_bytes(codec_hostile.BOUND)}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every candidate, run the hostile trials, print the report and write it."""
    config = parse_args(argv)
    found = candidates()
    scratch = config.dir or os.getcwd()
    report = core.Report("memshard codec candidates", config.mode, scratch, method(config))
    report.add("## Workloads", codec_report.workloads_table(WORKLOADS, config.mib, blockings))
    report.add("## Candidates", codec_report.candidates_table(found))
    measured = measure(config, found, report)
    gil = probe_gil(config, found, report)
    hostile = codec_hostile.trials(config.bomb_mib << 20, codec_hostile.BOUND, progress)
    codec_report.finish(report, WORKLOADS, found, measured, gil, hostile, config)
    report.record.update(
        mib=config.mib,
        repeats=config.repeats,
        latency_calls=config.latency_calls,
        gather_blocks=config.gather_blocks,
        bomb_bytes=config.bomb_mib << 20,
        probe_bytes=int(config.probe_mib * (1 << 20)),
        probe_seconds=config.probe_seconds,
        hostile_bound=codec_hostile.BOUND,
        candidates=[codec_report.candidate_json(candidate) for candidate in found],
        results=measured.results,
        skipped=measured.skipped,
        references=measured.references,
        gil_probe=gil,
        hostile=hostile,
    )
    os.makedirs(config.out, exist_ok=True)
    json_path = os.path.join(config.out, "codecs.json")
    code = report.finish(json_path, os.path.join(config.out, "codecs.md"))
    if config.json is not None and os.path.abspath(config.json) != os.path.abspath(json_path):
        with open(config.json, "w") as copy, open(json_path) as source:
            copy.write(source.read())
    return code


if __name__ == "__main__":
    sys.exit(main())
