"""The ``memshard`` command (also ``python -m memshard``): convert, recompress, info, verify,
head, ls, attrs, labels, demo.

Exit status: 0 on success, 1 when ``verify`` finds a damaged file (or an unexpected failure),
2 for a user error (bad arguments, a missing or invalid source or dataset), reported as one
line without a traceback, 3 when ``verify`` finds no damage but could not check some rows
(the unsealed shard of a format 1.0 dataset has no checksum), and 130 when interrupted.

A Ctrl-C stops every command at the next block (:mod:`memshard.interrupt`), keeping what a
``--resume`` can continue. Errors and warnings name the command-line flags, never the Python
parameters behind them (:func:`for_command_line`). Sizes are in binary units (KiB, MiB, GiB)
and counts have thousands separators (:mod:`memshard.progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__, interrupt
from .errors import (
    ArgumentError,
    DatasetNotFoundError,
    MemshardError,
    MemshardWarning,
    SourceError,
)
from .progress import format_bytes, format_rate
from .smallfile import open_regular

if TYPE_CHECKING:
    from .reader import Dataset
    from .sources import SourcePlan

#: Exit statuses.
OK, DAMAGED, USAGE, UNCHECKED, INTERRUPTED = 0, 1, 2, 3, 130
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What a Parquet file starts with.
_PARQUET_MAGIC = b"PAR1"
#: Width of the descriptions in ``--help``.
HELP_WIDTH = 80
#: ``head`` shows at most this many elements of a ragged row, and fewer when they hold more
#: than :data:`HEAD_NUMBERS` numbers (one element at least; numpy summarises a large one).
HEAD_ELEMENTS = 6
HEAD_NUMBERS = 16
#: The Python spellings in library messages, and the flags the command line says instead.
PYTHON_TO_FLAGS = (
    (re.compile(r"\boverwrite=True\b"), "--overwrite"),
    (re.compile(r"\bresume=True\b"), "--resume"),
    (re.compile(r"\bshard_bytes=(\d+)"), r"--shard-size \1"),
    (re.compile(r"\bshard_bytes\b"), "--shard-size"),
    (re.compile(r"\bworkers=(\d+)"), r"--workers \1"),
    (re.compile(r"\bthe codecs of the first run\b"), "the --codec flags of the first run"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        # memshard's own warnings are notes for the user, one line each, never errors.
        warnings.filterwarnings("always", category=MemshardWarning)
        warnings.showwarning = _show_warning
        try:
            with interrupt.deferred():
                status: int = args.run(args)
            return status
        except KeyboardInterrupt:
            print("memshard: interrupted", file=sys.stderr)
            return INTERRUPTED
        except (MemshardError, OSError) as exc:
            print(f"memshard: error: {for_command_line(str(exc))}", file=sys.stderr)
            return USAGE


def for_command_line(message: str) -> str:
    """``message`` with the Python parameters it names replaced by the flags of the command.

    Example:
        >>> for_command_line("pass overwrite=True to replace it; shard_bytes=1024 asks for 2 rows")
        'pass --overwrite to replace it; --shard-size 1024 asks for 2 rows'
    """
    for pattern, flag in PYTHON_TO_FLAGS:
        message = pattern.sub(flag, message)
    return message


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    if issubclass(category, MemshardWarning):
        print(f"memshard: warning: {for_command_line(str(message))}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def parse_size(text: str) -> int:
    """Bytes in a size such as ``256MB``, ``1.5GiB``, ``64k`` or ``4096`` (units are binary).

    Example:
        >>> parse_size("256MB"), parse_size("1GiB"), parse_size("4096")
        (268435456, 1073741824, 4096)
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 256MB, 1GiB, 65536)")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * (1 << (10 * " kmgt".index(unit or " "))))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return value


