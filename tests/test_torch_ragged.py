"""MemshardDataset over ragged fields: each mode ("pad", Pad, "packed", "nested") of a batch
checked against the rows written, Batch rows and collate, one sample, transforms; real
DataLoaders with no workers and with fork and spawn workers, their batches gathered into
shared memory; loader's ragged and batch_sampler options, LengthGroupedSampler over a ragged
column."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, default_collate

import memshard as ms
import memshard.torch as mt
from memshard.errors import ArgumentError, CastError, FieldNotFoundError, TransformError

FIELDS = {"tokens": ("int32", (None,)), "strokes": ("int16", (None, 3)), "label": ("int64", ())}
TAILS = {"tokens": (), "strokes": (3,)}
DTYPES: dict[str, np.dtype[Any]] = {"tokens": np.dtype(np.int32), "strokes": np.dtype(np.int16)}
TORCH_DTYPES = {np.dtype(np.int32): torch.int32, np.dtype(np.int16): torch.int16}
ROWS = 61
#: Every mode, once each, for the tests that go through them all.
MODES: list[mt.RaggedMode] = [
    "pad",
    mt.Pad(max_len=3, pad_value=-1),
    mt.Pad(max_len=0),
    "packed",
    "nested",
]

Rows = dict[str, list[np.ndarray]]


def token_row(row: int, length: int) -> np.ndarray:
    """Token ``j`` of row ``i`` is ``1000 * i + j``: a row names itself."""
    return (1000 * row + np.arange(length)).astype(np.int32)


def stroke_row(row: int, length: int) -> np.ndarray:
    """Point ``j`` of row ``i`` is ``(i, j, -j)``."""
    steps = np.arange(length)
    return np.stack([np.full(length, row), steps, -steps], axis=1).astype(np.int16)


def corpus_rows(count: int, seed: int) -> Rows:
    """Rows of 0 to 8 tokens and 0 to 4 points, every seventh row empty, row 5 long."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 9, count)
    lengths[::7] = 0
    lengths[5] = 40
    points = rng.integers(0, 5, count)
    points[::7] = 0
    return {
        "tokens": [token_row(i, int(n)) for i, n in enumerate(lengths)],
        "strokes": [stroke_row(i, int(n)) for i, n in enumerate(points)],
    }


def write(
    path: Path, fields: Mapping[str, Any], columns: Mapping[str, Any], shard_bytes: int
) -> None:
    """``columns`` written in two appender sessions, so the shard boundaries are irregular."""
    rows = len(next(iter(columns.values())))
    half = rows // 2
    with ms.create(path, dict(fields), shard_bytes=shard_bytes) as writer:
        writer.extend({name: column[:half] for name, column in columns.items()})
    with ms.append(path) as writer:
        writer.extend({name: column[half:] for name, column in columns.items()})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[ms.Dataset, Rows]:
    """61 rows of tokens, strokes and a label (the row number), over many shards."""
    path = tmp_path_factory.mktemp("ragged-torch") / "corpus"
    rows = corpus_rows(ROWS, seed=4)
    write(path, FIELDS, {**rows, "label": np.arange(ROWS)}, shard_bytes=256)
    dataset = ms.open(path)
    assert len(dataset.shards) > 4
    return dataset, rows


def as_pad(mode: mt.RaggedMode) -> mt.Pad:
    return mode if isinstance(mode, mt.Pad) else mt.Pad()


def expected_padded(
    rows: list[np.ndarray], mode: mt.Pad, tail: tuple[int, ...], dtype: Any
) -> tuple[np.ndarray, list[int]]:
    """The padded array and lengths of ``rows``, worked out row by row."""
    longest = max((len(row) for row in rows), default=0)
    width = longest if mode.max_len is None else mode.max_len
    array = np.full((len(rows), width, *tail), mode.pad_value, dtype=dtype)
    lengths = [min(len(row), width) for row in rows]
    for position, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        array[position, :length] = row[:length]
    return array, lengths


