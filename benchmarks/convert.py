"""Converting HDF5 files into memshard, against plain h5py reading of the same files.

Run from the repository root::

    python -m benchmarks.convert                # full: a 4 GiB contiguous file and two others
    python -m benchmarks.convert --quick        # ~64 MiB files, well under a minute
    python -m benchmarks.convert --size-gib 8   # another size of the contiguous file

Three HDF5 files of images and labels (:mod:`benchmarks.labelled`): ``contiguous``
(``--size-gib``), ``chunked`` (chunks of 64 rows) and ``gzip`` (the same + gzip level 1 +
shuffle, a quarter of the rows). For each, alternating within every repeat: plain h5py reading
every dataset (the baseline, page cache warm), and ``memshard.from_hdf5`` with 1 and 2 workers,
each in a fresh child process started before the timing.

Peak RSS is ``VmHWM`` of ``/proc/PID/status``: the child's own, plus the peaks of the workers
memshard starts, sampled by a thread (:class:`~benchmarks.system.TreeSampler`); their sum is
an upper bound of the tree's peak. (``ru_maxrss``, kept in the JSON, is not used: a process
started by ``vfork`` + ``exec`` inherits its parent's high-water mark.)
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

import memshard as ms
from memshard.convert import STAGING_SUFFIX

from . import core
from .core import DTYPE, IMAGE_BYTES, IMAGE_SHAPE, Option, Result, Target, format_bytes, progress
from .formats.hdf5_file import PlainRead, block_rows
from .labelled import CLASS_NAMES, IMAGES, LABEL_DTYPE, LABELS, ROW_BYTES
from .limits import disk_result
from .system import TreeSampler, status_bytes

FULL_SIZE_GIB = 4.0
#: Rows per chunk of the chunked files (3 MiB of images).
CHUNK_ROWS = 64
GZIP_LEVEL = 1
WORKER_COUNTS = (1, 2)
MIN_RATIO = 0.8
MAX_RSS_BYTES = 512 << 20
#: What a conversion child runs: ``python -c CHILD_CODE src dst workers shard_bytes``.
CHILD_CODE = "import sys; from benchmarks.convert import child; sys.exit(child(sys.argv[1:]))"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Layout:
    """How one source file stores its datasets, and its share of the rows."""

    key: str
    description: str
    chunked: bool
    filters: dict[str, Any] = field(default_factory=dict)
    fraction: float = 1.0


LAYOUTS = (
    Layout("contiguous", "contiguous", chunked=False),
    Layout("chunked", f"chunks of {CHUNK_ROWS} rows, uncompressed", chunked=True),
    Layout(
        "gzip",
        f"chunks of {CHUNK_ROWS} rows, gzip level {GZIP_LEVEL} + shuffle",
        chunked=True,
        filters={"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True},
        fraction=0.25,
    ),
)


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    size_gib: float
    rows_images: int | None

    @property
    def rows(self) -> int:
        """Rows of the contiguous file."""
        return self.rows_images or core.rows_for_gib(self.size_gib)

    def rows_of(self, layout: Layout) -> int:
        """Rows of the file of ``layout``."""
        return max(1, round(self.rows * layout.fraction))

    @property
    def shard_bytes(self) -> int:
        """:func:`~benchmarks.core.shard_bytes_for` the full size, so that ``workers=2`` has
        shards to share in quick mode too."""
        return core.shard_bytes_for(self.rows, core.rows_for_gib(FULL_SIZE_GIB), self.quick)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; the size defaults to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.convert",
        __doc__,
        Option("--size-gib", float, "GiB of the contiguous file", FULL_SIZE_GIB, 1 / 16),
        Option("--rows-images", int, "rows of the contiguous file, over --size-gib", None, None),
        repeats=(3, 1),
    )
    return Config(**options.parse(argv))


@dataclass
class SourceReport:
    """What was measured on one source file."""

    layout: Layout
    rows: int
    file_bytes: int = 0
    shards: int = 0
    shard_rows: int = 0
    results: list[Result] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        """Bytes of source data: every image and label."""
        return self.rows * ROW_BYTES

    def to_json(self) -> dict[str, Any]:
        """Everything measured on this file, as plain data."""
        return {
            "description": self.layout.description,
            "rows": self.rows,
            "data_bytes": self.data_bytes,
            "file_bytes": self.file_bytes,
            "shards": self.shards,
            "shard_rows": self.shard_rows,
            "results": [result.to_json() for result in self.results],
        }


# -- source files ----------------------------------------------------------------------------
def build_source(path: str, layout: Layout, rows: int, rng: np.random.Generator) -> None:
    """Write the HDF5 file of ``layout`` block by block: ``images`` holds pixel-like values
    (multiples of 1/255), ``labels`` class indices with the class names as an attribute."""
    chunk_rows = min(CHUNK_ROWS, rows) if layout.chunked else 1
    with h5py.File(path, "w") as handle:
        datasets = [
            handle.create_dataset(
                name,
                shape=(rows, *shape),
                dtype=dtype,
                chunks=(chunk_rows, *shape) if layout.chunked else None,
                **layout.filters,
            )
            for name, shape, dtype in ((IMAGES, IMAGE_SHAPE, DTYPE), (LABELS, (), LABEL_DTYPE))
        ]
        images, labels = datasets
        labels.attrs["labels"] = np.array(CLASS_NAMES, dtype=h5py.string_dtype())
        step = block_rows(chunk_rows, IMAGE_BYTES)
        values = np.empty((min(step, rows), *IMAGE_SHAPE), dtype=DTYPE)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            pixels = rng.integers(0, 256, size=(stop - start, *IMAGE_SHAPE), dtype=np.uint8)
            np.multiply(pixels, np.float32(1 / 255), out=values[: stop - start])
            images.write_direct(values[: stop - start], dest_sel=np.s_[start:stop])
            labels[start:stop] = rng.integers(0, len(CLASS_NAMES), size=stop - start)


def verify_conversion(src: str, dst: str) -> None:
    """Check that the dataset at ``dst`` holds exactly the rows and label names of ``src``."""
    dataset = ms.open(dst)
    if dataset.labels != {LABELS: CLASS_NAMES}:
        raise AssertionError(f"{dst}: labels {list(dataset.labels)} differ from the source's")
    with h5py.File(src, "r") as handle:
        for name in (IMAGES, LABELS):
            source, column = handle[name], dataset[name]
            if column.shape != source.shape or column.dtype != source.dtype:
                raise AssertionError(f"{dst}: field {name!r} is {column.shape} {column.dtype}")
            step = block_rows(1, column.dtype.itemsize * int(np.prod(source.shape[1:])))
            for start in range(0, source.shape[0], step):
                expected = source[start : start + step]
                if not np.array_equal(np.asarray(column[start : start + step]), expected):
                    raise AssertionError(f"{dst}: field {name!r} differs from rows {start}+")


# -- conversions in child processes ----------------------------------------------------------
class ConversionChild:
    """``from_hdf5`` in a fresh child process, started (imports done) before the timed run.

    The timed run tells the child to go and waits for its report; the child leaves with
    ``os._exit`` right after reporting, so interpreter teardown is not timed.
    """

    def __init__(self, src: str, dst: str, workers: int, shard_bytes: int) -> None:
        path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-c", CHILD_CODE, src, dst, str(workers), str(shard_bytes)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
            text=True,
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        if self._stdout.readline().strip() != "ready":
            self.process.wait()
            raise RuntimeError(f"conversion child failed to start (exit {self.process.returncode})")

    def run(self) -> dict[str, Any]:
        """Convert; return the child's report, with the peaks of its descendants."""
        with self.process, TreeSampler(self.process.pid) as sampler:
            self._stdin.write("go\n")
            self._stdin.flush()
            line = self._stdout.readline()
            code = self.process.wait()
        if code != 0 or not line:
            raise RuntimeError(f"conversion child failed (exit {code}); see its stderr above")
        report: dict[str, Any] = json.loads(line)
        report["worker_peaks"] = sorted(sampler.peaks.values(), reverse=True)
        report["sampled_tree_rss"] = sampler.tree_rss
        return report


