"""The comparison's output: markdown tables, JSON and PNG charts (bars; log-log lines).

Every figure is shown with its ratio to the ``np.memmap`` figure of the same run, as a speed
(higher is better: for a time, np.memmap's time over the format's; for a rate, the format's
rate over np.memmap's).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .core import Figure, Figures, format_bytes, format_count, format_ns, markdown
from .formats import BASELINE


@dataclass(frozen=True)
class Measurement:
    """A column of the tables: what it measures and how its figures read."""

    key: str
    title: str
    #: ``"rate"`` (bytes/s), ``"samples"`` (samples/s), ``"time"`` (ns), ``"bytes"``.
    kind: str

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger figure is a faster one."""
        return self.kind in ("rate", "samples")

    def format(self, figure: Figure) -> str:
        """The figure in a readable unit."""
        if self.kind == "rate":
            return f"{format_bytes(figure.value)}/s"
        if self.kind == "samples":
            return f"{format_count(figure.value)} samples/s"
        if self.kind == "time":
            return format_ns(figure.value)
        return ("+" if figure.value >= 0 else "") + format_bytes(figure.value)

    def speed(self, figure: Figure, baseline: Figure) -> float:
        """``figure``'s speed as a multiple of ``baseline``'s."""
        if self.higher_is_better:
            return figure.value / baseline.value
        return baseline.value / figure.value


@dataclass
class WorkloadResults:
    """Every figure of one workload: measurement key -> format name -> figure."""

    name: str
    description: str
    nbytes: int
    figures: dict[str, Figures] = field(default_factory=dict)
    conversion: Figures = field(default_factory=dict)
    #: memshard ``extend`` against plain file writes (:func:`benchmarks.compare.measure_extend`).
    extend: Figures = field(default_factory=dict)
    #: Format name -> why it did not run.
    skipped: dict[str, str] = field(default_factory=dict)
    #: Measurement key -> format name -> why the figure is missing or does not count.
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GoalResult:
    """One goal of the issue, judged on same-run figures."""

    workload: str
    goal: str
    memshard: str
    peer: str
    peer_figure: str
    ratio: float
    target: str
    met: bool


def cell(measurement: Measurement, figures: Figures, name: str, notes: dict[str, str]) -> str:
    """One table cell: the figure and its speed relative to np.memmap, or why there is none."""
    if name in notes:
        return f"({notes[name]})"
    figure = figures.get(name)
    if figure is None:
        return "n/a"
    text = measurement.format(figure)
    baseline = figures.get(BASELINE)
    if measurement.kind == "bytes":
        rss, uss = figure.extra.get("rss"), figure.extra.get("uss")
        if rss is not None and uss is not None:
            text += f" (RSS {format_bytes(rss)}, USS {format_bytes(uss)})"
        return text
    if baseline is not None and figure.value > 0 and baseline.value > 0:
        text += f" ({measurement.speed(figure, baseline):.2f}x)"
    return text


def workload_table(results: WorkloadResults, measurements: Sequence[Measurement]) -> str:
    """Formats as rows, measurements as columns."""
    names: list[str] = []
    for measurement in measurements:
        for name in results.figures.get(measurement.key, {}):
            if name not in names:
                names.append(name)
    head = ["format", *(measurement.title for measurement in measurements)]
    rows = [
        [
            f"**{name}**" if name == "memshard" else name,
            *(
                cell(m, results.figures.get(m.key, {}), name, results.notes.get(m.key, {}))
                for m in measurements
            ),
        ]
        for name in names
    ]
    return markdown(head, rows)


def conversion_table(results: WorkloadResults) -> str:
    """HDF5 -> memshard rates and their ratio to reading the file with h5py."""
    baseline = results.conversion.get("h5py read")
    rows = []
    for name, figure in results.conversion.items():
        ratio = f"{figure.value / baseline.value:.2f}x" if baseline else ""
        rows.append([name, f"{format_bytes(figure.value)}/s", ratio])
    return markdown(["HDF5 (contiguous) -> memshard", "rate", "ratio to h5py read"], rows)


