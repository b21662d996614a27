"""Variable-length ("ragged") fields: memshard against a flat memmap + offsets pair (the
physical bound), Hugging Face ``datasets``, LMDB and HDF5 vlen, side by side in one run.

Run from the repository root, on a quiet machine::

    python -m benchmarks.ragged                  # 2M token sequences, 500k strokes (long)
    python -m benchmarks.ragged --scale 0.1      # a tenth of the rows of each workload
    python -m benchmarks.ragged --quick          # a few thousand rows, seconds (CI runs this)

Two workloads, generated from a seed: token sequences (int32, lengths lognormal of median
300, at most 8,192) and pen strokes (int16 ``(n, 3)`` points, n of median 60, at most
1,000). Each is written in every format from the same batches of 1,024 rows, its files read
into the page cache (the figures are WARM: page cache full, mappings touched), every reader
checked against the rows generated, then measured: a random single-row read (get + copy; and
the zero-copy view where a format has one), a random gather of 256 rows packed into one
values array + offsets, DataLoader throughput with 2 workers in each batching mode (memshard
against the flat pair with the same collate), and memshard's ``extend`` against ``f.write``
of the same bytes into the page cache. Every figure is the median of the repeats, the
candidates alternating within each; speed goals are judged by reading the output, never by
timed tests. The report, JSON and markdown, go to ``--out``.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

import memshard as ms

from . import core
from .compare import Effort
from .core import (
    BATCH_SIZE,
    SEED,
    Figure,
    Figures,
    Option,
    alternate,
    clean_slate,
    format_bytes,
    format_count,
    format_ns,
    format_rate,
    markdown,
    progress,
    warm_page_cache,
)
from .ragged_data import (
    FULL_STROKE_ROWS,
    FULL_TOKEN_ROWS,
    QUICK_STROKE_ROWS,
    QUICK_TOKEN_ROWS,
    WRITE_ROWS,
    Packed,
    RaggedWorkload,
    same_rows,
    strokes,
    tokens,
)
from .ragged_formats import (
    FORMATS,
    RaggedFormat,
    RaggedReader,
    ViewReader,
)
from .ragged_loaders import MODES, NUM_WORKERS, WARM_BATCHES, measure_loaders, memshard_path
from .system import EVICTION_TOLERANCE, resident_bytes

FLAT, MEMSHARD, HF, LMDB, HDF5 = (fmt.name for fmt in FORMATS)
#: Reads of a timed single-row run at most, and gathers of a timed gather run.
ROW_ACCESSES = 100_000
GATHERS_PER_RUN = 200
#: Reads and gathers of the untimed run that sizes the timed ones.
ROW_PROBE = 1000
GATHER_PROBE = 5
#: Rows of each reader's correctness check.
CHECK_ROWS = 64
APPEND = "memshard extend"
PLAIN_WRITE = "f.write"
APPEND_CLOSE = "memshard extend + close"
PLAIN_WRITE_FSYNC = "f.write + fsync"


@dataclass(frozen=True)
class Goal:
    """A goal on memshard's figure of ``measurement`` against ``baseline``'s: a speed ratio
    (memshard's speed over the baseline's) of at least ``min_ratio``."""

    measurement: str
    baseline: str
    min_ratio: float
    text: str


GOALS = (
    Goal("row", FLAT, 1 / 1.5, "single-row read within 1.5x of flat"),
    Goal("gather", FLAT, 0.8, "256-row gather >= 0.8x flat"),
    Goal("gather", HF, 3.0, "256-row gather >= 3x HF datasets"),
    Goal("gather", HDF5, 5.0, "256-row gather >= 5x HDF5 vlen"),
    Goal("loader_packed", FLAT, 0.9, "DataLoader, 2 workers, packed >= 0.9x flat"),
    Goal("append", PLAIN_WRITE, 0.7, "append >= 0.7x f.write (page cache)"),
)


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    rows_tokens: int
    rows_strokes: int
    #: The command line's ``--scale`` (``None``: not given).
    scale: float | None
    run_seconds: float
    loader_batches: int
    out: str

    @property
    def workloads(self) -> list[RaggedWorkload]:
        """The two workloads; shards of memshard's default size, or in quick mode the same
        fraction of the data as in a full run (so that quick mode crosses shard boundaries)."""
        token_rows, stroke_rows = self.rows_tokens, self.rows_strokes
        return [
            tokens(token_rows, core.shard_bytes_for(token_rows, FULL_TOKEN_ROWS, self.quick)),
            strokes(stroke_rows, core.shard_bytes_for(stroke_rows, FULL_STROKE_ROWS, self.quick)),
        ]

    @property
    def effort(self) -> Effort:
        """Repeats and the seconds one timed run aims at."""
        return Effort(self.repeats, self.repeats, self.run_seconds)


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line: rows are ``--rows-*`` if given, else ``--scale`` times the full
    counts, else the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.ragged",
        __doc__,
        Option("--scale", float, "fraction of the full rows of each workload", None, None),
        Option("--rows-tokens", int, f"token sequences (full {FULL_TOKEN_ROWS:,}, quick "
               f"{QUICK_TOKEN_ROWS:,})", None, None),
        Option("--rows-strokes", int, f"stroke arrays (full {FULL_STROKE_ROWS:,}, quick "
               f"{QUICK_STROKE_ROWS:,})", None, None),
        Option("--run-seconds", float, "seconds each timed run aims at", 0.5, 0.02),
        Option("--loader-batches", int, "batches per timed DataLoader run", 1000, 4),
        repeats=(5, 2),
    )  # fmt: skip
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    args = options.parse(argv)
    scale = args["scale"]
    quick = args["mode"] == "quick"
    for key, full, small in (
        ("rows_tokens", FULL_TOKEN_ROWS, QUICK_TOKEN_ROWS),
        ("rows_strokes", FULL_STROKE_ROWS, QUICK_STROKE_ROWS),
    ):
        if args[key] is None:
            args[key] = max(BATCH_SIZE, round(scale * full)) if scale else small if quick else full
    return Config(**args)


# -- writing and reading back -----------------------------------------------------------------
def build(formats: Sequence[RaggedFormat], batches: Sequence[Packed]) -> dict[str, Any]:
    """Write every format (untimed beyond one pass: context, not a goal); seconds and bytes."""
    built = {}
    for fmt in formats:
        progress(f"{fmt.workload.name}: writing {fmt.name}")
        start = time.perf_counter()
        fmt.write(batches)
        seconds = time.perf_counter() - start
        size = sum(os.path.getsize(path) for path in fmt.files())
        built[fmt.name] = {"seconds": seconds, "bytes": size}
    return built


def open_warm(formats: Sequence[RaggedFormat]) -> dict[str, RaggedReader]:
    """A reader of every format, its files read into the page cache first; the mapping
    readers (flat, memshard) then touch every row, so no timed read maps a page."""
    readers = {}
    for fmt in formats:
        warm_page_cache(fmt.files())
        reader = fmt.open()
        if isinstance(reader, ViewReader):
            step = max(1, fmt.workload.rows // 64)
            for start in range(0, fmt.workload.rows, step):
                stop = min(fmt.workload.rows, start + step)
                reader.gather(np.arange(start, stop)).values.sum()
        readers[fmt.name] = reader
    return readers


def cached_fraction(fmt: RaggedFormat) -> float:
    """The fraction of ``fmt``'s file bytes in the page cache (``mincore``)."""
    resident, total = resident_bytes(fmt.files())
    return resident / total if total else 1.0


