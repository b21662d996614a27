"""The report of :mod:`benchmarks.codecs`: its tables, and the choice the figures support.

The choice is made by rules stated in the report, from this run's figures only: in each family
(zstd, lz4, blosc) every library is compared on the codecs that more than one library offers
(its fastest eligible candidate for each), a candidate being eligible when its library's
bounded decompression call survived the bombs without crashing or allocating (the call itself,
before any check memshard adds) and the GIL probe (:mod:`benchmarks.gil_probe`) found that its
decompression releases the GIL (a share of at least :data:`MIN_SHARE`). Of the eligible
libraries, the one whose candidates decompress fastest (geometric mean over every workload and
block size) is chosen.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .codec_candidates import FAMILIES, Candidate
from .codec_hostile import BOMB, BOUND, KINDS, LYING
from .core import Report, format_bytes, format_ns, format_rate, markdown

if TYPE_CHECKING:
    from .codecs import Blocking, Config, Measured, Workload

#: A GIL probe share (:func:`benchmarks.gil_probe.main_share`) of at least this: the call
#: releases the GIL for (nearly) all its time; below :data:`HELD_SHARE`, it holds it (a call
#: that holds it throughout leaves the other thread only the hand-offs at its edges).
MIN_SHARE = 0.8
HELD_SHARE = 0.4
#: A call whose peak resident set grew by more than this fraction of the bomb allocated it.
ALLOCATED_FRACTION = 0.25
#: Characters of an error message a table shows.
MESSAGE_CHARS = 90

Result = dict[str, Any]


def geomean(values: Iterable[float]) -> float:
    """The geometric mean of ``values``.

    Example:
        >>> round(geomean([1.0, 4.0]), 6)
        2.0
    """
    logs = [math.log(value) for value in values]
    return math.exp(sum(logs) / len(logs))


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    """A candidate's description, without its functions."""
    keys = ("name", "family", "key", "library", "params", "into", "decompress_call", "api", "note")
    return {key: getattr(candidate, key) for key in keys}


# -- workloads and candidates ----------------------------------------------------------------
def workloads_table(
    workloads: Sequence[Workload], mib: float, blockings: Callable[[int], list[Blocking]]
) -> str:
    """Each workload: its rows, their size, and the block sizes measured."""
    rows = []
    for workload in workloads:
        count = workload.rows_for(mib * (1 << 20))
        sizes = "; ".join(b.describe(workload.row_bytes) for b in blockings(workload.row_bytes))
        shape = f"{workload.dtype}{list(workload.shape)}"
        rows.append([workload.name, workload.description, shape, f"{count:,}", sizes])
    return markdown(["workload", "what", "row", "rows", "blocks measured"], rows)


def candidates_table(found: Sequence[Candidate]) -> str:
    """Each candidate: library, parameters, whether it decompresses into the output, how."""
    rows = [
        [
            c.name, c.library, c.params, "yes" if c.into else "no (copy)",
            f"`{c.decompress_call}`", c.note,
        ]
        for c in found
    ]  # fmt: skip
    head = ["candidate", "library", "parameters", "into out", "decompression as timed", "note"]
    return markdown(head, rows)


# -- speed -----------------------------------------------------------------------------------
def speed_table(results: Sequence[Result]) -> str:
    """One workload and block size: every candidate's figures."""
    rows = [
        [
            r["candidate"], f"{r['ratio']:.2f}x", format_rate(r["compress_bytes_per_s"]),
            format_rate(r["decompress_bytes_per_s"]), format_ns(r["row_ns"]),
            format_ns(r["gather_1_thread_ns"]), f"{r['speedup_2_threads']:.2f}x",
        ]
        for r in results
    ]  # fmt: skip
    head = [
        "candidate", "ratio", "compress", "decompress", "one row", "gather (1 thread)",
        "2 threads: speed-up",
    ]  # fmt: skip
    return markdown(head, rows)


