"""Statistics of row lengths (:mod:`memshard.lengthstats`) against numpy, and
``RaggedColumn.length_stats``, which reads them from a dataset's offsets files."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from memshard import lengthstats
from memshard.errors import DatasetClosedError, ShardDataError
from memshard.lengthstats import LengthStats, length_stats
from memshard.manifest import offsets_path

#: Lengths around the bound where the first pass stops counting exactly, and far beyond (up to
#: 2**56: 60 of them, a block's sum, stay within int64, as an offsets file's do).
EDGES = [
    0,
    1,
    lengthstats.EXACT_BELOW - 1,
    lengthstats.EXACT_BELOW,
    lengthstats.EXACT_BELOW + 1,
    2**40,
    2**56,
]
lengths_lists = st.lists(
    st.one_of(st.integers(0, 400), st.sampled_from(EDGES), st.integers(0, 2**56)),
    min_size=1,
    max_size=60,
)


def blocks_of(lengths: list[int], cuts: list[int]) -> list[np.ndarray]:
    """``lengths`` as int64 blocks cut at ``cuts`` (some blocks empty)."""
    bounds = sorted({0, len(lengths), *(cut % (len(lengths) + 1) for cut in cuts)})
    array = np.array(lengths, dtype=np.int64)
    return [array[a:b] for a, b in itertools.pairwise(bounds)] + [array[:0]]


def expected(lengths: list[int]) -> LengthStats:
    """What numpy says, with exact integer arithmetic where float64 would round."""
    ordered = sorted(lengths)
    count = len(ordered)
    median = (ordered[(count - 1) // 2] + ordered[count // 2]) / 2
    return LengthStats(count, sum(lengths), ordered[0], median, ordered[-1], sum(lengths) / count)


@settings(max_examples=300, deadline=None)
@given(lengths=lengths_lists, cuts=st.lists(st.integers(0, 100), max_size=5))
def test_stats_match_sorting_whatever_the_blocks(lengths: list[int], cuts: list[int]) -> None:
    blocks = blocks_of(lengths, cuts)
    assert length_stats(lambda: iter(blocks)) == expected(lengths)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 10_000), min_size=1, max_size=200))
def test_median_and_mean_are_numpys(lengths: list[int]) -> None:
    stats = length_stats(lambda: [np.array(lengths)])
    assert stats is not None
    assert stats.median == np.median(lengths)
    assert stats.mean == pytest.approx(np.mean(lengths))
    assert (stats.min, stats.max) == (min(lengths), max(lengths))


def test_a_median_above_the_exact_counts_takes_more_passes() -> None:
    lengths = [5, 2**40 + 3, 2**40 + 3, 2**62, 2**40 + 1]
    passes = []

    def blocks() -> list[np.ndarray]:
        passes.append(1)
        return [np.array(lengths[:2]), np.array(lengths[2:])]

    stats = length_stats(blocks)
    assert stats is not None
    assert stats.median == 2**40 + 3
    assert len(passes) > 1
    typical = []

    def short() -> list[np.ndarray]:
        typical.append(1)
        return [np.array([3, 1, 4, 1, 5, 9, 2, 6, 2**50])]

    assert length_stats(short) == LengthStats(9, 2**50 + 31, 1, 4.0, 2**50, (2**50 + 31) / 9)
    assert len(typical) == 1  # a median below EXACT_BELOW: one pass


def test_no_lengths_have_no_stats() -> None:
    assert length_stats(lambda: []) is None
    assert length_stats(lambda: [np.zeros(0, np.int64)] * 3) is None


# -- RaggedColumn.length_stats -------------------------------------------------------------------

FIELDS = {"tokens": ("int32", (None,)), "label": ("int64", ())}


def write(path: Path, lengths: list[int], *, seal: bool = True) -> ms.Dataset:
    writer = ms.create(path, FIELDS, shard_bytes=256)
    writer.extend(
        {
            "tokens": [np.arange(length, dtype=np.int32) for length in lengths],
            "label": np.arange(len(lengths)),
        }
    )
    if seal:
        writer.close()
    else:
        writer.commit()
        writer.abort()  # the last shard stays unsealed
    return ms.open(path)


@pytest.mark.parametrize("seal", [True, False])
def test_a_column_reads_its_stats_from_every_shard(tmp_path: Path, seal: bool) -> None:
    lengths = [int(n) for n in np.random.default_rng(3).integers(0, 90, 101)]
    ds = write(tmp_path / "ds", lengths, seal=seal)
    assert len(ds.shards) > 5
    assert ds.shards[-1].sealed is seal
    stats = ds["tokens"].length_stats()
    assert stats == expected(lengths)
    assert stats is not None
    assert stats.elements * 4 == ds["tokens"].nbytes


def test_a_column_of_no_rows_has_no_stats(tmp_path: Path) -> None:
    ms.create(tmp_path / "ds", FIELDS).close()
    assert ms.open(tmp_path / "ds")["tokens"].length_stats() is None


def test_stats_name_a_damaged_offsets_file(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", [3, 1, 4, 1, 5, 9, 2, 6] * 8)
    offsets = offsets_path(ds.shard_files("tokens")[1])
    os.chmod(offsets, 0o644)
    data = np.load(offsets)
    with open(offsets, "r+b") as handle:  # the last offset points past the values
        handle.seek(os.path.getsize(offsets) - 8)
        handle.write(np.int64(data[-1] + 1000).tobytes())
    with pytest.raises(ShardDataError, match=offsets):
        ms.open(tmp_path / "ds")["tokens"].length_stats()


def test_stats_of_a_closed_dataset(tmp_path: Path) -> None:
    ds = write(tmp_path / "ds", [1, 2])
    column = ds["tokens"]
    ds.close()
    with pytest.raises(DatasetClosedError):
        column.length_stats()


def test_stats_hold_a_block_of_lengths_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memshard import reader

    monkeypatch.setattr(reader, "LENGTH_BLOCK_ROWS", 4)
    seen: list[int] = []
    real = lengthstats.length_stats

    def spy(blocks: lengthstats.Blocks) -> LengthStats | None:
        def recorded() -> list[np.ndarray]:
            got = list(blocks())
            seen.extend(block.size for block in got)
            return got

        return real(recorded)

    monkeypatch.setattr(reader, "length_stats", spy)
    lengths = list(range(30))
    assert write(tmp_path / "ds", lengths)["tokens"].length_stats() == expected(lengths)
    assert seen
    assert max(seen) <= 4