def check_readers(
    readers: dict[str, RaggedReader], data: Packed, out: core.Report, workload: str
) -> None:
    """Untimed: every reader returns the rows generated, by ``row``, ``view`` and ``gather``
    (random rows, repeats included, and an empty gather)."""
    rng = np.random.default_rng([SEED, 2])
    indices = rng.integers(0, len(data), CHECK_ROWS)
    indices[-1] = indices[0]
    for name, reader in readers.items():
        ok = same_rows(reader.gather(indices), data.take(indices))
        ok = ok and same_rows(reader.gather(indices[:0]), data.take(indices[:0]))
        for index in indices[:8].tolist():
            row = reader.row(index)
            ok = ok and row.dtype == data.values.dtype and np.array_equal(row, data.row(index))
            if isinstance(reader, ViewReader):
                ok = ok and np.array_equal(reader.view(index), data.row(index))
        out.check(f"{workload}_{name}_rows".replace(" ", "_"), bool(ok))


# -- the measurements -------------------------------------------------------------------------
def measure_paired(
    names: Sequence[str],
    work: Callable[[str, int, int], object],
    probe: int,
    limit: int,
    effort: Effort,
) -> Figures:
    """Nanoseconds per unit of each name's ``work(name, units, repeat)``, alternating.

    ``units`` (at most ``limit``) is what lasts about ``effort.run_seconds``, judged by timing
    ``probe`` units once (also an untimed warm-up); flat and memshard do the same units, the
    larger of their two counts, so that their figures cover the very same reads.
    """
    counts = {}
    for name in names:
        per_unit = max(core.timed(partial(work, name, probe, -1)), 1) / probe
        counts[name] = int(min(limit, max(1, effort.run_seconds * 1e9 / per_unit)))
    paired = max(counts.get(FLAT, 1), counts.get(MEMSHARD, 1))
    counts.update({name: paired for name in (FLAT, MEMSHARD) if name in counts})

    def run(name: str, repeat: int) -> float:
        return core.timed(partial(work, name, counts[name], repeat)) / counts[name]

    samples = alternate(names, effort.repeats, run)
    return {name: Figure.of(values, counts[name]) for name, values in samples.items()}