def speed_sections(results: Sequence[Result], workloads: Sequence[Workload]) -> list[str]:
    """A heading and table for each workload and block size."""
    sections = []
    for workload in workloads:
        mine = [r for r in results if r["workload"] == workload.name]
        for rows in sorted({r["rows_per_block"] for r in mine}):
            these = [r for r in mine if r["rows_per_block"] == rows]
            size, count = format_bytes(these[0]["block_bytes"]), these[0]["blocks"]
            plural = "s" if rows > 1 else ""
            heading = f"### {workload.name}: {count:,} blocks of {rows} row{plural} ({size})"
            sections.append(f"{heading}\n\n{speed_table(these)}")
    return sections


def largest_blocks(results: Sequence[Result], name: str) -> list[Result]:
    """``name``'s figures at the largest block size of each workload."""
    mine = [r for r in results if r["candidate"] == name]
    largest = {r["workload"]: r["rows_per_block"] for r in sorted(mine, key=row_count)}
    return [r for r in mine if r["rows_per_block"] == largest[r["workload"]]]


def row_count(result: Result) -> int:
    """The rows per block of ``result`` (a sort key)."""
    return int(result["rows_per_block"])


def median_at_largest(results: Sequence[Result], name: str, key: str) -> float:
    """The median of ``key`` over ``name``'s figures at each workload's largest blocks."""
    return float(statistics.median(r[key] for r in largest_blocks(results, name)))


# -- threads ---------------------------------------------------------------------------------
def gil_verdict(share: float) -> str:
    """``yes``, ``partly`` or ``NO``: how much of its time a call releases the GIL.

    Example:
        >>> gil_verdict(1.02), gil_verdict(0.55), gil_verdict(0.27)
        ('yes', 'partly', 'NO')
    """
    if share >= MIN_SHARE:
        return "yes"
    return "partly" if share >= HELD_SHARE else "NO"


def speedup_cells(records: Sequence[Result], workloads: Sequence[str]) -> list[str]:
    """Per workload, the 2-thread speed-ups of ``records`` by block size; and their median
    at each workload's largest blocks."""
    cells = []
    for workload in workloads:
        these = sorted((r for r in records if r["workload"] == workload), key=row_count)
        cells.append(" / ".join(f"{r['speedup_2_threads']:.2f}x" for r in these))
    largest = {r["workload"]: r["rows_per_block"] for r in sorted(records, key=row_count)}
    at_largest = [
        r["speedup_2_threads"] for r in records if r["rows_per_block"] == largest[r["workload"]]
    ]
    return [*cells, f"{statistics.median(at_largest):.2f}x"]


def threads_table(
    found: Sequence[Candidate],
    results: Sequence[Result],
    gil: Sequence[Result],
    references: Sequence[Result],
) -> str:
    """Each candidate's GIL probe, its 2-thread speed-up at each block size of each workload
    and the median at the largest blocks; first, the same-run reference (SHA-256 of the same
    blocks: what two threads that never wait for each other get on this machine now)."""
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    rows = []
    if references:
        rows.append(["reference: hashlib.sha256", "-", "-", "yes"])
        rows[0] += speedup_cells(references, workloads)
    probes = {record["candidate"]: record for record in gil}
    for candidate in found:
        mine = [r for r in results if r["candidate"] == candidate.name]
        probe = probes.get(candidate.name, {})
        if mine and "share" in probe:
            share = probe["share"]
            rows.append([
                candidate.name, f"{share:.2f}", format_ns(probe["call_ns"]), gil_verdict(share),
                *speedup_cells(mine, workloads),
            ])  # fmt: skip
    head = [
        "candidate", "GIL probe share", "probe call (CPU)", "releases the GIL",
        *(f"{w}: speed-up by block size" for w in workloads), "speed-up, largest blocks",
    ]  # fmt: skip
    return markdown(head, rows)