def assert_field(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    mode: mt.RaggedMode,
    rows: list[np.ndarray],
    tail: tuple[int, ...],
    dtype: np.dtype[Any],
) -> None:
    """The tensors of ragged field ``name`` in ``mode`` hold ``rows``."""
    tensor = tensors[name]
    if mode == "nested":
        assert tensor.is_nested
        assert tensor.layout == torch.jagged
        assert tensor.dtype == TORCH_DTYPES[dtype]
        unbound = tensor.unbind()
        assert len(unbound) == len(rows)
        for got, want in zip(unbound, rows, strict=True):
            assert tuple(got.shape) == want.shape
            np.testing.assert_array_equal(got.numpy(), want)
        assert f"{name}_offsets" not in tensors
        assert f"{name}_lengths" not in tensors
    elif mode == "packed":
        assert tensor.dtype == TORCH_DTYPES[dtype]
        want = np.concatenate(rows) if rows else np.empty((0, *tail), dtype)
        assert tuple(tensor.shape) == want.shape
        np.testing.assert_array_equal(tensor.numpy(), want)
        offsets = tensors[f"{name}_offsets"]
        assert offsets.dtype == torch.int32
        assert offsets.tolist() == np.cumsum([0] + [len(row) for row in rows]).tolist()
    else:
        array, lengths = expected_padded(rows, as_pad(mode), tail, dtype)
        assert tensor.dtype == TORCH_DTYPES[dtype]
        assert tuple(tensor.shape) == array.shape
        np.testing.assert_array_equal(tensor.numpy(), array)
        assert tensors[f"{name}_lengths"].dtype == torch.int64
        assert tensors[f"{name}_lengths"].tolist() == lengths


def assert_rows_of_batch(
    batch: mt.Batch, modes: Mapping[str, mt.RaggedMode], rows: Mapping[str, list[np.ndarray]]
) -> None:
    """``batch[j]`` is row ``j``: a padded field's padded row and length, a packed or nested
    field's row as it is, with no offsets."""
    samples = list(batch)
    assert len(samples) == len(batch)
    for position, sample in enumerate(samples):
        for name, mode in modes.items():
            row = rows[name][position]
            if mode in ("packed", "nested"):
                assert f"{name}_offsets" not in sample
                assert tuple(sample[name].shape) == row.shape
                np.testing.assert_array_equal(sample[name].numpy(), row)
            else:
                array, lengths = expected_padded(rows[name], as_pad(mode), row.shape[1:], row.dtype)
                np.testing.assert_array_equal(sample[name].numpy(), array[position])
                assert sample[f"{name}_lengths"].item() == lengths[position]


# -- a batch in each mode ----------------------------------------------------------------------

modes = st.sampled_from(MODES)


