"""The PyTorch integration: MemshardDataset, Batch and collate, loader(), ShardAwareSampler,
DataLoader workers under fork/spawn/forkserver, DDP ranks; ragged batches as padded, packed
and nested tensors, and LengthGroupedSampler."""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.multiprocessing.spawn import start_processes
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import memshard as ms
import memshard.torch as mt
from memshard.errors import (
    ArgumentError,
    FieldNotFoundError,
    InvalidIndexError,
    MemshardError,
    SamplerError,
    TransformError,
)
from memshard.ragged import Ragged
from tests import ddp_worker
from tests.helpers import write_dataset
from tests.strategies import ragged_rows

START_METHODS = ["fork", "spawn", "forkserver"]

#: numpy dtype of a field -> the dtype its tensors must have.
TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.complex64): torch.complex64,
}

ROWS = 23


def _columns(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.standard_normal((rows, 2, 3)).astype(np.float32),
        "f16": rng.standard_normal((rows, 3)).astype(np.float16),
        "i": np.arange(rows, dtype=np.int64),
        "u8": rng.integers(0, 256, (rows, 2, 2)).astype(np.uint8),
        "flag": rng.integers(0, 2, rows).astype(np.bool_),
        "c64": (rng.standard_normal((rows, 2)) + 1j * rng.standard_normal((rows, 2))).astype(
            np.complex64
        ),
        "label": rng.integers(0, 3, rows).astype(np.uint8),
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A 23-row dataset of every dtype above, over irregular shards (sessions 9 + 14)."""
    path = tmp_path_factory.mktemp("torch") / "mixed"
    columns = _columns(ROWS)
    write_dataset(path, columns, [9, 14], shard_rows=4, labels={"label": ["cat", "dog", "eel"]})
    return path, columns


def _assert_tensors_equal(tensors: Mapping[str, torch.Tensor], expected: dict[str, Any]) -> None:
    assert list(tensors) == list(expected)
    for name, array in expected.items():
        tensor = tensors[name]
        assert isinstance(tensor, torch.Tensor), name
        assert tensor.dtype == TORCH_DTYPES[array.dtype], name
        assert tuple(tensor.shape) == array.shape, name
        np.testing.assert_array_equal(tensor.numpy(), array, err_msg=name)


# -- MemshardDataset --------------------------------------------------------------------------


def test_builds_from_a_path_or_an_open_dataset(mixed: Any) -> None:
    path, columns = mixed
    opened = ms.open(path)
    from_open = mt.MemshardDataset(opened)
    assert from_open.dataset is opened
    for dataset in (from_open, mt.MemshardDataset(path), mt.MemshardDataset(str(path))):
        assert len(dataset) == ROWS
        assert dataset.fields == list(columns)
        _assert_tensors_equal(dataset[5], {k: v[5] for k, v in columns.items()})


def test_selected_fields_come_back_in_the_order_asked(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path, ["u8", "f32", "i"])
    assert dataset.fields == ["u8", "f32", "i"]
    _assert_tensors_equal(dataset[-1], {k: columns[k][-1] for k in ("u8", "f32", "i")})
    batch = mt.collate(dataset.__getitems__([3, 1]))
    _assert_tensors_equal(batch, {k: columns[k][[3, 1]] for k in ("u8", "f32", "i")})


@pytest.mark.parametrize("fields", [["i", "nope"], ["nope"]])
def test_an_unknown_field_is_refused(mixed: Any, fields: list[str]) -> None:
    path, _ = mixed
    with pytest.raises(FieldNotFoundError, match="'nope'") as info:
        mt.MemshardDataset(path, fields)
    assert isinstance(info.value, KeyError)
    assert str(path) in str(info.value)


def test_an_empty_field_selection_is_refused(mixed: Any) -> None:
    with pytest.raises(FieldNotFoundError, match="no fields"):
        mt.MemshardDataset(mixed[0], [])


def test_a_sample_is_a_dict_of_tensors_of_the_field_dtypes(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(ms.open(path))
    for index in [0, 8, 9, 12, ROWS - 1, -1, -ROWS, np.int64(4), np.uint8(17)]:
        sample = dataset[index]
        _assert_tensors_equal(sample, {k: v[int(index)] for k, v in columns.items()})


def test_a_sample_is_a_writeable_copy(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = dataset[3]
        sample["f32"].add_(1000)
        sample["u8"].zero_()
    np.testing.assert_array_equal(dataset[3]["f32"].numpy(), columns["f32"][3])
    np.testing.assert_array_equal(ms.open(path)["u8"][3], columns["u8"][3])


@pytest.mark.parametrize(
    "indices",
    [
        [0, 1, 2],
        [22, 0, 9, 8, 13],
        [5, 5, 5, 0, 5],
        [-1, -23, 3, -10],
        list(range(ROWS))[::-1],
        [12],
        [],
    ],
)
def test_a_batch_collates_to_numpy_fancy_indexing(mixed: Any, indices: list[int]) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path)
    batch = dataset.__getitems__(indices)
    assert isinstance(batch, mt.Batch)
    assert len(batch) == len(indices)
    expected = {k: v[np.array(indices, dtype=np.int64)] for k, v in columns.items()}
    _assert_tensors_equal(mt.collate(batch), expected)


@settings(max_examples=50)
@given(data=st.data())
def test_any_batch_of_indices_matches_numpy(mixed: Any, data: st.DataObject) -> None:
    path, columns = mixed
    indices = data.draw(st.lists(st.integers(-ROWS, ROWS - 1), max_size=30), label="indices")
    as_numpy = data.draw(st.booleans(), label="as numpy array")
    key: Any = np.array(indices, dtype=np.int64) if as_numpy else indices
    batch = mt.MemshardDataset(path).__getitems__(key)
    _assert_tensors_equal(
        mt.collate(batch), {k: v[np.array(indices, dtype=np.int64)] for k, v in columns.items()}
    )


def test_batch_is_a_sequence_of_samples(mixed: Any) -> None:
    path, columns = mixed
    batch = mt.MemshardDataset(path, ["i", "f32"]).__getitems__([4, 2, 7])
    samples = list(batch)
    assert len(samples) == 3
    _assert_tensors_equal(samples[1], {"i": columns["i"][2], "f32": columns["f32"][2]})
    _assert_tensors_equal(batch[-1], {"i": columns["i"][7], "f32": columns["f32"][7]})
    assert [s["i"].item() for s in batch[1:]] == [2, 7]
    # Anything but a Batch goes to default_collate, which stacks the samples.
    _assert_tensors_equal(
        mt.collate(samples), {"i": columns["i"][[4, 2, 7]], "f32": columns["f32"][[4, 2, 7]]}
    )


def test_batch_tensors_share_memory_with_the_gathered_arrays(
    mixed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, columns = mixed
    opened = ms.open(path)
    gathered: list[dict[str, np.ndarray]] = []
    real_take = opened.take

    def recording_take(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        arrays = real_take(*args, **kwargs)
        gathered.append(arrays)
        return arrays

    monkeypatch.setattr(opened, "take", recording_take)
    dataset = mt.MemshardDataset(opened)
    indices = [20, 1, 9, 1, -2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors = mt.collate(dataset.__getitems__(indices))
    (arrays,) = gathered
    assert list(arrays) == list(tensors)
    for name, tensor in tensors.items():
        array = arrays[name]
        assert tensor.data_ptr() == array.ctypes.data, name
        assert tensor.untyped_storage().nbytes() >= array.nbytes, name
        assert array.flags.writeable, name
    # Writing through the tensor is seen by the array: one buffer, no copy, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors["f32"].fill_(7)
        tensors["flag"].logical_not_()
    assert (arrays["f32"] == 7).all()
    np.testing.assert_array_equal(arrays["flag"], ~columns["flag"][indices])
    np.testing.assert_array_equal(ms.open(path)["f32"][:], columns["f32"])


def test_label_fields_are_tensors_and_expose_their_vocabulary(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path, ["f32", "label"])
    assert dataset.labels == {"label": ("cat", "dog", "eel")}
    sample = dataset[6]
    assert sample["label"].dtype == torch.uint8
    assert sample["label"].item() == columns["label"][6]
    batch = mt.collate(dataset.__getitems__([6, 0]))
    assert batch["label"].tolist() == columns["label"][[6, 0]].tolist()
    assert mt.MemshardDataset(path, ["f32"]).labels == {}


def _scale(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"x": sample["f32"] * 2, "i": sample["i"] + 100}


def _add_total(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**batch, "total": batch["i"].sum().reshape(1)}


def test_per_sample_transform_is_applied(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path, ["f32", "i"], transform=_scale)
    sample = dataset[4]
    assert list(sample) == ["x", "i"]
    np.testing.assert_array_equal(sample["x"].numpy(), columns["f32"][4] * 2)
    assert sample["i"].item() == 104
    batch = mt.collate(dataset.__getitems__([4, 0, 4]))
    np.testing.assert_array_equal(batch["x"].numpy(), columns["f32"][[4, 0, 4]] * 2)
    assert batch["i"].tolist() == [104, 100, 104]


def test_batch_transform_is_applied_to_batches_only(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path, ["i"], batch_transform=_add_total)
    batch = mt.collate(dataset.__getitems__([1, 2, 3]))
    assert batch["i"].tolist() == [1, 2, 3]
    assert batch["total"].tolist() == [6]
    assert list(dataset[5]) == ["i"]
    both = mt.MemshardDataset(path, ["f32", "i"], transform=_scale, batch_transform=_add_total)
    batch = mt.collate(both.__getitems__([10, 11]))
    assert batch["total"].tolist() == [221]
    np.testing.assert_array_equal(batch["x"].numpy(), columns["f32"][[10, 11]] * 2)


def _returns_a_list(sample: dict[str, torch.Tensor]) -> Any:
    return list(sample.values())


def _returns_numpy(sample: dict[str, torch.Tensor]) -> Any:
    return {name: tensor.numpy() for name, tensor in sample.items()}


def _returns_int_keys(sample: dict[str, torch.Tensor]) -> Any:
    return dict(enumerate(sample.values()))


def _returns_none(sample: dict[str, torch.Tensor]) -> Any:
    return None


@pytest.mark.parametrize("bad", [_returns_a_list, _returns_numpy, _returns_int_keys, _returns_none])
def test_a_transform_returning_the_wrong_type_is_named(
    mixed: Any, bad: Callable[[Any], Any]
) -> None:
    path, _ = mixed
    per_sample = mt.MemshardDataset(path, ["i"], transform=bad)
    for call in (lambda: per_sample[0], lambda: per_sample.__getitems__([0, 1])):
        with pytest.raises(TransformError, match=f"transform '{bad.__name__}'") as info:
            call()
        assert isinstance(info.value, TypeError)
    batched = mt.MemshardDataset(path, ["i"], batch_transform=bad)
    with pytest.raises(TransformError, match=f"batch_transform '{bad.__name__}'"):
        batched.__getitems__([0, 1])


@pytest.mark.parametrize("index", [ROWS, ROWS + 5, -ROWS - 1, 10**12])
def test_an_out_of_range_index_raises_index_error(mixed: Any, index: int) -> None:
    dataset = mt.MemshardDataset(mixed[0])
    with pytest.raises(InvalidIndexError) as info:
        dataset[index]
    assert isinstance(info.value, IndexError)
    with pytest.raises(InvalidIndexError):
        dataset.__getitems__([0, index, 1])


@pytest.mark.parametrize("index", [1.0, 2.5, np.float64(3), "4", True, np.bool_(False), None])
def test_a_non_integer_index_is_refused(mixed: Any, index: Any) -> None:
    dataset = mt.MemshardDataset(mixed[0])
    with pytest.raises(InvalidIndexError, match="integer"):
        dataset[index]


@pytest.mark.parametrize("indices", [[0.5, 1], [1.0], [True, False], np.array([0.0, 2.0])])
def test_a_batch_of_non_integer_indices_is_refused(mixed: Any, indices: Any) -> None:
    dataset = mt.MemshardDataset(mixed[0])
    with pytest.raises(InvalidIndexError):
        dataset.__getitems__(indices)


# -- DataLoader -------------------------------------------------------------------------------


class CountingDataset(mt.MemshardDataset):
    """Counts the calls DataLoader makes and keeps the batches it returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.getitem_calls = 0
        self.batches: list[mt.Batch] = []

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.getitem_calls += 1
        return super().__getitem__(index)

    def __getitems__(self, indices: Sequence[int]) -> mt.Batch:
        batch = super().__getitems__(indices)
        self.batches.append(batch)
        return batch


def _concatenated(batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {name: torch.cat([b[name] for b in batches]).numpy() for name in batches[0]}


def _assert_batches_match(
    batches: Sequence[Mapping[str, torch.Tensor]],
    columns: dict[str, np.ndarray],
    order: Sequence[int],
    batch_size: int,
) -> None:
    """``batches`` hold rows ``order`` of ``columns`` in batches of ``batch_size``, and each
    tensor has its field's dtype (the ``i`` field holds the row index)."""
    sizes = [len(batch["i"]) for batch in batches]
    assert sizes == [min(batch_size, len(order) - s) for s in range(0, len(order), batch_size)]
    got = _concatenated(batches)
    assert got["i"].tolist() == list(order)
    for name, array in got.items():
        np.testing.assert_array_equal(array, columns[name][got["i"]], err_msg=name)
        assert batches[0][name].dtype == TORCH_DTYPES[columns[name].dtype], name


@pytest.mark.parametrize("how", ["loader", "DataLoader+collate"])
def test_the_fast_path_gathers_each_batch_once(mixed: Any, how: str) -> None:
    path, columns = mixed
    dataset = CountingDataset(ms.open(path))
    if how == "loader":
        batches = list(mt.loader(dataset, batch_size=5))
    else:
        batches = list(DataLoader(dataset, batch_size=5, collate_fn=mt.collate))
    _assert_batches_match(batches, columns, range(ROWS), 5)
    assert len(dataset.batches) == math.ceil(ROWS / 5)
    assert dataset.getitem_calls == 0
    # collate handed each gathered batch through without copying it again.
    for batch, gathered in zip(batches, dataset.batches, strict=True):
        assert batch is gathered.tensors


def test_the_fast_path_shuffles_and_drops_the_last_batch(mixed: Any) -> None:
    path, columns = mixed
    torch.manual_seed(0)
    batches = list(mt.loader(path, batch_size=4, shuffle=True, drop_last=True))
    assert [len(batch["i"]) for batch in batches] == [4] * (ROWS // 4)
    rows = _concatenated(batches)["i"]
    assert len(set(rows.tolist())) == len(rows) == ROWS // 4 * 4
    assert rows.tolist() != sorted(rows.tolist())
    for name, array in _concatenated(batches).items():
        np.testing.assert_array_equal(array, columns[name][rows], err_msg=name)


def test_shuffle_and_a_sampler_contradict_each_other(mixed: Any) -> None:
    path, _ = mixed
    sampler = mt.ShardAwareSampler(ms.open(path), seed=0)
    with pytest.raises(ArgumentError, match="shuffle=True and a sampler"):
        mt.loader(path, shuffle=True, sampler=sampler)
    assert len(list(mt.loader(path, batch_size=ROWS, sampler=sampler))) == 1


def test_the_loader_reads_only_the_fields_asked(mixed: Any) -> None:
    path, columns = mixed
    batches = list(mt.loader(path, batch_size=10, fields=["i", "c64"]))
    assert [list(batch) for batch in batches] == [["i", "c64"]] * 3
    _assert_batches_match(batches, columns, range(ROWS), 10)


def test_the_default_collate_still_gives_correct_batches(mixed: Any) -> None:
    path, columns = mixed
    dataset = CountingDataset(path)
    batches = list(DataLoader(dataset, batch_size=6))
    _assert_batches_match(batches, columns, range(ROWS), 6)
    assert len(dataset.batches) == math.ceil(ROWS / 6)


def test_a_random_sampler_goes_through_the_loader(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(3))
    order = list(sampler)
    assert sorted(order) == list(range(ROWS))
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(3))
    batches = list(mt.loader(dataset, batch_size=7, sampler=sampler))
    _assert_batches_match(batches, columns, order, 7)


def test_distributed_samplers_go_through_the_loader(mixed: Any) -> None:
    path, columns = mixed
    dataset = mt.MemshardDataset(path)
    rows: list[int] = []
    for rank in range(2):
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=2, rank=rank, seed=5
        )
        sampler.set_epoch(1)
        order = list(sampler)
        batches = list(mt.loader(dataset, batch_size=5, sampler=sampler))
        _assert_batches_match(batches, columns, order, 5)
        rows += order
    assert len(rows) == ROWS + 1  # 23 rows padded to 24
    assert set(rows) == set(range(ROWS))


# -- ShardAwareSampler ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> ms.Dataset:
    """61 rows in 14 shards of 1 to 5 rows."""
    path = tmp_path_factory.mktemp("sampler") / "sharded"
    return write_dataset(path, {"i": np.arange(61)}, [9, 1, 13, 3, 20, 15], shard_rows=5)


def _visible_shard_rows(dataset: ms.Dataset) -> list[np.ndarray]:
    """The rows of each shard that ``dataset`` shows."""
    return [
        np.arange(shard.row_offset, min(shard.row_offset + shard.rows, len(dataset)))
        for shard in dataset.shards
    ]


def _window_runs(order: np.ndarray, dataset: ms.Dataset, window: int) -> list[set[int]]:
    """Split ``order`` (every row once) into runs, each holding every row of ``window`` shards
    (the last run: of the shards left); return the shards of each run, or fail."""
    shards = _visible_shard_rows(dataset)
    starts = np.array([rows[0] for rows in shards], dtype=np.int64)
    shard_of = np.searchsorted(starts, order, side="right") - 1
    runs: list[set[int]] = []
    start = 0
    while start < order.size:
        touched: set[int] = set()
        end = start
        while True:
            assert end < order.size, f"run from {start} does not end with whole shards"
            touched.add(int(shard_of[end]))
            end += 1
            assert len(touched) <= window, f"run from {start} mixes more than {window} shards"
            whole = end - start == sum(shards[s].size for s in touched)
            if whole and (len(touched) == window or end == order.size):
                break
        expected = np.concatenate([shards[s] for s in sorted(touched)])
        assert sorted(order[start:end].tolist()) == expected.tolist()
        runs.append(touched)
        start = end
    assert len(runs) == math.ceil(len(shards) / window)
    return runs


def _ranks(dataset: Any, world: int, **kwargs: Any) -> list[mt.ShardAwareSampler]:
    return [
        mt.ShardAwareSampler(dataset, num_replicas=world, rank=rank, **kwargs)
        for rank in range(world)
    ]


@pytest.mark.parametrize("window", [1, 2, 4, 15, 100])
def test_each_window_of_shards_is_read_as_one_run(sharded: ms.Dataset, window: int) -> None:
    sampler = mt.ShardAwareSampler(sharded, window_shards=window, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = np.array(list(sampler))
        assert sorted(order.tolist()) == list(range(61))
        _window_runs(order, sharded, window)
        assert order.tolist() != list(range(61))


def test_the_order_depends_only_on_seed_and_epoch(sharded: ms.Dataset) -> None:
    first, second = (mt.ShardAwareSampler(sharded, seed=7) for _ in range(2))
    orders = []
    for epoch in (0, 1, 2):
        first.set_epoch(epoch)
        orders.append(list(first))
        assert list(first) == orders[-1]  # iterating again repeats the epoch
    second.set_epoch(2)
    assert list(second) == orders[2]
    second.set_epoch(0)
    assert list(second) == orders[0]
    assert mt.ShardAwareSampler(sharded, seed=7).epoch == 0
    assert list(mt.ShardAwareSampler(sharded, seed=7)) == orders[0]
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert list(mt.ShardAwareSampler(sharded, seed=8)) != orders[0]
    assert list(pickle.loads(pickle.dumps(first))) == orders[2]


def test_without_shuffle_the_order_is_the_rows(sharded: ms.Dataset) -> None:
    sampler = mt.ShardAwareSampler(sharded, shuffle=False, seed=3)
    sampler.set_epoch(5)
    assert list(sampler) == list(range(61))
    assert len(sampler) == 61
    ranks = _ranks(sharded, 3, shuffle=False)
    padded = [*range(61), 0, 1]
    assert [list(s) for s in ranks] == [padded[r::3] for r in range(3)]


def test_it_accepts_a_path_a_dataset_or_a_memshard_dataset(sharded: ms.Dataset) -> None:
    expected = list(mt.ShardAwareSampler(sharded, seed=2))
    for source in (sharded.path, Path(sharded.path), mt.MemshardDataset(sharded)):
        assert list(mt.ShardAwareSampler(source, seed=2)) == expected


def test_an_empty_dataset_gives_no_indices(tmp_path: Path) -> None:
    ms.create(tmp_path / "empty", fields={"i": ("int64", ())}).close()
    for world in (1, 3):
        for sampler in _ranks(ms.open(tmp_path / "empty"), world, seed=1):
            assert len(sampler) == 0
            assert list(sampler) == []


def test_a_pickled_snapshot_samples_only_its_visible_rows(tmp_path: Path) -> None:
    """A Dataset sent to another process keeps its row count even when the dataset grew in
    the meantime, so the sampler must not use the grown shard's row count."""
    writer = ms.create(tmp_path / "d", fields={"i": ("int64", ())}, shard_bytes=8 * 100)
    writer.extend({"i": np.arange(10)})
    writer.commit()
    snapshot = ms.open(tmp_path / "d")
    writer.extend({"i": np.arange(10, 15)})
    writer.close()
    restored = pickle.loads(pickle.dumps(snapshot))
    assert len(restored) == 10
    for source in (snapshot, restored):
        for seed in range(3):
            sampler = mt.ShardAwareSampler(source, seed=seed)
            assert len(sampler) == 10
            assert sorted(sampler) == list(range(10))


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[list[int], int]:
    """Appender sessions (each ends in a partial shard) and rows per full shard."""
    sessions = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4), label="sessions")
    return sessions, draw(st.integers(1, 5), label="shard_rows")