def child(argv: Sequence[str]) -> int:
    """The child's side of :class:`ConversionChild`: ``src dst workers shard_bytes``."""
    src, dst, workers, shard_bytes = argv[0], argv[1], int(argv[2]), int(argv[3])
    import memshard.hdf5  # noqa: F401  (imported before the timed run, as h5py)

    # Quick mode cuts the full run's number of shards from a small file: small on purpose.
    warnings.filterwarnings("ignore", category=ms.errors.SmallShardWarning)

    rss_at_start = status_bytes("self", "VmHWM")
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.perf_counter_ns()
    dataset = ms.from_hdf5(src, dst, workers=workers, shard_bytes=shard_bytes, progress=False)
    elapsed = time.perf_counter_ns() - start
    report = {
        "ns": elapsed,
        "rows": len(dataset),
        "shards": len(dataset.shards),
        "shard_rows": max(shard.rows for shard in dataset.shards),
        "rss_at_start": rss_at_start,
        "peak_rss": status_bytes("self", "VmHWM"),
        "ru_maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10,
        "ru_maxrss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10,
    }
    print(json.dumps(report), flush=True)
    os._exit(0)


# -- measurements ----------------------------------------------------------------------------
def measure_source(
    config: Config, layout: Layout, scratch: str, rng: np.random.Generator
) -> SourceReport:
    """Build the file of ``layout``, time the baseline and both conversions, then delete it."""
    report = SourceReport(layout, config.rows_of(layout))
    src = os.path.join(scratch, f"{layout.key}.h5")
    dst = os.path.join(scratch, f"{layout.key}.memshard")
    outputs = [dst, dst + STAGING_SUFFIX]
    progress(f"{layout.key}: writing {format_bytes(report.data_bytes)} ({layout.description})")
    build_source(src, layout, report.rows, rng)
    report.file_bytes = os.path.getsize(src)
    core.warm_page_cache([src])
    children: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKER_COUNTS}

    def run(workers: int, repeat: int) -> float:
        if not workers:  # the baseline
            read = PlainRead(src)
            gc.collect()
            return core.timed(read)
        core.clean_slate(outputs, report.data_bytes)
        conversion = ConversionChild(src, dst, workers, config.shard_bytes)
        gc.collect()
        ns, result = core.timed_call(conversion.run)
        children[workers].append(result)
        return ns

    progress(f"{layout.key}: timing h5py read and from_hdf5 x {config.repeats} repeats")
    try:
        samples = core.alternate([0, *WORKER_COUNTS], config.repeats, run)
        verify_conversion(src, dst)
    finally:
        core.clean_slate([*outputs, src], 0)
    last = children[WORKER_COUNTS[-1]][-1]
    report.shards, report.shard_rows = last["shards"], last["shard_rows"]
    medians = {workers: float(statistics.median(ns)) for workers, ns in samples.items()}
    add_results(report, medians, children)
    return report