@given(indices=st.lists(st.integers(-ROWS, ROWS - 1), max_size=20), tokens=modes, strokes=modes)
def test_each_mode_gives_the_rows_written(
    corpus: tuple[ms.Dataset, Rows],
    indices: list[int],
    tokens: mt.RaggedMode,
    strokes: mt.RaggedMode,
) -> None:
    dataset, rows = corpus
    chosen = {"tokens": tokens, "strokes": strokes}
    torch_dataset = mt.MemshardDataset(dataset, ragged=chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tensor of read-only memory
        batch = torch_dataset.__getitems__(indices)
    tensors = mt.collate(batch)
    assert tensors is batch.tensors
    keys = {"pad": ["{}", "{}_lengths"], "packed": ["{}", "{}_offsets"], "nested": ["{}"]}
    expected_keys = [
        key.format(name)
        for name in ("tokens", "strokes")
        for key in keys["pad" if isinstance(chosen[name], mt.Pad) else str(chosen[name])]
    ]
    assert list(tensors) == [*expected_keys, "label"]
    picked = {name: [rows[name][i] for i in indices] for name in rows}
    for name, mode in chosen.items():
        assert_field(tensors, name, mode, picked[name], TAILS[name], DTYPES[name])
    assert tensors["label"].tolist() == np.arange(ROWS)[indices].tolist()
    assert_rows_of_batch(batch, chosen, picked)


@settings(max_examples=25)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=30),
    data=st.data(),
)
def test_any_row_lengths_batch_in_every_mode(lengths: list[int], data: st.DataObject) -> None:
    rows = [token_row(i, n) for i, n in enumerate(lengths)]
    indices = data.draw(st.lists(st.integers(-len(rows), len(rows) - 1), max_size=12))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "ds"
        with ms.create(path, {"tokens": ("int32", (None,))}, shard_bytes=32) as writer:
            writer.extend({"tokens": rows})
        for mode in MODES:
            tensors = mt.collate(
                mt.MemshardDataset(path, ragged={"tokens": mode}).__getitems__(indices)
            )
            assert_field(tensors, "tokens", mode, [rows[i] for i in indices], (), DTYPES["tokens"])


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_a_batch_of_empty_rows_or_no_rows(corpus: tuple[ms.Dataset, Rows], mode: Any) -> None:
    dataset, rows = corpus
    empty = [i for i in range(ROWS) if len(rows["tokens"][i]) == len(rows["strokes"][i]) == 0]
    assert len(empty) >= 3
    for indices in (empty[:3], []):
        batch = mt.MemshardDataset(dataset, ragged={"tokens": mode, "strokes": mode})
        tensors = mt.collate(batch.__getitems__(indices))
        for name in ("tokens", "strokes"):
            picked = [rows[name][i] for i in indices]
            assert_field(tensors, name, mode, picked, TAILS[name], DTYPES[name])


def test_a_ragged_field_not_named_is_padded(corpus: tuple[ms.Dataset, Rows]) -> None:
    dataset, rows = corpus
    torch_dataset = mt.MemshardDataset(dataset, ["label", "strokes"], ragged={})
    assert torch_dataset.ragged == {"strokes": "pad"}
    tensors = mt.collate(torch_dataset.__getitems__([5, 6, 0]))
    assert list(tensors) == ["label", "strokes", "strokes_lengths"]
    picked = [rows["strokes"][i] for i in (5, 6, 0)]
    assert_field(tensors, "strokes", "pad", picked, (3,), DTYPES["strokes"])