# -- hostile frames --------------------------------------------------------------------------
def verdict(record: Result, bomb_bytes: int) -> str:
    """``CRASHED``, ``ALLOCATED`` (its resident set grew by a large part of the bomb),
    ``raised`` (an exception) or ``returned`` (normally)."""
    if record["outcome"] == "crashed":
        return "CRASHED"
    if record.get("VmHWM", 0) > ALLOCATED_FRACTION * bomb_bytes:
        return f"ALLOCATED {format_bytes(record['VmHWM'])}"
    return str(record["outcome"])


def hostile_table(hostile: Sequence[Result], bomb_bytes: int) -> str:
    """Every trial: call, frame, outcome, memory growth, time and message."""
    rows = []
    for record in hostile:
        seconds = record["seconds"]
        rows.append([
            f"`{record['call']}`", record["kind"], f"{record['frame_bytes']:,}",
            verdict(record, bomb_bytes),
            format_bytes(record["VmHWM"]) if "VmHWM" in record else "-",
            format_bytes(record["VmPeak"]) if "VmPeak" in record else "-",
            "-" if seconds is None else format_ns(seconds * 1e9),
            record["message"][:MESSAGE_CHARS].replace("|", "/"),
        ])  # fmt: skip
    head = [
        "call", "frame", "frame bytes", "outcome", "VmHWM growth", "VmPeak growth", "time",
        "what it said",
    ]  # fmt: skip
    return markdown(head, rows)


def hostile_summary(hostile: Sequence[Result], bomb_bytes: int) -> str:
    """Each bounded call against each kind of frame, in one line."""
    calls = list(dict.fromkeys(r["api"] for r in hostile if r["bounded"]))
    rows = []
    for api in calls:
        by_kind = {r["kind"]: r for r in hostile if r["api"] == api}
        cells = [verdict(by_kind[kind], bomb_bytes) if kind in by_kind else "-" for kind in KINDS]
        rows.append([api, *cells])
    return markdown(["bounded call", *KINDS], rows)


def api_safe(hostile: Sequence[Result], api: str, bomb_bytes: int) -> bool | None:
    """Whether the call ``api`` met every bomb (honest and lying) without crashing or
    allocating (``None``: it met none)."""
    records = [r for r in hostile if r["api"] == api and r["kind"] in (BOMB, LYING)]
    if not records:
        return None
    return all(verdict(r, bomb_bytes) in ("raised", "returned") for r in records)


# -- the choice ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Standing:
    """One candidate's figures over every workload and block size."""

    candidate: Candidate
    decompress: float
    compress: float
    ratio: float
    row_ns: float
    speedup: float
    gil_share: float | None
    safe: bool | None

    @property
    def releases_gil(self) -> bool:
        """Whether the GIL probe found that its decompression releases the GIL."""
        return self.gil_share is not None and self.gil_share >= MIN_SHARE

    @property
    def eligible(self) -> bool:
        """Whether its bounded call is safe and it releases the GIL."""
        return bool(self.safe) and self.releases_gil


def standings(
    found: Sequence[Candidate],
    results: Sequence[Result],
    gil: Sequence[Result],
    hostile: Sequence[Result],
    bomb_bytes: int,
) -> dict[str, Standing]:
    """Every measured candidate's :class:`Standing`, by name."""
    shares = {r["candidate"]: float(r["share"]) for r in gil if "share" in r}
    found_standings = {}
    for candidate in found:
        mine = [r for r in results if r["candidate"] == candidate.name]
        if not mine:
            continue
        found_standings[candidate.name] = Standing(
            candidate,
            geomean(r["decompress_bytes_per_s"] for r in mine),
            geomean(r["compress_bytes_per_s"] for r in mine),
            geomean(r["ratio"] for r in mine),
            statistics.median(r["row_ns"] for r in mine),
            median_at_largest(results, candidate.name, "speedup_2_threads"),
            shares.get(candidate.name),
            api_safe(hostile, candidate.api, bomb_bytes),
        )
    return found_standings


