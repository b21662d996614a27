"""Recipe: a folder of class folders of JPEG/PNG images into a dataset of fixed-shape images.

The folder holds one sub-folder per class (the layout ``torchvision.datasets.ImageFolder``
reads)::

    photos/cat/0001.jpg
    photos/dog/0002.png

and the dataset two fields: ``image``, ``uint8`` of shape ``(3, height, width)`` (channels
first, as every memshard example stores images), and ``label``, ``int64``, the index of the
class in the vocabulary of the sorted class names (``ds.labels["label"]``). This is the job
people write LMDB converters for. Two ways to do it, giving the same dataset:

- :func:`memshard.from_image_folder` (also ``memshard convert photos ds --resize 64x64``),
  the conversion built in, which decodes in worker processes and resumes an interrupted run;
- ``--build``: :func:`build_dataset`, the same job as your own function with
  :func:`memshard.build`: :func:`images_of` lists the ``(path, label)`` inputs in row
  order, :func:`row_of` makes the row of one with :func:`decode`. Start from it when the
  decoding is yours to change (crops, augmentation, another library).

Run ``python examples/image_folder.py --help``; for example::

    python examples/image_folder.py photos-ds --make-sample photos --size 64
    python examples/image_folder.py photos-built --src photos --size 64 --build --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from functools import partial

import numpy as np
from PIL import Image

import memshard as ms

#: Images are resized to SIZE x SIZE unless asked otherwise.
SIZE = 64
#: The file name endings of the images taken, in lower case.
SUFFIXES = (".jpg", ".jpeg", ".png")
#: The classes of the sample folder, and the colour each class's pictures lean to.
SAMPLE_CLASSES = {"apple": (200, 30, 40), "grass": (40, 170, 60), "sky": (70, 120, 220)}


def decode(path: str, size: int | tuple[int, int] = SIZE) -> np.ndarray:
    """The image at ``path`` as ``uint8`` ``(3, height, width)``: decoded (a JPEG at the
    smallest reduced scale still at least ``size``), converted to RGB and resized with
    bilinear filtering to ``size`` (an int for a square, or ``(width, height)``) -- the
    steps :func:`memshard.from_image_folder` takes.

    Raises:
        OSError: the file is missing, damaged or not an image (Pillow's
            ``UnidentifiedImageError`` is one).
    """
    width, height = (size, size) if isinstance(size, int) else size
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (width, height))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # straight to RGB, Pillow warns
        rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def row_of(item: tuple[str, int], size: int | tuple[int, int] = SIZE) -> dict[str, object]:
    """The row of one ``(path, label)`` input of :func:`images_of`."""
    path, label = item
    return {"image": decode(path, size), "label": label}


def images_of(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(path, label), ...]`` of the images under the class folders of ``root``, in the
    dataset's row order (class, then path, names sorted at each level; hidden names
    skipped), and the class names."""
    classes = sorted(
        name
        for name in os.listdir(root)
        if not name.startswith(".") and os.path.isdir(os.path.join(root, name))
    )
    found = []
    for label, name in enumerate(classes):
        for top, folders, files in os.walk(os.path.join(root, name)):
            folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
            found += [
                (os.path.join(top, file), label)
                for file in sorted(files)
                if not file.startswith(".") and file.lower().endswith(SUFFIXES)
            ]
    return found, classes


def build_dataset(
    src: str,
    dst: str,
    *,
    size: int = SIZE,
    workers: int | None = None,
    resume: bool = False,
    shard_bytes: int | None = None,
    progress: bool | None = None,
) -> ms.BuildReport:
    """Decode and resize every image under the class folders of ``src`` into a new dataset
    at ``dst`` with :func:`memshard.build`: :func:`row_of` (which calls :func:`decode`) run on
    each input of :func:`images_of` by ``workers`` processes (default: one per CPU; 0 or 1:
    in this process), the rows in the order of the inputs. ``resume`` completes an
    interrupted build of the same folder and size.

    Raises:
        memshard.errors.BuildInputError: an image cannot be decoded (the error names it).
    """
    inputs, classes = images_of(os.path.abspath(src))
    return ms.build(
        partial(row_of, size=size),
        inputs,
        dst,
        fields={"image": ("uint8", (3, size, size)), "label": ("int64", ())},
        labels={"label": classes},
        workers=workers,
        resume=resume,
        shard_bytes=shard_bytes,
        progress=progress,
    )


def make_sample(root: str, per_class: int, seed: int = 0) -> None:
    """Write ``per_class`` pictures of each class of :data:`SAMPLE_CLASSES` under ``root``,
    JPEG and PNG in turn, of varied sizes: a gradient of the class's colour with a square."""
    rng = np.random.default_rng(seed)
    for name, colour in SAMPLE_CLASSES.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for index in range(per_class):
            height, width = (int(side) for side in rng.integers(48, 160, 2))
            shade = np.linspace(0.6, 1.0, width)[None, :, None]
            pixels = np.empty((height, width, 3))
            pixels[...] = np.asarray(colour)[None, None, :] * shade
            top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            pixels[top : top + height // 3, left : left + width // 3] = 255
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            suffix = ".jpg" if index % 2 == 0 else ".png"
            image.save(os.path.join(root, name, f"{index:05}{suffix}"), quality=92)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python examples/image_folder.py",
        description="Convert a folder of class folders of JPEG/PNG images into a memshard "
        "dataset: image uint8 (3, SIZE, SIZE), channels first; label, the class.",
    )
    parser.add_argument("dst", help="the dataset to create")
    parser.add_argument("--src", metavar="DIR", help="the folder of class folders")
    parser.add_argument(
        "--make-sample", metavar="DIR",
        help="first write a small sample folder to DIR (and convert it, if --src is not given)",
    )  # fmt: skip
    parser.add_argument("--per-class", type=int, default=20, help="sample pictures per class")
    parser.add_argument("--size", type=int, default=SIZE, help=f"image side (default {SIZE})")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument(
        "--build", action="store_true",
        help="with ms.build and this script's own decode(), not ms.from_image_folder",
    )  # fmt: skip
    parser.add_argument(
        "--shard-size", type=int, default=None, metavar="BYTES",
        help="target shard size; workers share out whole shards (default 256 MiB)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="complete an interrupted run")
    args = parser.parse_args(argv)
    if args.make_sample is not None:
        make_sample(args.make_sample, args.per_class)
    src = args.src or args.make_sample
    if src is None:
        parser.error("give --src DIR, or --make-sample DIR")
    started = time.perf_counter()
    if args.build:
        build_dataset(src, args.dst, size=args.size, workers=args.workers,
                      resume=args.resume, shard_bytes=args.shard_size)  # fmt: skip
        ds = ms.open(args.dst)
    else:
        ds = ms.from_image_folder(src, args.dst, size=args.size, workers=args.workers,
                                  shard_bytes=args.shard_size, resume=args.resume)  # fmt: skip
    seconds = time.perf_counter() - started
    classes = ", ".join(ds.labels["label"])
    print(f"{args.dst}: {len(ds):,} images of {ds.fields['image'].shape} in {seconds:.1f} s "
          f"(classes: {classes})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