def measure_rows(
    readers: dict[str, RaggedReader], rows: int, effort: Effort, views: bool
) -> Figures:
    """Nanoseconds of one read of a random row: ``row(i)`` (get + copy) of every reader, or
    with ``views`` the zero-copy ``view(i)`` of those that have one."""
    rng = np.random.default_rng([SEED, 3])
    indices = rng.integers(0, rows, size=(effort.repeats + 1, ROW_ACCESSES)).tolist()
    chosen = {
        name: (reader.view if views else reader.row)  # type: ignore[attr-defined]
        for name, reader in readers.items()
        if not views or isinstance(reader, ViewReader)
    }

    def access(name: str, count: int, repeat: int) -> None:
        read = chosen[name]
        for index in indices[repeat + 1][:count]:
            read(index)

    return measure_paired(list(chosen), access, ROW_PROBE, ROW_ACCESSES, effort)


def measure_gathers(readers: dict[str, RaggedReader], rows: int, effort: Effort) -> Figures:
    """Nanoseconds of one gather of 256 random rows (unsorted, repeats allowed) packed."""
    rng = np.random.default_rng([SEED, 4])
    indices = rng.integers(0, rows, size=(effort.repeats + 1, GATHERS_PER_RUN, BATCH_SIZE))

    def gather(name: str, count: int, repeat: int) -> None:
        reader = readers[name]
        for chosen in indices[repeat + 1][:count]:
            reader.gather(chosen)

    return measure_paired(list(readers), gather, GATHER_PROBE, GATHERS_PER_RUN, effort)


def measure_append(
    workload: RaggedWorkload, batches: Sequence[Packed], repeats: int, scratch: str
) -> dict[str, Figure]:
    """Bytes per second of memshard's ``extend`` of every batch against ``f.write`` of the same
    values and offsets to two files, each up to its last batch (the page cache; memshard
    syncs a sealed shard on its worker thread) and up to ``close()`` (memshard commits) or
    ``fsync`` + close; the two alternate every repeat. Before each pass the earlier outputs are
    removed, dirty pages flushed and fresh memory touched (memory the host reclaimed is slow
    on first touch)."""
    dataset = os.path.join(scratch, "append-memshard")
    plain = os.path.join(scratch, "append-plain")
    nbytes = sum(batch.values.nbytes + batch.offsets.nbytes - 8 for batch in batches) + 8
    name = workload.name

    def memshard_pass() -> tuple[int, int]:
        clean_slate([dataset, plain], nbytes)
        appender = ms.create(dataset, workload.fields, shard_bytes=workload.shard_bytes)
        os.sync()  # create()'s own commits are not part of an append
        start = time.perf_counter_ns()
        for batch in batches:
            appender.extend({name: {"values": batch.values, "offsets": batch.offsets}})
        written = time.perf_counter_ns()
        appender.close()
        return written - start, time.perf_counter_ns() - start

    def plain_pass() -> tuple[int, int]:
        clean_slate([dataset, plain], nbytes)
        os.makedirs(plain)
        with (
            open(os.path.join(plain, "values.bin"), "wb") as values,
            open(os.path.join(plain, "offsets.idx"), "wb") as offsets,
        ):
            os.sync()
            start = time.perf_counter_ns()
            offsets.write(np.zeros(1, dtype=np.int64).data)
            end = 0
            for batch in batches:
                values.write(batch.values.data)
                offsets.write((batch.offsets[1:] + end).data)
                end += int(batch.offsets[-1])
            values.flush()
            offsets.flush()
            written = time.perf_counter_ns()
            os.fsync(values.fileno())
            os.fsync(offsets.fileno())
        return written - start, time.perf_counter_ns() - start

    passes = {APPEND: memshard_pass, PLAIN_WRITE: plain_pass}
    times: dict[str, list[tuple[int, int]]] = {key: [] for key in passes}

    def run(key: str, repeat: int) -> float:
        gc.disable()
        try:
            times[key].append(passes[key]())
        finally:
            gc.enable()
        return 0.0

    alternate(list(passes), repeats, run)
    clean_slate([dataset, plain], 0)

    def rates(key: str, part: int) -> Figure:
        return Figure.of([nbytes / (sample[part] / 1e9) for sample in times[key]], len(batches))

    return {
        APPEND: rates(APPEND, 0),
        PLAIN_WRITE: rates(PLAIN_WRITE, 0),
        APPEND_CLOSE: rates(APPEND, 1),
        PLAIN_WRITE_FSYNC: rates(PLAIN_WRITE, 1),
        "bytes": Figure.of([float(nbytes)]),
    }