def add_results(
    report: SourceReport, medians: dict[int, float], children: dict[int, list[dict[str, Any]]]
) -> None:
    """The throughput and memory rows of one source file; ``medians`` by worker count (0:
    the plain read)."""
    key, data = report.layout.key, report.data_bytes
    baseline = data / (medians[0] / 1e9)
    measurement = f"{key}: plain h5py `read_direct`, ~8 MiB chunk-aligned blocks"
    report.results.append(
        Result(f"{key}_h5py_read", measurement, baseline, "B/s", context="baseline")
    )
    for workers in WORKER_COUNTS:
        speed = data / (medians[workers] / 1e9)
        report.results.append(
            Result(
                f"{key}_from_hdf5_workers_{workers}",
                f"{key}: `from_hdf5(workers={workers})`",
                speed,
                "B/s",
                ratio=speed / baseline,
                target=Target(min_ratio=MIN_RATIO),
                details={
                    "median_ns": medians[workers],
                    "child_ns": [sample["ns"] for sample in children[workers]],
                },
            )
        )
    for workers in WORKER_COUNTS:
        samples = children[workers]
        peak = max(samples, key=lambda sample: sample["peak_rss"] + sum(sample["worker_peaks"]))
        converter, worker_peaks = peak["peak_rss"], peak["worker_peaks"]
        parts = f"converter {format_bytes(converter)}"
        if worker_peaks:
            parts += " + workers " + " + ".join(format_bytes(value) for value in worker_peaks)
        if workers > 1 and len(worker_peaks) != workers:
            parts += f" ({len(worker_peaks)} of {workers} workers sampled)"
        report.results.append(
            Result(
                f"{key}_peak_rss_workers_{workers}",
                f"{key}: peak RSS of `from_hdf5(workers={workers})` process tree",
                converter + sum(worker_peaks),
                "bytes",
                target=Target(max_value=MAX_RSS_BYTES),
                context=f"{parts}; source file {format_bytes(report.file_bytes)}",
                details={
                    "converter": converter,
                    "workers": worker_peaks,
                    "converter_after_imports": peak["rss_at_start"],
                    "sampled_tree_rss": max(sample["sampled_tree_rss"] for sample in samples),
                    "ru_maxrss_self": peak["ru_maxrss_self"],
                    "ru_maxrss_children": peak["ru_maxrss_children"],
                    "source_file_bytes": report.file_bytes,
                },
            )
        )


