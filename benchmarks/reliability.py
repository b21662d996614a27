"""Checksums: how fast ``Dataset.verify`` runs on warm data, and whether it catches bit flips.

``python -m benchmarks.reliability [--quick] [--size-gib G] [--flips N] [--repeats R]``

1. **Speed.** A dataset of float32[3, 64, 64] images (``--size-gib``) is written and read once
   (page cache warm). ``verify`` is timed against two limits measured in the same run: reading
   the same shard files with ``preadv`` into one buffer (what reading costs) and xxh3 over an
   in-RAM buffer (what hashing costs). Goal: at least 1 GB/s.
2. **Bit flips.** On a small dataset (several shards, two fields, labels, attrs), ``--flips``
   times: pick the manifest, a shard header or shard data (in turn), one byte in it and a
   non-zero XOR mask, flip it, run :func:`memshard.verify.verify_dataset`, restore the byte.
   A flip is detected when the report is not ok (or the dataset no longer even opens as one);
   every flip must be (a correctness check: the run exits with 1 otherwise).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

import memshard as ms
from memshard.layout import MANIFEST_NAME
from memshard.verify import verify_dataset

from . import core
from .core import IMAGE_BYTES, IMAGE_SHAPE, Option, format_rate, yes_no
from .limits import BLOCK_BYTES, read_range

GOAL_BYTES_PER_SECOND = 1e9
REGIONS = ("manifest", "header", "data")


@dataclass(frozen=True)
class Config(core.Run):
    """What to run, resolved from the command line."""

    size_gib: float
    flips: int
    seed: int


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line; sizes left unset default to the mode's."""
    options = core.CommandLine(
        "python -m benchmarks.reliability",
        __doc__,
        Option("--size-gib", float, "size of the speed dataset", 2.0, 1 / 16),
        Option("--flips", int, "bit flips to inject", 3000, 300),
        repeats=(7, 3),
    )
    options.add_argument("--seed", type=int, default=0, help="seed of the flips")
    return Config(**options.parse(argv))


def shard_files(ds: ms.Dataset) -> list[tuple[str, int, int]]:
    """``(path, data offset, data bytes)`` of every shard file."""
    return [
        (os.path.join(ds.path, file.path), file.data_offset, file.nbytes)
        for shard in ds.shards
        for file in shard.files.values()
    ]


def measure_speed(scratch: str, size_gib: float, repeats: int) -> dict[str, Any]:
    """Bytes per second of ``verify``, of reading the same data and of hashing it in RAM."""
    rows = core.rows_for_gib(size_gib)
    core.clean_slate([], rows * IMAGE_BYTES)
    batch = np.random.default_rng(0).standard_normal((256, *IMAGE_SHAPE), dtype=np.float32)
    with ms.create(os.path.join(scratch, "speed"), {"x": ("float32", IMAGE_SHAPE)}) as writer:
        for start in range(0, rows, len(batch)):
            writer.extend({"x": batch[: rows - start]})
    ds = ms.open(os.path.join(scratch, "speed"))
    files = shard_files(ds)
    buffer = memoryview(bytearray(BLOCK_BYTES))
    block = np.random.default_rng(1).integers(0, 256, BLOCK_BYTES, dtype=np.uint8).data
    hasher = xxhash.xxh3_64()

    def read() -> None:
        for path, offset, nbytes in files:
            read_range(path, buffer, offset, offset + nbytes)

    def verify() -> None:
        report = ds.verify()
        assert report.ok, report.problems

    def hash_in_ram() -> None:
        for _ in range(max(1, ds.nbytes // BLOCK_BYTES)):
            hasher.update(block)

    runs = {"verify": verify, "read": read, "hash": hash_in_ram}
    read()  # warm the page cache
    samples = core.alternate(list(runs), repeats, lambda name, _: core.timed(runs[name]) / 1e9)
    rates = {
        f"{name}_bytes_per_second": ds.nbytes / statistics.median(samples[name]) for name in runs
    }
    return {"rows": rows, "bytes": ds.nbytes, "shards": len(ds.shards), "repeats": repeats, **rates}


def measure_flips(scratch: str, flips: int, seed: int) -> dict[str, dict[str, int]]:
    """Single-byte flips injected and detected in each region."""
    path = os.path.join(scratch, "flips")
    rng = np.random.default_rng(2)
    with ms.create(
        path,
        {"x": ("float32", (4, 8)), "y": ("int64", ())},
        shard_bytes=40 * (128 + 8),
        labels={"y": ["cat", "dog", "eel"]},
        attrs={"source": "benchmark", "scale": 0.5},
    ) as writer:
        writer.extend({"x": rng.standard_normal((150, 4, 8)), "y": rng.integers(0, 3, 150)})
    manifest, files = os.path.join(path, MANIFEST_NAME), shard_files(ms.open(path))
    targets = {
        "manifest": [(manifest, 0, os.path.getsize(manifest))],
        "header": [(name, 0, offset) for name, offset, _ in files],
        "data": [(name, offset, offset + nbytes) for name, offset, nbytes in files],
    }
    rng = np.random.default_rng(seed)
    counts = {region: {"injected": 0, "detected": 0} for region in REGIONS}
    for trial in range(flips):
        region = REGIONS[trial % len(REGIONS)]
        name, start, end = targets[region][int(rng.integers(len(targets[region])))]
        position, mask = int(rng.integers(start, end)), int(rng.integers(1, 256))
        with open(name, "r+b") as handle:
            handle.seek(position)
            original = handle.read(1)[0]
            handle.seek(position)
            handle.write(bytes([original ^ mask]))
        try:
            detected = not verify_dataset(path).ok
        except ms.MemshardError:
            detected = True  # no longer a dataset at all: also refused
        finally:
            with open(name, "r+b") as handle:
                handle.seek(position)
                handle.write(bytes([original]))
        counts[region]["injected"] += 1
        counts[region]["detected"] += int(detected)
    assert verify_dataset(path).ok, "restoring the flipped bytes left the dataset damaged"
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the speed and the flips, print the report and optionally write JSON."""
    args = parse_args(argv)
    with core.scratch_directory(args.dir) as scratch:
        method = [f"medians of {args.repeats} runs, the three measurements alternating"]
        out = core.Report("memshard checksum benchmark", args.mode, scratch, method)
        speed = measure_speed(scratch, args.size_gib, args.repeats)
        flips = measure_flips(scratch, args.flips, args.seed)
    rate = speed["verify_bytes_per_second"]
    met = out.goal("verify_bytes_per_second", rate >= GOAL_BYTES_PER_SECOND)
    rows = [
        [
            "`ds.verify()` (sizes, headers, every data byte)",
            format_rate(rate),
            ">= 1.00 GB/s",
            yes_no(met),
        ]
    ]
    for name, limit in (("read", "`preadv` of the same files"), ("hash", "xxh3 over RAM")):
        rows.append([f"limit: {limit}", format_rate(speed[f"{name}_bytes_per_second"]), "-", "-"])
    for region, count in flips.items():
        passed = out.check(f"flips_{region}", count["detected"] == count["injected"])
        shown = f"{count['detected']} of {count['injected']}"
        rows.append([f"single-byte flips in the {region} detected", shown, "all", yes_no(passed)])
    out.add(
        f"speed dataset: {speed['rows']:,} rows of float32{list(IMAGE_SHAPE)}, "
        f"{speed['bytes'] / (1 << 30):.2f} GiB in {speed['shards']} shards, page cache warm",
        core.markdown(["measurement", "result", "goal", "met"], rows),
    )
    out.record.update(speed=speed, flips=flips)
    return out.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
