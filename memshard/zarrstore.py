"""The layout of a zarr store (format 2 or 3) on disk, read without zarr-python.

Which directories of a store are groups and which are arrays (their metadata files say), and
what an array's metadata names: its data type and its codecs. :mod:`memshard.zarr` walks a
group with these, so that an array zarr-python cannot open never stops the walk, and explains
with them why it cannot: a data type memshard refuses anyway (a zarr-python 2 string array
with ``"fill_value": 0``), a codec that must never be decoded (``pickle``), or one whose
package is missing. Every metadata file is checked to be a regular file before anything reads
it (zarr-python would wait forever on a FIFO).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import numpy as np

from .errors import MemshardError, SourceError
from .smallfile import open_regular, read_small_file
from .sources import describe_dtype_problem, stored_dtype

#: Metadata files whose size and time identify a store for a resumed conversion.
METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
#: Largest ``zarr.json`` read to tell a group from an array (consolidated metadata of a
#: large hierarchy included).
MAX_METADATA_BYTES = 64 << 20
#: zarr format 3 data types memshard can store (others are refused without asking zarr).
NUMERIC_V3_TYPES = frozenset(
    ["bool", "float16", "float32", "float64", "complex64", "complex128"]
    + [f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)]
)
#: Why an array with a ``pickle`` codec is refused: decoding it would run ``pickle.loads`` on
#: the chunks, which can execute any code the store's author chose.
PICKLE_REFUSAL = "its chunks are pickled (codec 'pickle'), which memshard never unpickles"
#: numcodecs codecs that need another package, and the numcodecs extra that installs it.
NUMCODECS_EXTRAS = {"pcodec": "pcodec", "zfpy": "zfpy", "msgpack2": "msgpack", "crc32c": "crc32c"}


def node_kind(directory: str) -> str | None:
    """``"array"``, ``"group"`` or ``None`` (no zarr node) for a directory of a store, from its
    metadata files, each checked to be a regular file (zarr would wait forever on a FIFO).

    Raises:
        SourceError: a metadata file is a FIFO, a socket or a device, or cannot be read.
    """
    for name in METADATA_FILES:
        where = os.path.join(directory, name)
        if os.path.lexists(where):
            os.close(open_regular(where, what="zarr metadata", error=SourceError,
                                  follow_symlinks=True))  # fmt: skip
    v3 = os.path.join(directory, "zarr.json")
    if os.path.lexists(v3):
        node_type = json_of(v3).get("node_type")
        # A zarr.json that does not say is left for zarr to judge (and report), as an array.
        return "group" if node_type == "group" else "array"
    if os.path.lexists(os.path.join(directory, ".zarray")):
        return "array"
    if os.path.lexists(os.path.join(directory, ".zgroup")):
        return "group"
    return None


def json_of(path: str) -> dict[str, Any]:
    """The JSON object in the metadata file ``path``; ``{}`` if it holds none."""
    data = read_small_file(path, what="zarr metadata", limit=MAX_METADATA_BYTES,
                           error=SourceError, follow_symlinks=True)  # fmt: skip
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def array_paths(location: str) -> list[str]:
    """The paths of the arrays below the group at ``location``, sorted. A directory is a
    group or an array only if it holds its metadata; an array's directory (its chunks) and a
    directory seen before (a symbolic link loop) are not entered."""
    found: list[str] = []
    pending = [""]
    seen: set[tuple[int, int]] = set()
    while pending:
        relative = pending.pop()
        directory = os.path.join(location, relative)
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in seen:
            continue
        seen.add((status.st_dev, status.st_ino))
        with os.scandir(directory) as entries:
            children = sorted(entry.name for entry in entries if entry.is_dir())
        for child in children:
            path = f"{relative}/{child}" if relative else child
            kind = node_kind(os.path.join(location, path))
            if kind == "array":
                found.append(path)
            elif kind == "group":
                pending.append(path)
    return sorted(found)


def raw_metadata(location: str, path: str) -> dict[str, Any]:
    """The JSON object of the array at ``path``'s metadata file; ``{}`` if it cannot be read."""
    directory = os.path.join(location, path)
    for name in ("zarr.json", ".zarray"):
        where = os.path.join(directory, name)
        if os.path.lexists(where):
            with contextlib.suppress(MemshardError, OSError):
                return json_of(where)
    return {}


def codec_ids(metadata: dict[str, Any]) -> list[str]:
    """The codecs an array's raw metadata names (format 2: compressor and filters; format 3:
    codecs, those inside a sharding codec included), without a ``numcodecs.`` prefix."""
    if metadata.get("zarr_format") == 3:
        found: list[str] = []
        pending = list(_listed(metadata.get("codecs")))
        while pending:
            codec = pending.pop()
            name = codec if isinstance(codec, str) else codec.get("name")
            found.append(str(name).removeprefix("numcodecs."))
            configuration = codec.get("configuration") if isinstance(codec, dict) else None
            if isinstance(configuration, dict):
                for key in ("codecs", "index_codecs"):
                    pending.extend(_listed(configuration.get(key)))
        return found
    configs = [metadata.get("compressor"), *_listed(metadata.get("filters"))]
    return [str(config.get("id")) for config in configs if isinstance(config, dict)]


def _listed(value: Any) -> list[Any]:
    """The codec entries of a metadata value: strings and objects of a list, else none."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, (str, dict))]


def refused_type(metadata: dict[str, Any]) -> str | None:
    """The problem of the array's data type as its metadata names it, if memshard refuses
    it: a zarr-python 2 string array, say, whose ``fill_value`` 0 zarr 3 cannot read."""
    if metadata.get("zarr_format") == 3:
        data_type = metadata.get("data_type")
        if isinstance(data_type, dict):
            data_type = data_type.get("name")
        if data_type in NUMERIC_V3_TYPES or data_type is None:
            return None
        return f"data type {data_type!r}"
    raw = metadata.get("dtype")
    try:
        dtype = np.dtype(_as_dtype_spec(raw))
    except (TypeError, ValueError):
        return None if raw is None else f"dtype {raw!r}"
    return describe_dtype_problem(dtype) if stored_dtype(dtype) is None else None


def _as_dtype_spec(raw: Any) -> Any:
    """A zarr format 2 ``dtype`` as numpy takes it (structured types are lists of lists)."""
    if isinstance(raw, list):
        return [tuple(_as_dtype_spec(item) for item in entry) for entry in raw]
    return raw


def codec_advice(codec: str) -> str:
    """That ``codec`` is not installed, and how to install it."""
    name = codec.removeprefix("numcodecs.")
    if name in NUMCODECS_EXTRAS:
        fix = (
            f"pip install 'numcodecs[{NUMCODECS_EXTRAS[name]}]' "
            "(or pip install 'memshard[zarr-codecs]')"
        )
    elif name.startswith("imagecodecs_"):
        fix = "pip install imagecodecs and call imagecodecs.numcodecs.register_codecs() first"
    else:
        fix = (
            "install the package that provides it and import it before converting, so that "
            "it registers the codec with numcodecs"
        )
    return f"codec {codec!r} is not installed: {fix}"


def identity(location: str, origins: list[str]) -> dict[str, Any]:
    """Sizes and times of the store's metadata files: enough to notice a rewritten store
    without listing its (possibly millions of) chunk files."""
    seen: dict[str, list[int]] = {}
    for directory in ["", *origins]:
        for name in METADATA_FILES:
            relative = os.path.join(directory, name) if directory else name
            where = os.path.join(location, relative)
            if os.path.isfile(where):
                status = os.stat(where)
                seen[relative] = [status.st_size, status.st_mtime_ns]
    return {"metadata": seen}