def parse_resize(text: str) -> tuple[int, int]:
    """``(width, height)`` of ``--resize WIDTHxHEIGHT``.

    Example:
        >>> parse_resize("64x48"), parse_resize("32X32")
        ((64, 48), (32, 32))
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or min(int(match.group(1)), int(match.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size WIDTHxHEIGHT (e.g. 64x64)")
    return int(match.group(1)), int(match.group(2))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def _command(
    commands: Any, name: str, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with examples (kept as written, one per line)."""
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=textwrap.fill(description, HELP_WIDTH),
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="the dataset directory")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memshard",
        description="Larger-than-RAM datasets as memory-mapped .npy shards. "
        "Run 'memshard COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"memshard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _convert_parser(commands)
    _recompress_parser(commands)

    info = _command(
        commands, "info", "describe a dataset: fields, rows, shards, labels, attrs",
        "Print a dataset's fields (dtype, sample shape, bytes per row, labels), its rows, "
        "shards and attributes. A ragged field (sample shape (None, ...): rows of varying "
        "length) shows its bytes per element, its elements and bytes in all, and the "
        "shortest, median, longest and mean row, read from its offsets files.",
        ["memshard info frames", "memshard info frames --json | jq .rows"],
    )  # fmt: skip
    _dataset_argument(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)

    verify = _command(
        commands, "verify",
        "check every shard's size, header and checksum (exit 1 if damaged, 3 if some rows "
        "have no checksum to check)",
        "Read every committed byte of DATASET and compare it with the checksums of its "
        "manifest. Exit status 0: intact; 1: damaged (each bad file is listed); 3: no damage "
        "found, but some rows have no checksum (the unsealed shard of a format 1.0 dataset).",
        ["memshard verify frames", "memshard verify -q frames && echo intact"],
    )  # fmt: skip
    _dataset_argument(verify)
    verify.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    upgrade = _command(
        commands, "upgrade", "upgrade a dataset to the format version this memshard writes",
        "Give a dataset of an older format version (1.x) its shard table, in place and "
        "crash-safely: one commit, no shard file touched. A dataset of this version is left "
        "as it is.",
        ["memshard upgrade frames"],
    )  # fmt: skip
    _dataset_argument(upgrade)
    upgrade.set_defaults(run=_upgrade)

    head = _command(
        commands, "head", "print the first rows",
        "Print the first rows of DATASET, every field; large samples are summarised, and a "
        "row of a ragged field is shown as its length and first elements.",
        ["memshard head frames", "memshard head frames -n 20"],
    )  # fmt: skip
    _dataset_argument(head)
    head.add_argument("-n", type=int, default=5, metavar="ROWS", help="rows (default 5)")
    head.set_defaults(run=_head)

    ls = _command(
        commands, "ls", "list the shard files in row order",
        "List DATASET's shards in row order: the rows each holds and its file per field "
        "(two for a ragged field: its values and its offsets). File names do not sort in "
        "row order; with --field, print only the paths of that field's files, one shard per "
        "line, in row order (each sealed file loads with np.load(path, mmap_mode='r')); for "
        "a ragged field, each line is the values file, a tab, and the offsets file.",
        ["memshard ls frames", "memshard ls frames --field x | head -3"],
    )  # fmt: skip
    _dataset_argument(ls)
    ls.add_argument("--field", metavar="NAME", help="print only the paths of this field's files")
    ls.set_defaults(run=_ls)

    attrs = _command(
        commands, "attrs", "show or change the attributes",
        "Without KEY=VALUE, print DATASET's attributes as JSON. With them, set each KEY to "
        "VALUE (parsed as JSON if it is JSON, else taken as text) and commit the new "
        "attributes; no row is touched.",
        ["memshard attrs frames", "memshard attrs frames source='camera 2' version=3",
         "memshard attrs frames --delete draft"],
    )  # fmt: skip
    _dataset_argument(attrs)
    attrs.add_argument(
        "assignments", nargs="*", type=_assignment, metavar="KEY=VALUE",
        help="an attribute to set (repeat)",
    )  # fmt: skip
    attrs.add_argument(
        "--delete", action="append", default=[], metavar="KEY", help="remove KEY (repeat)"
    )
    attrs.set_defaults(run=_attrs)

    labels = _command(
        commands, "labels", "show or change label vocabularies",
        "Without FIELD=LABELS, print DATASET's label vocabularies. With them, give FIELD the "
        "vocabulary LABELS (comma-separated, or a JSON list) and commit it; no row is "
        "touched. Labels may be renamed or appended freely; a shorter vocabulary, or one "
        "for a field that had none, is checked against every stored value.",
        ["memshard labels frames", "memshard labels frames y=cat,dog,fox",
         "memshard labels frames --remove y"],
    )  # fmt: skip
    _dataset_argument(labels)
    labels.add_argument(
        "assignments", nargs="*", type=_assignment, metavar="FIELD=LABELS",
        help="a field's new vocabulary (repeat per field)",
    )  # fmt: skip
    labels.add_argument(
        "--remove", action="append", default=[], metavar="FIELD",
        help="remove FIELD's vocabulary (repeat)",
    )  # fmt: skip
    labels.set_defaults(run=_labels)

    demo = _command(
        commands, "demo", "HDF5 -> memshard -> PyTorch DataLoader, end to end on synthetic data",
        "Write a synthetic HDF5 file, convert it, verify it and train a tiny model through a "
        "DataLoader with worker processes; print the throughput of each stage.",
        ["memshard demo", "memshard demo --rows 100000 --workers 4 --dir /tmp/demo"],
    )  # fmt: skip
    demo.add_argument(
        "--rows", type=_positive_int, default=20_000, metavar="N",
        help="images in the synthetic file (default 20,000)",
    )  # fmt: skip
    demo.add_argument(
        "--steps", type=_positive_int, default=60, metavar="N",
        help="training steps (default 60)",
    )  # fmt: skip
    demo.add_argument(
        "--workers", type=_positive_int, default=2, metavar="N",
        help="conversion processes and DataLoader workers (default 2)",
    )  # fmt: skip
    demo.add_argument(
        "--dir", default=None, metavar="DIR", help="keep the files here (default: a temp dir)"
    )
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    return parser


