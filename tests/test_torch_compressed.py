"""The torch ``Dataset`` over compressed fields: its batched path and samples give the rows
written, in every ragged mode, with no workers and with fork and spawn workers (batches
gathered into shared memory); a forked worker decompresses in threads of its own, even when
its parent held the thread pool's lock as it forked."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import memshard as ms
import memshard.torch as mt
from memshard import compressedread

#: A zstd field of 1 KiB rows, four to a block; an lz4 ragged field; a blosc ragged field of
#: int16 triples; the row index.
FIELDS = {
    "img": ("uint8", (1, 32, 32), {"codec": "zstd", "block_bytes": 4096}),
    "codes": ("int32", (None,), {"codec": "lz4", "block_bytes": 1024}),
    "strokes": ("int16", (None, 3), {"codec": "blosc", "block_bytes": 1024}),
    "i": ("int64", ()),
}
ROWS = 60


def rows(start: int, count: int) -> dict[str, Any]:
    """Row ``i``: ``img`` bytes ``(i + j) % 251``, ``i * 7 % 13`` codes ``1000 * i + j``,
    ``i % 5`` strokes all ``i``, and ``i``."""
    index = np.arange(start, start + count)
    img = ((index[:, None] + np.arange(1024)) % 251).astype(np.uint8).reshape(count, 1, 32, 32)
    return {
        "img": img,
        "codes": [(1000 * i + np.arange(i * 7 % 13)).astype(np.int32) for i in index.tolist()],
        "strokes": [np.full((i % 5, 3), i, np.int16) for i in index.tolist()],
        "i": index,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:data:`ROWS` rows in shards of about 20 rows, written in three commits (blocks
    written by commits mid-block)."""
    path = tmp_path_factory.mktemp("torch-compressed") / "ds"
    with ms.create(path, fields=FIELDS, shard_bytes=24 << 10) as writer:
        for start, count in ((0, 13), (13, 30), (43, ROWS - 43)):
            writer.extend(rows(start, count))
            writer.commit()
    assert len(ms.open(path).shards) >= 3
    return path


EXPECTED = rows(0, ROWS)


def assert_batch(batch: Mapping[str, torch.Tensor], modes: Mapping[str, Any]) -> None:
    """A batch (its rows named by ``i``) holds the rows written, each ragged field as its
    mode makes it."""
    indices = batch["i"].tolist()
    np.testing.assert_array_equal(batch["img"].numpy(), EXPECTED["img"][indices])
    for name in ("codes", "strokes"):
        want = [EXPECTED[name][i] for i in indices]
        mode = modes.get(name, "pad")
        if mode == "packed":
            offsets = np.concatenate(([0], np.cumsum([len(row) for row in want])))
            assert batch[f"{name}_offsets"].tolist() == offsets.tolist()
            np.testing.assert_array_equal(batch[name].numpy(), np.concatenate(want))
        elif mode == "nested":
            for got, row in zip(batch[name].unbind(), want, strict=True):
                np.testing.assert_array_equal(got.numpy(), row)
        else:
            lengths = batch[f"{name}_lengths"].tolist()
            assert lengths == [len(row) for row in want]
            for got, row, length in zip(batch[name].numpy(), want, lengths, strict=True):
                np.testing.assert_array_equal(got[:length], row)
                assert not got[length:].any()


@pytest.mark.parametrize(
    "modes",
    [{}, {"codes": "packed", "strokes": "nested"}, {"codes": "nested", "strokes": "packed"}],
    ids=["pad", "packed-nested", "nested-packed"],
)
def test_the_batched_path_gives_the_rows_written(corpus: Path, modes: dict[str, Any]) -> None:
    dataset = mt.MemshardDataset(corpus, ragged=modes)
    for indices in ([5, 0, 59, 13, 14, 12], list(range(ROWS))[::-1], [7, 7, 7], []):
        batch = mt.collate(dataset.__getitems__(indices))
        assert batch["i"].tolist() == indices
        if indices:
            assert_batch(batch, modes)


def test_a_sample_is_its_row_as_stored(corpus: Path) -> None:
    dataset = mt.MemshardDataset(corpus)
    for index in (0, 12, 13, 44, ROWS - 1):
        sample = dataset[index]
        np.testing.assert_array_equal(sample["img"].numpy(), EXPECTED["img"][index])
        np.testing.assert_array_equal(sample["codes"].numpy(), EXPECTED["codes"][index])
        np.testing.assert_array_equal(sample["strokes"].numpy(), EXPECTED["strokes"][index])
        assert int(sample["i"]) == index