@dataclass(frozen=True)
class LibraryRow:
    """One library in one family: its best candidate for each compared codec."""

    family: str
    library: str
    picks: tuple[Standing, ...]

    @property
    def eligible(self) -> bool:
        """Whether every pick is eligible."""
        return all(pick.eligible for pick in self.picks)

    def mean(self, attribute: str) -> float:
        """The geometric mean of ``attribute`` over the picks."""
        return geomean(getattr(pick, attribute) for pick in self.picks)

    def shares(self) -> str:
        """The picks' GIL probe shares."""
        return ", ".join("-" if p.gil_share is None else f"{p.gil_share:.2f}" for p in self.picks)


def library_rows(standing: dict[str, Standing]) -> list[LibraryRow]:
    """Each family's libraries, compared on the codecs (keys) more than one of them offers
    (all of its keys if only one library is installed), each by its fastest eligible
    candidate of the key."""
    rows = []
    for family in FAMILIES:
        mine = [s for s in standing.values() if s.candidate.family == family]
        libraries = list(dict.fromkeys(s.candidate.library for s in mine))
        keys_of = {
            library: {s.candidate.key for s in mine if s.candidate.library == library}
            for library in libraries
        }
        every_key = set().union(*keys_of.values())
        counts = {key: sum(key in keys for keys in keys_of.values()) for key in every_key}
        shared = sorted(key for key, count in counts.items() if count > 1 or len(libraries) == 1)
        for library in libraries:
            picks = []
            for key in shared:
                options = [
                    s for s in mine if s.candidate.library == library and s.candidate.key == key
                ]
                # No eligible one: a candidate that releases the GIL fails on fewer counts.
                pool = (
                    [s for s in options if s.eligible]
                    or [s for s in options if s.releases_gil]
                    or options
                )
                picks.append(max(pool, key=lambda s: s.decompress))
            rows.append(LibraryRow(family, library, tuple(picks)))
    return rows


def chosen(rows: Sequence[LibraryRow], family: str) -> LibraryRow | None:
    """The family's eligible library that decompresses fastest (any library if none is)."""
    mine = [row for row in rows if row.family == family]
    pool = [row for row in mine if row.eligible] or mine
    return max(pool, key=lambda row: row.mean("decompress"), default=None)


def library_table(rows: Sequence[LibraryRow]) -> str:
    """Each family's libraries side by side, the chosen one marked."""
    safety = {True: "yes", False: "NO", None: "not tried"}
    table = []
    for row in rows:
        speedup = statistics.median(pick.speedup for pick in row.picks)
        table.append([
            row.family, row.library, ", ".join(pick.candidate.name for pick in row.picks),
            format_rate(row.mean("decompress")), format_rate(row.mean("compress")),
            f"{row.mean('ratio'):.2f}x", format_ns(statistics.median(p.row_ns for p in row.picks)),
            row.shares(), f"{speedup:.2f}x", ", ".join(safety[pick.safe] for pick in row.picks),
            "yes" if all(pick.candidate.into for pick in row.picks) else "no",
            "**chosen**" if chosen(rows, row.family) is row else "",
        ])  # fmt: skip
    head = [
        "family", "library", "compared (its fastest eligible candidate per codec)", "decompress",
        "compress", "ratio", "one row", "GIL probe share", "2 threads: speed-up",
        "bounded call safe", "into out", "",
    ]  # fmt: skip
    return markdown(head, table)


def find(results: Sequence[Result], name: str, workload: str) -> Result | None:
    """``name``'s figures on ``workload`` at its smallest blocks (``None``: not measured)."""
    mine = [r for r in results if r["candidate"] == name and r["workload"] == workload]
    return min(mine, key=row_count, default=None)


def duties(hostile: Sequence[Result], api: str, bomb_bytes: int) -> str:
    """What a caller of ``api`` must check itself: the hostile frames it returned on."""
    returned = [
        f"`{r['kind']}`"
        for r in hostile
        if r["api"] == api and verdict(r, bomb_bytes) == "returned"
    ]
    if not returned:
        return "it raised on every hostile frame by itself"
    return (
        f"it returned normally on the {', '.join(returned)} frame, so memshard checks the "
        "decoded size itself (as the timed call does)"
    )