def test_a_sample_is_its_row_as_stored(corpus: tuple[ms.Dataset, Rows]) -> None:
    dataset, rows = corpus
    torch_dataset = mt.MemshardDataset(dataset, ragged={"tokens": mt.Pad(max_len=2)})
    for index in (5, 0, -1):
        sample = torch_dataset[index]
        assert list(sample) == ["tokens", "strokes", "label"]
        for name in ("tokens", "strokes"):
            want = rows[name][index]
            assert sample[name].dtype == TORCH_DTYPES[want.dtype]
            assert tuple(sample[name].shape) == want.shape  # neither padded nor cut
            np.testing.assert_array_equal(sample[name].numpy(), want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch_dataset[5]["tokens"].add_(1)  # a writeable copy
    np.testing.assert_array_equal(dataset["tokens"][5], rows["tokens"][5])


def test_packed_and_nested_values_are_gathered_in_place(
    corpus: tuple[ms.Dataset, Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No copy between the gather and the batch: the values tensor is the buffer the rows
    were gathered into."""
    dataset, rows = corpus
    opened = ms.open(dataset.path)
    taken: list[dict[str, Any]] = []
    real_take = opened.take

    def recording_take(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result = real_take(*args, **kwargs)
        taken.append(result)
        return result

    monkeypatch.setattr(opened, "take", recording_take)
    torch_dataset = mt.MemshardDataset(opened, ragged={"tokens": "packed", "strokes": "nested"})
    tensors = mt.collate(torch_dataset.__getitems__([5, 2, 9, 5]))
    (arrays,) = taken
    assert len(arrays["tokens"].values) > 0
    assert len(arrays["strokes"].values) > 0
    assert tensors["tokens"].data_ptr() == arrays["tokens"].values.ctypes.data
    assert tensors["strokes"].values().data_ptr() == arrays["strokes"].values.ctypes.data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors["tokens"].add_(1)
    assert np.array_equal(
        arrays["tokens"].values, np.concatenate([rows["tokens"][i] for i in (5, 2, 9, 5)]) + 1
    )


def test_prefetch_reads_the_same_batch(corpus: tuple[ms.Dataset, Rows]) -> None:
    dataset, rows = corpus
    indices = [40, 5, 3, 5]
    torch_dataset = mt.MemshardDataset(dataset, ragged={"tokens": "packed"}, prefetch=True)
    tensors = mt.collate(torch_dataset.__getitems__(indices))
    assert_field(
        tensors, "tokens", "packed", [rows["tokens"][i] for i in indices], (), DTYPES["tokens"]
    )


# -- Batch as a sequence of samples ------------------------------------------------------------


def test_default_collate_stacks_padded_samples_back_into_the_batch(
    corpus: tuple[ms.Dataset, Rows],
) -> None:
    dataset, _ = corpus
    torch_dataset = mt.MemshardDataset(dataset, ragged={"tokens": mt.Pad(max_len=4, pad_value=-1)})
    fast = DataLoader(torch_dataset, batch_size=8, collate_fn=mt.collate)
    slow = DataLoader(torch_dataset, batch_size=8)  # torch's default_collate over the samples
    for mine, torchs in zip(fast, slow, strict=True):
        assert list(mine) == list(torchs)
        for name in mine:
            assert torch.equal(mine[name], torchs[name]), name


def test_a_batch_row_of_a_packed_field_is_that_row(corpus: tuple[ms.Dataset, Rows]) -> None:
    dataset, rows = corpus
    torch_dataset = mt.MemshardDataset(dataset, ragged={"tokens": "packed", "strokes": "nested"})
    batch = torch_dataset.__getitems__([5, 3, 0])
    for position, index in ((0, 5), (1, 3), (-1, 0), (np.int64(2), 0)):
        sample = batch[position]
        assert list(sample) == ["tokens", "strokes", "label"]
        np.testing.assert_array_equal(sample["tokens"].numpy(), rows["tokens"][index])
        np.testing.assert_array_equal(sample["strokes"].numpy(), rows["strokes"][index])
        assert sample["label"].item() == index
    assert [sample["label"].item() for sample in batch[::-1]] == [0, 3, 5]
    for position in (3, -4):
        with pytest.raises(IndexError, match=f"index {position} is out of range for a batch of 3"):
            batch[position]
    with pytest.raises(IndexError, match="must be an integer"):
        batch[1.0]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        default_collate(list(batch))  # rows of different lengths do not stack: use mt.collate


def test_a_batch_transform_sees_the_tensors_of_each_mode(corpus: tuple[ms.Dataset, Rows]) -> None:
    dataset, rows = corpus
    seen: list[list[str]] = []

    def lengths_of_packed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(list(batch))
        return {"tokens": batch["tokens"], "lengths": batch["tokens_offsets"].diff()}

    torch_dataset = mt.MemshardDataset(
        dataset, ["tokens", "strokes"], ragged={"tokens": "packed", "strokes": "nested"},
        batch_transform=lengths_of_packed,
    )  # fmt: skip
    batch = torch_dataset.__getitems__([5, 3])
    assert seen == [["tokens", "tokens_offsets", "strokes"]]
    assert batch.tensors["lengths"].tolist() == [40, len(rows["tokens"][3])]
    # Without its offsets a packed field's rows cannot be told apart: the tensor is indexed.
    assert batch[1]["tokens"].item() == rows["tokens"][5][1]


# -- per-sample transforms ---------------------------------------------------------------------

#: What :func:`with_marker` puts before each ragged row.
MARKER = -7


def with_marker(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each ragged row with a row of ``MARKER`` before it; ``label`` as it is."""
    changed = dict(sample)
    for name in ("tokens", "strokes"):
        row = sample[name]
        assert row.ndim == 1 + len(TAILS[name]), "a transform sees the row as stored"
        changed[name] = torch.cat([torch.full((1, *row.shape[1:]), MARKER, dtype=row.dtype), row])
    return changed


def marked(rows: Rows, name: str, indices: Sequence[int]) -> list[np.ndarray]:
    """The rows :func:`with_marker` makes."""
    tail = TAILS[name]
    return [
        np.concatenate([np.full((1, *tail), MARKER, DTYPES[name]), rows[name][i]]) for i in indices
    ]


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_a_per_sample_transform_is_batched_again_by_mode(
    corpus: tuple[ms.Dataset, Rows], mode: mt.RaggedMode
) -> None:
    dataset, rows = corpus
    chosen = {"tokens": mode, "strokes": mode}
    torch_dataset = mt.MemshardDataset(dataset, ragged=chosen, transform=with_marker)
    indices = [7, 5, 1]
    batch = torch_dataset.__getitems__(indices)
    for name in ("tokens", "strokes"):
        assert_field(
            batch.tensors, name, mode, marked(rows, name, indices), TAILS[name], DTYPES[name]
        )
    assert batch.tensors["label"].tolist() == indices
    assert_rows_of_batch(batch, chosen, {name: marked(rows, name, indices) for name in chosen})
    sample = torch_dataset[5]  # one sample goes through the transform too
    np.testing.assert_array_equal(sample["tokens"].numpy(), marked(rows, "tokens", [5])[0])


def test_a_transform_whose_ragged_rows_do_not_batch_is_named(
    corpus: tuple[ms.Dataset, Rows],
) -> None:
    dataset, _ = corpus

    def flatten_strokes(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**sample, "strokes": sample["strokes"].sum()}  # a 0-d tensor is not a row

    torch_dataset = mt.MemshardDataset(dataset, transform=flatten_strokes)
    with pytest.raises(
        TransformError, match=r"'flatten_strokes'.* ragged field 'strokes' do not batch"
    ):
        torch_dataset.__getitems__([1, 2])


# -- what MemshardDataset refuses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "ragged", "error", "message"),
    [
        (None, {"nope": "pad"}, FieldNotFoundError, "nope"),
        (None, {"label": "pad"}, ArgumentError, "field 'label', which is not a selected ragged"),
        (["tokens"], {"strokes": "packed"}, ArgumentError, "field 'strokes', which is not a"),
        (None, {"tokens": "padded"}, ArgumentError, "field 'tokens': unknown ragged mode 'padded'"),
        (None, {"tokens": None}, ArgumentError, "field 'tokens': unknown ragged mode None"),
        (
            None, {"tokens": mt.Pad(pad_value=1.5)}, CastError,
            "field 'tokens': to_padded: pad_value 1.5 cannot be stored in dtype int32",
        ),
        (
            None, {"strokes": mt.Pad(pad_value=40000)}, CastError,
            "field 'strokes': to_padded: pad_value 40000 cannot be stored in dtype int16",
        ),
    ],
)  # fmt: skip
def test_bad_ragged_options_are_named(
    corpus: tuple[ms.Dataset, Rows],
    fields: list[str] | None,
    ragged: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    dataset, _ = corpus
    with pytest.raises(error, match=message):
        mt.MemshardDataset(dataset, fields, ragged=ragged)


def test_a_key_a_mode_adds_may_not_be_a_selected_field(tmp_path: Path) -> None:
    fields = {"tokens": ("int32", (None,)), "tokens_lengths": ("int64", ())}
    write(tmp_path / "ds", fields, {"tokens": [[1, 2], [3]], "tokens_lengths": [2, 1]}, 4096)
    with pytest.raises(ArgumentError, match="'tokens' in mode 'pad' adds the key 'tokens_lengths'"):
        mt.MemshardDataset(tmp_path / "ds")
    tensors = mt.collate(
        mt.MemshardDataset(tmp_path / "ds", ragged={"tokens": "packed"}).__getitems__([1, 0])
    )
    assert list(tensors) == ["tokens", "tokens_offsets", "tokens_lengths"]
    assert tensors["tokens"].tolist() == [3, 1, 2]


# -- DataLoaders: no workers, fork and spawn workers ------------------------------------------

#: The fields of :func:`modes_corpus`: tokens and strokes, each stored three times, once for
#: each mode, and the row index.
MODE_FIELDS = {
    **{f"tokens_{mode}": ("int32", (None,)) for mode in ("pad", "packed", "nested")},
    **{f"strokes_{mode}": ("int16", (None, 3)) for mode in ("pad", "packed", "nested")},
    "i": ("int64", ()),
}
LOADER_MODES: dict[str, mt.RaggedMode] = {
    "tokens_pad": mt.Pad(max_len=6, pad_value=-1),
    "tokens_packed": "packed",
    "tokens_nested": "nested",
    "strokes_pad": "pad",
    "strokes_packed": "packed",
    "strokes_nested": "nested",
}
LOADER_ROWS = 45
LOADER_CONFIGS = [
    pytest.param({}, id="no-workers"),
    *[
        pytest.param(
            {"num_workers": 2, "multiprocessing_context": method, "timeout": 60},
            id=f"{method}-2-workers",
        )
        for method in ("fork", "spawn")
    ],
    pytest.param(
        {"num_workers": 2, "multiprocessing_context": "fork", "timeout": 60,
         "sharing_strategy": None},
        id="fork-2-workers-file-descriptor",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def modes_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Rows]:
    path = tmp_path_factory.mktemp("ragged-loader") / "modes"
    rows = corpus_rows(LOADER_ROWS, seed=9)
    columns: dict[str, Any] = {
        f"{kind}_{mode}": rows[kind]
        for kind in ("tokens", "strokes")
        for mode in ("pad", "packed", "nested")
    }
    write(path, MODE_FIELDS, {**columns, "i": np.arange(LOADER_ROWS)}, shard_bytes=512)
    return path, rows


def storages_shared(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch transform: the batch and ``shared``, whether each tensor's memory (a nested
    tensor's values and offsets) is shared memory, as the batch leaves its process."""
    tensors = [
        part
        for tensor in batch.values()
        for part in ((tensor.values(), tensor.offsets()) if tensor.is_nested else (tensor,))  # type: ignore[attr-defined]
    ]
    return {**batch, "shared": torch.tensor([tensor.is_shared() for tensor in tensors])}


def assert_loader_batch(
    batch: Mapping[str, torch.Tensor],
    rows: Rows,
    modes: Mapping[str, mt.RaggedMode],
    with_rows: Any,
) -> None:
    indices = batch["i"].tolist()
    for name, mode in modes.items():
        kind = name.split("_")[0]
        assert_field(batch, name, mode, with_rows(rows, kind, indices), TAILS[kind], DTYPES[kind])


def as_stored(rows: Rows, kind: str, indices: Sequence[int]) -> list[np.ndarray]:
    return [rows[kind][i] for i in indices]


@pytest.mark.parametrize("options", LOADER_CONFIGS)
def test_a_loader_batches_every_mode_in_shared_memory(
    modes_corpus: tuple[Path, Rows], options: dict[str, Any]
) -> None:
    """Length-grouped batches of every mode, read in the main process or in workers; a
    worker gathers them into shared memory, so handing them over copies nothing."""
    path, rows = modes_corpus
    dataset = ms.open(path)
    dataset["tokens_pad"][np.arange(0, LOADER_ROWS, 4)]  # mapped in the parent before workers
    sampler = mt.LengthGroupedSampler(dataset["tokens_packed"], 5, window=2, seed=3)
    torch_dataset = mt.MemshardDataset(
        dataset, ragged=LOADER_MODES, batch_transform=storages_shared
    )
    batches = list(mt.loader(torch_dataset, batch_sampler=sampler, **options))
    assert [batch["i"].tolist() for batch in batches] == [list(b) for b in sampler]
    workers = options.get("num_workers", 0) > 0
    for batch in batches:
        assert_loader_batch(batch, rows, LOADER_MODES, as_stored)
        assert batch["shared"].tolist() == [workers] * len(batch["shared"]), batch["shared"]
    assert sorted(i for batch in batches for i in batch["i"].tolist()) == list(range(LOADER_ROWS))


@pytest.mark.parametrize("options", LOADER_CONFIGS[:2])
def test_a_loader_batches_transformed_samples_by_mode(
    modes_corpus: tuple[Path, Rows], options: dict[str, Any]
) -> None:
    path, rows = modes_corpus

    def marked_by_kind(rows: Rows, kind: str, indices: Sequence[int]) -> list[np.ndarray]:
        return marked(rows, kind, indices)

    torch_dataset = mt.MemshardDataset(
        path, ragged=LOADER_MODES, transform=with_marker_everywhere, batch_transform=storages_shared
    )
    batches = list(mt.loader(torch_dataset, batch_size=7, shuffle=True, **options))
    workers = options.get("num_workers", 0) > 0
    for batch in batches:
        assert_loader_batch(batch, rows, LOADER_MODES, marked_by_kind)
        assert batch["shared"].tolist() == [workers] * len(batch["shared"])
    assert sorted(i for batch in batches for i in batch["i"].tolist()) == list(range(LOADER_ROWS))


def with_marker_everywhere(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`with_marker` for every ragged field of :func:`modes_corpus`."""
    changed = dict(sample)
    for name, row in sample.items():
        if name != "i":
            changed[name] = torch.cat(
                [torch.full((1, *row.shape[1:]), MARKER, dtype=row.dtype), row]
            )
    return changed


# -- loader() and LengthGroupedSampler over a ragged column ------------------------------------


def test_a_length_grouped_sampler_takes_a_ragged_column(corpus: tuple[ms.Dataset, Rows]) -> None:
    dataset, rows = corpus
    lengths = [len(row) for row in rows["tokens"]]
    column = mt.LengthGroupedSampler(dataset["tokens"], 4, window=3, seed=2)
    listed = mt.LengthGroupedSampler(lengths, 4, window=3, seed=2)
    for epoch in (0, 1):
        column.set_epoch(epoch)
        listed.set_epoch(epoch)
        assert list(column) == list(listed)
    assert mt.padding_waste(dataset["tokens"], listed) == mt.padding_waste(lengths, listed)


def test_loader_passes_ragged_modes_and_checks_its_batch_options(
    corpus: tuple[ms.Dataset, Rows],
) -> None:
    dataset, rows = corpus
    sampler = mt.LengthGroupedSampler(dataset["tokens"], 16, seed=0)
    loader = mt.loader(
        dataset.path, fields=["tokens"], ragged={"tokens": "packed"}, batch_sampler=sampler
    )
    for batch, indices in zip(loader, sampler.batches(), strict=True):
        assert_field(
            batch, "tokens", "packed", [rows["tokens"][i] for i in indices], (), DTYPES["tokens"]
        )
    contradictions: list[tuple[dict[str, Any], str]] = [
        ({"batch_size": 16}, "a batch_size and a batch_sampler contradict"),
        ({"shuffle": True}, "shuffle=True and a batch_sampler contradict"),
        ({"sampler": range(ROWS)}, "a sampler and a batch_sampler contradict"),
    ]
    for options, message in contradictions:
        with pytest.raises(ArgumentError, match=message):
            mt.loader(dataset.path, batch_sampler=sampler, **options)
    with pytest.raises(ArgumentError, match="unknown ragged mode 'flat'"):
        mt.loader(dataset.path, ragged={"tokens": "flat"})  # type: ignore[dict-item]
