"""from_image_folder and ``memshard convert FOLDER --resize``: class folders of real JPEG and
PNG files decoded into channels-first uint8 images with the class as a label; damaged files
named; resume; worker processes; the command line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from PIL import Image

import memshard as ms
from memshard import cli
from memshard import imagefolder as ms_images
from memshard.errors import (
    ArgumentError,
    ConversionStateError,
    ImageDecodeError,
    SourceError,
)
from tests.convert_helpers import staging_of

SIZE = (12, 8)  # width, height


def pattern(seed: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    """A smooth image (JPEG keeps it close), different for every seed."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [(x * (3 + seed) + y * (5 + channel) + 40 * seed) % 256 for channel in range(channels)]
    return np.stack(planes, axis=-1).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, **options: Any) -> Path:
    """Write ``pixels`` (``(H, W, 3)`` or ``(H, W)``) as the image file ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def expected(path: Path, size: tuple[int, int] = SIZE, mode: str = "RGB") -> np.ndarray:
    """What the conversion stores for ``path``, computed with Pillow's documented calls."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft(mode, size)
        pixels = np.asarray(image.convert(mode).resize(size, Image.Resampling.BILINEAR))
    stored: np.ndarray = pixels.reshape(size[1], size[0], -1).transpose(2, 0, 1)
    return stored


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three classes of JPEG and PNG files of various sizes, one in a nested folder, with a
    text file, a hidden file and a hidden folder that are not taken."""
    root = tmp_path / "photos"
    save(root / "cat" / "b.png", pattern(0, 20, 30))
    save(root / "cat" / "a.jpg", pattern(1, 16, 16), quality=95)
    save(root / "cat" / "more" / "c.PNG", pattern(2, 9, 13))
    save(root / "dog" / "d.jpeg", pattern(3, 40, 24), quality=90)
    save(root / "emu" / "e.png", pattern(4, 8, 12)[..., 0])  # greyscale
    (root / "cat" / "notes.txt").write_text("not an image")
    save(root / "dog" / ".hidden.png", pattern(5, 8, 8))
    save(root / ".ipynb_checkpoints" / "x.png", pattern(6, 8, 8))
    (root / "stray.png").write_bytes((root / "cat" / "b.png").read_bytes())
    return root


ROWS = ["cat/a.jpg", "cat/b.png", "cat/more/c.PNG", "dog/d.jpeg", "emu/e.png"]
LABELS = [0, 0, 0, 1, 2]


def test_a_folder_becomes_images_and_labels(folder: Path, tmp_path: Path) -> None:
    ds = ms.from_image_folder(folder, tmp_path / "ds", size=SIZE)
    assert ds.labels["label"] == ("cat", "dog", "emu")
    assert ds.fields["image"].dtype == np.uint8
    assert ds.fields["image"].shape == (3, 8, 12)  # channels first: (C, height, width)
    assert ds.fields["label"].dtype == np.int64
    np.testing.assert_array_equal(ds["label"][:], LABELS)
    for row, name in enumerate(ROWS):
        np.testing.assert_array_equal(ds["image"][row], expected(folder / name), err_msg=name)
    source = ds.attrs["memshard.source"]
    assert source["format"] == "images"
    assert source["identity"]["files"] == len(ROWS)
    assert source["fields"]["image"]["attrs"]["layout"] == "CHW"


def test_jpeg_pixels_stay_close_to_the_original(folder: Path, tmp_path: Path) -> None:
    """The JPEG rows hold the picture, not merely what Pillow makes of it: a JPEG saved at
    the target size comes back within a few levels of the pixels written."""
    original = pattern(7, 8, 12)
    save(folder / "dog" / "z.jpg", original, quality=100, subsampling=0)
    ds = ms.from_image_folder(folder, tmp_path / "ds", size=SIZE)
    stored = ds["image"][4]  # after cat/a, cat/b, cat/more/c and dog/d
    assert np.abs(stored.astype(int) - original.transpose(2, 0, 1)).max() <= 8


def test_large_jpegs_are_decoded_at_a_reduced_scale_close_to_a_full_decode(
    tmp_path: Path,
) -> None:
    root = tmp_path / "big"
    path = save(root / "a" / "photo.jpg", pattern(1, 512, 640), quality=95)
    ds = ms.from_image_folder(root, tmp_path / "ds", size=(40, 32))
    with Image.open(path) as image:
        full = np.asarray(image.convert("RGB").resize((40, 32), Image.Resampling.BILINEAR))
    difference = np.abs(ds["image"][0].astype(int) - full.transpose(2, 0, 1))
    assert difference.mean() < 4
    np.testing.assert_array_equal(ds["image"][0], expected(path, (40, 32)))


def test_grey_mode_gives_one_channel(folder: Path, tmp_path: Path) -> None:
    ds = ms.from_image_folder(folder, tmp_path / "ds", size=SIZE, mode="L")
    assert ds.fields["image"].shape == (1, 8, 12)
    for row, name in enumerate(ROWS):
        np.testing.assert_array_equal(ds["image"][row], expected(folder / name, mode="L"))


def test_square_size_from_one_int(folder: Path, tmp_path: Path) -> None:
    ds = ms.from_image_folder(folder, tmp_path / "ds", size=5)
    assert ds.fields["image"].shape == (3, 5, 5)


@settings(max_examples=15, deadline=None)
@given(
    pixels=npst.arrays(
        np.uint8,
        st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3)),
    ),
)
def test_png_at_its_own_size_round_trips_exactly(pixels: np.ndarray) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        save(root / "only" / "x.png", pixels)
        height, width = pixels.shape[:2]
        ds = ms.from_image_folder(root, Path(tmp) / "ds", size=(width, height))
        np.testing.assert_array_equal(ds["image"][0], pixels.transpose(2, 0, 1))
        ds.close()


def test_palette_png_with_transparency_converts_without_a_warning(tmp_path: Path) -> None:
    """Pillow warns when such an image goes straight to RGB; warnings are errors here."""
    image = Image.fromarray(pattern(0, 6, 6)).convert("P")
    image.info["transparency"] = 0
    path = tmp_path / "pal" / "a" / "p.png"
    path.parent.mkdir(parents=True)
    image.save(path, transparency=0)
    ds = ms.from_image_folder(tmp_path / "pal", tmp_path / "ds", size=(6, 6))
    with Image.open(path) as reread:
        reference = np.asarray(reread.convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(ds["image"][0], reference.transpose(2, 0, 1))


def test_the_plan_lists_what_it_leaves_out(folder: Path) -> None:
    os.mkfifo(folder / "dog" / "pipe.jpg")
    (folder / "zebra").mkdir()
    plan = ms_images.plan(folder, size=SIZE)
    assert plan.rows == len(ROWS)
    assert plan.labels == {"label": ["cat", "dog", "emu", "zebra"]}
    assert set(plan.skipped) == {"cat/notes.txt", "dog/pipe.jpg", "stray.png", "zebra"}
    assert "no image" in plan.skipped["zebra"]
    assert not any(".hidden" in key or "ipynb" in key for key in plan.skipped)


def test_many_files_not_taken_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "f"
    save(root / "a" / "x.png", pattern(0, 4, 4))
    for index in range(25):
        (root / "a" / f"note{index:02}.txt").write_text("")
    skipped = ms_images.plan(root, size=4).skipped
    assert len(skipped) == ms_images.MAX_NAMED_SKIPS + 1
    assert "5 more files" in skipped


def test_the_opener_pickles_and_reads_in_another_process_shape(folder: Path) -> None:
    plan = ms_images.plan(folder, size=SIZE)
    opener = pickle.loads(pickle.dumps(plan.opener))
    reader = opener()
    out = np.empty((2, 3, 8, 12), np.uint8)
    reader.read("image", 3, 5, out)
    np.testing.assert_array_equal(out[0], expected(folder / "dog" / "d.jpeg"))
    labels = np.empty(5, np.int64)
    reader.read("label", 0, 5, labels)
    assert labels.tolist() == LABELS
    reader.close()


def test_worker_processes_give_the_same_dataset(folder: Path, tmp_path: Path) -> None:
    one = ms.from_image_folder(folder, tmp_path / "one", size=SIZE, shard_bytes=800)
    two = ms.from_image_folder(folder, tmp_path / "two", size=SIZE, shard_bytes=800, workers=2)
    assert len(two.shards) > 2
    np.testing.assert_array_equal(one["image"][:], two["image"][:])
    np.testing.assert_array_equal(one["label"][:], two["label"][:])


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "mode", "words"),
    [
        (0, "RGB", "size must be"),
        ((8,), "RGB", "size must be"),
        ((8, 8, 3), "RGB", "size must be"),
        ((8.0, 8), "RGB", "size must be"),
        ((True, 8), "RGB", "size must be"),
        ((8, 1 << 16), "RGB", "size must be"),
        (8, "RGBA", "mode must be one of RGB, L"),
        (8, "rgb", "mode must be one of RGB, L"),
    ],
)
def test_bad_size_or_mode_is_refused(folder: Path, tmp_path: Path, size, mode, words) -> None:
    with pytest.raises(ArgumentError, match=words):
        ms.from_image_folder(folder, tmp_path / "ds", size=size, mode=mode)
    assert not (tmp_path / "ds").exists()


def test_a_folder_without_class_folders_is_refused(tmp_path: Path) -> None:
    save(tmp_path / "flat" / "a.png", pattern(0, 4, 4))
    with pytest.raises(SourceError, match="holds no class folder"):
        ms.from_image_folder(tmp_path / "flat", tmp_path / "ds", size=4)
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    with pytest.raises(SourceError, match="hold no image"):
        ms.from_image_folder(tmp_path / "noimages", tmp_path / "ds", size=4)
    with pytest.raises(SourceError, match="no such directory"):
        ms.from_image_folder(tmp_path / "missing", tmp_path / "ds", size=4)


DAMAGES = {
    "not an image": lambda data: b"this is no image at all",
    "truncated jpeg": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_file_is_named(folder: Path, tmp_path: Path, damage: str, workers: int) -> None:
    path = folder / "dog" / "d.jpeg"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(ImageDecodeError, match=str(path)):
        ms.from_image_folder(folder, tmp_path / "ds", size=SIZE, workers=workers, shard_bytes=800)
    assert not (tmp_path / "ds").exists()


def test_a_replaced_file_resumes_an_interrupted_conversion(folder: Path, tmp_path: Path) -> None:
    """Rows before the damaged file are kept; with a good copy in its place, the resumed
    conversion equals one that never stopped."""
    reference = ms.from_image_folder(folder, tmp_path / "reference", size=SIZE, shard_bytes=400)
    path = folder / "dog" / "d.jpeg"
    good = path.read_bytes()
    path.write_bytes(b"damaged")
    dst = tmp_path / "ds"
    with pytest.raises(ImageDecodeError):
        ms.from_image_folder(folder, dst, size=SIZE, shard_bytes=400)
    assert len(ms.open(staging_of(dst))) == 3  # the rows before it, in whole shards
    path.write_bytes(good)
    ds = ms.from_image_folder(folder, dst, size=SIZE, resume=True)
    np.testing.assert_array_equal(ds["image"][:], reference["image"][:])
    np.testing.assert_array_equal(ds["label"][:], reference["label"][:])


def test_a_changed_listing_or_size_is_not_resumed(folder: Path, tmp_path: Path) -> None:
    path = folder / "dog" / "d.jpeg"
    path.write_bytes(b"damaged")
    dst = tmp_path / "ds"
    with pytest.raises(ImageDecodeError):
        ms.from_image_folder(folder, dst, size=SIZE, shard_bytes=400)
    with pytest.raises(ConversionStateError, match="field 'image' with another shape"):
        ms.from_image_folder(folder, dst, size=(8, 8), resume=True)
    path.unlink()
    with pytest.raises(ConversionStateError, match="another source"):
        ms.from_image_folder(folder, dst, size=SIZE, resume=True)


# -- the command line ----------------------------------------------------------------------


def test_cli_detects_the_folder_and_resizes(folder: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cli"
    assert cli.main(["convert", str(folder), str(dst), "--resize", "12x8", "-q"]) == 0
    ds = ms.open(dst)
    assert ds.fields["image"].shape == (3, 8, 12)
    np.testing.assert_array_equal(ds["image"][0], expected(folder / "cat" / "a.jpg"))
    assert cli.main(["convert", str(folder), str(tmp_path / "g"), "--resize", "4x4",
                     "--mode", "L", "--format", "images", "-q"]) == 0  # fmt: skip
    assert ms.open(tmp_path / "g").fields["image"].shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([], "needs --resize WIDTHxHEIGHT"),
        (["--resize", "8x8", "--field", "x=y"], "do not apply to a folder of images"),
        (["--resize", "8x8", "--labels", "label=a,b"], "do not apply to a folder of images"),
    ],
)
def test_cli_refusals_for_a_folder(folder: Path, tmp_path: Path, capsys, extra, words) -> None:
    assert cli.main(["convert", str(folder), str(tmp_path / "x"), *extra]) == cli.USAGE
    assert words in capsys.readouterr().err


def test_cli_refuses_resize_for_other_sources(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    command = ["convert", str(tmp_path / "x.npy"), str(tmp_path / "ds"), "--resize", "8x8"]
    assert cli.main(command) == cli.USAGE
    assert "--resize and --mode are for a folder of images" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["64", "64x", "x64", "0x8", "8x0", "-1x8", "8*8"])
def test_cli_resize_refuses_what_is_no_size(tmp_path: Path, capsys, text: str) -> None:
    with pytest.raises(SystemExit):
        cli.main(["convert", str(tmp_path), str(tmp_path / "x"), f"--resize={text}"])
    assert "is not a size WIDTHxHEIGHT" in capsys.readouterr().err


def test_cli_detection_takes_the_image_names_the_source_takes(tmp_path: Path) -> None:
    for suffix in ms_images.IMAGE_SUFFIXES:
        for name in (f"a{suffix}", f"a{suffix.upper()}"):
            root = tmp_path / name.replace(".", "_")
            (root / "class").mkdir(parents=True)
            (root / "class" / name).write_bytes(b"")
            assert cli.detect_format(str(root)) == "images", name
    (tmp_path / "other" / "class").mkdir(parents=True)
    (tmp_path / "other" / "class" / "a.txt").write_bytes(b"")
    with pytest.raises(SourceError, match="or class folders of images"):
        cli.detect_format(str(tmp_path / "other"))