def ineligible_reason(row: LibraryRow) -> str:
    """Why a library is not eligible."""
    reasons = []
    if not all(pick.safe for pick in row.picks):
        reasons.append("its bounded call crashed or allocated on a bomb")
    if not all(pick.releases_gil for pick in row.picks):
        reasons.append(f"GIL probe share under {MIN_SHARE}: it holds the GIL for part of a call")
    return "; ".join(reasons)


def family_choice(
    row: LibraryRow, rows: Sequence[LibraryRow], hostile: Sequence[Result], bomb_bytes: int
) -> str:
    """One bullet: the chosen library, its figures against the others', and why."""
    best = max(row.picks, key=lambda pick: pick.decompress)
    others = [
        f"{other.library}: {format_rate(other.mean('decompress'))}"
        + ("" if other.eligible else f" (not eligible: {ineligible_reason(other)})")
        for other in rows
        if other.family == row.family and other is not row
    ]
    bomb = next((r for r in hostile if r["api"] == best.candidate.api and r["kind"] == BOMB), None)
    bomb_text = ""
    if bomb is not None:
        growth = format_bytes(bomb.get("VmHWM", 0))
        bomb_text = (
            f"; on the {format_bytes(bomb_bytes)} bomb its library's bounded call "
            f"`{bomb['call']}` {verdict(bomb, bomb_bytes)} (resident set +{growth})"
        )
    speedup = statistics.median(p.speedup for p in row.picks)
    against = f" against {'; '.join(others)}" if others else ""
    verdict_text = "" if row.eligible else f" NOT ELIGIBLE ({ineligible_reason(row)})."
    return (
        f"- **{row.family}: {row.library.split(' ')[0]}**, as `{best.candidate.decompress_call}`. "
        f"Decompression {format_rate(row.mean('decompress'))} (geometric mean of "
        f"{', '.join(p.candidate.name for p in row.picks)} over every workload and block size)"
        f"{against}; GIL probe share {row.shares()} (1: the GIL is released throughout); "
        f"2-thread speed-up {speedup:.2f}x on this machine{bomb_text}; "
        f"{duties(hostile, best.candidate.api, bomb_bytes)}.{verdict_text}"
    )


def zstd_levels(results: Sequence[Result], row: LibraryRow) -> str:
    """Level 1 against level 3 of the chosen zstd library on each workload's smallest blocks."""
    names = {p.candidate.key: p.candidate.name for p in row.picks}
    if not {"zstd 1", "zstd 3"} <= set(names):
        return ""
    parts = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        one, three = (find(results, names[key], workload) for key in ("zstd 1", "zstd 3"))
        if one is not None and three is not None:
            speeds = (format_rate(r["compress_bytes_per_s"]) for r in (one, three))
            parts.append(
                f"{workload} {one['ratio']:.1f}x / {three['ratio']:.1f}x at {' / '.join(speeds)}"
            )
    return (
        "- zstd level 1 / level 3 (ratio at compression speed, smallest blocks): "
        + "; ".join(parts)
        + "."
    )


def dictionary_note(results: Sequence[Result], found: Sequence[Candidate]) -> str:
    """A trained dictionary against none, at each workload's one-row blocks."""
    trained = next((c for c in found if c.key == "zstd 3 + dictionary"), None)
    if trained is None:
        return ""
    plain = next(
        (c for c in found if c.key == "zstd 3" and c.library == trained.library and not c.into),
        None,
    )
    if plain is None:
        return ""
    parts = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        with_words, without = (
            find(results, trained.name, workload),
            find(results, plain.name, workload),
        )
        if with_words is not None and without is not None:
            parts.append(
                f"{workload} {without['ratio']:.2f}x -> {with_words['ratio']:.2f}x "
                f"(trained in {with_words['setup_s']:.2f} s)"
            )
    if not parts:
        return ""
    return (
        "- A trained zstd dictionary (one-row blocks, ratio without -> with): "
        + "; ".join(parts)
        + ". A dictionary would have to be stored and versioned with the field."
    )


