"""memshard.dask: fields as dask arrays, and dask arrays written as parts on a real cluster."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import memshard as ms
from memshard import errors
from memshard.dask import append_dask, from_dask, to_dask
from memshard.mappings import map_segment
from tests.helpers import write_dataset


def cluster(workers: int = 2) -> LocalCluster:
    """A real cluster of ``workers`` worker processes (with nannies that restart them)."""
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )


@pytest.fixture(scope="module")
def client():
    with cluster() as local, Client(local) as connected:
        yield connected


def images(rows: int, block: int) -> da.Array:
    """float32[2, 3] rows computed on the workers; row r holds r * 10 + (0..5)."""
    flat = da.arange(rows * 6, chunks=block * 6, dtype=np.float32)
    grid: da.Array = (flat.reshape(rows, 6) + (da.arange(rows, chunks=block)[:, None] * 4)).reshape(
        rows, 2, 3
    )
    return grid


def expected_images(rows: int) -> np.ndarray:
    return (
        np.arange(rows * 6, dtype=np.float32).reshape(rows, 6) + np.arange(rows)[:, None] * 4
    ).reshape(rows, 2, 3)


def part_leftovers(path: str) -> list[str]:
    return sorted(
        name for name in os.listdir(os.path.join(path, "shards")) if name.startswith("p-")
    )


def named_files(dataset: ms.Dataset) -> set[str]:
    return {os.path.basename(f.path) for s in dataset.shards for f in s.files.values()}


# -- to_dask -------------------------------------------------------------------------------------


def test_to_dask_has_one_chunk_per_shard_and_no_data_in_the_graph(tmp_path):
    columns = {"x": np.arange(70 * 4, dtype=np.float64).reshape(70, 2, 2), "y": np.arange(70)}
    dataset = write_dataset(tmp_path / "ds", columns, sessions=[30, 40], shard_rows=8)
    array = to_dask(dataset, "x")

    assert array.chunks == (tuple(s.rows for s in dataset.shards), (2,), (2,))
    assert array.dtype == np.float64
    assert array.shape == (70, 2, 2)
    graph = dict(array.__dask_graph__())
    assert len(graph) == len(dataset.shards)
    for task in graph.values():  # only where the shard is, never an array
        assert not any(isinstance(item, np.ndarray) for item in task)
    np.testing.assert_array_equal(array.compute(scheduler="sync"), columns["x"])
    np.testing.assert_array_equal(
        array[13:50:3, 1].compute(scheduler="threads"), columns["x"][13:50:3, 1]
    )
    assert float(to_dask(tmp_path / "ds", "y").sum().compute()) == columns["y"].sum()


def test_a_chunk_is_a_read_only_mapping_of_its_shard(tmp_path):
    dataset = write_dataset(tmp_path / "ds", {"y": np.arange(20)}, shard_rows=8)
    array = to_dask(dataset, "y")
    key = (array.name, 1)
    function, *arguments = dict(array.__dask_graph__())[key]
    assert function is map_segment
    chunk = function(*arguments)
    assert not chunk.flags.writeable
    assert not chunk.flags.owndata
    shard_file = os.path.join(dataset.path, dataset.shards[1].files["y"].path)
    np.testing.assert_array_equal(chunk, np.load(shard_file, mmap_mode="r"))


def test_to_dask_of_an_unsealed_empty_or_missing_field(tmp_path):
    appender = ms.create(tmp_path / "ds", {"y": ("int64", ())}, shard_bytes=64)
    assert to_dask(tmp_path / "ds", "y").shape == (0,)
    appender.extend({"y": np.arange(11)})
    appender.commit()
    snapshot = ms.open(tmp_path / "ds")
    appender.extend({"y": np.arange(11, 15)})
    appender.commit()
    np.testing.assert_array_equal(to_dask(snapshot, "y").compute(), np.arange(11))
    np.testing.assert_array_equal(to_dask(tmp_path / "ds", "y").compute(), np.arange(15))
    appender.close()
    with pytest.raises(errors.FieldNotFoundError, match="'z'"):
        to_dask(snapshot, "z")


def test_a_damaged_shard_is_a_typed_error_in_the_task(tmp_path):
    dataset = write_dataset(tmp_path / "ds", {"y": np.arange(20)}, shard_rows=8)
    array = to_dask(dataset, "y")
    os.truncate(os.path.join(dataset.path, dataset.shards[1].files["y"].path), 4100)
    with pytest.raises(errors.ShardSizeError):
        array.compute(scheduler="sync")


# -- from_dask -----------------------------------------------------------------------------------


def test_from_dask_writes_blocks_in_order_on_cluster_workers(client, tmp_path):
    rows = 1000
    labels = da.from_array(np.arange(rows) % 3, chunks=77)  # other row chunks: rechunked
    dataset = from_dask(
        {"image": images(rows, 130), "label": labels},
        tmp_path / "ds",
        shard_bytes=64 * (24 + 8),
        labels={"label": ["a", "b", "c"]},
        attrs={"made": "by dask"},
    )
    np.testing.assert_array_equal(dataset["image"][:], expected_images(rows))
    np.testing.assert_array_equal(dataset["label"][:], np.arange(rows) % 3)
    assert dataset.labels == {"label": ("a", "b", "c")}
    assert dataset.attrs == {"made": "by dask"}
    # every block of 130 rows is cut into full shards and one short one, in block order
    per_shard = dataset.manifest.shard_rows
    expected = [
        min(per_shard, block - start)
        for block in [130] * 7 + [90]
        for start in range(0, block, per_shard)
    ]
    assert [s.rows for s in dataset.shards] == expected
    assert dataset.verify().ok
    assert os.listdir(tmp_path / "ds" / "parts") == []
    assert not [name for name in os.listdir(tmp_path) if name != "ds"]  # no staging left
    workers = client.run(os.getpid)
    assert len(set(workers.values())) == 2
    assert os.getpid() not in workers.values()


def test_from_dask_appends_and_round_trips_through_to_dask(client, tmp_path):
    first = from_dask({"image": images(300, 100)}, tmp_path / "ds", shard_bytes=100 * 24)
    again = append_dask({"image": to_dask(first, "image") * 2}, tmp_path / "ds")
    assert len(again) == 600
    np.testing.assert_array_equal(again["image"][300:], expected_images(300) * 2)
    with pytest.raises(errors.SchemaError, match="differ"):
        append_dask({"image": images(10, 5).astype(np.float32)}, tmp_path / "ds")
    with pytest.raises(errors.DatasetExistsError):
        from_dask({"image": images(10, 5)}, tmp_path / "ds")
    replaced = from_dask({"image": images(10, 5)}, tmp_path / "ds", overwrite=True)
    assert len(replaced) == 10
    assert replaced.uuid != first.uuid


def test_from_dask_compresses_on_the_cluster_workers_and_to_dask_reads_it_back(client, tmp_path):
    rows = 1000
    sketch = da.zeros((rows, 32, 32), dtype=np.uint8, chunks=(100, 32, 32))
    sketch = sketch + (da.arange(rows, chunks=100) % 7).astype(np.uint8)[:, None, None]
    dataset = from_dask(
        {"image": images(rows, 130), "sketch": sketch},
        tmp_path / "ds",
        shard_bytes=64 << 10,
        codecs={"sketch": "zstd:5", "image": {"codec": "blosc", "block_bytes": 4096}},
    )
    sketch_codec, image_codec = dataset["sketch"].codec, dataset["image"].codec
    assert sketch_codec is not None
    assert sketch_codec.params == {"level": 5}
    assert image_codec is not None
    assert image_codec.block_bytes == 4096
    assert dataset["sketch"].stored_bytes < dataset["sketch"].nbytes // 50
    expected = np.broadcast_to(
        (np.arange(rows) % 7).astype(np.uint8)[:, None, None], (rows, 32, 32)
    )
    np.testing.assert_array_equal(dataset["sketch"][:], expected)
    np.testing.assert_array_equal(dataset["image"][:], expected_images(rows))
    assert dataset.verify().ok

    # A compressed field as a dask array: a chunk per shard, decompressed on the workers.
    array = to_dask(dataset, "sketch")
    assert array.chunks[0] == tuple(shard.rows for shard in dataset.shards)
    np.testing.assert_array_equal(array.compute(), expected)  # the cluster's processes
    np.testing.assert_array_equal(array[::7].compute(scheduler="threads"), expected[::7])

    # Appended blocks are compressed with the dataset's codecs.
    again = append_dask({"image": to_dask(dataset, "image")[:200], "sketch": array[:200]},
                        tmp_path / "ds")  # fmt: skip
    assert len(again) == rows + 200
    assert again.manifest.fields == dataset.manifest.fields
    np.testing.assert_array_equal(again["sketch"][rows:], expected[:200])
    assert again.verify().ok


def test_from_dask_refuses_bad_codecs_before_writing(tmp_path):
    with pytest.raises(errors.SchemaError, match="no field 'nope'"):
        from_dask({"image": images(10, 5)}, tmp_path / "ds", codecs={"nope": "zstd"})
    assert os.listdir(tmp_path) == []


def test_from_dask_refuses_bad_arrays_before_writing(tmp_path):
    path = tmp_path / "ds"
    with pytest.raises(errors.ArgumentError, match="not a dask array"):
        from_dask({"x": np.zeros(3)}, path)
    with pytest.raises(errors.ArgumentError, match="non-empty mapping"):
        from_dask({}, path)
    with pytest.raises(errors.BatchError, match="has 4 rows"):
        from_dask({"x": da.zeros(3, chunks=2), "y": da.zeros(4, chunks=2)}, path)
    with pytest.raises(errors.BatchError, match="no rows axis"):
        from_dask({"x": da.zeros((), chunks=())}, path)
    unknown = da.zeros(10, chunks=5)
    unknown = unknown[unknown > 1]
    with pytest.raises(errors.ArgumentError, match="unknown chunk sizes"):
        from_dask({"x": unknown}, path)
    with pytest.raises(errors.UnsupportedDtypeError):
        from_dask({"x": da.zeros(3, chunks=2, dtype=object)}, path)
    assert not os.path.lexists(path)
    assert os.listdir(tmp_path) == []


def test_a_bad_label_in_a_block_fails_the_write_and_leaves_nothing(client, tmp_path):
    labels = da.from_array(np.array([0, 1, 0, 5, 1]), chunks=2)
    with pytest.raises(errors.LabelError):
        from_dask({"y": labels}, tmp_path / "ds", labels={"y": ["a", "b"]})
    assert os.listdir(tmp_path) == []


def _kill_mid_write_once(marker: str, key: int) -> None:
    """Runs in every worker: the first write of block ``key`` writes half, then kills its
    process (SIGKILL, so nothing is cleaned up)."""
    from memshard.parts import PartWriter

    original = PartWriter.extend

    def extend(self, batch):
        if self.key != key:
            return original(self, batch)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return original(self, batch)
        half = {name: values[: len(values) // 2] for name, values in batch.items()}
        original(self, half)
        for file in self._shards.open.files.values():
            file.flush()
        with open(f"{marker}.part", "w") as note:
            note.write(self.id)
        os.kill(os.getpid(), signal.SIGKILL)

    PartWriter.extend = extend  # type: ignore[method-assign]


def test_a_worker_killed_mid_write_is_retried_and_its_part_never_committed(tmp_path):
    marker = str(tmp_path / "killed")
    path = tmp_path / "out" / "ds"
    path.parent.mkdir()
    with cluster() as local, Client(local) as connected:
        connected.run(_kill_mid_write_once, marker, 2)
        dataset = from_dask({"image": images(600, 100)}, path, shard_bytes=64 * 24)
        assert connected.run(lambda: 1)  # the nanny restarted the killed worker
    killed = Path(f"{marker}.part").read_text()
    assert os.path.exists(marker)
    np.testing.assert_array_equal(dataset["image"][:], expected_images(600))
    files = named_files(dataset)
    assert not any(name.startswith(killed) for name in files)
    assert part_leftovers(dataset.path) == sorted(name for name in files if name.startswith("p-"))
    assert os.listdir(os.path.join(dataset.path, "parts")) == []
    starts = [s.row_offset for s in dataset.shards]
    assert all(block in starts for block in range(0, 600, 100))


def test_when_retries_run_out_nothing_is_committed_and_a_new_run_completes(tmp_path):
    marker = str(tmp_path / "killed")
    path = tmp_path / "out" / "ds"
    path.parent.mkdir()
    no_retries = dask.config.set({"distributed.scheduler.allowed-failures": 0})
    with no_retries, cluster() as local, Client(local) as connected:
        connected.run(_kill_mid_write_once, marker, 1)
        with pytest.raises(errors.ConversionFailedError, match="nothing was committed"):
            from_dask({"image": images(400, 100)}, path)
        assert os.listdir(path.parent) == []  # neither the dataset nor its staging
        dataset = from_dask({"image": images(400, 100)}, path)
    np.testing.assert_array_equal(dataset["image"][:], expected_images(400))


def test_an_append_that_fails_leaves_the_dataset_as_it_was(tmp_path):
    marker = str(tmp_path / "killed")
    path = tmp_path / "ds"
    before = from_dask({"image": images(100, 50)}, path, shard_bytes=50 * 24)
    no_retries = dask.config.set({"distributed.scheduler.allowed-failures": 0})
    with no_retries, cluster() as local, Client(local) as connected:
        connected.run(_kill_mid_write_once, marker, 1)
        with pytest.raises(errors.ConversionFailedError):
            append_dask({"image": images(300, 100)}, path)
    after = ms.open(path)
    assert (after.generation, len(after)) == (before.generation, 100)
    # the dead part's files are discarded too, and those of blocks that were still running
    assert set(part_leftovers(str(path))) == {n for n in named_files(after) if n.startswith("p-")}
    assert os.listdir(path / "parts") == []
    ms.append(path).close()  # and the dataset is free again