# -- the report ------------------------------------------------------------------------------
def render(reports: Sequence[SourceReport], disk: Result) -> str:
    """The table, then the source files and the bound the disk sets on each."""
    results = [result for report in reports for result in report.results] + [disk]
    notes = [
        f"- {report.layout.key}: {report.rows:,} rows of float32{list(IMAGE_SHAPE)} + int64 "
        f"labels ({format_bytes(report.data_bytes)} of data, file "
        f"{format_bytes(report.file_bytes)}; {report.layout.description}) -> "
        f"{report.shards} shards of up to {report.shard_rows:,} rows"
        for report in reports
    ]
    for report in reports:
        read = report.results[0].value
        serial = 1 / (1 / read + 1 / disk.value)
        notes.append(
            f"- {report.layout.key}: reading at the h5py speed then writing at the disk's, one "
            f"after the other, would reach {core.format_rate(serial)} ({serial / read:.3f}x of the "
            "read)"
        )
    table = core.markdown(core.RESULT_HEAD, [result.cells() for result in results])
    return "\n\n".join(["## HDF5 -> memshard", table, "\n".join(notes)])


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the disk and every source file, print the report, optionally write JSON."""
    config = parse_args(argv)
    method = [
        f"each figure: median of {config.repeats} repeats; the h5py read and both conversions "
        "alternate within every repeat, page cache warm for the source",
        "throughput: MB/s or GB/s (powers of 10) of source data; ratio = conversion "
        "throughput / plain h5py read throughput of the same file (1.00x = as fast)",
        f"shard_bytes {format_bytes(config.shard_bytes)}",
        "before each conversion and each disk probe, memory of the output's size is touched "
        "and freed: on a VM that hands free memory back to the host (virtio-balloon free page "
        "reporting), page-cache writes into reclaimed memory run several times slower",
    ]
    rng = np.random.default_rng(core.SEED)
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard conversion benchmark", config.mode, scratch, method)
        progress("disk: timing write + fsync")
        disk = disk_result(scratch, config.quick, config.repeats)
        reports = [measure_source(config, layout, scratch, rng) for layout in LAYOUTS]
    out.add(render(reports, disk))
    for report in reports:
        for result in report.results:
            if result.met is not None:
                out.goal(result.key, result.met)
    out.record.update(
        repeats=config.repeats,
        shard_bytes=config.shard_bytes,
        sources={report.layout.key: report.to_json() for report in reports},
        disk=disk.to_json(),
    )
    return out.finish(config.json)


if __name__ == "__main__":
    sys.exit(main())
