"""``memshard demo``: the whole path on synthetic data, HDF5 -> memshard -> PyTorch training.

1. write an HDF5 file such as another tool would: chunked, compressed images in a group and
   integer labels whose vocabulary is an attribute;
2. convert it with :func:`memshard.from_hdf5` (worker processes, progress bar);
3. verify every checksum;
4. train a small linear classifier through a ``DataLoader`` with worker processes and
   :class:`memshard.torch.ShardAwareSampler`, and report the throughput.

The images of class ``k`` are a fixed random pattern plus noise, so the loss visibly falls.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import interrupt
from .convert import from_hdf5
from .dependencies import require
from .progress import format_bytes, format_rate, progress_bar

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
BATCH_SIZE = 256
#: Rows per HDF5 chunk of the demo file.
CHUNK_ROWS = 128
#: Standard deviation of the noise over the unit-variance class patterns (the images are
#: then scaled back to unit variance).
NOISE = 8.0
#: Shard size of the demo dataset: small, so that the file makes several shards.
SHARD_BYTES = 32 << 20


@dataclass(frozen=True)
class DemoResult:
    """The figures the demo prints."""

    rows: int
    source_bytes: int
    convert_seconds: float
    verify_ok: bool
    steps: int
    samples_per_second: float
    first_loss: float
    last_loss: float
    accuracy: float


@interrupt.deferring
def run(
    *,
    rows: int = 20_000,
    steps: int = 60,
    workers: int = 2,
    directory: str | None = None,
    progress: bool | None = None,
) -> DemoResult:
    """Run the demo, printing one line per stage; files go to ``directory`` (kept) or to a
    temporary directory (removed).

    Raises:
        MissingDependencyError: torch or h5py is not installed.
        KeyboardInterrupt: Ctrl-C, taken at the next block or training step (see
            :mod:`memshard.interrupt`); with ``directory``, a conversion it interrupted is
            kept there, and the next run starts it over.
    """
    torch = require("torch", "torch")
    require("h5py", "hdf5")
    workdir = directory or tempfile.mkdtemp(prefix="memshard-demo-")
    os.makedirs(workdir, exist_ok=True)
    try:
        print(f"memshard demo in {workdir}")
        source = os.path.join(workdir, "synthetic.h5")
        target = os.path.join(workdir, "synthetic.memshard")
        source_bytes = write_synthetic_hdf5(source, rows, progress)
        print(
            f"1/4 wrote {source}: {rows:,} images float32{list(IMAGE_SHAPE)} in /train/images "
            f"(lzf-compressed chunks) and /train/labels, {format_bytes(source_bytes)} on disk"
        )
        started = time.perf_counter()
        dataset = from_hdf5(
            source, target, shard_bytes=SHARD_BYTES, workers=workers, progress=progress,
            overwrite=True,
        )  # fmt: skip
        convert_seconds = time.perf_counter() - started
        print(
            f"2/4 converted to {target}: {len(dataset.shards):,} shards, "
            f"{format_bytes(dataset.nbytes)} in {convert_seconds:.2f} s "
            f"({format_rate(dataset.nbytes, convert_seconds)}, {workers} worker processes)"
        )
        report = dataset.verify(progress=progress)
        print(
            f"3/4 verified {report.files:,} shard files: {'ok' if report.ok else 'DAMAGED'}, "
            f"{format_bytes(report.bytes_hashed)} checksummed in {report.seconds:.2f} s"
        )
        trained = _train(torch, target, steps, workers)
        print(
            f"4/4 trained a linear classifier for {steps} steps of {BATCH_SIZE} through a "
            f"DataLoader with {workers} workers: {format_rate(trained['rate'], 1, 'samples')}; "
            "loss "
            f"{trained['first']:.3f} -> {trained['last']:.3f}, accuracy on the last batches "
            f"{trained['accuracy']:.0%}"
        )
        return DemoResult(
            rows=rows,
            source_bytes=source_bytes,
            convert_seconds=convert_seconds,
            verify_ok=report.ok,
            steps=steps,
            samples_per_second=trained["rate"],
            first_loss=trained["first"],
            last_loss=trained["last"],
            accuracy=trained["accuracy"],
        )
    finally:
        if directory is None:
            shutil.rmtree(workdir, ignore_errors=True)


def write_synthetic_hdf5(path: str, rows: int, progress: bool | None = None) -> int:
    """Write the demo's HDF5 file block by block and return its size in bytes."""
    import h5py

    rng = np.random.default_rng(0)
    patterns = rng.standard_normal((len(CLASSES), *IMAGE_SHAPE)).astype(np.float32)
    with (
        h5py.File(path, "w") as handle,
        progress_bar(rows, desc="synthetic.h5", enabled=progress, unit="rows") as bar,
    ):
        handle.attrs["description"] = "memshard demo: class patterns plus noise"
        group = handle.create_group("train")
        images = group.create_dataset(
            "images", shape=(rows, *IMAGE_SHAPE), dtype="float32",
            chunks=(min(rows, CHUNK_ROWS), *IMAGE_SHAPE), compression="lzf",
        )  # fmt: skip
        labels = group.create_dataset("labels", shape=(rows,), dtype="int64")
        labels.attrs["labels"] = list(CLASSES)
        block = CHUNK_ROWS * 16
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            classes = rng.integers(0, len(CLASSES), stop - start)
            noise = rng.standard_normal((stop - start, *IMAGE_SHAPE), dtype=np.float32)
            images[start:stop] = (patterns[classes] + NOISE * noise) / NOISE
            labels[start:stop] = classes
            bar.update(stop - start)
    return os.path.getsize(path)


def _train(torch: Any, path: str, steps: int, workers: int) -> dict[str, float]:
    from .torch import MemshardDataset, ShardAwareSampler, loader

    torch.manual_seed(0)
    dataset = MemshardDataset(path, fields=["train_images", "train_labels"])
    sampler = ShardAwareSampler(dataset, seed=0)
    data = loader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=workers)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(IMAGE_SHAPE), 10))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses: list[float] = []
    correct = seen = 0
    samples = 0
    started = time.perf_counter()
    epoch = 0
    while len(losses) < steps:
        sampler.set_epoch(epoch)
        for batch in _batches(data):
            images, labels = batch["train_images"], batch["train_labels"]
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            samples += len(labels)
            if len(losses) > steps - 10:
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
            if len(losses) == steps:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    return {
        "rate": samples / seconds,
        "first": losses[0],
        "last": float(np.mean(losses[-5:])),
        "accuracy": correct / max(1, seen),
    }


def _batches(data: Any) -> Any:
    """The batches of the DataLoader ``data``, stopping at the first Ctrl-C.

    A Ctrl-C also reaches the loader's worker processes, which then exit; the loader reports
    that as an error of its own, which is the interrupt."""
    iterator = iter(data)
    while True:
        interrupt.check()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception:
            interrupt.check()
            raise
        yield batch