def _convert_parser(commands: Any) -> None:
    convert = _command(
        commands, "convert",
        "convert an HDF5 file, a zarr store, .npy or Parquet files, or a folder of images into "
        "a dataset",
        "Convert SRC (an HDF5 file, a zarr store, a .npy file or a directory of .npy files, a "
        "Parquet file or a directory of .parquet files, or a folder of class folders of JPEG "
        "and PNG images, with --resize) "
        "into a new memshard dataset DST. DST appears only once complete; an interrupted "
        "conversion is kept in DST.memshard-partial and completed by running the same "
        "command with --resume. Sizes are binary: 256MB and 256MiB both mean 256 x 2^20 "
        "bytes.",
        ["memshard convert data.h5 frames",
         "memshard convert data.h5 frames --field x=/train/images --field y=/train/labels",
         "memshard convert data.h5 frames --shard-size 64MB --workers 4",
         "memshard convert store.zarr frames --labels y=cat,dog",
         "memshard convert table.parquet frames --field x=pixels --field y=label",
         "memshard convert photos/ thumbs --resize 64x64 --workers 2",
         "memshard convert data.h5 frames --codec zstd:3",
         "memshard convert data.h5 frames --codec x=blosc:lz4:5 --codec y=none",
         "memshard convert data.h5 frames --resume"],
    )  # fmt: skip
    convert.add_argument(
        "src", metavar="SRC",
        help="the HDF5 file, zarr store, .npy or Parquet file(s), or folder of images",
    )  # fmt: skip
    convert.add_argument("dst", metavar="DST", help="the dataset directory to create")
    convert.add_argument(
        "--field",
        dest="fields",
        action="append",
        type=_assignment,
        metavar="NAME=PATH",
        help="take the array (Parquet: the column) at PATH as field NAME (repeat; default: "
        "every numeric array with the common row count)",
    )
    convert.add_argument(
        "--format", choices=("auto", "hdf5", "zarr", "npy", "parquet", "images"), default="auto",
        help="the kind of SRC (default: judged by its content)",
    )  # fmt: skip
    convert.add_argument(
        "--resize", type=parse_resize, default=None, metavar="WxH",
        help="a folder of images: resize every image to WIDTHxHEIGHT pixels (needed for one); "
        "stored channels first, uint8 (C, H, W), in field 'image', the class in 'label'",
    )  # fmt: skip
    convert.add_argument(
        "--mode", choices=("RGB", "L"), default=None,
        help="a folder of images: RGB (3 channels, the default) or L (grey, 1 channel)",
    )  # fmt: skip
    convert.add_argument(
        "--shard-size", type=parse_size, default=None, metavar="SIZE",
        help="target shard size, e.g. 256MB (the default; on --resume, that of the first "
        "run). Below 1MB a warning says why it is slow",
    )  # fmt: skip
    convert.add_argument(
        "--workers", type=_positive_int, default=1, metavar="N",
        help="processes reading the source in parallel (default 1)",
    )  # fmt: skip
    _codec_argument(convert, "the others uncompressed")
    convert.add_argument(
        "--labels", action="append", type=_assignment, metavar="FIELD=A,B,...",
        help="label vocabulary of an integer field (repeat per field)",
    )  # fmt: skip
    convert.add_argument(
        "--label-attr", default="labels", metavar="NAME",
        help="attribute holding a field's label vocabulary (default: labels)",
    )  # fmt: skip
    convert.add_argument(
        "--resume", action="store_true",
        help="complete an interrupted run (DST.memshard-partial), or do nothing if DST is "
        "this conversion, finished",
    )  # fmt: skip
    convert.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing dataset at DST; without --resume, also delete an "
        "interrupted run and start over",
    )  # fmt: skip
    convert.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    convert.set_defaults(run=_convert)


def _codec_argument(parser: argparse.ArgumentParser, others: str) -> None:
    parser.add_argument(
        "--codec", dest="codecs", action="append", default=[], metavar="[FIELD=]CODEC",
        help="compress every field with CODEC (zstd:3, lz4, blosc:lz4:5:bit; none: no "
        f"compression), or only FIELD (repeat per field; {others})",
    )  # fmt: skip