def run_workload(
    config: Config, workload: RaggedWorkload, scratch: str, out: core.Report
) -> dict[str, Any]:
    """Generate, write, check and measure one workload; its record (the formats removed)."""
    progress(f"{workload.name}: generating {workload.rows:,} rows")
    data = workload.generate(SEED)
    batches = data.batches(WRITE_ROWS)
    formats = [fmt(os.path.join(scratch, fmt.__name__), workload) for fmt in FORMATS]
    try:
        built = build(formats, batches)
        readers = open_warm(formats)
        cached = {fmt.name: cached_fraction(fmt) for fmt in formats}
        check_readers(readers, data, out, workload.name)
        effort = config.effort
        progress(f"{workload.name}: single rows and gathers, {effort.repeats} repeats")
        rows = measure_rows(readers, workload.rows, effort, views=False)
        views = measure_rows(readers, workload.rows, effort, views=True)
        gathers = measure_gathers(readers, workload.rows, effort)
        cached = {fmt.name: min(cached[fmt.name], cached_fraction(fmt)) for fmt in formats}
        for reader in readers.values():
            reader.close()
        readers.clear()
        gc.collect()
        progress(f"{workload.name}: DataLoaders, {len(MODES) * 2} x {config.repeats} runs")
        roots = {fmt.name: fmt.root for fmt in formats if fmt.name in (FLAT, MEMSHARD)}
        loaders, same = measure_loaders(
            roots, workload, data.lengths, config.loader_batches, config.repeats
        )
        out.check(f"{workload.name}_loaders_agree", same)
    finally:
        for fmt in formats:
            fmt.remove()
    progress(f"{workload.name}: extend against f.write, {config.repeats} repeats")
    append = measure_append(workload, batches, config.repeats, scratch)
    return {
        "workload": {**asdict(workload), "description": workload.describe(data)},
        "elements": len(data.values),
        "value_bytes": int(data.values.nbytes),
        "built": built,
        "cached": cached,
        "row": rows,
        "view": views,
        "gather": gathers,
        "gather_elements": float(data.lengths.mean() * BATCH_SIZE),
        "loaders": loaders,
        "append": append,
    }


# -- the report -------------------------------------------------------------------------------
def speed_ratio(measurement: str, record: dict[str, Any], baseline: str) -> float:
    """memshard's speed over ``baseline``'s in ``measurement`` (times: the inverse ratio)."""
    if measurement in ("row", "gather"):
        figures = record[measurement]
        return float(figures[baseline].value / figures[MEMSHARD].value)
    if measurement == "append":
        figures = record["append"]
        return float(figures[APPEND].value / figures[baseline].value)
    mode = measurement.removeprefix("loader_")
    figures = record["loaders"][mode]
    return float(figures[MEMSHARD].value / figures[baseline].value)


def reads_table(record: dict[str, Any]) -> str:
    """Single rows, views and gathers of every format, with memshard's speed against each."""
    gather_elements = record["gather_elements"]
    rows = []
    for name in (fmt.name for fmt in FORMATS):
        built = record["built"][name]
        row, gather = record["row"][name], record["gather"][name]
        view = record["view"].get(name)
        rate = gather_elements / (gather.value / 1e9)
        rows.append(
            [
                name,
                format_bytes(built["bytes"]),
                core.format_duration(built["seconds"]),
                format_ns(row.value),
                format_ns(view.value) if view else "-",
                format_ns(gather.value),
                f"{format_count(rate)}/s",
                "-" if name == MEMSHARD else f"{row.value / record['row'][MEMSHARD].value:.2f}x",
                "-"
                if name == MEMSHARD
                else f"{gather.value / record['gather'][MEMSHARD].value:.2f}x",
            ]
        )
    head = [
        "format", "on disk", "write (once)", "single row, get + copy", "single row, view",
        "gather of 256", "elements/s in gathers", "memshard row speed vs this",
        "memshard gather speed vs this",
    ]  # fmt: skip
    return markdown(head, rows)