def blosc_filters(results: Sequence[Result], row: LibraryRow, standing: dict[str, Standing]) -> str:
    """The chosen blosc library's codecs (its fastest candidate of each) on the float
    workloads, at their largest blocks, best ratio first."""
    mine = [
        s for s in standing.values()
        if s.candidate.library == row.library and s.candidate.family == "blosc"
    ]  # fmt: skip
    best = {entry.candidate.key: entry for entry in sorted(mine, key=lambda s: s.decompress)}
    floats = [w for w in dict.fromkeys(r["workload"] for r in results) if w != "sketches"]
    parts = []
    for key, entry in best.items():
        figures = [
            r for r in largest_blocks(results, entry.candidate.name) if r["workload"] in floats
        ]
        if figures:
            ratio = geomean(r["ratio"] for r in figures)
            speed = geomean(r["decompress_bytes_per_s"] for r in figures)
            parts.append(
                (ratio, f"{key.removeprefix('blosc ')} {ratio:.3f}x at {format_rate(speed)}")
            )
    if not parts:
        return ""
    parts.sort(reverse=True)
    return (
        f"- blosc on float data ({', '.join(floats)}, largest blocks; ratio at decompression "
        "speed, best ratio first): " + "; ".join(text for _, text in parts) + "."
    )


def threads_note(references: Sequence[Result]) -> str:
    """What the same-run reference says about this run's 2-thread speed-ups."""
    if not references:
        return ""
    reference = statistics.median(r["speedup_2_threads"] for r in references)
    return (
        "- Threads: SHA-256 of the same blocks (it releases the GIL) ran "
        f"{reference:.2f}x as fast on 2 threads as on 1 in this run (median over every "
        "workload and block size): the 2-thread speed-ups show what the machine allowed at "
        "the time (see its load average) as much as the libraries; the GIL probe shares, "
        "which a busy machine does not blur, decide."
    )


def choice_section(
    found: Sequence[Candidate],
    results: Sequence[Result],
    gil: Sequence[Result],
    hostile: Sequence[Result],
    bomb_bytes: int,
    references: Sequence[Result] = (),
) -> tuple[str, dict[str, Any]]:
    """The choice: a table of libraries and a bullet per family, and the same as data."""
    standing = standings(found, results, gil, hostile, bomb_bytes)
    rows = library_rows(standing)
    lines: list[str] = []
    record: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        row = chosen(rows, family)
        if row is None:
            lines.append(f"- **{family}**: no candidate installed.")
            continue
        lines.append(family_choice(row, rows, hostile, bomb_bytes))
        record[family] = {
            "library": row.library,
            "eligible": row.eligible,
            "candidates": [p.candidate.name for p in row.picks],
        }
        if family == "zstd":
            lines += [zstd_levels(results, row), dictionary_note(results, found)]
        if family == "blosc":
            lines.append(blosc_filters(results, row, standing))
    libraries = {str(value["library"]).split(" ")[0] for value in record.values()}
    if len(libraries) == 1 and len(record) == len(FAMILIES):
        lines.append(f"- One library covers all three: **{libraries.pop()}**.")
    lines.append(threads_note(references))
    rule = (
        "Rule (applied to this run's figures): in each family, libraries are compared on the "
        "codecs more than one of them offers, each by its fastest eligible candidate. Eligible: "
        "the library's bounded decompression call (as the library offers it, before any check "
        "memshard adds) met the bombs without crashing or allocating, and the GIL probe found "
        f"that the candidate's decompression releases the GIL (a share of at least {MIN_SHARE})."
        " Of the eligible libraries, the one that decompresses fastest (geometric mean over "
        "every workload and block size) is chosen."
    )
    text = "\n\n".join([rule, library_table(rows), "\n".join(line for line in lines if line)])
    return text, record


