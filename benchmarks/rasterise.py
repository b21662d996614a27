"""Which rasteriser the doodles recipe (``examples/doodles.py``) uses: Pillow's
``ImageDraw.line`` against drawing the same lines with numpy, per drawing, in one run.

Run from the repository root::

    python -m benchmarks.rasterise               # 2,000 drawings at 256x256, 5 repeats
    python -m benchmarks.rasterise --quick       # 200 drawings, 2 repeats (CI runs this)

The drawings are the recipe's own sample (Quick, Draw! simplified format, 0-255 coordinates).
Each candidate draws every drawing into a fresh ``uint8`` ``(1, 256, 256)`` image with lines
:data:`examples.doodles.LINE_WIDTH` pixels wide, not anti-aliased; the candidates alternate
within each repeat and the figure is the median time per drawing. A check compares their
images: the pixels either one inks must mostly agree (the two draw line ends and joints
differently, so they are not equal).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from examples import doodles

from . import core
from .core import Figure, Option, alternate, format_ns, markdown, progress

PILLOW = "Pillow ImageDraw.line"
NUMPY = "numpy (sampled segments, square pen)"
#: The images of the two candidates must agree on this fraction of the pixels either inks.
MIN_AGREEMENT = 0.6

Drawing = list[list[list[int]]]


def rasterise_numpy(drawing: Drawing, size: int = doodles.SIZE) -> np.ndarray:
    """The drawing as :func:`examples.doodles.rasterise` draws it, with numpy: every segment
    sampled at one point per pixel of its longer side, each point stamped as a square of the
    line width."""
    image = np.zeros((size, size), dtype=np.uint8)
    scale = size / (doodles.MAX_COORDINATE + 1)
    width = max(1, round(doodles.LINE_WIDTH * scale))
    xs_all, ys_all = [], []
    for xs, ys in drawing:
        x = np.asarray(xs, dtype=float) * scale
        y = np.asarray(ys, dtype=float) * scale
        if len(x) < 2:
            xs_all.append(x)
            ys_all.append(y)
            continue
        steps = np.maximum(np.abs(np.diff(x)), np.abs(np.diff(y))).astype(int) + 1
        segment = np.repeat(np.arange(len(steps)), steps)
        starts = np.repeat(np.cumsum(steps) - steps, steps)
        fraction = (np.arange(steps.sum()) - starts) / np.repeat(np.maximum(steps - 1, 1), steps)
        xs_all.append(x[segment] + np.diff(x)[segment] * fraction)
        ys_all.append(y[segment] + np.diff(y)[segment] * fraction)
    if not xs_all:
        return image.reshape(1, size, size)
    px = np.rint(np.concatenate(xs_all)).astype(int)
    py = np.rint(np.concatenate(ys_all)).astype(int)
    low, high = -(width // 2), width - width // 2
    for dy in range(low, high):
        for dx in range(low, high):
            image[np.clip(py + dy, 0, size - 1), np.clip(px + dx, 0, size - 1)] = 255
    return image.reshape(1, size, size)


CANDIDATES: dict[str, Callable[[Drawing, int], np.ndarray]] = {
    PILLOW: doodles.rasterise,
    NUMPY: rasterise_numpy,
}


def sample_drawings(scratch: str, count: int) -> list[Drawing]:
    """``count`` drawings of the recipe's sample file, parsed."""
    path = os.path.join(scratch, "sample.ndjson")
    doodles.make_sample(path, count)
    with open(path) as file:
        return [doodles.parse(line, f"{path}:{n}")["drawing"] for n, line in enumerate(file)]


def agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Pixels both images ink over pixels either inks (1.0 when neither inks any)."""
    both = np.count_nonzero((first > 0) & (second > 0))
    either = np.count_nonzero((first > 0) | (second > 0))
    return both / either if either else 1.0


def measure(drawings: Sequence[Drawing], size: int, repeats: int) -> dict[str, Figure]:
    """Nanoseconds per drawing of each candidate (median of ``repeats``, alternating)."""
    for rasterise in CANDIDATES.values():
        rasterise(drawings[0], size)  # warm-up

    def run(name: str, repeat: int) -> float:
        draw = CANDIDATES[name]
        return core.timed(lambda: [draw(d, size) for d in drawings]) / len(drawings)

    samples = alternate(list(CANDIDATES), repeats, run)
    return {name: Figure.of(values, len(drawings)) for name, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both rasterisers, print the report and write the JSON asked for."""
    options = core.CommandLine(
        "python -m benchmarks.rasterise",
        __doc__,
        Option("--drawings", int, "drawings rasterised per repeat", 2000, 200),
        Option("--size", int, "image side", doodles.SIZE, doodles.SIZE),
        repeats=(5, 2),
    )
    args = options.parse(argv)
    with core.scratch_directory(args["dir"]) as scratch:
        method = [
            f"{args['drawings']:,} sample drawings, {args['size']}x{args['size']}, "
            f"median of {args['repeats']} repeats"
        ]
        out = core.Report("Rasterising drawings", args["mode"], scratch, method)
        progress("writing the sample drawings")
        drawings = sample_drawings(scratch, args["drawings"])
        figures = measure(drawings, args["size"], args["repeats"])
    fastest = min(figures, key=lambda name: figures[name].value)
    rows = [
        [name, format_ns(figure.value), f"{figures[fastest].value / figure.value:.2f}x"]
        for name, figure in figures.items()
    ]
    out.add(markdown(["rasteriser", "per drawing", "speed vs fastest"], rows))
    agreements = [
        agreement(doodles.rasterise(d, args["size"]), rasterise_numpy(d, args["size"]))
        for d in drawings[:64]
    ]
    out.check("images_agree", min(agreements) >= MIN_AGREEMENT)
    out.add(
        f"fastest: {fastest}; the recipe uses {PILLOW}. Inked pixels shared by both "
        f"images: min {min(agreements):.2f}, mean {float(np.mean(agreements)):.2f}"
    )
    record: dict[str, Any] = {
        "drawings": args["drawings"],
        "size": args["size"],
        "repeats": args["repeats"],
        "ns_per_drawing": {name: figure.value for name, figure in figures.items()},
        "samples": {name: figure.samples for name, figure in figures.items()},
        "fastest": fastest,
        "agreement": {"min": min(agreements), "mean": float(np.mean(agreements))},
    }
    out.record.update(record)
    return out.finish(args["json"])


if __name__ == "__main__":
    raise SystemExit(main())
