"""The labelled images the conversion and dask benchmarks write: float32[3, 64, 64] ``images``
and int64 ``labels``, whose values index :data:`CLASS_NAMES`, the field's label vocabulary."""

from __future__ import annotations

import numpy as np

from .core import DTYPE, IMAGE_BYTES, IMAGE_SHAPE

IMAGES, LABELS = "images", "labels"
LABEL_DTYPE = np.dtype("int64")
CLASS_NAMES = tuple(f"class_{index:04d}" for index in range(1000))
#: The ``fields`` argument of :func:`memshard.create`.
FIELDS = {IMAGES: (DTYPE.name, IMAGE_SHAPE), LABELS: (LABEL_DTYPE.name, ())}
#: Bytes of one row: an image and its label.
ROW_BYTES = IMAGE_BYTES + LABEL_DTYPE.itemsize
