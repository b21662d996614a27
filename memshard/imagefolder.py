"""Folders of images as a conversion source (Pillow): the only module importing PIL.

Use :func:`memshard.from_image_folder` (or ``memshard convert FOLDER DST --resize WxH``); this
module supplies the source plan (:func:`plan`) and the reader.

The folder holds one sub-folder per class, as ``torchvision.datasets.ImageFolder`` reads it::

    FOLDER/cat/0001.jpg
    FOLDER/cat/more/0002.png     (files in nested folders belong to the class too)
    FOLDER/dog/0003.jpeg

The dataset has two fields:

- ``image``: ``uint8`` of shape ``(C, height, width)``, *channels first* as every other
  example of memshard (``C`` is 3 for ``mode="RGB"``, 1 for ``"L"``): each file decoded,
  converted to ``mode`` and resized to exactly ``size`` (``(width, height)``, as Pillow
  gives sizes; the aspect ratio is not kept) with bilinear filtering. A JPEG is decoded at
  the smallest of its reduced scales that is still at least ``size`` (Pillow's ``draft``),
  which makes large photos several times cheaper to decode. Orientation tags (EXIF) are not
  applied, and an alpha channel is dropped, not composited, as ``ImageFolder`` does;
- ``label``: ``int64``, the index of the file's class folder in the vocabulary, which is the
  sorted names of the class folders (``ds.labels["label"]``).

Rows are in class order, then in path order within a class (names sorted at each level).
Regular files whose names end in :data:`IMAGE_SUFFIXES` (any case) are taken; other files,
special files and files directly in ``FOLDER`` are not, and the plan lists them
(``plan.skipped``). Hidden files and folders (a name starting with ``.``, such as
``.ipynb_checkpoints``) are ignored. A class folder with no image keeps its place in the
vocabulary, so that the labels stay those of the folder names.

A file that cannot be decoded (damaged, truncated, not an image, gone) stops the conversion
with :class:`~memshard.errors.ImageDecodeError` naming it; the rows committed before it are
kept. The conversion's identity (``spec/CONVERSION.md`` section 3) is the list of files and
their classes, not their content: a damaged file replaced by a good copy under the same name
lets ``resume=True`` continue; a file added, removed or renamed makes it start over.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dependencies import require
from .errors import ArgumentError, ImageDecodeError, MemshardError, SourceError
from .smallfile import open_regular
from .sources import SourceField, SourcePlan

Image = require("PIL.Image", "images")

#: The file name endings of the images taken, compared in lower case.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: The field names.
IMAGE_FIELD = "image"
LABEL_FIELD = "label"
#: The modes an image may be converted to, and the channels each gives.
CHANNELS = {"RGB": 3, "L": 1}
#: The dtype of the label field (that of the library's other examples, and of torch's
#: ``cross_entropy`` targets).
LABEL_DTYPE = np.dtype("<i8")
#: The largest width or height an image is resized to.
MAX_SIDE = 1 << 15
#: Files not taken that the plan names one by one; the others are counted.
MAX_NAMED_SKIPS = 20


def parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` from an int (a square) or a pair.

    Raises:
        ArgumentError: not one or two integers in ``1..MAX_SIDE``.

    Example:
        >>> parse_size(64), parse_size((64, 48))
        ((64, 64), (64, 48))
    """
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(
        isinstance(side, (int, np.integer)) and not isinstance(side, bool) and 0 < side <= MAX_SIDE
        for side in pair
    ):
        raise ArgumentError(
            f"size must be an int or a (width, height) pair of ints in 1..{MAX_SIDE}, got {size!r}"
        )
    return int(pair[0]), int(pair[1])


def check_mode(mode: str) -> int:
    """The channels of ``mode``.

    Raises:
        ArgumentError: a mode other than those of :data:`CHANNELS`.
    """
    if mode not in CHANNELS:
        raise ArgumentError(f"mode must be one of {', '.join(CHANNELS)}, got {mode!r}")
    return CHANNELS[mode]


@dataclass(frozen=True)
class Listing:
    """The images of a folder: paths relative to it and the class of each, in row order; the
    class names (the vocabulary); and what was not taken, with why."""

    files: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: dict[str, str]

    def digest(self) -> str:
        """SHA-256 of the files and their classes, in order: the conversion's identity."""
        digest = hashlib.sha256()
        for name in self.classes:
            digest.update(b"c" + name.encode("utf-8", "surrogateescape") + b"\0")
        for path, label in zip(self.files, self.labels.tolist(), strict=True):
            digest.update(f"{label}:".encode() + path.encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()


def list_images(root: str) -> Listing:
    """The images under the class folders of ``root`` (see the module docstring).

    Raises:
        SourceError: ``root`` is not a directory, holds no class folder, or no image.
    """
    if not os.path.isdir(root):
        raise SourceError(f"{root}: no such directory (an image folder holds class folders)")
    skipped: dict[str, str] = {}
    not_taken: list[str] = []
    classes: list[str] = []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda entry: entry.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                classes.append(entry.name)
            else:
                not_taken.append(entry.name)
    if not classes:
        raise SourceError(
            f"{root}: holds no class folder; an image folder holds one sub-folder of images "
            "per class (FOLDER/cat/1.jpg, FOLDER/dog/2.png, ...)"
        )
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = _class_images(root, name, not_taken)
        if not found:
            skipped[name] = "class folder holds no image (its label is kept)"
        files.extend(found)
        labels.extend([label] * len(found))
    skipped.update(_not_taken_notes(not_taken))
    if not files:
        raise SourceError(
            f"{root}: the class folders hold no image (files ending in {', '.join(IMAGE_SUFFIXES)})"
        )
    return Listing(tuple(files), np.asarray(labels, dtype=LABEL_DTYPE), tuple(classes), skipped)


def _class_images(root: str, name: str, not_taken: list[str]) -> list[str]:
    """The images under ``root/name``, relative to ``root``, sorted level by level; the files
    left out are added to ``not_taken``."""
    found: list[str] = []
    for top, folders, names in os.walk(os.path.join(root, name)):
        folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
        relative = os.path.relpath(top, root)
        for file in sorted(names):
            path = os.path.join(relative, file)
            if file.startswith("."):
                continue
            if file.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(top, file)):
                found.append(path)
            else:
                not_taken.append(path)
    return found