@settings(max_examples=60)
@given(
    layout=_layouts(),
    window=st.integers(1, 5),
    world=st.integers(1, 5),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 1000),
)
def test_ranks_partition_each_epoch_like_distributed_sampler(
    tmp_path_factory: pytest.TempPathFactory,
    layout: tuple[list[int], int],
    window: int,
    world: int,
    drop_last: bool,
    seed: int,
    epoch: int,
) -> None:
    sessions, shard_rows = layout
    rows = sum(sessions)
    path = tmp_path_factory.mktemp("layout") / "d"
    dataset = write_dataset(path, {"i": np.arange(rows)}, sessions, shard_rows=shard_rows)
    options: dict[str, Any] = {"window_shards": window, "seed": seed}

    single = mt.ShardAwareSampler(dataset, **options)
    single.set_epoch(epoch)
    order = np.array(list(single), dtype=np.int64)
    assert len(single) == rows
    assert sorted(order.tolist()) == list(range(rows))
    _window_runs(order, dataset, window)

    samplers = _ranks(dataset, world, drop_last=drop_last, **options)
    for sampler in samplers:
        sampler.set_epoch(epoch)
    parts = [list(sampler) for sampler in samplers]
    per_rank = rows // world if drop_last else math.ceil(rows / world)
    for sampler, part in zip(samplers, parts, strict=True):
        assert len(sampler) == len(part) == per_rank
    # Rank r takes positions r, r + world, ... of the epoch order, cut or padded by
    # repeating its start, exactly like DistributedSampler.
    total = per_rank * world
    padded = np.resize(order, total) if rows else order[:0]
    interleaved = np.empty(total, dtype=np.int64)
    for rank, part in enumerate(parts):
        interleaved[rank::world] = part
    assert interleaved.tolist() == padded.tolist()
    everything = [row for part in parts for row in part]
    if drop_last or rows % world == 0:
        assert len(set(everything)) == len(everything) == total
        assert sorted(everything) == sorted(order[:total].tolist())
    if not drop_last:
        assert set(everything) == set(range(rows))
        if rows % world == 0:
            assert sorted(everything) == list(range(rows))
    if drop_last:
        assert set(range(rows)) - set(everything) == set(order[total:].tolist())


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": -1}, "num_replicas"),
        ({"num_replicas": 2, "rank": -1}, "rank"),
        ({"num_replicas": 2, "rank": 2}, "rank"),
        ({"rank": 1}, "rank"),
        ({"window_shards": 0}, "window_shards"),
        ({"window_shards": -3}, "window_shards"),
        ({"num_replicas": True}, "num_replicas"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_sampler_parameters_are_named(
    sharded: ms.Dataset, kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(SamplerError, match=rf"^{parameter}\b.*got {kwargs[parameter]}$"):
        mt.ShardAwareSampler(sharded, **kwargs)
    assert issubclass(SamplerError, ValueError)
    assert issubclass(SamplerError, MemshardError)


@pytest.mark.parametrize("epoch", [-1, 0.5, "1"])
def test_bad_epochs_are_refused(sharded: ms.Dataset, epoch: Any) -> None:
    sampler = mt.ShardAwareSampler(sharded)
    with pytest.raises(SamplerError, match=r"^epoch must be an integer >= 0"):
        sampler.set_epoch(epoch)


def test_loader_refuses_options_that_belong_to_the_dataset(sharded: ms.Dataset) -> None:
    options: list[dict[str, Any]] = [{"fields": ["x"]}, {"prefetch": True}, {"ragged": {}}]
    for option in options:
        with pytest.raises(ArgumentError, match="fields, ragged and prefetch belong to the"):
            mt.loader(mt.MemshardDataset(sharded), **option)


# -- workers: fork, spawn, forkserver ---------------------------------------------------------

WORKER_CONFIGS = [
    pytest.param({}, id="no-workers"),
    *[
        pytest.param(
            {
                "num_workers": 2,
                "persistent_workers": persistent,
                "multiprocessing_context": method,
                "timeout": 60,
            },
            id=f"{method}-2-workers-{'persistent' if persistent else 'restarted'}",
        )
        for method in START_METHODS
        for persistent in (False, True)
    ],
]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """47 rows over irregular shards, with a float field and the row index ``i``."""
    path = tmp_path_factory.mktemp("workers") / "small"
    x = np.random.default_rng(11).standard_normal((47, 3, 4)).astype(np.float32)
    columns: dict[str, np.ndarray] = {"x": x, "i": np.arange(47, dtype=np.int64)}
    write_dataset(path, columns, [20, 27], shard_rows=6)
    return path, columns


def _two_epochs(
    dataset: ms.Dataset, columns: dict[str, np.ndarray], **options: Any
) -> list[list[dict[str, np.ndarray]]]:
    """Two epochs of ShardAwareSampler(seed=7) batches through ``loader(**options)``, each
    checked against ``columns``."""
    sampler = mt.ShardAwareSampler(dataset, seed=7, window_shards=2)
    loader = mt.loader(dataset, batch_size=5, sampler=sampler, **options)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        _assert_batches_match(batches, columns, list(sampler), 5)
        epochs.append([{k: v.numpy().copy() for k, v in batch.items()} for batch in batches])
    return epochs


@pytest.mark.parametrize("options", WORKER_CONFIGS)
def test_workers_read_the_same_batches_as_the_main_process(
    small: tuple[Path, dict[str, np.ndarray]], options: dict[str, Any]
) -> None:
    path, columns = small
    reference = _two_epochs(ms.open(path), columns)
    dataset = ms.open(path)
    dataset["x"][np.arange(0, 47, 5)]  # the parent has mapped shards before workers start
    epochs = _two_epochs(dataset, columns, **options)
    for got, expected in zip(epochs, reference, strict=True):
        assert len(got) == len(expected)
        for batch, expected_batch in zip(got, expected, strict=True):
            assert list(batch) == list(expected_batch) == ["x", "i"]
            for name in batch:
                np.testing.assert_array_equal(batch[name], expected_batch[name], err_msg=name)
    first, second = (np.concatenate([b["i"] for b in epoch]) for epoch in epochs)
    assert first.tolist() != second.tolist()


# -- DDP --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_ddp_ranks_partition_every_epoch_through_loader(tmp_path: Path) -> None:
    """Two gloo ranks; the sampler learns world size and rank from torch.distributed."""
    paths: list[str] = []
    for rows, sessions in ((40, [17, 23]), (43, [30, 13])):
        write_dataset(
            tmp_path / f"rows{rows}", {"i": np.arange(rows), "x": np.ones((rows, 2))}, sessions
        )
        paths.append(str(tmp_path / f"rows{rows}"))
    context = start_processes(
        ddp_worker.run_rank,
        args=(2, _free_port(), paths, 5, str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=5):
            assert time.monotonic() < deadline, "the DDP ranks did not finish in 120 s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for path, rows, entries in zip(paths, (40, 43), zip(*reports, strict=True), strict=True):
        expected = [
            list(mt.ShardAwareSampler(path, seed=5, window_shards=2, num_replicas=2, rank=r))
            for r in range(2)
        ]
        for rank, entry in enumerate(entries):
            assert (entry["num_replicas"], entry["rank"]) == (2, rank)
            assert entry["len"] == math.ceil(rows / 2)
            assert entry["gathered"] == expected
        gathered = entries[0]["gathered"]
        everything = gathered[0] + gathered[1]
        assert len(gathered[0]) == len(gathered[1]) == math.ceil(rows / 2)
        assert set(everything) == set(range(rows))
        if rows % 2 == 0:
            assert sorted(everything) == list(range(rows))
        else:
            # One padding index: the first of the epoch order, given to the last rank.
            order = list(mt.ShardAwareSampler(path, seed=5, window_shards=2))
            assert sorted(everything) == sorted([*range(rows), order[0]])
            assert gathered[1][-1] == order[0]


class _RecordStrategy:
    """A user worker_init_fn: records the worker's sharing strategy in a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, worker_id: int) -> None:
        strategy = torch.multiprocessing.get_sharing_strategy()
        (self.directory / f"worker{worker_id}").write_text(strategy)
        (self.directory / f"pid{worker_id}").write_text(str(os.getpid()))


def _torch_shm_files_of(pids: list[int]) -> set[str]:
    """Shared-memory files that torch made in processes ``pids`` (named ``torch_PID_...``);
    other processes on the machine may have their own."""
    prefixes = tuple(f"torch_{pid}_" for pid in pids)
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefixes)}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_loader_workers_share_batches_by_name_and_run_the_users_init(
    small: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, method: str
) -> None:
    path, data = small
    batches = mt.loader(
        path,
        batch_size=8,
        num_workers=2,
        worker_init_fn=_RecordStrategy(tmp_path),
        multiprocessing_context=method,
        persistent_workers=False,
    )
    got = torch.cat([batch["i"] for batch in batches])
    np.testing.assert_array_equal(got.numpy(), data["i"])
    assert {p.read_text() for p in tmp_path.glob("worker*")} == {"file_system"}
    pids = [int(p.read_text()) for p in tmp_path.glob("pid*")]
    assert len(pids) == 2
    assert _torch_shm_files_of(pids) == set()


def test_loader_can_leave_torchs_sharing_strategy_alone(
    small: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, data = small
    batches = mt.loader(
        path,
        batch_size=8,
        num_workers=1,
        worker_init_fn=_RecordStrategy(tmp_path),
        sharing_strategy=None,
        persistent_workers=False,
    )
    np.testing.assert_array_equal(torch.cat([b["i"] for b in batches]).numpy(), data["i"])
    assert {p.read_text() for p in tmp_path.glob("worker*")} == {"file_descriptor"}


#: A Python without torch: ``None`` in ``sys.modules`` makes ``import torch`` fail as it does
#: where torch is not installed.
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
import memshard
try:
    import memshard.torch
except memshard.MemshardError as exc:
    print(type(exc).__name__, isinstance(exc, ImportError), exc)
"""


@pytest.mark.parametrize(
    ("module", "extra"), [("memshard.torch", "torch"), ("memshard.hdf5", "hdf5")]
)
def test_import_without_the_extra_raises_missing_dependency(module: str, extra: str) -> None:
    """``import memshard.torch`` without torch raises the same MissingDependencyError (an
    ImportError) as the other extras, saying what to install."""
    import subprocess
    import sys

    blocked = extra if extra == "torch" else "h5py"
    code = WITHOUT_TORCH.replace('"torch"', f'"{blocked}"').replace("memshard.torch", module)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MissingDependencyError True "), result.stdout
    assert f"install it with: pip install 'memshard[{extra}]'" in result.stdout


# -- ragged batches as tensors ----------------------------------------------------------------

RaggedRows = tuple[list[np.ndarray], np.dtype[Any], tuple[int, ...]]


def _ragged(rows: RaggedRows) -> Ragged:
    arrays, dtype, tail = rows
    return Ragged.from_rows(arrays, dtype=dtype, tail=tail)


@given(ragged_rows(), st.none() | st.integers(0, 6))
def test_padded_tensors_are_the_padded_array_and_lengths(
    rows: RaggedRows, max_len: int | None
) -> None:
    batch = _ragged(rows)
    result = mt.padded(batch, max_len=max_len, pad_value=1)
    array, lengths = batch.to_padded(pad_value=1, max_len=max_len)
    assert result.values.numpy().dtype == array.dtype
    np.testing.assert_array_equal(result.values.numpy(), array)
    assert result.lengths.dtype == torch.int64
    assert result.lengths.tolist() == lengths.tolist()


token_rows = st.lists(st.lists(st.integers(0, 9), max_size=6), max_size=8)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@given(rows=token_rows)
def test_an_embedding_bag_over_packed_tokens_equals_a_loop_over_rows(
    mode: str, rows: list[list[int]]
) -> None:
    batch = Ragged.from_rows(rows, dtype="int32", tail=())
    tokens, offsets, max_len = mt.packed(batch)
    assert tokens.dtype == torch.int32
    assert offsets.dtype == torch.int32
    assert offsets.tolist() == batch.offsets.tolist()
    assert max_len == max((len(row) for row in rows), default=0)
    bag = torch.nn.EmbeddingBag(10, 4, mode=mode, include_last_offset=True)
    embedding = torch.nn.Embedding.from_pretrained(bag.weight.detach())
    with torch.no_grad():
        got = bag(tokens, offsets)
        reductions: dict[str, Callable[..., torch.Tensor]] = {
            "sum": torch.sum, "mean": torch.mean, "max": torch.amax
        }  # fmt: skip
        reduce = reductions[mode]
        want = [
            reduce(embedding(torch.tensor(row, dtype=torch.int64)), dim=0)
            if row
            else torch.zeros(4)
            for row in rows
        ]
    assert got.shape == (len(rows), 4)
    for bag_row, loop_row in zip(got, want, strict=True):
        torch.testing.assert_close(bag_row, loop_row)


@given(ragged_rows())
def test_a_nested_tensor_unbinds_into_the_rows(rows: RaggedRows) -> None:
    arrays, dtype, tail = rows
    tensor = mt.nested(_ragged(rows))
    assert tensor.is_nested
    assert tensor.layout == torch.jagged
    unbound = tensor.unbind()
    assert len(unbound) == len(arrays)
    for row, want in zip(unbound, arrays, strict=True):
        assert row.numpy().dtype == dtype
        assert tuple(row.shape) == want.shape == (len(want), *tail)
        np.testing.assert_array_equal(row.numpy(), want)


def test_ragged_tensors_names_its_outputs_after_the_field() -> None:
    batch = Ragged.from_rows([[1, 2, 3], [], [4]], dtype="int32")
    padded = mt.ragged_tensors("tokens", batch, "pad")
    assert list(padded) == ["tokens", "tokens_lengths"]
    assert padded["tokens"].tolist() == [[1, 2, 3], [0, 0, 0], [4, 0, 0]]
    assert padded["tokens_lengths"].tolist() == [3, 0, 1]
    cut = mt.ragged_tensors("tokens", batch, mt.Pad(max_len=2, pad_value=-1))
    assert cut["tokens"].tolist() == [[1, 2], [-1, -1], [4, -1]]
    assert cut["tokens_lengths"].tolist() == [2, 0, 1]
    packed = mt.ragged_tensors("tokens", batch, "packed")
    assert list(packed) == ["tokens", "tokens_offsets"]
    assert packed["tokens"].tolist() == [1, 2, 3, 4]
    assert packed["tokens_offsets"].tolist() == [0, 3, 3, 4]
    nested = mt.ragged_tensors("tokens", batch, "nested")
    assert list(nested) == ["tokens"]
    assert [row.tolist() for row in nested["tokens"].unbind()] == [[1, 2, 3], [], [4]]


def test_tensors_of_a_batch_are_writable_copies() -> None:
    values = np.arange(4, dtype=np.float32)
    batch = Ragged(values, [0, 1, 4])
    for tensor in (mt.packed(batch).values, mt.nested(batch).values(), mt.padded(batch).values):
        tensor.add_(1)  # a tensor of read-only memory would warn; warnings are errors here
    assert values.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["padded", "PACKED", None, 3, ("pad",)])
def test_an_unknown_ragged_mode_is_refused(mode: Any) -> None:
    with pytest.raises(ArgumentError, match=r"field 'tokens': unknown ragged mode .* use 'pad'"):
        mt.ragged_tensors("tokens", Ragged.from_rows([[1]]), mode)


@pytest.mark.parametrize("max_len", [-1, 1.5, True])
def test_pad_refuses_a_bad_max_len_when_built(max_len: Any) -> None:
    with pytest.raises(ArgumentError, match="Pad: max_len must be None or an integer >= 0"):
        mt.Pad(max_len=max_len)


def test_a_packed_batch_is_refused_beyond_int32_offsets() -> None:
    elements = mt.MAX_PACKED_ELEMENTS + 1
    huge = Ragged(np.broadcast_to(np.int8(0), (elements,)), [0, elements])  # no memory
    with pytest.raises(ArgumentError, match=f"at most 2147483647 elements .* has {elements}"):
        mt.packed(huge)


# -- LengthGroupedSampler ---------------------------------------------------------------------


@settings(max_examples=80)
@given(
    lengths=st.lists(st.integers(0, 50), max_size=120),
    batch_size=st.integers(1, 9),
    window=st.integers(1, 5),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 1000),
)
def test_each_row_is_in_one_batch_per_epoch(
    lengths: list[int],
    batch_size: int,
    window: int,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    epoch: int,
) -> None:
    sampler = mt.LengthGroupedSampler(
        lengths, batch_size, window=window, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    rows = [row for batch in batches for row in batch]
    assert len(set(rows)) == len(rows)
    short = [batch for batch in batches if len(batch) != batch_size]
    if drop_last:
        assert short == []
        assert len(rows) == len(lengths) // batch_size * batch_size
    else:
        assert sorted(rows) == list(range(len(lengths)))
        assert len(short) == (1 if len(lengths) % batch_size else 0)
    assert [list(b) for b in sampler.batches()] == batches  # the same order again


@given(
    lengths=st.lists(st.integers(0, 50), max_size=120),
    batch_size=st.integers(1, 9),
    window=st.integers(1, 5),
)
def test_without_shuffle_each_window_is_sorted_by_length(
    lengths: list[int], batch_size: int, window: int
) -> None:
    sampler = mt.LengthGroupedSampler(lengths, batch_size, window=window, shuffle=False)
    order = [row for batch in sampler for row in batch]
    span = window * batch_size
    for start in range(0, len(lengths), span):
        rows = order[start : start + span]
        assert sorted(rows) == list(range(start, min(start + span, len(lengths))))
        assert [lengths[row] for row in rows] == sorted(lengths[row] for row in rows)


def test_the_batch_order_depends_only_on_seed_and_epoch() -> None:
    lengths = np.random.default_rng(3).integers(1, 100, 500)

    def epoch_batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = mt.LengthGroupedSampler(lengths, 8, window=4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 1) == epoch_batches(0, 1)
    assert epoch_batches(0, 1) != epoch_batches(0, 2)
    assert epoch_batches(0, 1) != epoch_batches(1, 1)


def _lognormal_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """A long tail of lengths: median 300, a few up to 8192."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(300), 1.0, rows)), 1, 8192).astype(np.int64)


def test_length_grouping_cuts_the_padding_of_long_tailed_lengths() -> None:
    lengths = _lognormal_lengths(20_000)
    random_order = np.random.default_rng(1).permutation(lengths.size)
    random_batches = np.split(random_order, range(32, lengths.size, 32))
    grouped = mt.LengthGroupedSampler(lengths, 32, seed=1)
    random_waste = mt.padding_waste(lengths, random_batches)
    grouped_waste = mt.padding_waste(lengths, grouped)
    assert random_waste > 0.6
    assert grouped_waste < random_waste / 5


def test_padding_waste_counts_the_padding_of_each_batch() -> None:
    assert mt.padding_waste([1, 3, 2, 2], [[0, 1], [2, 3]]) == pytest.approx(2 / 10)
    assert mt.padding_waste([4, 4], [np.array([0, 1])]) == 0.0
    assert mt.padding_waste([0, 0], [[0], [1]]) == 0.0
    assert mt.padding_waste([], []) == 0.0
    batch = Ragged.from_rows([[1], [1, 2, 3]])
    assert mt.padding_waste(batch, [[0, 1]]) == pytest.approx(2 / 6)


def test_a_dataloader_reads_the_length_grouped_batches(mixed: Any) -> None:
    path, columns = mixed
    lengths = np.random.default_rng(5).integers(0, 30, ROWS)
    sampler = mt.LengthGroupedSampler(lengths, 4, window=2, seed=7, drop_last=True)
    dataset = mt.MemshardDataset(path, fields=["i"])
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=mt.collate)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        got = [batch["i"].tolist() for batch in loader]
        assert got == [columns["i"][batch].tolist() for batch in sampler.batches()]


@pytest.mark.parametrize(
    ("lengths", "kwargs", "message"),
    [
        ([1, 2], {"batch_size": 0}, r"^batch_size must be an integer >= 1, got 0$"),
        ([1, 2], {"batch_size": 2, "window": 0}, r"^window must be an integer >= 1, got 0$"),
        ([1, 2], {"batch_size": 2, "seed": -1}, r"^seed must be an integer >= 0, got -1$"),
        ([1, -2], {"batch_size": 2}, r"^lengths must not be negative: lengths\[1\] = -2$"),
        ([1.5], {"batch_size": 2}, r"^lengths must be a 1-d .* dtype float64$"),
        ([[1, 2]], {"batch_size": 2}, r"^lengths must be a 1-d .* shape \(1, 2\)"),
        ([[1, 2], [3]], {"batch_size": 2}, r"^lengths must be a 1-d array of integers >= 0 \("),
    ],
)
def test_bad_length_grouped_sampler_parameters_are_named(
    lengths: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(SamplerError, match=message):
        mt.LengthGroupedSampler(lengths, **kwargs)