def _recompress_parser(commands: Any) -> None:
    recompress = _command(
        commands, "recompress", "copy a dataset with its fields compressed otherwise",
        "Copy the memshard dataset SRC to a new dataset DST, compressing its fields with "
        "the codecs of --codec (the fields it does not name keep theirs), with its labels "
        "and attributes. It is a conversion like convert's: parallel with --workers, DST "
        "appearing only once complete, an interrupted run completed with --resume.",
        ["memshard recompress frames frames-zstd --codec zstd:3",
         "memshard recompress frames frames-mixed --codec img=zstd:9 --codec emb=blosc:lz4:5",
         "memshard recompress frames-zstd frames-plain --codec none --workers 4"],
    )  # fmt: skip
    recompress.add_argument("src", metavar="SRC", help="the memshard dataset to copy")
    recompress.add_argument("dst", metavar="DST", help="the dataset directory to create")
    _codec_argument(recompress, "the others keep their codec")
    recompress.add_argument(
        "--shard-size", type=parse_size, default=None, metavar="SIZE",
        help="target shard size of DST (default 256MB; on --resume, that of the first run)",
    )  # fmt: skip
    recompress.add_argument(
        "--workers", type=_positive_int, default=1, metavar="N",
        help="processes copying shards in parallel (default 1)",
    )  # fmt: skip
    recompress.add_argument(
        "--resume", action="store_true",
        help="complete an interrupted run (DST.memshard-partial)",
    )  # fmt: skip
    recompress.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset at DST"
    )
    recompress.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    recompress.set_defaults(run=_recompress)


