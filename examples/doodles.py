"""Recipe: rasterise vector drawings (Quick, Draw! newline-delimited JSON) into a dataset.

Each line of the input is one drawing in the public Quick, Draw! *simplified* format::

    {"word": "cat", "countrycode": "US", "timestamp": "2017-03-09 00:28:55.63775 UTC",
     "recognized": true, "key_id": "5201136883597312",
     "drawing": [[[x0, x1, ...], [y0, y1, ...]], ...]}

``drawing`` is a list of strokes, each a list of x coordinates and a list of y coordinates
(integers 0-255; the simplified files align every drawing to the top left and scale it so
that its larger side spans 0-255). Every drawing becomes one row of four fields:

- ``image``: ``uint8`` ``(1, size, size)``, the strokes drawn in white (255) on black (0),
  :data:`LINE_WIDTH` pixels wide at 256x256, with Pillow's ``ImageDraw.line`` (measured faster
  than drawing them with numpy: ``python -m benchmarks.rasterise``);
- ``strokes``: ``int16`` ``(n, 3)``, a ragged field: every point ``(x, y, stroke index)``, so
  that the drawing can be rebuilt exactly (:func:`drawing_of`);
- ``label``: ``int64``, the index of ``word`` in the vocabulary (``ds.labels["label"]``);
- ``key_id``: ``int64``, the drawing's id, to trace a row back to its line.

A big file is split into *chunks* of lines (:func:`chunks`), each a :class:`Chunk`
``(path, first_line, line_count, offset)``; :func:`rows_of_chunk` turns one chunk into its
rows. :func:`build_dataset` hands both to :func:`memshard.build`: the chunks are its inputs,
``rows_of_chunk`` its function, run in worker processes, the rows committed in line order;
an interrupted build (Ctrl-C, ``kill -9``) is completed with ``--resume``.

Run ``python examples/doodles.py --help``; for example::

    python examples/doodles.py doodles-ds --make-sample 1000 --size 64 --compress
    python examples/doodles.py doodles-ds --size 64 --compress --resume   # after a Ctrl-C
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

import memshard as ms

#: The words of the sample this script writes (the default vocabulary).
WORDS = ("circle", "square", "triangle", "zigzag", "star")
#: Side of the images, in pixels.
SIZE = 256
#: Width of the lines at 256x256 (scaled with the image, at least 1 pixel).
LINE_WIDTH = 3
#: Lines of the input in one chunk: the unit of work a parallel builder hands out.
LINES_PER_CHUNK = 1000
#: The largest coordinate of the simplified format.
MAX_COORDINATE = 255
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "JP", "IN", "CA")
#: How ``--compress`` stores the images (docs/compression.md).
IMAGE_CODEC = {"codec": "zstd", "level": 3}


def fields(size: int = SIZE, compress: bool = False) -> dict[str, tuple[Any, ...]]:
    """The dataset's fields for images of ``size`` x ``size``, compressed with
    :data:`IMAGE_CODEC` if ``compress``.

    Example:
        >>> fields(64, compress=True)["image"]
        ('uint8', (1, 64, 64), {'codec': 'zstd', 'level': 3})
    """
    image = ("uint8", (1, size, size))
    return {
        "image": (*image, IMAGE_CODEC) if compress else image,
        "strokes": ("int16", (None, 3)),
        "label": ("int64", ()),
        "key_id": ("int64", ()),
    }


# -- one drawing ---------------------------------------------------------------------------


def rasterise(drawing: Sequence[Sequence[Sequence[int]]], size: int = SIZE) -> np.ndarray:
    """The drawing as a ``uint8`` image ``(1, size, size)``: strokes 255 on 0, not
    anti-aliased, :data:`LINE_WIDTH` pixels wide at 256 (scaled with ``size``).

    Example:
        >>> image = rasterise([[[0, 255], [128, 128]]], size=64)
        >>> image.shape, image.dtype, int(image[0, 32, 10]), int(image[0, 10, 10])
        ((1, 64, 64), dtype('uint8'), 255, 0)
    """
    canvas = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(canvas)
    scale = size / (MAX_COORDINATE + 1)
    width = max(1, round(LINE_WIDTH * scale))
    for xs, ys in drawing:
        points = [(x * scale, y * scale) for x, y in zip(xs, ys, strict=True)]
        if len(points) == 1 and width > 2:  # a dot: a line of no length draws one pixel
            (x, y), radius = points[0], (width - 1) / 2
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
        elif len(points) == 1:
            pen.point(points, fill=255)
        elif points:
            pen.line(points, fill=255, width=width)
    return np.asarray(canvas, dtype=np.uint8).reshape(1, size, size)


def strokes_of(drawing: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Every point of the drawing as ``int16`` rows ``(x, y, stroke index)``.

    Example:
        >>> strokes_of([[[1, 2], [3, 4]], [[5], [6]]]).tolist()
        [[1, 3, 0], [2, 4, 0], [5, 6, 1]]
    """
    pieces = [
        np.stack([xs, ys, np.full(len(xs), index)], axis=1)
        for index, (xs, ys) in enumerate(drawing)
    ]
    if not pieces:
        return np.empty((0, 3), dtype=np.int16)
    return np.concatenate(pieces).astype(np.int16)


