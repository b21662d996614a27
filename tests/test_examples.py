"""The recipes of ``examples/`` run end to end on small generated input, and their datasets
hold what the input says: every drawing's points, label and id, ink where its strokes are;
every image decoded, with its class."""

from __future__ import annotations

import contextlib
import doctest
import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memshard as ms
from examples import doodles, image_folder
from memshard.buildrecord import BUILD_ATTR
from memshard.layout import staging_path
from tests.build_helpers import assert_same_rows, committed_inputs, layout, stored_rows, wait_until
from tests.helpers import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def run_script(
    name: str, *args: str, cwd: Path, small_shards: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python examples/NAME ARGS`` from ``cwd``, warnings as errors (but the warning about
    the small shards of the dataset ``small_shards``, asked for on purpose); it must
    succeed."""
    warnings = "error"
    if small_shards is not None:  # -W takes a literal prefix of the message, and no ":"
        warnings += f",ignore:{small_shards}:UserWarning"
    environment = {
        **os.environ,
        "PYTHONWARNINGS": warnings,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid -W option" not in result.stderr
    return result


@pytest.mark.parametrize("name", ["doodles.py", "image_folder.py"])
def test_each_script_explains_itself(name: str, tmp_path: Path) -> None:
    assert "usage: python examples/" in run_script(name, "--help", cwd=tmp_path).stdout


@pytest.mark.parametrize("module", [doodles, image_folder])
def test_docstring_examples_run(module: Any) -> None:
    failures, _ = doctest.testmod(module, raise_on_error=False)
    assert failures == 0


# -- doodles ---------------------------------------------------------------------------------


def segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each of ``point`` (``(n, 2)``) to the segment ``start``-``end``."""
    direction = end - start
    length = float(direction @ direction)
    along = np.clip((point - start) @ direction / length, 0, 1) if length else np.zeros(len(point))
    nearest = start + along[:, None] * direction
    distance: np.ndarray = np.hypot(*(point - nearest).T)
    return distance


def assert_ink_follows_strokes(image: np.ndarray, drawing: list[list[list[int]]]) -> None:
    """Every inked pixel lies on a stroke (within the line's half-width and a pixel), and
    every stroke point is inked (within a pixel): checked with geometry, not a rasteriser."""
    size = image.shape[-1]
    scale = size / 256
    half = max(1, round(doodles.LINE_WIDTH * scale)) / 2
    ink = np.argwhere(image[0] > 0)[:, ::-1].astype(float)  # (x, y) of inked pixels
    points = [np.stack([xs, ys], axis=1) * scale for xs, ys in drawing]
    assert set(np.unique(image).tolist()) <= {0, 255}
    if not points:
        assert ink.size == 0
        return
    nearest = np.full(len(ink), np.inf)
    for stroke in points:
        pairs = list(itertools.pairwise(stroke)) if len(stroke) > 1 else [(stroke[0],) * 2]
        for start, end in pairs:
            nearest = np.minimum(nearest, segment_distance(ink, start, end))
    assert nearest.max() <= half + 1.5
    for point in np.concatenate(points):
        x, y = np.clip(np.floor(point).astype(int), 0, size - 1)
        window = image[0, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        assert window.any(), f"no ink near {point}"


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_doodles_script_rasterises_a_sample_file(tmp_path: Path, compress: bool) -> None:
    """Two worker processes load the script's function as ``doodles.rows_of_chunk`` (the
    script imports itself under its own name) and write the rows in line order."""
    compression = ["--compress"] if compress else []
    run_script("doodles.py", "ds", "--make-sample", "60", "--size", "64",
               "--lines-per-chunk", "7", "--workers", "2", *compression,
               cwd=tmp_path)  # fmt: skip
    records = read_lines(tmp_path / "ds.ndjson")
    assert len(records) == 60
    assert {record["word"] for record in records} == set(doodles.WORDS)
    for record in records:
        assert set(record) == {
            "word", "countrycode", "timestamp", "recognized", "key_id", "drawing"
        }  # fmt: skip
        coordinates = [v for stroke in record["drawing"] for axis in stroke for v in axis]
        assert min(coordinates) >= 0
        assert max(coordinates) == 255  # simplified: the larger side spans 0-255
    ds = ms.open(tmp_path / "ds")
    assert len(ds) == 60
    record = ds.attrs[BUILD_ATTR]
    assert record["function"] == "doodles:rows_of_chunk"
    assert record["committed"] == record["inputs"] == 9  # chunks of 7 lines
    if compress:  # mostly black: zstd shrinks it more than 5 times
        assert ds["image"].stored_bytes < ds["image"].nbytes / 5
    else:
        assert ds["image"].codec is None
        assert ds["image"].stored_bytes == ds["image"].nbytes
    assert ds.labels["label"] == doodles.WORDS
    assert ds.fields["image"].dtype == np.uint8
    assert ds.fields["image"].shape == (1, 64, 64)
    assert ds.fields["strokes"].dtype == np.int16
    for row, record in enumerate(records):
        assert ds["label"][row] == doodles.WORDS.index(record["word"])
        assert ds["key_id"][row] == int(record["key_id"])
        points = [
            (x, y, index)
            for index, (xs, ys) in enumerate(record["drawing"])
            for x, y in zip(xs, ys, strict=True)
        ]
        assert ds["strokes"][row].tolist() == [list(point) for point in points]
        assert_ink_follows_strokes(ds["image"][row], record["drawing"])


def test_doodles_script_reads_several_files_in_order(tmp_path: Path) -> None:
    doodles.make_sample(str(tmp_path / "a.ndjson"), 5, seed=1)
    doodles.make_sample(str(tmp_path / "b.ndjson"), 4, seed=2, words=["star", "circle"])
    run_script("doodles.py", "ds", "--input", "a.ndjson", "--input", "b.ndjson",
               "--size", "32", cwd=tmp_path)  # fmt: skip
    records = read_lines(tmp_path / "a.ndjson") + read_lines(tmp_path / "b.ndjson")
    ds = ms.open(tmp_path / "ds")
    assert ds["key_id"][:].tolist() == [int(record["key_id"]) for record in records]


def script_command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def script_environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONWARNINGS": "error", "PYTHONPATH": path}


def workers_of(pid: int) -> list[int]:
    """The build worker processes (``python -m memshard.workers``) started by ``pid``."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
            with contextlib.suppress(OSError):
                if b"memshard.workers" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_doodles_build_killed_and_resumed_equals_an_uninterrupted_build(tmp_path: Path) -> None:
    """The script is killed (SIGKILL) once some parts are committed; run again with
    ``--resume`` it gives the dataset an uninterrupted run gives, shard for shard.

    The second input file is a FIFO while the first run lasts: the script reads it once
    to cut it into chunks (this test writes its lines), and a worker that starts one of its
    chunks opens it again and waits there for a writer that never comes. So the first
    file's parts are committed and the build can go no further until it is killed: no
    timing decides where it stops. For the resume and the reference run it is a plain
    file of the same lines."""
    doodles.make_sample(str(tmp_path / "a.ndjson"), 200, seed=1)
    doodles.make_sample(str(tmp_path / "lines"), 100, seed=2)
    second = tmp_path / "b.ndjson"
    os.mkfifo(second)
    feeder = threading.Thread(target=second.write_bytes, args=((tmp_path / "lines").read_bytes(),))
    feeder.start()
    options = ["--input", "a.ndjson", "--input", "b.ndjson", "--size", "32",
               "--lines-per-chunk", "5", "--workers", "2", "--compress"]  # fmt: skip
    staging = staging_path(str(tmp_path / "ds"))
    script = subprocess.Popen(script_command("doodles.py", "ds", *options), cwd=tmp_path,
                              env=script_environment(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_until(lambda: committed_inputs(staging) > 0 or script.poll() is not None, "a commit")
        assert script.poll() is None, script.communicate()
        feeder.join(timeout=60)
        assert not feeder.is_alive()
        workers = workers_of(script.pid)
        assert len(workers) == 2
    finally:
        script.kill()
        script.communicate()
    assert script.returncode == -signal.SIGKILL
    wait_until(lambda: not any(running(pid) for pid in workers), "the workers' death")
    committed = committed_inputs(staging)
    assert 0 < committed <= 40  # the first file's 40 chunks at most
    assert not (tmp_path / "ds").exists()
    second.unlink()
    second.write_bytes((tmp_path / "lines").read_bytes())

    resumed = run_script("doodles.py", "ds", *options, "--resume", cwd=tmp_path)
    assert "300 drawings in" in resumed.stdout
    assert f"{committed:,} of 60 chunks done before" in resumed.stdout
    run_script("doodles.py", "reference", *options, cwd=tmp_path)
    assert layout(tmp_path / "ds") == layout(tmp_path / "reference")
    assert_same_rows(stored_rows(tmp_path / "ds"), stored_rows(tmp_path / "reference"))
    records = read_lines(tmp_path / "a.ndjson") + read_lines(second)
    keys = [int(record["key_id"]) for record in records]
    assert ms.open(tmp_path / "ds")["key_id"][:].tolist() == keys
    assert not os.path.exists(staging)


@pytest.mark.parametrize("lines_per_chunk", [1, 3, 10, 100])
def test_chunks_cover_every_line_once(tmp_path: Path, lines_per_chunk: int) -> None:
    path = tmp_path / "d.ndjson"
    doodles.make_sample(str(path), 10)
    with path.open("a") as file:
        file.write("\n")  # a blank line holds no drawing
    found = doodles.chunks([str(path)], lines_per_chunk)
    assert [chunk.first_line for chunk in found] == list(range(0, 11, lines_per_chunk))
    assert sum(chunk.line_count for chunk in found) == 11
    rows = [row for chunk in found for row in doodles.rows_of_chunk(chunk, size=16)]
    plain = [
        row
        for chunk in found
        for row in doodles.rows_of_chunk((chunk.path, chunk.first_line, chunk.line_count), size=16)
    ]
    expected = [int(record["key_id"]) for record in read_lines(path)]
    assert [row["key_id"] for row in rows] == [row["key_id"] for row in plain] == expected


def test_the_function_and_inputs_pickle(tmp_path: Path) -> None:
    """What a parallel builder sends to its workers: the chunks and the function."""
    path = tmp_path / "d.ndjson"
    doodles.make_sample(str(path), 3)
    function = partial(doodles.rows_of_chunk, words=doodles.WORDS, size=8)
    inputs = doodles.chunks([str(path)], 2)
    function, inputs = pickle.loads(pickle.dumps((function, inputs)))
    assert sum(1 for chunk in inputs for _ in function(chunk)) == 3


BAD_LINES = [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a drawing"),
    ('{"word": "circle", "key_id": "1"}', "not a drawing"),
    ('{"word": "circle", "key_id": "1", "drawing": [[[1, 2], [3]]]}', "not a list of strokes"),
    ('{"word": "circle", "key_id": "1", "drawing": [[[1, 256], [3, 4]]]}', "integers 0-255"),
    ('{"word": "circle", "key_id": "1", "drawing": [[[1.5], [3]]]}', "not a list of strokes"),
    ('{"word": "circle", "key_id": "1", "drawing": [[[true], [3]]]}', "not a list of strokes"),
    ('{"word": "dragon", "key_id": "1", "drawing": []}', "word 'dragon' is not in"),
    ('{"word": "circle", "key_id": "x1", "drawing": []}', "key_id 'x1' is not an integer"),
]


@pytest.mark.parametrize(("line", "words"), BAD_LINES)
def test_a_bad_line_is_named(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "d.ndjson"
    doodles.make_sample(str(path), 2)
    with path.open("a") as file:
        file.write(line + "\n")
    with pytest.raises(ValueError, match=words) as caught:
        list(doodles.rows_of_chunk(doodles.chunks([str(path)], 10)[0], size=8))
    assert str(caught.value).startswith(f"{path}:3: ")


def test_a_chunk_past_the_end_of_its_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.ndjson"
    doodles.make_sample(str(path), 2)
    with pytest.raises(ValueError, match=":3: the file ends before the chunk does"):
        list(doodles.rows_of_chunk((str(path), 1, 5), size=8))


coordinates = st.integers(0, 255)
strokes = st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.lists(coordinates, min_size=n, max_size=n),
                        st.lists(coordinates, min_size=n, max_size=n)).map(list)
)  # fmt: skip
drawings = st.lists(strokes, max_size=5)


@settings(max_examples=60, deadline=None)
@given(drawing=drawings, size=st.sampled_from([32, 64, 256]))
def test_rasterised_ink_follows_any_drawing(drawing: list[list[list[int]]], size: int) -> None:
    image = doodles.rasterise(drawing, size)
    assert image.shape == (1, size, size)
    assert image.dtype == np.uint8
    assert_ink_follows_strokes(image, drawing)


@given(drawing=drawings)
def test_strokes_give_the_drawing_back(drawing: list[list[list[int]]]) -> None:
    points = doodles.strokes_of(drawing)
    assert points.dtype == np.int16
    assert points.shape == (sum(len(xs) for xs, _ in drawing), 3)
    assert doodles.drawing_of(points) == drawing


# -- image folder ----------------------------------------------------------------------------


def test_image_folder_script_converts_a_sample_folder(tmp_path: Path) -> None:
    run_script("image_folder.py", "ds", "--make-sample", "photos", "--per-class", "3",
               "--size", "16", "--workers", "2", "--shard-size", "2000", cwd=tmp_path,
               small_shards=tmp_path / "ds")  # fmt: skip
    classes = sorted(image_folder.SAMPLE_CLASSES)
    inputs, listed = image_folder.images_of(str(tmp_path / "photos"))
    assert listed == classes
    suffixes = {os.path.splitext(path)[1] for path, _ in inputs}
    assert suffixes == {".jpg", ".png"}
    ds = ms.open(tmp_path / "ds")
    assert len(ds.shards) > 2  # the workers had several shards to share
    assert ds.labels["label"] == tuple(classes)
    assert ds.fields["image"].shape == (3, 16, 16)
    assert ds["label"][:].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for row, (path, label) in enumerate(inputs):
        image = ds["image"][row]
        np.testing.assert_array_equal(image, image_folder.decode(path, 16))
        np.testing.assert_array_equal(image_folder.row_of((path, label), 16)["image"], image)
        # The picture leans to its class's colour: that channel is the brightest on average.
        colour = image_folder.SAMPLE_CLASSES[classes[label]]
        assert int(np.argmax(image.reshape(3, -1).mean(axis=1))) == int(np.argmax(colour))


def test_image_folder_build_decodes_in_two_workers_like_the_conversion(tmp_path: Path) -> None:
    """``--build``: ms.build runs the script's own row_of (a function of its ``__main__``,
    which the workers import as a module) in two worker processes; the rows are those of
    the inputs in order, and the dataset is the one from_image_folder makes."""
    image_folder.make_sample(str(tmp_path / "photos"), 5)
    run_script("image_folder.py", "built", "--src", "photos", "--size", "16", "--build",
               "--workers", "2", cwd=tmp_path)  # fmt: skip
    run_script("image_folder.py", "converted", "--src", "photos", "--size", "16",
               "--workers", "2", cwd=tmp_path)  # fmt: skip
    inputs, classes = image_folder.images_of(str(tmp_path / "photos"))
    built = ms.open(tmp_path / "built")
    record = built.attrs[BUILD_ATTR]
    assert record["function"] == "__main__:row_of"
    assert record["committed"] == record["inputs"] == len(inputs) == 15
    assert built.labels["label"] == tuple(classes)
    assert built["label"][:].tolist() == [label for _, label in inputs]
    for row, (path, _) in enumerate(inputs):
        np.testing.assert_array_equal(built["image"][row], image_folder.decode(path, 16))
    converted = ms.open(tmp_path / "converted")
    assert converted.labels == built.labels
    for name in ("image", "label"):
        np.testing.assert_array_equal(built[name][:], converted[name][:])


def test_image_folder_decode_takes_grey_and_palette_images(tmp_path: Path) -> None:
    from PIL import Image

    grey = tmp_path / "g.png"
    Image.fromarray(np.full((10, 20), 77, np.uint8)).save(grey)
    decoded = image_folder.decode(str(grey), (8, 4))
    assert decoded.shape == (3, 4, 8)
    assert (decoded == 77).all()
    palette = Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).convert("P")
    palette.save(tmp_path / "p.png", transparency=0)
    assert image_folder.decode(str(tmp_path / "p.png"), 6).shape == (3, 6, 6)