def codec_arguments(values: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """The codecs the ``--codec`` flags ``values`` ask for, by field of ``names``: a bare
    ``CODEC`` for every field, ``FIELD=CODEC`` for one (over a bare one, whatever the order).

    Example:
        >>> codec_arguments(["zstd:3", "y=lz4"], ["x", "y"])
        {'x': 'zstd:3', 'y': 'lz4'}
        >>> codec_arguments(["y=none"], ["x", "y"])
        {'y': 'none'}

    Raises:
        ArgumentError: more than one bare ``CODEC``, or a ``FIELD`` that is not a field.
    """
    bare = [value for value in values if "=" not in value]
    if len(bare) > 1:
        raise ArgumentError(
            f"--codec {bare[0]} and --codec {bare[1]}: one codec for every field at most; "
            "name the field of the others, --codec FIELD=CODEC"
        )
    chosen = dict.fromkeys(names, bare[0]) if bare else {}
    for value in values:
        name, sep, codec = value.partition("=")
        if not sep:
            continue
        if name not in names:
            raise ArgumentError(
                f"--codec {value}: no field {name!r}; the fields are {', '.join(names)}"
            )
        chosen[name] = codec
    return chosen


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


# -- convert -----------------------------------------------------------------------------------


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert, skipped_notes
    from .progress import is_enabled

    plan = _plan(args)
    started = time.perf_counter()
    try:
        ds = convert(
            plan,
            args.dst,
            shard_bytes=args.shard_size,
            workers=args.workers,
            codecs=codec_arguments(args.codecs, list(plan.fields)),
            resume=args.resume,
            overwrite=args.overwrite,
            progress=_progress(args),
        )
    except KeyboardInterrupt:
        if _kept_for_resume(args.dst):
            return INTERRUPTED
        raise
    seconds = time.perf_counter() - started
    if not args.quiet and not is_enabled(_progress(args)):  # a bar: convert listed them
        for note in skipped_notes(plan):
            print(f"memshard: {note}", file=sys.stderr)
    if not args.quiet:
        _print_written(ds, seconds)
    return OK


def _recompress(args: argparse.Namespace) -> int:
    from .convert import recompress

    source = _open(args.src)
    started = time.perf_counter()
    try:
        ds = recompress(
            source,
            args.dst,
            codecs=codec_arguments(args.codecs, list(source.fields)),
            shard_bytes=args.shard_size,
            workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=_progress(args),
        )
    except KeyboardInterrupt:
        if _kept_for_resume(args.dst):
            return INTERRUPTED
        raise
    if not args.quiet:
        _print_written(ds, time.perf_counter() - started)
    return OK


def _kept_for_resume(dst: str) -> bool:
    """After a Ctrl-C: whether a staging dataset for ``dst`` was left, saying how to complete
    it if so."""
    from .convert import staging_path

    staging = staging_path(dst)
    if not os.path.isdir(staging):
        return False
    print(
        f"memshard: interrupted; the rows converted so far are kept in {staging}: "
        "run the same command with --resume to complete it",
        file=sys.stderr,
    )
    return True


def _print_written(ds: Dataset, seconds: float) -> None:
    """One line: the dataset written, its size (and size on disk, if compressed), the rate."""
    stored = sum(ds[name].stored_bytes for name in ds.fields)
    on_disk = "" if stored == ds.nbytes else f" ({format_bytes(stored)} stored)"
    print(
        f"{ds.path}: {len(ds):,} rows, {len(ds.shards):,} shards, {format_bytes(ds.nbytes)}"
        f"{on_disk} in {seconds:.1f} s ({format_rate(ds.nbytes, seconds)})"
    )


def _plan(args: argparse.Namespace) -> SourcePlan:
    """The conversion ``memshard convert`` asks for, planned (nothing written yet).

    Raises:
        SourceError: SRC is a memshard dataset (whose ``shard_table.npy`` would otherwise be
            taken for a ``.npy`` source), or see :func:`detect_format`.
    """
    _refuse_a_dataset(args.src)
    source_format = args.format if args.format != "auto" else detect_format(args.src)
    fields = dict(args.fields) if args.fields else None
    labels = {name: value.split(",") for name, value in args.labels or []} or None
    if source_format == "images":
        return _image_plan(args, fields, labels)
    if args.resize is not None or args.mode is not None:
        raise ArgumentError(
            f"--resize and --mode are for a folder of images; {args.src} is read as {source_format}"
        )
    if source_format == "hdf5":
        from . import hdf5

        return hdf5.plan(args.src, fields, labels=labels, label_attr=args.label_attr)
    if source_format == "zarr":
        from . import zarr

        return zarr.plan(args.src, fields, labels=labels, label_attr=args.label_attr)
    if source_format == "parquet":
        from . import arrow

        return arrow.plan_parquet(args.src, fields, labels=labels)
    from . import npysource

    return npysource.plan(npy_inputs(args.src, fields), labels=labels)


def _image_plan(
    args: argparse.Namespace, fields: dict[str, str] | None, labels: dict[str, list[str]] | None
) -> SourcePlan:
    """The conversion of a folder of images: ``--resize`` is needed, ``--field`` and
    ``--labels`` have no meaning (the fields are ``image`` and ``label``, the vocabulary the
    class folders' names)."""
    if fields is not None or labels is not None:
        raise ArgumentError(
            "--field and --labels do not apply to a folder of images: its fields are 'image' "
            "and 'label', whose vocabulary is the names of the class folders"
        )
    if args.resize is None:
        raise ArgumentError(
            f"{args.src}: a folder of images needs --resize WIDTHxHEIGHT (e.g. --resize 64x64): "
            "every row of a field has one shape"
        )
    from . import imagefolder

    return imagefolder.plan(args.src, size=args.resize, mode=args.mode or "RGB")


def _refuse_a_dataset(src: str) -> None:
    from .layout import MANIFEST_NAME, SHARDS_DIR

    if os.path.isfile(os.path.join(src, MANIFEST_NAME)) and os.path.isdir(
        os.path.join(src, SHARDS_DIR)
    ):
        raise SourceError(
            f"{src}: is a memshard dataset already; memshard convert reads an HDF5 file, a "
            "zarr store or .npy files into a new one (memshard recompress copies a dataset "
            "with other codecs)"
        )


def detect_format(src: str) -> str:
    """``"hdf5"``, ``"zarr"``, ``"npy"``, ``"parquet"`` or ``"images"`` for the source at
    ``src``, judged by its content (a directory: by the names of its files, or of the files
    in its sub-folders).

    Raises:
        SourceError: ``src`` does not exist, is none of them, or is a FIFO, a socket or a
            device (refused without reading: see :mod:`memshard.smallfile`).
    """
    if os.path.isdir(src):
        if any(os.path.exists(os.path.join(src, n)) for n in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr"
        return _directory_format(src)
    try:
        fd = open_regular(src, what="the source", error=SourceError, follow_symlinks=True)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceError(f"{src}: no such file or directory") from None
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(8)
        if head == _HDF5_SIGNATURE or _has_hdf5_user_block(handle):
            return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    raise SourceError(f"{src}: not an HDF5 file, a zarr store, a .npy or a Parquet file")


def _directory_format(src: str) -> str:
    """``"npy"`` or ``"parquet"``: the kind of files the directory ``src`` holds; or
    ``"images"`` if it holds neither and one of its sub-folders holds an image file.

    Raises:
        SourceError: it holds none of them, or both ``.npy`` and ``.parquet`` files
            (``--format`` says which to take).
    """
    names = os.listdir(src)
    kinds = [
        kind
        for kind, suffix in (("npy", ".npy"), ("parquet", ".parquet"))
        if any(name.endswith(suffix) for name in names)
    ]
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        raise SourceError(
            f"{src}: holds both .npy and .parquet files; pass --format npy or --format parquet"
        )
    if _holds_class_folders(src, names):
        return "images"
    raise SourceError(
        f"{src}: a directory that is neither a zarr store nor holds .npy or .parquet files "
        "or class folders of images (.jpg, .jpeg, .png)"
    )


#: Images named the way :mod:`memshard.imagefolder` takes them (it alone imports Pillow).
_IMAGE_NAME = re.compile(r"(?i)^[^.].*\.(jpe?g|png)$")


def _holds_class_folders(src: str, names: list[str]) -> bool:
    """Whether a sub-folder of ``src`` (not hidden) holds an image file at its top."""
    for name in sorted(names):
        folder = os.path.join(src, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        with os.scandir(folder) as entries:
            if any(_IMAGE_NAME.match(entry.name) for entry in entries):
                return True
    return False


def _has_hdf5_user_block(handle: Any) -> bool:
    """HDF5 may start at offset 512, 1024, 2048, ... after a user block."""
    offset = 512
    size = os.fstat(handle.fileno()).st_size
    while offset + 8 <= size:
        handle.seek(offset)
        if handle.read(8) == _HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


def npy_inputs(src: str, fields: dict[str, str] | None) -> Any:
    """What ``from_numpy`` converts for SRC: a file, or the ``.npy`` files of a directory (or
    those named by ``--field``, relative to it)."""
    if not os.path.isdir(src):
        if fields:
            raise ArgumentError("--field needs SRC to be a directory of .npy files")
        return src
    if fields:
        return {name: os.path.join(src, path) for name, path in fields.items()}
    from .sources import field_name_for

    names = sorted(name for name in os.listdir(src) if name.endswith(".npy"))
    return {field_name_for(name): os.path.join(src, name) for name in names}


# -- info, verify, head, ls ----------------------------------------------------------------------


@contextlib.contextmanager
def _pointing_to_partial(path: str) -> Iterator[None]:
    """A missing dataset at ``path`` whose conversion was interrupted: say where it is."""
    try:
        yield
    except DatasetNotFoundError as exc:
        from .convert import staging_path

        staging = staging_path(path)
        if not os.path.isdir(staging):
            raise
        raise DatasetNotFoundError(
            f"{exc}; an interrupted conversion to it is kept in {staging}: complete it with "
            f"memshard convert SRC {path} --resume, or look at it with memshard info {staging}"
        ) from None


def _open(path: str) -> Any:
    from .reader import open as open_dataset

    with _pointing_to_partial(path):
        return open_dataset(path)


def describe(path: str) -> dict[str, Any]:
    """Everything ``memshard info`` prints, as JSON-ready values."""
    ds = _open(path)
    manifest = ds.manifest
    # A dataset with a ragged field also rolls its shards over on their bytes of data.
    shard_bytes = {} if manifest.shard_bytes is None else {"shard_bytes": manifest.shard_bytes}
    return {
        "path": ds.path,
        "format_version": manifest.version,
        "uuid": manifest.uuid,
        "generation": manifest.generation,
        "rows": len(ds),
        "shards": len(ds.shards),
        "sealed_shards": ds.shards.sealed,
        "shard_rows": manifest.shard_rows,
        **shard_bytes,
        "bytes": ds.nbytes,
        "stored_bytes": sum(ds[name].stored_bytes for name in ds.fields),
        "fields": {name: _describe_field(ds, name) for name in ds.fields},
        "attrs": ds.attrs,
    }


def _describe_field(ds: Dataset, name: str) -> dict[str, Any]:
    """What ``memshard info`` says of field ``name``. A ragged field has no bytes per row
    (``row_bytes`` is None): it gives its bytes per element, its elements and bytes, and
    the statistics of its row lengths (None when it has no rows). Every field gives its
    codec (None, or its name, parameters and block size), the bytes its rows take on disk
    and its compression ratio (bytes / stored bytes; None without rows)."""
    info, spec, column = ds.fields[name], ds.manifest.fields[name], ds[name]
    stored = column.stored_bytes
    described: dict[str, Any] = {
        "dtype": str(info.dtype),
        "shape": list(info.shape),
        "row_bytes": None if spec.ragged else spec.row_bytes,
        "labels": list(ds.labels[name]) if name in ds.labels else None,
        "codec": None if spec.codec is None else spec.codec.model_dump(),
        "stored_bytes": stored,
        "ratio": column.nbytes / stored if stored else None,
    }
    if spec.ragged:
        stats = ds[name].length_stats()
        elements = 0 if stats is None else stats.elements
        described |= {
            "element_bytes": spec.row_bytes,
            "elements": elements,
            "bytes": elements * spec.row_bytes,
            "lengths": None
            if stats is None
            else {"min": stats.min, "median": stats.median, "max": stats.max, "mean": stats.mean},
        }
    return described


def _info(args: argparse.Namespace) -> int:
    summary = describe(args.dataset)
    if args.json:
        print(json.dumps(summary, indent=2))
        return OK
    print(summary["path"])
    limit = f"{summary['shard_rows']:,} rows"
    if "shard_bytes" in summary:
        limit += f" or {format_bytes(summary['shard_bytes'])}"
    print(
        f"  rows      {summary['rows']:,} in {summary['shards']:,} shards "
        f"({summary['sealed_shards']:,} sealed, up to {limit} each)"
    )
    stored = summary["stored_bytes"]
    on_disk = "" if stored == summary["bytes"] else f", {format_bytes(stored)} stored"
    print(f"  bytes     {format_bytes(summary['bytes'])} ({summary['bytes']:,}){on_disk}")
    print(f"  format    {summary['format_version']}, generation {summary['generation']:,}, "
          f"uuid {summary['uuid']}")  # fmt: skip
    print("  fields")
    width = max(len(name) for name in summary["fields"])
    for name, field in summary["fields"].items():
        shape = str(tuple(field["shape"]))
        line = f"    {name:<{width}}  {field['dtype']:<9} {shape:<16} "
        if field["row_bytes"] is None:  # ragged
            print(
                f"{line}{format_bytes(field['element_bytes'])}/element, "
                f"{field['elements']:,} elements ({format_bytes(field['bytes'])})"
            )
            print(f"    {'':<{width}}  lengths {_lengths_text(field['lengths'])}")
        else:
            line += f"{format_bytes(field['row_bytes'])}/row"
            if field["labels"] is not None:
                shown = ", ".join(field["labels"][:8])
                shown += ", ..." if len(field["labels"]) > 8 else ""
                line += f"  labels ({len(field['labels']):,}): {shown}"
            print(line)
        if field["codec"] is not None:
            print(f"    {'':<{width}}  codec {_codec_text(field)}")
    if summary["attrs"]:
        print("  attrs")
        for key, value in summary["attrs"].items():
            print(f"    {key}: {_short(json.dumps(value))}")
    return OK


def _codec_text(field: dict[str, Any]) -> str:
    """``zstd level=3, 64.0 KiB blocks: 1.2 MiB stored, 25.3x smaller`` (the ratio left out
    without rows)."""
    from .manifest import Codec
    from .schema import describe_codec

    codec = describe_codec(Codec(**field["codec"]))
    text = f"{codec}: {format_bytes(field['stored_bytes'])} stored"
    return text if field["ratio"] is None else f"{text}, {field['ratio']:,.1f}x smaller"


def _lengths_text(lengths: dict[str, Any] | None) -> str:
    """``min 0, median 180.5, max 399, mean 190.2``; ``none (no rows)``."""
    if lengths is None:
        return "none (no rows)"
    median = lengths["median"]
    median_text = f"{int(median):,}" if float(median).is_integer() else f"{median:,.1f}"
    return (
        f"min {lengths['min']:,}, median {median_text}, max {lengths['max']:,}, "
        f"mean {lengths['mean']:,.1f}"
    )


def _upgrade(args: argparse.Namespace) -> int:
    from .appender import upgrade
    from .manifest import FORMAT_VERSION

    root = os.path.abspath(args.dataset)
    before = upgrade(root)
    if before is None:
        print(f"{root}: already format {FORMAT_VERSION}, nothing to do")
    else:
        print(f"{root}: upgraded from format {before} to {FORMAT_VERSION}")
    return OK


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_dataset

    with _pointing_to_partial(args.dataset):
        report = verify_dataset(os.path.abspath(args.dataset), progress=_progress(args))
    for problem in report.problems:
        print(f"{problem.path}: {problem.message}")
    for unchecked in report.unchecked:
        print(f"{unchecked.path}: {unchecked.describe()}")
    if report.problems:
        verdict, status = f"DAMAGED: {len(report.problems):,} bad files", DAMAGED
    elif report.unchecked:
        rows = {unchecked.rows for unchecked in report.unchecked}
        count = sum(len(span) for span in rows)
        verdict = f"NOT FULLY CHECKED: no damage found, but {count:,} rows have no checksum"
        status = UNCHECKED
    else:
        verdict, status = "ok", OK
    print(
        f"{report.path}: {verdict} ({report.files:,} files, "
        f"{format_bytes(report.bytes_hashed)} hashed in {report.seconds:.2f} s, "
        f"{format_rate(report.bytes_hashed, report.seconds)})"
    )
    return status


def _head(args: argparse.Namespace) -> int:
    if args.n < 0:
        raise ArgumentError(f"-n must be at least 0, got {args.n}")
    ds = _open(args.dataset)
    count = min(args.n, len(ds))
    columns = {name: ds[name] for name in ds.fields}
    ragged = {name for name, spec in ds.manifest.fields.items() if spec.ragged}
    # A ragged row is read as a view, one at a time: only its first elements are printed.
    rows = {name: column[:count] for name, column in columns.items() if name not in ragged}
    lines = []  # all read before any is printed: a damaged file leaves one error line
    for row in range(count):
        lines.append(f"[{row}]")
        for name, column in columns.items():
            if name in ragged:
                text = format_ragged_row(column[row])
            else:
                text = _format_value(rows[name][row], ds.labels.get(name))
            lines.append(f"  {name}: {text}")
    print("\n".join([*lines, f"({count:,} of {len(ds):,} rows)"]))
    return OK


def _ls(args: argparse.Namespace) -> int:
    from .manifest import offsets_path

    ds = _open(args.dataset)
    fields = ds.manifest.fields
    if args.field is not None:
        for path in ds.shard_files(args.field):
            print(f"{path}\t{offsets_path(path)}" if fields[args.field].ragged else path)
        return OK
    print(f"{ds.path}: {len(ds):,} rows in {len(ds.shards):,} shards, in row order")
    for shard in ds.shards:
        last = shard.row_offset + shard.rows - 1
        state = "sealed" if shard.sealed else "unsealed (being appended to)"
        print(f"  rows {shard.row_offset:,} to {last:,} ({shard.rows:,} rows, {state})")
        for name, file in shard.files.items():
            print(f"    {name}: {os.path.join(ds.path, file.path)}")
            if fields[name].ragged:
                print(f"    {name} (offsets): {os.path.join(ds.path, file.offsets_path)}")
    return OK


# -- attrs, labels -------------------------------------------------------------------------------


def _attrs(args: argparse.Namespace) -> int:
    if not args.assignments and not args.delete:
        print(json.dumps(_open(args.dataset).attrs, indent=2, ensure_ascii=False))
        return OK
    from .appender import append
    from .metadata import edit_appender

    with _pointing_to_partial(args.dataset):
        appender = append(args.dataset)
    try:
        attrs = dict(appender.manifest.attrs)
        for key in args.delete:
            if key not in attrs:
                raise ArgumentError(f"{appender.path}: no attribute {key!r} to delete")
            del attrs[key]
        attrs.update({key: _json_or_text(value) for key, value in args.assignments})
        manifest = edit_appender(appender, attrs=attrs)
    finally:
        appender.abort()
    print(json.dumps(manifest.attrs, indent=2, ensure_ascii=False))
    return OK


def _labels(args: argparse.Namespace) -> int:
    if not args.assignments and not args.remove:
        for name, vocabulary in _open(args.dataset).labels.items():
            print(f"{name}: {', '.join(vocabulary)}")
        return OK
    from .metadata import edit

    changes: dict[str, Any] = {name: None for name in args.remove}
    for name, value in args.assignments:
        parsed = _json_or_text(value)
        changes[name] = parsed if isinstance(parsed, list) else value.split(",")
    with _pointing_to_partial(args.dataset):
        manifest = edit(args.dataset, labels=changes)
    for name, vocabulary in manifest.labels.items():
        print(f"{name}: {', '.join(vocabulary)}")
    return OK


def _json_or_text(value: str) -> Any:
    """``value`` parsed as JSON if it is JSON (``3``, ``true``, ``[1, 2]``), else the text."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _format_value(value: np.ndarray, labels: tuple[str, ...] | None) -> str:
    """A label with its name, a small sample in full, a large one summarised."""
    if labels is not None and value.ndim == 0 and 0 <= int(value) < len(labels):
        return f"{int(value)} ({labels[int(value)]})"
    if value.size <= 16:
        return np.array2string(np.asarray(value), precision=4).replace("\n", " ")
    flat = np.asarray(value).reshape(-1)
    start = np.array2string(flat[:6], precision=4, separator=", ")[:-1]
    numbers = flat.astype(np.complex128 if flat.dtype.kind == "c" else np.float64)
    return (
        f"{value.dtype}{list(value.shape)} {start}, ...] "
        f"mean {numbers.mean():.4g}, std {numbers.std():.4g}"
    )


def format_ragged_row(row: np.ndarray) -> str:
    """A row of a ragged field as ``head`` shows it: its length and first elements.

    Example:
        >>> format_ragged_row(np.arange(312))
        'len=312 [0, 1, 2, 3, 4, 5, ...]'
        >>> format_ragged_row(np.arange(6).reshape(2, 3))
        'len=2 [[0, 1, 2], [3, 4, 5]]'
        >>> format_ragged_row(np.zeros(0, dtype=np.int32))
        'len=0 []'
    """
    numbers = max(math.prod(row.shape[1:]), 1)
    shown = row[: max(1, min(HEAD_ELEMENTS, HEAD_NUMBERS // numbers))]
    text = np.array2string(
        np.asarray(shown), separator=", ", threshold=HEAD_NUMBERS, edgeitems=3,
        max_line_width=sys.maxsize, formatter={"all": _number_text},
    )  # fmt: skip
    text = re.sub(r"\s*\n\s*", " ", text)
    if len(shown) < len(row):
        text = text[:-1] + ", ...]"
    return f"len={len(row):,} {text}"


def _number_text(number: Any) -> str:
    """A number of a ragged row, unpadded; a float or complex one to 4 significant digits."""
    if isinstance(number, (float, complex, np.inexact)):
        return format(number, ".4g")
    return str(number)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(rows=args.rows, steps=args.steps, workers=args.workers, directory=args.dir,
        progress=_progress(args))  # fmt: skip
    return OK


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