def drawing_of(strokes: np.ndarray) -> list[list[list[int]]]:
    """The drawing back from its ``strokes`` row (the inverse of :func:`strokes_of`).

    Example:
        >>> drawing_of(strokes_of([[[1, 2], [3, 4]], [[5], [6]]]))
        [[[1, 2], [3, 4]], [[5], [6]]]
    """
    if len(strokes) == 0:
        return []
    ends = np.flatnonzero(np.diff(strokes[:, 2])) + 1
    return [[part[:, 0].tolist(), part[:, 1].tolist()] for part in np.split(strokes, ends)]


def parse(line: str | bytes, where: str) -> dict[str, Any]:
    """One line of the file, checked: the record, its drawing well formed.

    Raises:
        ValueError: the line is no JSON object of the simplified format; the message starts
            with ``where`` (``path:line``).
    """
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
    if not isinstance(record, dict) or not {"word", "key_id", "drawing"} <= set(record):
        raise ValueError(f"{where}: not a drawing (needs word, key_id and drawing)")
    drawing = record["drawing"]
    if not isinstance(drawing, list) or not all(_is_stroke(stroke) for stroke in drawing):
        raise ValueError(
            f"{where}: the drawing is not a list of strokes [[x...], [y...]] of integers "
            f"0-{MAX_COORDINATE}, x and y of one length"
        )
    return record


def _is_stroke(stroke: Any) -> bool:
    if not (isinstance(stroke, list) and len(stroke) == 2):
        return False
    xs, ys = stroke
    return (
        isinstance(xs, list)
        and isinstance(ys, list)
        and len(xs) == len(ys)
        and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COORDINATE
            for v in (*xs, *ys)
        )
    )


