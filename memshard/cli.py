"""The ``memshard`` command (also ``python -m memshard``): convert, info, verify, head, demo.

Exit status: 0 on success, 1 when ``verify`` finds a damaged file (or an unexpected failure),
2 for a user error (bad arguments, a missing or invalid source or dataset), reported as one
line without a traceback, 3 when ``verify`` finds no damage but could not check some rows
(the unsealed shard of a format 1.0 dataset has no checksum), and 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ArgumentError, MemshardError, SourceError
from .smallfile import open_regular

if TYPE_CHECKING:
    from .sources import SourcePlan

#: Exit statuses.
OK, DAMAGED, USAGE, UNCHECKED, INTERRUPTED = 0, 1, 2, 3, 130
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        print("memshard: interrupted", file=sys.stderr)
        return INTERRUPTED
    except MemshardError as exc:
        print(f"memshard: error: {exc}", file=sys.stderr)
        return USAGE
    except OSError as exc:
        print(f"memshard: error: {exc}", file=sys.stderr)
        return USAGE


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memshard",
        description="Larger-than-RAM datasets as memory-mapped .npy shards.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert an HDF5 file, a zarr store or .npy files into a dataset",
        description="Convert SRC (an HDF5 file, a zarr store, a .npy file or a directory of "
        ".npy files) into a new memshard dataset DST. DST appears only once complete; an "
        "interrupted conversion is completed by running the same command with --resume.",
    )
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("dst", metavar="DST")
    convert.add_argument(
        "--field",
        dest="fields",
        action="append",
        type=_assignment,
        metavar="NAME=PATH",
        help="take the array at PATH as field NAME (repeat; default: every numeric array "
        "with the common row count)",
    )
    convert.add_argument("--format", choices=("auto", "hdf5", "zarr", "npy"), default="auto")
    convert.add_argument(
        "--shard-size", type=parse_size, default=256 << 20, metavar="SIZE",
        help="target shard size, e.g. 256MB (default)",
    )  # fmt: skip
    convert.add_argument("--workers", type=_positive_int, default=1, metavar="N")
    convert.add_argument(
        "--labels", action="append", type=_assignment, metavar="FIELD=A,B,...",
        help="label vocabulary of an integer field (repeat per field)",
    )  # fmt: skip
    convert.add_argument(
        "--label-attr", default="labels", metavar="NAME",
        help="attribute holding a field's label vocabulary (default: labels)",
    )  # fmt: skip
    convert.add_argument("--resume", action="store_true", help="complete an interrupted run")
    convert.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset at DST"
    )
    convert.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    convert.set_defaults(run=_convert)

    info = commands.add_parser("info", help="describe a dataset")
    info.add_argument("dst", metavar="DST")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    verify = commands.add_parser(
        "verify",
        help="check every shard's size, header and checksum (exit 1 if damaged, 3 if some "
        "rows have no checksum to check)",
    )
    verify.add_argument("dst", metavar="DST")
    verify.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    head = commands.add_parser("head", help="print the first rows")
    head.add_argument("dst", metavar="DST")
    head.add_argument("-n", type=int, default=5, metavar="ROWS", help="rows (default 5)")
    head.set_defaults(run=_head)

    demo = commands.add_parser(
        "demo",
        help="HDF5 -> memshard -> PyTorch DataLoader, end to end on synthetic data",
        description="Write a synthetic HDF5 file, convert it, verify it and train a tiny "
        "model through a DataLoader with worker processes; print the throughput.",
    )
    demo.add_argument("--rows", type=_positive_int, default=20_000)
    demo.add_argument("--steps", type=_positive_int, default=60)
    demo.add_argument("--workers", type=_positive_int, default=2)
    demo.add_argument("--dir", default=None, help="keep the files here (default: a temp dir)")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    return parser


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


# -- convert -----------------------------------------------------------------------------------


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert, skipped_notes, staging_path
    from .progress import is_enabled

    plan = _plan(args)
    started = time.perf_counter()
    try:
        ds = convert(
            plan,
            args.dst,
            shard_bytes=args.shard_size,
            workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=_progress(args),
        )
    except KeyboardInterrupt:
        staging = staging_path(args.dst)
        if os.path.isdir(staging):
            print(
                f"memshard: interrupted; the rows converted so far are kept in {staging}: "
                "run the same command with --resume to complete it",
                file=sys.stderr,
            )
            return INTERRUPTED
        raise
    seconds = time.perf_counter() - started
    if not args.quiet and not is_enabled(_progress(args)):  # a bar: convert listed them
        for note in skipped_notes(plan):
            print(f"memshard: {note}", file=sys.stderr)
    if not args.quiet:
        print(
            f"{ds.path}: {len(ds)} rows, {len(ds.shards)} shards, {_human(ds.nbytes)} "
            f"in {seconds:.1f} s ({_human(ds.nbytes / max(seconds, 1e-9))}/s)"
        )
    return OK


def _plan(args: argparse.Namespace) -> SourcePlan:
    """The conversion ``memshard convert`` asks for, planned (nothing written yet)."""
    source_format = args.format if args.format != "auto" else detect_format(args.src)
    fields = dict(args.fields) if args.fields else None
    labels = {name: value.split(",") for name, value in args.labels or []} or None
    if source_format == "hdf5":
        from . import hdf5

        return hdf5.plan(args.src, fields, labels=labels, label_attr=args.label_attr)
    if source_format == "zarr":
        from . import zarr

        return zarr.plan(args.src, fields, labels=labels, label_attr=args.label_attr)
    from . import npysource

    return npysource.plan(npy_inputs(args.src, fields), labels=labels)


def detect_format(src: str) -> str:
    """``"hdf5"``, ``"zarr"`` or ``"npy"`` for the source at ``src``, judged by its content.

    Raises:
        SourceError: ``src`` does not exist, is none of them, or is a FIFO, a socket or a
            device (refused without reading: see :mod:`memshard.smallfile`).
    """
    if os.path.isdir(src):
        if any(os.path.exists(os.path.join(src, n)) for n in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr"
        if any(name.endswith(".npy") for name in os.listdir(src)):
            return "npy"
        raise SourceError(f"{src}: a directory that is neither a zarr store nor holds .npy files")
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
    raise SourceError(f"{src}: not an HDF5 file, a zarr store or a .npy file")


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


# -- info, verify, head --------------------------------------------------------------------------


def describe(path: str) -> dict[str, Any]:
    """Everything ``memshard info`` prints, as JSON-ready values."""
    from .reader import open as open_dataset

    ds = open_dataset(path)
    manifest = ds.manifest
    return {
        "path": ds.path,
        "format_version": manifest.version,
        "uuid": manifest.uuid,
        "generation": manifest.generation,
        "rows": len(ds),
        "shards": len(manifest.shards),
        "sealed_shards": sum(shard.sealed for shard in manifest.shards),
        "shard_rows": manifest.shard_rows,
        "bytes": ds.nbytes,
        "fields": {
            name: {
                "dtype": str(info.dtype),
                "shape": list(info.shape),
                "row_bytes": manifest.fields[name].row_bytes,
                "labels": list(ds.labels[name]) if name in ds.labels else None,
            }
            for name, info in ds.fields.items()
        },
        "attrs": ds.attrs,
    }


def _info(args: argparse.Namespace) -> int:
    summary = describe(args.dst)
    if args.json:
        print(json.dumps(summary, indent=2))
        return OK
    print(summary["path"])
    print(
        f"  rows      {summary['rows']:,} in {summary['shards']} shards "
        f"({summary['sealed_shards']} sealed, up to {summary['shard_rows']:,} rows each)"
    )
    print(f"  bytes     {_human(summary['bytes'])} ({summary['bytes']:,})")
    print(f"  format    {summary['format_version']}, generation {summary['generation']}, "
          f"uuid {summary['uuid']}")  # fmt: skip
    print("  fields")
    width = max(len(name) for name in summary["fields"])
    for name, field in summary["fields"].items():
        shape = str(tuple(field["shape"]))
        size = _human(field["row_bytes"])
        line = f"    {name:<{width}}  {field['dtype']:<9} {shape:<16} {size}/row"
        if field["labels"] is not None:
            shown = ", ".join(field["labels"][:8]) + (", ..." if len(field["labels"]) > 8 else "")
            line += f"  labels ({len(field['labels'])}): {shown}"
        print(line)
    if summary["attrs"]:
        print("  attrs")
        for key, value in summary["attrs"].items():
            print(f"    {key}: {_short(json.dumps(value))}")
    return OK


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_dataset

    report = verify_dataset(os.path.abspath(args.dst), progress=_progress(args))
    for problem in report.problems:
        print(f"{problem.path}: {problem.message}")
    for unchecked in report.unchecked:
        print(f"{unchecked.path}: {unchecked.describe()}")
    rate = report.bytes_hashed / max(report.seconds, 1e-9)
    if report.problems:
        verdict, status = f"DAMAGED: {len(report.problems)} bad files", DAMAGED
    elif report.unchecked:
        rows = {unchecked.rows for unchecked in report.unchecked}
        count = sum(len(span) for span in rows)
        verdict = f"NOT FULLY CHECKED: no damage found, but {count} rows have no checksum"
        status = UNCHECKED
    else:
        verdict, status = "ok", OK
    print(
        f"{report.path}: {verdict} ({report.files} files, {_human(report.bytes_hashed)} hashed "
        f"in {report.seconds:.2f} s, {_human(rate)}/s)"
    )
    return status


def _head(args: argparse.Namespace) -> int:
    from .reader import open as open_dataset

    if args.n < 0:
        raise ArgumentError(f"-n must be at least 0, got {args.n}")
    ds = open_dataset(args.dst)
    count = min(args.n, len(ds))
    rows = ds[:count] if count else {}
    for row in range(count):
        print(f"[{row}]")
        for name in ds.fields:
            print(f"  {name}: {_format_value(rows[name][row], ds.labels.get(name))}")
    print(f"({count} of {len(ds):,} rows)")
    return OK


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


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(rows=args.rows, steps=args.steps, workers=args.workers, directory=args.dir,
        progress=_progress(args))  # fmt: skip
    return OK


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