def cache_warning(record: dict[str, Any]) -> str:
    """A warning if some format's files were not all in the page cache before and after its
    reads were measured (a dataset larger than the free memory), else nothing."""
    short = {name: f for name, f in record["cached"].items() if f < 1 - EVICTION_TOLERANCE}
    if not short:
        return ""
    listed = ", ".join(f"{name} {fraction:.0%}" for name, fraction in short.items())
    return (
        f"WARNING: NOT WARM: only part of these formats' files was in the page cache around "
        f"their reads ({listed}); their figures include reads from disk. Run with a smaller "
        "--scale on this machine."
    )


def loaders_table(record: dict[str, Any]) -> str:
    """Elements per second of each mode's loaders."""
    rows = []
    for mode in MODES:
        figures = record["loaders"][mode]
        memshard, flat = figures[MEMSHARD].value, figures[FLAT].value
        rows.append(
            [f"`{mode}`", f"{format_count(memshard)}/s", f"{format_count(flat)}/s",
             f"{memshard / flat:.3f}x"]
        )  # fmt: skip
    return markdown(["mode", "memshard", "flat, same collate", "memshard / flat"], rows)


def append_table(record: dict[str, Any]) -> str:
    """memshard's extend against f.write, to the last batch and to close / fsync."""
    figures = record["append"]
    rows = [
        [APPEND, format_rate(figures[APPEND].value), PLAIN_WRITE,
         format_rate(figures[PLAIN_WRITE].value),
         f"{figures[APPEND].value / figures[PLAIN_WRITE].value:.3f}x"],
        [APPEND_CLOSE, format_rate(figures[APPEND_CLOSE].value), PLAIN_WRITE_FSYNC,
         format_rate(figures[PLAIN_WRITE_FSYNC].value),
         f"{figures[APPEND_CLOSE].value / figures[PLAIN_WRITE_FSYNC].value:.3f}x"],
    ]  # fmt: skip
    return markdown(["memshard", "rate", "baseline", "rate", "memshard / baseline"], rows)


def judge(records: dict[str, dict[str, Any]], out: core.Report) -> list[dict[str, Any]]:
    """Every goal on every workload: the ratio, and whether it is met (recorded in ``out``)."""
    results = []
    for workload, record in records.items():
        for goal in GOALS:
            ratio = speed_ratio(goal.measurement, record, goal.baseline)
            key = f"{workload}_{goal.measurement}_vs_{goal.baseline}".replace(" ", "_")
            met = out.goal(key, ratio >= goal.min_ratio)
            results.append(
                {"workload": workload, **asdict(goal), "ratio": ratio, "met": met}
            )  # fmt: skip
    return results


def goals_table(results: Sequence[dict[str, Any]]) -> str:
    """PASS or MISS for each goal on each workload."""
    rows = [
        [result["text"], result["workload"], f"{result['ratio']:.2f}x",
         f">= {result['min_ratio']:.2f}x", "PASS" if result["met"] else "**MISS**"]
        for result in results
    ]  # fmt: skip
    return markdown(["goal", "workload", "memshard speed / baseline", "needed", "result"], rows)