def row_of(record: dict[str, Any], words: dict[str, int], size: int, where: str) -> dict[str, Any]:
    """The dataset row of one parsed drawing.

    Raises:
        ValueError: its word is not in the vocabulary, or its key_id is not an integer.
    """
    if record["word"] not in words:
        raise ValueError(
            f"{where}: word {record['word']!r} is not in the vocabulary ({', '.join(words)})"
        )
    try:
        key_id = int(record["key_id"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: key_id {record['key_id']!r} is not an integer") from None
    return {
        "image": rasterise(record["drawing"], size),
        "strokes": strokes_of(record["drawing"]),
        "label": words[record["word"]],
        "key_id": key_id,
    }


# -- chunks of a file ----------------------------------------------------------------------


class Chunk(NamedTuple):
    """``line_count`` lines of the file ``path`` from line ``first_line`` (0-based), which
    starts at byte ``offset`` (``None``: found by reading the lines before it)."""

    path: str
    first_line: int
    line_count: int
    offset: int | None = None


def chunks(paths: Sequence[str], lines_per_chunk: int = LINES_PER_CHUNK) -> list[Chunk]:
    """The files cut into chunks of ``lines_per_chunk`` lines, with the byte offset of each
    (one pass over the files, no JSON parsed)."""
    found = []
    for path in paths:
        with open(path, "rb") as file:
            offset = line = 0
            start, start_line = 0, 0
            for text in file:
                if line - start_line == lines_per_chunk:
                    found.append(Chunk(path, start_line, lines_per_chunk, start))
                    start, start_line = offset, line
                offset += len(text)
                line += 1
            if line > start_line:
                found.append(Chunk(path, start_line, line - start_line, start))
    return found


def rows_of_chunk(
    chunk: Chunk | tuple[str, int, int],
    words: Sequence[str] = WORDS,
    size: int = SIZE,
) -> Iterator[dict[str, Any]]:
    """The rows of the drawings of one chunk, in line order (blank lines hold none).

    ``chunk`` is a :class:`Chunk` or a plain ``(path, first_line, line_count)``.

    Raises:
        ValueError: a line is no drawing, or its word is not in ``words`` (naming
            ``path:line``, 1-based).
        OSError: the file cannot be read.
    """
    chunk = Chunk(*chunk)
    vocabulary = {word: index for index, word in enumerate(words)}
    with open(chunk.path, "rb") as file:
        if chunk.offset is not None:
            file.seek(chunk.offset)
        else:
            for _ in range(chunk.first_line):
                file.readline()
        for number in range(chunk.first_line, chunk.first_line + chunk.line_count):
            line = file.readline()
            where = f"{chunk.path}:{number + 1}"
            if not line:
                raise ValueError(f"{where}: the file ends before the chunk does")
            if line.strip():
                yield row_of(parse(line, where), vocabulary, size, where)


# -- the whole job -------------------------------------------------------------------------


def build_dataset(
    inputs: Sequence[str],
    dst: str,
    *,
    words: Sequence[str] = WORDS,
    size: int = SIZE,
    workers: int | None = None,
    lines_per_chunk: int = LINES_PER_CHUNK,
    compress: bool = False,
    resume: bool = False,
    progress: bool | None = None,
) -> ms.BuildReport:
    """Rasterise every drawing of the files ``inputs`` into a new dataset at ``dst``, with
    :func:`memshard.build`: the chunks of the files (:func:`chunks`) are its inputs,
    :func:`rows_of_chunk` its function, run by ``workers`` processes (default: one per CPU;
    0 or 1: in this process). The rows are in file and line order, however many workers.

    ``compress`` stores the images compressed with zstd (level 3; rasterised drawings are
    mostly black, and shrink tens of times). ``resume`` completes a build of the same
    files, words, size and compression that was interrupted (Ctrl-C, ``kill -9``): the chunks
    committed are kept, the others done.

    Returns:
        The build's report (``rows``, ``parts``, ``resumed``, ``seconds``...).

    Raises:
        memshard.errors.BuildInputError: a line is no drawing, or its word is not in
            ``words``: the error names the chunk, its message the line (``path:line``).
        memshard.errors.BuildStateError: an interrupted build is in the way (without
            ``resume``), or is another one.
    """
    paths = [os.path.abspath(path) for path in inputs]  # a resume from elsewhere finds them
    return ms.build(
        partial(rows_of_chunk, words=tuple(words), size=size),
        chunks(paths, lines_per_chunk),
        dst,
        fields=fields(size, compress),
        labels={"label": list(words)},
        workers=workers,
        resume=resume,
        progress=progress,
    )


# -- a sample file -------------------------------------------------------------------------


def sample_drawing(word: str, rng: np.random.Generator) -> list[list[list[int]]]:
    """A hand-drawn-looking ``word`` in the simplified format: jittered strokes, aligned to
    the top left, the larger side scaled to 0-255."""
    turn = np.linspace(0, 2 * np.pi, 24)
    if word == "circle":
        outlines = [np.stack([np.cos(turn), np.sin(turn)], axis=1)]
    elif word == "square":
        corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
        outlines = [corners[:3], corners[2:]]  # two strokes
    elif word == "triangle":
        outlines = [np.array([[0, 1], [0.5, 0], [1, 1], [0, 1]], dtype=float)]
    elif word == "zigzag":
        outlines = [np.stack([np.arange(9) / 8, np.arange(9) % 2], axis=1).astype(float)]
    elif word == "star":
        angles = np.pi / 2 + np.arange(6) * 4 * np.pi / 5
        outlines = [np.stack([np.cos(angles), -np.sin(angles)], axis=1)]
    else:
        raise ValueError(f"no sample drawing for {word!r} (words: {', '.join(WORDS)})")
    if rng.random() < 0.3:  # a dot, as people add eyes and full stops
        outlines.append(rng.random((1, 2)))
    jittered = [outline + rng.normal(0, 0.03, outline.shape) for outline in outlines]
    points = np.concatenate(jittered)
    low, extent = points.min(axis=0), max(np.ptp(points, axis=0).max(), 1e-9)
    return [
        [
            np.rint((o - low) / extent * MAX_COORDINATE).astype(int)[:, axis].tolist()
            for axis in (0, 1)
        ]
        for o in jittered
    ]


def make_sample(path: str, drawings: int, seed: int = 0, words: Sequence[str] = WORDS) -> None:
    """Write ``drawings`` sample drawings of ``words`` (in turn) to ``path``, one JSON per
    line, in the simplified format."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as file:
        for index in range(drawings):
            word = words[index % len(words)]
            record = {
                "word": word,
                "countrycode": COUNTRIES[int(rng.integers(len(COUNTRIES)))],
                "timestamp": time.strftime(
                    "%Y-%m-%d %H:%M:%S.00000 UTC", time.gmtime(1489000000 + 37 * index)
                ),
                "recognized": True,
                "key_id": str(4503599627370496 + index * 7919),
                "drawing": sample_drawing(word, rng),
            }
            file.write(json.dumps(record, separators=(",", ":")) + "\n")


# -- the command line ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python examples/doodles.py",
        description="Rasterise Quick, Draw! drawings (newline-delimited JSON, simplified "
        "format) into a memshard dataset: image uint8 (1, SIZE, SIZE), strokes int16 "
        "(n, 3) as (x, y, stroke), label, key_id.",
    )
    parser.add_argument("dst", help="the dataset to create")
    parser.add_argument(
        "--input", action="append", metavar="FILE",
        help="a .ndjson file of drawings (repeat for several; default DST.ndjson)",
    )  # fmt: skip
    parser.add_argument(
        "--make-sample", type=int, metavar="N",
        help="first write N sample drawings to the (one) input file",
    )  # fmt: skip
    parser.add_argument(
        "--words", default=",".join(WORDS),
        help="the label vocabulary, comma-separated (default: the sample's words)",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=SIZE, help="image side (default 256)")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes (default: one per CPU; 0: in this process)",
    )  # fmt: skip
    parser.add_argument(
        "--compress", action="store_true", help="store the images compressed (zstd, level 3)"
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="complete an interrupted run (the same files and options)",
    )  # fmt: skip
    parser.add_argument(
        "--lines-per-chunk", type=int, default=LINES_PER_CHUNK,
        help=f"lines of input per unit of work (default {LINES_PER_CHUNK})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="of the sample (default 0)")
    args = parser.parse_args(argv)
    inputs = args.input or [args.dst + ".ndjson"]
    words = args.words.split(",")
    if args.make_sample is not None:
        if len(inputs) != 1:
            parser.error("--make-sample writes one input file: give at most one --input")
        make_sample(inputs[0], args.make_sample, args.seed, words)
    report = build_dataset(inputs, args.dst, words=words, size=args.size, workers=args.workers,
                           lines_per_chunk=args.lines_per_chunk, compress=args.compress,
                           resume=args.resume)  # fmt: skip
    done = f"{report.resumed:,} of {report.inputs:,} chunks done before"
    earlier = f", {done}" if report.resumed else ""
    print(f"{args.dst}: {report.rows:,} drawings in {report.seconds:.1f} s "
          f"({report.parts} parts{earlier})")  # fmt: skip
    return 0


def _as_module() -> Any:
    """This file imported under its own name (``doodles``), so that the function and the
    chunks pickle as ``doodles.rows_of_chunk`` and ``doodles.Chunk``: a worker process
    loads them by importing this module (from the folder put on its ``sys.path``, and on
    ``PYTHONPATH`` for the processes of tools that do not pass ``sys.path`` on) and never
    re-runs this script as its ``__main__``."""
    folder = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
    return importlib.import_module(os.path.splitext(os.path.basename(__file__))[0])


if __name__ == "__main__":
    sys.exit(_as_module().main())