def _not_taken_notes(not_taken: list[str]) -> dict[str, str]:
    """One note per file not taken, the first :data:`MAX_NAMED_SKIPS`, then a count."""
    why = f"not a regular file ending in {', '.join(IMAGE_SUFFIXES)} in a class folder"
    notes = {path: why for path in not_taken[:MAX_NAMED_SKIPS]}
    if len(not_taken) > MAX_NAMED_SKIPS:
        notes[f"{len(not_taken) - MAX_NAMED_SKIPS} more files"] = why
    return notes


def plan(
    src: str | os.PathLike[str], *, size: int | Sequence[int], mode: str = "RGB"
) -> SourcePlan:
    """Describe the conversion of the image folder ``src`` (see the module docstring).

    Nothing is decoded here: a damaged file is found when its row is converted.

    Raises:
        ArgumentError: a bad ``size`` or ``mode``.
        SourceError: ``src`` is no folder of class folders of images.
    """
    width, height = parse_size(size)
    channels = check_mode(mode)
    root = os.path.abspath(os.fspath(src))
    listing = list_images(root)
    image = SourceField(
        origin="<images>",
        dtype=np.dtype("uint8"),
        shape=(channels, height, width),
        chunk_rows=1,
        attrs={"mode": mode, "size": [width, height], "layout": "CHW", "resample": "bilinear"},
    )
    label = SourceField(origin="<class folders>", dtype=LABEL_DTYPE, shape=(), chunk_rows=1,
                        attrs={})  # fmt: skip
    return SourcePlan(
        kind="images",
        location=root,
        rows=len(listing.files),
        fields={IMAGE_FIELD: image, LABEL_FIELD: label},
        attrs={},
        labels={LABEL_FIELD: list(listing.classes)},
        identity={"files": len(listing.files), "sha256": listing.digest()},
        opener=FolderOpener(root, listing.files, listing.labels, (width, height), mode),
        skipped=listing.skipped,
    )


def decode(path: str, size: tuple[int, int], mode: str, out: np.ndarray) -> None:
    """Decode the image at ``path`` into ``out`` (``uint8``, ``(C, height, width)``): converted
    to ``mode``, resized to ``size`` (``(width, height)``) with bilinear filtering.

    Raises:
        ImageDecodeError: the file is gone, is not a regular file, or cannot be decoded
            (damaged, truncated, not an image); the message names it.
    """
    try:
        fd = open_regular(path, what="the image", error=ImageDecodeError, follow_symlinks=True)
        with os.fdopen(fd, "rb") as file, Image.open(file) as opened:
            pixels = _pixels(opened, size, mode)
    except MemshardError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for a bad file
        raise ImageDecodeError(
            f"{path}: cannot decode the image ({_reason(exc)}); replace it with a good copy "
            "and continue with resume=True, or delete it and start over with overwrite=True "
            "(the list of files identifies the conversion)"
        ) from exc
    out[...] = pixels.reshape(size[1], size[0], -1).transpose(2, 0, 1)


def _reason(exc: Exception) -> str:
    """Why Pillow failed, in words (its own message names the file object, not the path)."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow recognises"
    return f"{type(exc).__name__}: {exc}"


def _pixels(opened: Any, size: tuple[int, int], mode: str) -> np.ndarray:
    """The pixels of an open image, ``(height, width[, C])``."""
    if opened.format == "JPEG":
        opened.draft(mode, size)
    image = opened
    if image.mode == "P" and "transparency" in image.info:
        # Converting such a palette image to RGB directly makes Pillow warn.
        image = image.convert("RGBA")
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class FolderOpener:
    """Hands out readers of the listed images (picklable: a worker calls it after spawn)."""

    root: str
    files: tuple[str, ...]
    labels: np.ndarray
    size: tuple[int, int]
    mode: str

    def __call__(self) -> FolderReader:
        """A reader of the images."""
        return FolderReader(self)


class FolderReader:
    """Decodes the images of rows into the caller's buffer; copies their labels."""

    def __init__(self, opener: FolderOpener) -> None:
        self._opener = opener

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` with rows ``start:stop`` of field ``name``.

        Raises:
            ImageDecodeError: an image cannot be decoded (naming its file).
        """
        opener = self._opener
        if name == LABEL_FIELD:
            out[...] = opener.labels[start:stop]
            return
        for row in range(start, stop):
            path = os.path.join(opener.root, opener.files[row])
            decode(path, opener.size, opener.mode, out[row - start])

    def close(self) -> None:
        """Nothing to release: each file is closed once decoded."""