def notes(config: Config) -> str:
    """How each figure is measured."""
    return "\n".join(
        [
            "- WARM: every format's files were read into the page cache before its reads, and "
            "the mapping readers (flat, memshard) touched every row; nothing here was read "
            "from disk.",
            "- Single row: `row(i)` at random `i` returns a copy the caller can keep (memshard "
            "and flat: `np.array` of the view; LMDB: `np.frombuffer(...).copy()`; HF, HDF5: "
            "the array they return); the view column is memshard's `col[i]` and the flat "
            "`values[o[i]:o[i + 1]]`, no copy. Time per read over a run of many reads.",
            f"- Gather: {BATCH_SIZE} random rows (unsorted, repeats allowed) into one packed "
            "values array + int64 offsets in request order (memshard: `col[indices]`, a "
            "`Ragged`). Elements/s: the mean row length times 256 over the median time.",
            f"- DataLoader: {NUM_WORKERS} forked persistent workers, batches of {BATCH_SIZE}, "
            f"{config.loader_batches} batches per run of a fresh random order shared by all "
            f"loaders, after an untimed pass of {WARM_BATCHES} batches (every worker starts and "
            "builds a batch) that checks that both loaders of a mode return the same tensors. "
            f"memshard: {memshard_path()}. Flat: a batched `Dataset` "
            "over the flat pair with the same `mt.ragged_tensors` collate and sharing "
            "strategy. Elements/s: the elements of the rows of the run over its time.",
            f"- Append: the whole workload in `extend` calls of {WRITE_ROWS:,} rows (packed "
            "values + offsets) against `f.write` of the same values and offsets to two files; "
            "rates in bytes of values + offsets per second, to the last batch (the page "
            "cache) and to `close()` / `fsync`.",
            f"- Every time is the median of {config.repeats} repeats, the candidates "
            "alternating within each, a different one first each time; each timed run lasts "
            f"about {config.run_seconds:g} s (fewer reads for a slow format); garbage "
            "collection paused during each.",
        ]
    )


def command(config: Config) -> str:
    """The command line that runs this configuration again (the defaults of its mode aside).

    Example:
        >>> command(parse_args(["--scale", "0.25", "--repeats", "3"]))
        'python -m benchmarks.ragged --scale 0.25 --repeats 3'
    """
    default = parse_args(["--quick"] if config.quick else [])
    words = ["python -m benchmarks.ragged", "--quick" if config.quick else ""]
    if config.scale is not None:
        words.append(f"--scale {config.scale:g}")
    for option in ("rows_tokens", "rows_strokes", "repeats", "run_seconds", "loader_batches"):
        value = getattr(config, option)
        implied = option.startswith("rows_") and config.scale is not None
        if value != getattr(default, option) and not implied:
            words.append(f"--{option.replace('_', '-')} {value:g}")
    return " ".join(word for word in words if word)


def method(config: Config) -> list[str]:
    """The header lines of the report."""
    rows = f"{config.rows_tokens:,} token sequences, {config.rows_strokes:,} stroke arrays"
    full = f"{FULL_TOKEN_ROWS:,} and {FULL_STROKE_ROWS:,}"
    return [
        f"command: `{command(config)}`",
        f"rows: {rows} (a full run has {full})",
        "formats: " + "; ".join(f"{fmt.name}: {fmt.description}" for fmt in FORMATS),
        "page cache: WARM for every read (see the notes)",
        "ratios: memshard's speed over the other's (above 1: memshard is faster)",
    ]


def to_json(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every record with its figures as plain data."""

    def plain(value: Any) -> Any:
        if isinstance(value, Figure):
            return asdict(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(records)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both workloads, print the report and write it, as markdown and JSON."""
    config = parse_args(argv)
    records: dict[str, dict[str, Any]] = {}
    with core.scratch_directory(config.dir) as scratch:
        out = core.Report("memshard ragged fields", config.mode, scratch, method(config))
        for workload in config.workloads:
            record = run_workload(config, workload, scratch, out)
            records[workload.name] = record
            out.add(
                f"## {workload.name}: {record['workload']['description']}",
                reads_table(record),
                cache_warning(record),
                f"DataLoader, {NUM_WORKERS} workers, elements ({workload.element}s) per second:",
                loaders_table(record),
                "Append (page cache; and to close / fsync):",
                append_table(record),
            )
    results = judge(records, out)
    out.add("## Goals", goals_table(results))
    out.add("## How each figure is measured", notes(config))
    out.record.update(
        command=command(config),
        rows={"tokens": config.rows_tokens, "strokes": config.rows_strokes},
        repeats=config.repeats,
        batch_size=BATCH_SIZE,
        write_rows=WRITE_ROWS,
        num_workers=NUM_WORKERS,
        loader_batches=config.loader_batches,
        page_cache="warm",
        workloads=to_json(records),
        goals=results,
    )
    os.makedirs(config.out, exist_ok=True)
    json_path = os.path.join(config.out, "ragged.json")
    code = out.finish(json_path, os.path.join(config.out, "ragged.md"))
    if config.json is not None and os.path.abspath(config.json) != os.path.abspath(json_path):
        shutil.copyfile(json_path, config.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
