"""A dataset opened in a parent reads correctly in children made by fork, spawn and forkserver."""

from __future__ import annotations

import multiprocessing
import pickle
from typing import Any

import numpy as np
import pytest

import memshard as ms
from memshard import mappings

START_METHODS = ["fork", "spawn", "forkserver"]
_INHERITED: dict[str, Any] = {}


@pytest.fixture
def dataset(make_dataset: Any) -> tuple[ms.Dataset, np.ndarray]:
    x = np.random.default_rng(3).standard_normal((300, 6, 5)).astype(np.float32)
    ds = make_dataset({"x": x, "i": np.arange(300)}, [170, 130], shard_rows=32)
    ds["x"][np.arange(0, 300, 7)]  # the parent has mapped shards before any child starts
    return ds, x


def _gather(args: tuple[ms.Dataset, np.ndarray]) -> dict[str, np.ndarray]:
    dataset, indices = args
    return dataset.take(indices)


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_pool_reads_the_same_batches(method: str, dataset: Any) -> None:
    ds, x = dataset
    batches = [np.random.default_rng(seed).integers(-300, 300, 64) for seed in range(6)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_gather, [(ds, batch) for batch in batches])
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result["x"], x[batch])
        np.testing.assert_array_equal(result["i"], np.arange(300)[batch])


def _gather_ragged(args: tuple[ms.Dataset, np.ndarray]) -> list[list[list[int]]]:
    dataset, indices = args
    batch = dataset.take(indices)["strokes"]
    return [row.tolist() for row in batch]


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_pool_gathers_the_same_ragged_rows(method: str, tmp_path: Any) -> None:
    rng = np.random.default_rng(5)
    rows = [rng.integers(-9, 9, (int(n), 3)).astype(np.int16) for n in rng.integers(0, 6, 200)]
    with ms.create(tmp_path / "d", {"strokes": ("int16", (None, 3))}, shard_bytes=96) as writer:
        writer.extend({"strokes": rows})
    ds = ms.open(tmp_path / "d")
    ds["strokes"][np.arange(0, 200, 9)]  # the parent has mapped shards before any child starts
    batches = [np.random.default_rng(seed).integers(-200, 200, 50) for seed in range(4)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_gather_ragged, [(ds, batch) for batch in batches])
    for batch, result in zip(batches, results, strict=True):
        assert result == [rows[i].tolist() for i in batch]


def _read_inherited(connection: Any) -> None:
    dataset = _INHERITED["dataset"]
    cache_was_empty = len(mappings.CACHE) == 0
    column = dataset["x"]
    connection.send((cache_was_empty, column[np.arange(300)[::-1]], column[5:40].copy()))
    connection.close()


def test_forked_child_remaps_instead_of_sharing_the_parents_cache(dataset: Any) -> None:
    ds, x = dataset
    assert len(mappings.CACHE) > 0
    _INHERITED["dataset"] = ds
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read_inherited, args=(sender,))
    child.start()
    cache_was_empty, reversed_rows, sliced = receiver.recv()
    child.join()
    assert child.exitcode == 0
    assert cache_was_empty
    np.testing.assert_array_equal(reversed_rows, x[::-1])
    np.testing.assert_array_equal(sliced, x[5:40])
    np.testing.assert_array_equal(ds["x"][5:40], x[5:40])  # the parent is unaffected


def _persistent_worker(tasks: Any, results: Any) -> None:
    dataset: ms.Dataset | None = None
    while (task := tasks.get()) is not None:
        payload, indices = task
        dataset = pickle.loads(payload) if payload is not None else dataset
        assert dataset is not None, "the first task carries the dataset"
        results.put(dataset.take(indices)["x"])


@pytest.mark.parametrize("method", START_METHODS)
def test_persistent_workers_keep_serving_after_new_commits(method: str, tmp_path: Any) -> None:
    path = tmp_path / "d"
    writer = ms.create(path, fields={"x": ("int64", ())}, shard_bytes=8 * 16)
    writer.extend({"x": np.arange(100)})
    writer.commit()
    ds = ms.open(path)
    context = multiprocessing.get_context(method)
    tasks, results = context.Queue(), context.Queue()
    # typeshed types get_context(str) as BaseContext, which has no Process; every real
    # context (fork, spawn, forkserver) has one.
    worker = context.Process(  # type: ignore[attr-defined]
        target=_persistent_worker, args=(tasks, results)
    )
    worker.start()
    try:
        tasks.put((pickle.dumps(ds), np.array([99, 0, 50])))
        assert results.get(timeout=60).tolist() == [99, 0, 50]
        writer.extend({"x": np.arange(100, 140)})
        writer.close()
        tasks.put((None, np.array([98, 1])))
        assert results.get(timeout=60).tolist() == [98, 1]
        ds.refresh()
        tasks.put((pickle.dumps(ds), np.array([139, 120])))
        assert results.get(timeout=60).tolist() == [139, 120]
    finally:
        tasks.put(None)
        worker.join(timeout=60)
    assert worker.exitcode == 0
