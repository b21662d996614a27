"""Checksums: how fast ``Dataset.verify`` runs on warm data, and whether it catches bit flips.

``python -m benchmarks.reliability [--quick] [--size-gib G] [--flips N] [--repeats R]``

1. **Speed.** A dataset of float32[3, 64, 64] images (``--size-gib``) is written and read once
   (page cache warm). ``verify`` is timed against two limits measured in the same run: reading
   the same shard files with ``preadv`` into one buffer (what reading costs) and xxh3 over an
   in-RAM buffer (what hashing costs). Goal: at least 1 GB/s.
2. **Bit flips.** On a small dataset (several shards, two fields, labels, attrs), ``--flips``
   times: pick the manifest, a shard header or shard data (in turn), one byte in it and a
   non-zero XOR mask, flip it, run :func:`memshard.verify.verify_dataset`, restore the byte.
   A flip is detected when the report is not ok (or the dataset no longer even opens as one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash

import memshard as ms
from benchmarks.core import machine_info, scratch_directory, touch_and_free_memory
from memshard.layout import MANIFEST_NAME
from memshard.verify import verify_dataset

GOAL_BYTES_PER_SECOND = 1e9
SAMPLE_SHAPE = (3, 64, 64)
ROW_BYTES = 4 * 3 * 64 * 64
READ_BUFFER = 8 << 20
REGIONS = ("manifest", "header", "data")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 MiB and 300 flips")
    parser.add_argument("--size-gib", type=float, default=None, help="speed dataset size")
    parser.add_argument("--flips", type=int, default=None, help="bit flips to inject")
    parser.add_argument("--repeats", type=int, default=None, help="timed verify runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="scratch directory parent")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.size_gib = args.size_gib or (1 / 16 if args.quick else 2.0)
    args.flips = args.flips or (300 if args.quick else 3000)
    args.repeats = args.repeats or (3 if args.quick else 7)
    return args


def write_images(path: str, rows: int) -> ms.Dataset:
    """``rows`` images of random floats, written in 256-row batches."""
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((256, *SAMPLE_SHAPE), dtype=np.float32)
    with ms.create(path, {"x": ("float32", SAMPLE_SHAPE)}) as writer:
        for start in range(0, rows, len(batch)):
            writer.extend({"x": batch[: min(len(batch), rows - start)]})
    return ms.open(path)


def shard_files(ds: ms.Dataset) -> list[tuple[str, int, int]]:
    """``(path, data offset, data bytes)`` of every shard file."""
    return [
        (os.path.join(ds.path, file.path), file.data_offset, file.nbytes)
        for shard in ds.shards
        for file in shard.files.values()
    ]


def read_files(files: Sequence[tuple[str, int, int]]) -> int:
    """Read the data of every file with ``preadv`` into one buffer; return the bytes read."""
    buffer = memoryview(bytearray(READ_BUFFER))
    total = 0
    for path, offset, nbytes in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            end = offset + nbytes
            while offset < end:
                got = os.preadv(fd, [buffer[: min(READ_BUFFER, end - offset)]], offset)
                offset += got
                total += got
        finally:
            os.close(fd)
    return total


def hash_in_ram(nbytes: int) -> float:
    """Seconds xxh3 takes over ``nbytes`` bytes already in RAM (one reused 8 MiB block)."""
    block = np.random.default_rng(1).integers(0, 256, READ_BUFFER, dtype=np.uint8).data
    hasher = xxhash.xxh3_64()
    started = time.perf_counter()
    for _ in range(max(1, nbytes // READ_BUFFER)):
        hasher.update(block)
    return time.perf_counter() - started


def measure_speed(scratch: str, size_gib: float, repeats: int) -> dict[str, Any]:
    rows = max(1, int(size_gib * (1 << 30)) // ROW_BYTES)
    touch_and_free_memory(rows * ROW_BYTES)
    ds = write_images(os.path.join(scratch, "speed"), rows)
    files = shard_files(ds)
    read_files(files)  # warm the page cache
    verify_s, read_s, hash_s = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        report = ds.verify()
        verify_s.append(time.perf_counter() - started)
        assert report.ok, report.problems
        started = time.perf_counter()
        read_files(files)
        read_s.append(time.perf_counter() - started)
        hash_s.append(hash_in_ram(ds.nbytes))
    nbytes = ds.nbytes
    return {
        "rows": rows,
        "bytes": nbytes,
        "shards": len(ds.shards),
        "repeats": repeats,
        "verify_bytes_per_second": nbytes / statistics.median(verify_s),
        "read_bytes_per_second": nbytes / statistics.median(read_s),
        "hash_bytes_per_second": nbytes / statistics.median(hash_s),
    }


def flip_targets(path: str) -> dict[str, list[tuple[str, int, int]]]:
    """For each region, ``(file, first byte, end)`` ranges that a flip may hit."""
    ds = ms.open(path)
    manifest = os.path.join(path, MANIFEST_NAME)
    files = shard_files(ds)
    return {
        "manifest": [(manifest, 0, os.path.getsize(manifest))],
        "header": [(name, 0, offset) for name, offset, _ in files],
        "data": [(name, offset, offset + nbytes) for name, offset, nbytes in files],
    }


def write_small(path: str) -> None:
    rng = np.random.default_rng(2)
    with ms.create(
        path,
        {"x": ("float32", (4, 8)), "y": ("int64", ())},
        shard_bytes=40 * (128 + 8),
        labels={"y": ["cat", "dog", "eel"]},
        attrs={"source": "benchmark", "scale": 0.5},
    ) as writer:
        writer.extend({"x": rng.standard_normal((150, 4, 8)), "y": rng.integers(0, 3, 150)})


def measure_flips(scratch: str, flips: int, seed: int) -> dict[str, Any]:
    path = os.path.join(scratch, "flips")
    write_small(path)
    targets = flip_targets(path)
    rng = np.random.default_rng(seed)
    counts = {region: {"injected": 0, "detected": 0} for region in REGIONS}
    for trial in range(flips):
        region = REGIONS[trial % len(REGIONS)]
        name, start, end = targets[region][int(rng.integers(len(targets[region])))]
        position = int(rng.integers(start, end))
        mask = int(rng.integers(1, 256))
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


def render(machine: dict[str, str], args: argparse.Namespace, speed: dict[str, Any],
           flips: dict[str, Any]) -> str:  # fmt: skip
    lines = ["# memshard checksum benchmark" + (" (quick)" if args.quick else ""), ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [
        f"- speed dataset: {speed['rows']:,} rows of float32{list(SAMPLE_SHAPE)}, "
        f"{speed['bytes'] / (1 << 30):.2f} GiB in {speed['shards']} shards, page cache warm; "
        f"medians of {speed['repeats']} runs, the three measurements alternating",
        "",
        "| measurement | result | goal | met |",
        "|---|---|---|---|",
    ]
    rate = speed["verify_bytes_per_second"]
    met = "yes" if rate >= GOAL_BYTES_PER_SECOND else "no"
    lines.append(f"| `ds.verify()` (sizes, headers, every data byte) | {rate / 1e9:.2f} GB/s "
                 f"| >= 1.00 GB/s | {met} |")  # fmt: skip
    lines.append(f"| limit: `preadv` of the same files | {speed['read_bytes_per_second'] / 1e9:.2f}"
                 " GB/s | - | - |")  # fmt: skip
    lines.append(f"| limit: xxh3 over RAM | {speed['hash_bytes_per_second'] / 1e9:.2f} GB/s "
                 "| - | - |")  # fmt: skip
    for region in REGIONS:
        count = flips[region]
        met = "yes" if count["detected"] == count["injected"] else "no"
        lines.append(f"| single-byte flips in the {region} detected | {count['detected']} of "
                     f"{count['injected']} | all | {met} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with scratch_directory(args.dir) as scratch:
        machine = machine_info(scratch)
        speed = measure_speed(scratch, args.size_gib, args.repeats)
        flips = measure_flips(scratch, args.flips, args.seed)
    print(render(machine, args, speed, flips))
    print(f"\nran in {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "speed": speed, "flips": flips}, handle, indent=2)
    missed = speed["verify_bytes_per_second"] < GOAL_BYTES_PER_SECOND or any(
        count["detected"] != count["injected"] for count in flips.values()
    )
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