# -- the whole report ------------------------------------------------------------------------
def notes(config: Config) -> str:
    """How each figure is measured."""
    probe = format_bytes(config.probe_mib * (1 << 20))
    return "\n".join(
        [
            "- ratio: the workload's bytes over the sum of its frames (block offsets not counted).",
            "- compress / decompress: the workload's bytes over the thread's CPU time "
            "(`time.thread_time_ns`, not wall time: on a shared machine, time spent waiting for a "
            "core is not the codec's) to compress every block, or to decompress every frame into "
            "its place in one preallocated array; the decompression is the candidate's whole "
            "call as timed (header checks and copies included).",
            f"- one row: CPU time per read, the mean over {config.latency_calls} reads of a "
            "random block's middle row (decompress the block into a scratch buffer, copy the "
            "row).",
            f"- gather: {config.gather_blocks} random blocks (with replacement, the same for every "
            "candidate) decompressed into a preallocated array, in one thread, then split in two "
            "contiguous halves run by a 2-thread `ThreadPoolExecutor`, wall time; the speed-up is "
            "the first time over the second, and needs two idle cores (see the load average).",
            f"- GIL probe: one block of {probe} of frames decompressed in a loop for "
            f"{config.probe_seconds:g} s by a worker thread while the main thread spins in "
            "Python; the share is the main thread's CPU time while a call ran over the worker's "
            f"CPU time inside calls (median of {config.repeats}). A call that holds the GIL stops "
            "the main thread (share near 0, plus the GIL hand-offs at each call's edges); one "
            "that releases it lets it run alongside, and two runnable threads get equal CPU "
            "shares however busy the machine (share near 1). `blosc2 zstd+shuffle, GIL held` is "
            "the control.",
            f"- every time is the median of {config.repeats} repeats (after an untimed round "
            "trip of each candidate), the candidates in a different order each repeat; garbage "
            "collection paused during each timed call.",
            "- hostile frames: each call once, in a new interpreter (numpy and the call's library "
            "imported), on a frame it takes: `VmHWM` (peak resident set) and `VmPeak` (peak "
            "virtual size) are read from `/proc/self/status` just before and after the call; two "
            "trials run at a time. ALLOCATED: the resident set grew by more than "
            f"{ALLOCATED_FRACTION:.0%} of the bomb. A `VmPeak` growth without `VmHWM` growth is "
            "address space reserved, not memory used (a new thread's arena and stack reserve "
            "about 70 MiB).",
        ]
    )


def finish(
    report: Report,
    workloads: Sequence[Workload],
    found: Sequence[Candidate],
    measured: Measured,
    gil: Sequence[Result],
    hostile: Sequence[Result],
    config: Config,
) -> None:
    """Add the speed tables, the thread table, the hostile tables and the choice to ``report``."""
    bomb_bytes = config.bomb_mib << 20
    results = measured.results
    passed_over = "\n".join(
        f"- not measured: {s['candidate']} on {s['workload']} at {s['rows_per_block']} rows a "
        f"block ({s['why']})"
        for s in measured.skipped
    )
    report.add("## Speed and ratio", *speed_sections(results, workloads), passed_over)
    report.add(
        "## Threads: does decompression release the GIL?",
        threads_table(found, results, gil, measured.references),
    )
    sizes = f"bombs of {format_bytes(bomb_bytes)}, a bound of {format_bytes(BOUND)}"
    report.add(
        f"## Hostile frames ({sizes})",
        hostile_summary(hostile, bomb_bytes),
        hostile_table(hostile, bomb_bytes),
    )
    text, record = choice_section(found, results, gil, hostile, bomb_bytes, measured.references)
    report.add("## Choice", text, at=3)
    report.add("## How each figure is measured", notes(config))
    report.record["choice"] = record