def shared(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch transform: whether each tensor's memory is shared, as the batch leaves the
    process that gathered it."""
    tensors = [
        part
        for tensor in batch.values()
        for part in ((tensor.values(), tensor.offsets()) if tensor.is_nested else (tensor,))  # type: ignore[attr-defined]
    ]
    return {**batch, "shared": torch.tensor([tensor.is_shared() for tensor in tensors])}


LOADERS = [
    pytest.param({}, id="no-workers"),
    *[
        pytest.param(
            {"num_workers": 2, "multiprocessing_context": method, "timeout": 60},
            id=f"{method}-2-workers",
        )
        for method in ("fork", "spawn")
    ],
]


@pytest.mark.parametrize("options", LOADERS)
def test_a_loader_hands_over_compressed_batches(corpus: Path, options: dict[str, Any]) -> None:
    """Shuffled batches read in the main process or in workers (a dataset opened and read in
    the parent first); a worker gathers into shared memory."""
    dataset = ms.open(corpus)
    dataset.take(np.arange(0, ROWS, 3), threads=2)  # mapped, and a pool made, in the parent
    modes: dict[str, mt.RaggedMode] = {"codes": "packed", "strokes": "nested"}
    torch_dataset = mt.MemshardDataset(dataset, ragged=modes, batch_transform=shared)
    generator = torch.Generator().manual_seed(5)
    batches = list(
        mt.loader(torch_dataset, batch_size=7, shuffle=True, generator=generator, **options)
    )
    workers = options.get("num_workers", 0) > 0
    for batch in batches:
        assert_batch(batch, modes)
        assert batch["shared"].tolist() == [workers] * len(batch["shared"])
    assert sorted(i for batch in batches for i in batch["i"].tolist()) == list(range(ROWS))


# -- threads in forked workers -------------------------------------------------------------------
#: Rows of 256 KiB, a block each: a batch of 8 is 8 blocks and 2 MiB, past both thresholds
#: of a threaded gather (compressedread.PARALLEL_MIN_BLOCKS and PARALLEL_MIN_BYTES).
BIG = {"img": ("uint8", (1, 512, 512), {"codec": "zstd", "block_bytes": 256 << 10})}
BIG_ROWS, BIG_BATCH = 32, 8


def big_rows(start: int, count: int) -> np.ndarray:
    index = np.arange(start, start + count)
    return ((index[:, None] + np.arange(512 * 512)) % 251).astype(np.uint8).reshape(-1, 1, 512, 512)


def decompressed_in(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch transform: the batch, and whether this process has decompression threads
    running and a pool of its own (keyed by its pid)."""
    names = [thread.name for thread in threading.enumerate()]
    own = any(pid == os.getpid() for pid, _ in compressedread._pools)
    threads = any(name.startswith("memshard-decompress") for name in names)
    return {**batch, "pid": torch.tensor([os.getpid()]), "threads": torch.tensor([threads, own])}


def test_a_forked_worker_decompresses_in_threads_of_its_own(tmp_path: Path) -> None:
    """The parent decompresses in threads, then forks two workers while holding the pool's
    lock (as another of its threads might): each worker gathers its batches of 8 blocks in
    threads of its own, and none hangs (the loader's timeout would fail the test)."""
    path = tmp_path / "big"
    with ms.create(path, fields=BIG) as writer:
        writer.extend({"img": big_rows(0, BIG_ROWS)})
    dataset = ms.open(path)
    parent = dataset.take(np.arange(BIG_BATCH), threads=2)["img"]  # the parent's pool
    np.testing.assert_array_equal(parent, big_rows(0, BIG_BATCH))
    assert any((os.getpid(), 2) == key for key in compressedread._pools)
    threaded = compressedread.default_threads() > 1
    torch_dataset = mt.MemshardDataset(dataset, batch_transform=decompressed_in)
    loader = mt.loader(
        torch_dataset, batch_size=BIG_BATCH, num_workers=2, multiprocessing_context="fork",
        timeout=60,
    )  # fmt: skip
    with compressedread._pools_lock:
        iterator = iter(loader)  # the workers are forked now, the lock held
    batches = list(iterator)
    assert len(batches) == BIG_ROWS // BIG_BATCH
    for number, batch in enumerate(batches):
        start = number * BIG_BATCH
        np.testing.assert_array_equal(batch["img"].numpy(), big_rows(start, BIG_BATCH))
        assert int(batch["pid"]) != os.getpid()
        assert batch["threads"].tolist() == [threaded, threaded]