def rates_table(head: str, figures: Figures) -> str:
    """A two-column table: each figure's name and rate (bytes/s)."""
    rows = [[name, f"{format_bytes(figure.value)}/s"] for name, figure in figures.items()]
    return markdown([head, "rate"], rows)


def goals_table(goals: Sequence[GoalResult]) -> str:
    """Each goal with both figures, the ratio and whether it is met."""
    rows = [
        [
            goal.workload,
            goal.goal,
            goal.memshard,
            f"{goal.peer_figure} ({goal.peer})",
            f"{goal.ratio:.2f}x",
            goal.target,
            "yes" if goal.met else "**no**",
        ]
        for goal in goals
    ]
    head = ["workload", "goal", "memshard", "peer", "ratio", "target", "met"]
    return markdown(head, rows)


# -- charts ----------------------------------------------------------------------------------
def chart(
    results: WorkloadResults, measurements: Sequence[Measurement], path: str, title: str
) -> None:
    """Bars of every format's speed relative to np.memmap, one panel per measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels = [m for m in measurements if results.figures.get(m.key)]
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for axis, measurement in zip(axes.flat, panels, strict=False):
        figures = results.figures[measurement.key]
        if measurement.kind == "bytes":
            memory_panel(axis, measurement, figures)
            continue
        baseline = figures.get(BASELINE)
        names = [name for name, f in figures.items() if baseline and f.value > 0]
        speeds = [measurement.speed(figures[name], baseline) for name in names] if baseline else []
        colours = ["tab:orange" if name == "memshard" else "tab:blue" for name in names]
        axis.barh(names[::-1], speeds[::-1], color=colours[::-1])
        axis.axvline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_title(measurement.title, fontsize=9)
        axis.tick_params(labelsize=7)
        for y, speed in enumerate(speeds[::-1]):
            axis.text(speed, y, f" {speed:.2g}x", va="center", fontsize=6)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle(
        f"{title}\nspeed relative to np.memmap in the same run (log scale, higher is better)"
    )
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def memory_panel(axis: Any, measurement: Measurement, figures: Figures) -> None:
    """Bars of each format's worker memory growth in MiB (absolute: no ratio to np.memmap)."""
    names = list(figures)
    growth = [figures[name].value / (1 << 20) for name in names]
    colours = ["tab:orange" if name == "memshard" else "tab:green" for name in names]
    axis.barh(names[::-1], growth[::-1], color=colours[::-1])
    axis.set_title(f"{measurement.title} (MiB, lower is better)", fontsize=9)
    axis.tick_params(labelsize=7)
    for y, value in enumerate(growth[::-1]):
        axis.text(max(value, 0), y, f" {value:.1f}", va="center", fontsize=6)


@dataclass(frozen=True)
class Line:
    """One line of a :func:`loglog_chart`: a label, its points, and how it is drawn."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    #: A matplotlib colour; lines of one measurement share it.
    colour: str
    #: ``"-"`` (solid), ``"--"`` (dashed) or ``":"`` (dotted, without markers: for a limit).
    style: str = "-"


def loglog_chart(
    panels: Sequence[tuple[str, Sequence[Line]]], path: str, title: str, x_label: str
) -> None:
    """Lines on log-log axes, one panel per ``(y axis label, lines)``, legends below the
    panels, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 6.4), squeeze=False)
    for axis, (y_label, lines) in zip(axes.flat, panels, strict=True):
        for line in lines:
            marker = "" if line.style == ":" else "o"
            axis.plot(
                line.x, line.y, line.style, marker=marker, color=line.colour, label=line.label
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label)
        axis.grid(True, which="major", linewidth=0.4)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- JSON ------------------------------------------------------------------------------------
def figures_json(figures: Figures) -> dict[str, Any]:
    """Each figure as plain data."""
    return {name: asdict(figure) for name, figure in figures.items()}


def results_json(results: WorkloadResults) -> dict[str, Any]:
    """One workload as plain data."""
    return {
        "description": results.description,
        "formats": results.formats,
        "figures": {key: figures_json(figures) for key, figures in results.figures.items()},
        "conversion": figures_json(results.conversion),
        "extend": figures_json(results.extend),
        "skipped": results.skipped,
        "notes": results.notes,
    }
