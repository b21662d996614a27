"""A corpus of HDF5 files and zarr stores as other tools write them, for the conversion tests.

Each builder writes one source with the real library (h5py and its low-level API, hdf5plugin,
PyTables in a child process, zarr-python 3) or, for zarr-python 2 stores, by hand: the
``.zarray``/``.zgroup``/``.zattrs`` JSON and chunk files exactly as zarr-python 2 wrote them.
A builder returns ``{array path: the values a reader must get}`` for the arrays memshard can
convert; the arrays it must leave out are listed in the builder's docstring.

:func:`environment_without` makes an environment in which a package is not installed, for a
child process and the conversion workers it starts: a directory of stand-in modules that
raise ``ImportError`` first on ``PYTHONPATH``, and ``HDF5_PLUGIN_PATH`` pointing at an empty
directory. :data:`CONVERT_CHILD` converts in such a process and reports what happened.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import hdf5plugin
import numcodecs
import numpy as np
import zarr
from zarr.core.common import ZarrFormat

ROWS = 240
#: The datasets of :func:`write_plugin_filtered` compressed with hdf5plugin filters.
PLUGIN_FILTERED = {
    "/blosc": hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE),
    "/lz4": hdf5plugin.LZ4(),
    "/zstd": hdf5plugin.Zstd(clevel=3),
    "/bitshuffle": hdf5plugin.Bitshuffle(cname="lz4"),
}


def values(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random values of ``dtype`` (NaN, infinity and -0.0 among floats)."""
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind in "iu":
        info = np.iinfo(np.dtype(dtype).newbyteorder("="))
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    data = (rng.standard_normal(shape) * 100).astype(np.dtype(dtype).newbyteorder("="))
    data.reshape(-1)[:3] = [np.nan, np.inf, -0.0]
    return data.astype(dtype)


# -- HDF5 --------------------------------------------------------------------------------------


def write_odd_types(path: Path) -> dict[str, np.ndarray]:
    """``/good`` (float32) and ``/labels`` (int8) beside ``/quad`` (an IEEE quad-precision
    float, which h5py cannot map to NumPy: ``ValueError: Insufficient precision``) and
    ``/time`` (an HDF5 time type: ``TypeError: No NumPy equivalent for TypeTimeID``), all of
    :data:`ROWS` rows, made with h5py's low-level API."""
    good = values("<f4", (ROWS, 3), seed=1)
    labels = values("|i1", (ROWS,), seed=2)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("good", data=good, chunks=(32, 3))
        handle.create_dataset("labels", data=labels)
        space = h5py.h5s.create_simple((ROWS,))
        quad = h5py.h5t.IEEE_F64LE.copy()
        quad.set_size(16)
        quad.set_precision(128)
        quad.set_fields(127, 112, 15, 0, 112)  # sign bit, exponent at 112 (15 bits), mantissa
        quad.set_ebias(16383)
        h5py.h5d.create(handle.id, b"quad", quad, space).close()
        h5py.h5d.create(handle.id, b"time", h5py.h5t.UNIX_D64LE.copy(), space).close()
    return {"/good": good, "/labels": labels}


def write_plugin_filtered(path: Path) -> dict[str, np.ndarray]:
    """``/plain`` and ``/gzip`` (filters HDF5 has) and the datasets of
    :data:`PLUGIN_FILTERED`, compressed with the real hdf5plugin filters (blosc, lz4, zstd,
    bitshuffle), which HDF5 can read only with hdf5plugin loaded."""
    written = {"/plain": values("<f8", (ROWS, 2), seed=3), "/gzip": values(">i4", (ROWS,), 4)}
    for seed, origin in enumerate(PLUGIN_FILTERED, start=5):
        written[origin] = values("<f4", (ROWS, 4), seed)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("plain", data=written["/plain"])
        handle.create_dataset("gzip", data=written["/gzip"], chunks=(50,), compression="gzip")
        for origin, options in PLUGIN_FILTERED.items():
            handle.create_dataset(origin, data=written[origin], chunks=(40, 4), **options)
    return written


PYTABLES_WRITER = """
import sys
import numpy as np
import tables

rows = int(sys.argv[2])
with tables.open_file(sys.argv[1], "w", title="written by PyTables") as handle:
    group = handle.create_group("/", "data")
    blosc = tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)
    handle.create_carray(group, "blosc", obj=np.arange(rows * 3, dtype="<f4").reshape(rows, 3),
                         filters=blosc)
    handle.create_carray(group, "zlib", obj=np.arange(rows, dtype=">i8"),
                         filters=tables.Filters(complevel=5, complib="zlib"))
    handle.create_array(group, "plain", obj=np.arange(rows, dtype="<i2"))
    handle.create_earray(group, "blosc2", atom=tables.Float64Atom(), shape=(0, 2),
                         filters=tables.Filters(complevel=5, complib="blosc2:zstd"),
                         obj=np.linspace(0, 1, rows * 2).reshape(rows, 2))

    class Row(tables.IsDescription):
        a = tables.Int32Col()
        b = tables.Float64Col()

    table = handle.create_table(group, "table", Row)
    row = table.row
    for index in range(rows):
        row["a"], row["b"] = index, index / 2
        row.append()
    table.flush()
    ragged = handle.create_vlarray(group, "ragged", tables.Int32Atom())
    strokes = handle.create_vlarray(group, "strokes", tables.Int16Atom(shape=(3,)))
    big = handle.create_vlarray(group, "big_endian", tables.Float32Atom(), byteorder="big")
    for index in range(rows):
        ragged.append(np.arange(index % 4, dtype=np.int32))
        strokes.append(np.arange(index % 3 * 3, dtype=np.int16).reshape(-1, 3))
        big.append(np.arange(index % 5, dtype=np.float32) / 4)
"""


def write_pytables(path: Path) -> dict[str, Any]:
    """A file written by PyTables (in a child process, which loads PyTables' own HDF5):
    ``/data/blosc`` (blosc, registered by PyTables as HDF5 filter 32001: hdf5plugin reads
    it), ``/data/blosc2`` (blosc2 with zstd, filter 32026), ``/data/zlib`` and
    ``/data/plain``; variable-length arrays (``VLArray``, ragged fields, whose expected rows
    are lists of arrays): ``/data/ragged`` of int32, ``/data/strokes`` of rows ``(n, 3)``
    (an atom of shape ``(3,)``) and ``/data/big_endian`` of big-endian float32;
    ``/data/table`` (compound rows) must be left out."""
    subprocess.run(
        [sys.executable, "-c", PYTABLES_WRITER, str(path), str(ROWS)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {
        "/data/blosc": np.arange(ROWS * 3, dtype="<f4").reshape(ROWS, 3),
        "/data/zlib": np.arange(ROWS, dtype=">i8"),
        "/data/plain": np.arange(ROWS, dtype="<i2"),
        "/data/blosc2": np.linspace(0, 1, ROWS * 2).reshape(ROWS, 2),
        "/data/ragged": [np.arange(index % 4, dtype=np.int32) for index in range(ROWS)],
        "/data/strokes": [
            np.arange(index % 3 * 3, dtype=np.int16).reshape(-1, 3) for index in range(ROWS)
        ],
        "/data/big_endian": [np.arange(index % 5, dtype=">f4") / 4 for index in range(ROWS)],
    }


def write_netcdf4_style(path: Path) -> dict[str, np.ndarray]:
    """A file laid out as netCDF-4 lays it out (through h5py, as h5netcdf writes it):
    dimension scales ``/time`` and ``/lat``, a variable ``/temperature`` attached to them
    (its ``DIMENSION_LIST`` attribute holds object references, left out of the attributes),
    ``_Netcdf4Dimid`` and ``_FillValue`` attributes, and a string variable ``/station``
    that must be left out."""
    time = np.arange(ROWS, dtype="<f8") * 3600
    lat = np.linspace(-80, 80, 5, dtype="<f4")
    temperature = values("<f4", (ROWS, 5), seed=9)
    with h5py.File(path, "w") as handle:
        handle.attrs["_NCProperties"] = np.bytes_(b"version=2,netcdf=4.9.2,hdf5=1.14.3")
        handle.attrs["Conventions"] = "CF-1.8"
        for name, data, dimid in (("time", time, 0), ("lat", lat, 1)):
            scale = handle.create_dataset(name, data=data)
            scale.make_scale(name)
            scale.attrs["_Netcdf4Dimid"] = np.int32(dimid)
        variable = handle.create_dataset(
            "temperature", data=temperature, chunks=(60, 5), compression="gzip", shuffle=True,
            fillvalue=np.float32(-999),
        )  # fmt: skip
        variable.attrs["_FillValue"] = np.float32(-999)
        variable.attrs["units"] = "K"
        variable.dims[0].attach_scale(handle["time"])
        variable.dims[1].attach_scale(handle["lat"])
        station = handle.create_dataset("station", shape=(ROWS,), dtype=h5py.string_dtype())
        station[:] = [f"st{index}" for index in range(ROWS)]
        station.dims[0].attach_scale(handle["time"])
    return {"/time": time, "/temperature": temperature}


def write_truncatable(path: Path, contiguous: bool) -> tuple[np.ndarray, int]:
    """``/x``: 4,000 rows of 64 random float32, gzip-compressed in chunks of 100 rows (or
    contiguous, which HDF5 reads as zeros past the end of a truncated file). Returns the
    values and the size to truncate the file to: the data of rows 2,000 onwards is past it."""
    data = values("<f4", (4000, 64), seed=11)
    with h5py.File(path, "w") as handle:
        if contiguous:
            dataset = handle.create_dataset("x", data=data)
            cut = dataset.id.get_offset() + data[:2000].nbytes
        else:
            dataset = handle.create_dataset("x", data=data, chunks=(100, 64), compression="gzip")
            cut = dataset.id.get_chunk_info_by_coord((2000, 0)).byte_offset
    return data, cut


@dataclass(frozen=True)
class TruncateAt:
    """An opener whose readers truncate the file ``path`` to ``size`` bytes (a real
    ``truncate``) just before they read a block ending after row ``row``, then read through
    the wrapped reader. Picklable: conversion workers apply it too."""

    inner: Any
    row: int
    path: str
    size: int

    def __call__(self) -> TruncatingReader:
        return TruncatingReader(self.inner(), self)


class TruncatingReader:
    """Reads through the wrapped reader, truncating as :class:`TruncateAt` says."""

    def __init__(self, inner: Any, rule: TruncateAt) -> None:
        self._inner = inner
        self._rule = rule

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        if stop > self._rule.row and os.path.getsize(self._rule.path) > self._rule.size:
            os.truncate(self._rule.path, self._rule.size)
        self._inner.read(name, start, stop, out)

    def close(self) -> None:
        self._inner.close()


# -- zarr --------------------------------------------------------------------------------------


def _zarr2_json(value: dict[str, Any]) -> str:
    """JSON as zarr-python 2 wrote its metadata files."""
    return json.dumps(value, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": "))


def _zarr2_array(
    root: Path,
    path: str,
    data: np.ndarray,
    chunks: tuple[int, ...],
    *,
    fill_value: Any,
    compressor: Any = None,
    order: Literal["C", "F"] = "C",
    separator: str | None = None,
    skip_chunks: tuple[int, ...] = (),
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write ``data`` as a zarr-python 2 array: ``.zarray`` and one file per chunk, each
    chunk a whole (edge chunks padded) C- or F-ordered block through ``compressor``."""
    directory = root / path
    directory.mkdir(parents=True)
    meta: dict[str, Any] = {
        "chunks": list(chunks),
        "compressor": None if compressor is None else compressor.get_config(),
        "dtype": data.dtype.str,
        "fill_value": fill_value,
        "filters": None,
        "order": order,
        "shape": list(data.shape),
        "zarr_format": 2,
    }
    if separator is not None:
        meta["dimension_separator"] = separator
    (directory / ".zarray").write_text(_zarr2_json(meta))
    if attrs is not None:
        (directory / ".zattrs").write_text(_zarr2_json(attrs))
    grid = [range(-(-size // chunk)) for size, chunk in zip(data.shape, chunks, strict=True)]
    for position in np.ndindex(*(len(axis) for axis in grid)):
        if position[0] in skip_chunks:
            continue
        block = np.zeros(chunks, dtype=data.dtype)
        selection = tuple(
            slice(index * chunk, (index + 1) * chunk)
            for index, chunk in zip(position, chunks, strict=True)
        )
        part = data[selection]
        block[tuple(slice(0, size) for size in part.shape)] = part
        ordered = np.array(block, order=order)  # zarr-python 2 encoded the chunk array itself
        key = (separator or ".").join(str(index) for index in position)
        chunk_file = directory / key
        chunk_file.parent.mkdir(parents=True, exist_ok=True)
        encoded = ordered.tobytes(order="A") if compressor is None else compressor.encode(ordered)
        chunk_file.write_bytes(encoded)


class _Marker:
    """Unpickled, creates the directory ``path``: proof that someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.path,)


def unpickled_marker(root: Path) -> Path:
    """The directory that unpickling a chunk of ``pickled`` in :func:`write_zarr2_group`
    (at ``root``) creates."""
    return root.parent / f"{root.name}-was-unpickled"


def write_zarr2_group(root: Path) -> dict[str, np.ndarray]:
    """A zarr-python 2 group written by hand: ``good`` (float32, blosc/lz4), ``nested/labels``
    (int8, zlib), ``grid`` (float64 in Fortran order, ``/`` chunk keys), ``big`` (big-endian
    int64, uncompressed, one chunk never written: read as the fill value) and ``pcodec``
    (float32, compressed with pcodec, which needs ``numcodecs[pcodec]``); beside them
    ``s1`` (``|S1``) and ``u4`` (``<U4``) with ``"fill_value": 0``, which zarr 3 refuses to
    open, and ``pickled`` (float64 through a ``pickle`` filter, whose chunks create
    :func:`unpickled_marker` when unpickled)."""
    root.mkdir()
    (root / ".zgroup").write_text(_zarr2_json({"zarr_format": 2}))
    (root / ".zattrs").write_text(_zarr2_json({"title": "written like zarr-python 2.18"}))
    (root / "nested").mkdir()
    (root / "nested" / ".zgroup").write_text(_zarr2_json({"zarr_format": 2}))
    good = values("<f4", (ROWS, 3), seed=21)
    labels = values("|i1", (ROWS,), seed=22)
    grid = values("<f8", (ROWS, 5), seed=23)
    big = values(">i8", (ROWS,), seed=24)
    big[100:150] = 7  # rows of the chunk never written: the fill value
    pcodec_values = values("<f4", (ROWS,), seed=25)
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    _zarr2_array(root, "good", good, (50, 3), fill_value=0.0, compressor=blosc,
                 attrs={"units": "m"})  # fmt: skip
    _zarr2_array(root, "nested/labels", labels, (64,), fill_value=0,
                 compressor=numcodecs.Zlib(level=1))  # fmt: skip
    _zarr2_array(root, "grid", grid, (30, 5), fill_value="NaN", order="F", separator="/")
    _zarr2_array(root, "big", big, (50,), fill_value=7, skip_chunks=(2,))
    _zarr2_array(root, "pcodec", pcodec_values, (60,), fill_value=0.0,
                 compressor=numcodecs.get_codec({"id": "pcodec"}))  # fmt: skip
    strings = np.array([b"a", b"b"] * (ROWS // 2), dtype="|S1")
    _zarr2_array(root, "s1", strings, (100,), fill_value=0)
    _zarr2_array(root, "u4", strings.astype("<U4"), (100,), fill_value=0)
    _zarr2_array(root, "pickled", grid[:, 0].copy(), (ROWS,), fill_value=0.0)
    pickled = json.loads((root / "pickled" / ".zarray").read_text())
    pickled["filters"] = [{"id": "pickle", "protocol": 5}]
    (root / "pickled" / ".zarray").write_text(_zarr2_json(pickled))
    (root / "pickled" / "0").write_bytes(pickle.dumps(_Marker(str(unpickled_marker(root)))))
    return {
        "good": good,
        "nested/labels": labels,
        "grid": grid,
        "big": big,
        "pcodec": pcodec_values,
    }


def write_zarr3_group(root: Path) -> dict[str, np.ndarray]:
    """A zarr format 3 group: ``good`` (zstd) and ``sharded`` written by zarr-python 3,
    ``npcodec`` through the ``numcodecs.pcodec`` codec (needs ``numcodecs[pcodec]`` to be
    read); beside them, as the Rust zarrs library writes them, ``rust_pcodec`` naming codec
    ``pcodec`` (not registered with zarr-python) and ``bf16`` of data type ``bfloat16``."""
    group = zarr.open_group(str(root), mode="w", zarr_format=3)
    good = values("<f4", (ROWS, 2), seed=31)
    sharded = values("<u2", (ROWS,), seed=32)
    npcodec = values("<f8", (ROWS,), seed=33)
    group.create_array("good", shape=good.shape, dtype=good.dtype, chunks=(40, 2))[...] = good
    group.create_array(
        "sharded", shape=sharded.shape, dtype=sharded.dtype, chunks=(20,), shards=(80,)
    )[...] = sharded
    from zarr.codecs.numcodecs import PCodec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs codecs are not in the zarr 3 specification
        group.create_array(
            "npcodec", shape=npcodec.shape, dtype=npcodec.dtype, chunks=(60,),
            serializer=PCodec(level=8), compressors=None,
        )[...] = npcodec  # fmt: skip
    for name, change in (("rust_pcodec", _rust_pcodec), ("bf16", _bfloat16)):
        group.create_array(name, shape=(ROWS,), dtype="<f4", chunks=(60,))[...] = 1.0
        meta_file = root / name / "zarr.json"
        meta_file.write_text(json.dumps(change(json.loads(meta_file.read_text())), indent=2))
    return {"good": good, "sharded": sharded, "npcodec": npcodec}


def _rust_pcodec(meta: dict[str, Any]) -> dict[str, Any]:
    meta["codecs"] = [{"name": "pcodec", "configuration": {"level": 8}}]
    return meta


def _bfloat16(meta: dict[str, Any]) -> dict[str, Any]:
    meta["data_type"] = "bfloat16"
    return meta


def write_damaged_zarr(root: Path, zarr_format: ZarrFormat) -> tuple[np.ndarray, str]:
    """``x``: 1,000 rows of 32 float32 in zstd chunks of 50 rows, written by zarr-python,
    whose chunk of rows 700-749 is then truncated to half its bytes (its first chunk is
    intact, so planning succeeds and the conversion fails mid-way). Returns the values
    and the chunk's key."""
    group = zarr.open_group(str(root), mode="w", zarr_format=zarr_format)
    data = values("<f4", (1000, 32), seed=41)
    group.create_array("x", shape=data.shape, dtype=data.dtype, chunks=(50, 32))[...] = data
    key = "x/c/14/0" if zarr_format == 3 else "x/14.0"
    chunk = root / key
    os.truncate(chunk, chunk.stat().st_size // 2)
    return data, key


# -- environments without a package ------------------------------------------------------------


def environment_without(base: Path, *modules: str) -> dict[str, str]:
    """An environment in which ``modules`` cannot be imported (stand-ins that raise
    ``ImportError`` come first on ``PYTHONPATH``, which conversion workers inherit) and HDF5
    finds no filter plugin (``HDF5_PLUGIN_PATH`` is an empty directory); warnings are
    errors."""
    hidden = base / "hidden-packages"
    plugins = base / "no-hdf5-plugins"
    hidden.mkdir(exist_ok=True)
    plugins.mkdir(exist_ok=True)
    for module in modules:
        (hidden / f"{module}.py").write_text(f"raise ImportError('{module} is not installed')\n")
    repo = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(repo), str(hidden), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HDF5_PLUGIN_PATH": str(plugins),
        "PYTHONWARNINGS": "error",
    }


#: ``python -c CONVERT_CHILD FORMAT SRC DST FIELDS_JSON WORKERS`` converts and prints one JSON
#: line: ``{"fields": {name: origin}, "skipped": {origin: why}}`` or, for a memshard error,
#: ``{"error": class name, "message": text, "planned": whether planning had succeeded}``.
#: Any other exception is a traceback and a failed exit.
CONVERT_CHILD = textwrap.dedent(
    """
    import importlib, json, sys, warnings
    from memshard.convert import convert
    from memshard.errors import MemshardError, SmallShardWarning

    warnings.simplefilter("ignore", SmallShardWarning)  # tiny shards, on purpose

    kind, src, dst, fields, workers = sys.argv[1:6]
    module = importlib.import_module(f"memshard.{kind}")
    planned = False
    try:
        plan = module.plan(src, json.loads(fields))
        planned = True
        convert(plan, dst, workers=int(workers), shard_bytes=4096)
    except MemshardError as exc:
        report = {"error": type(exc).__name__, "message": str(exc), "planned": planned}
    else:
        fields = {name: field.origin for name, field in plan.fields.items()}
        report = {"fields": fields, "skipped": plan.skipped}
    print(json.dumps(report))
    """
)


def convert_in(
    environment: dict[str, str],
    kind: str,
    src: Path,
    dst: Path,
    fields: dict[str, str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run :data:`CONVERT_CHILD` in ``environment``; its report."""
    result = subprocess.run(
        [sys.executable, "-c", CONVERT_CHILD, kind, str(src), str(dst), json.dumps(fields),
         str(workers)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


#: ``python -c DAMAGED_CHILD FORMAT SOURCE TRIALS SEED`` converts TRIALS damaged copies of the
#: HDF5 file or zarr store SOURCE (1 to 4 random bytes overwritten, mostly in metadata: the
#: first 4 KiB of the HDF5 file, any file of the store) and prints one JSON line:
#: ``{"converted": n, "refused": n, "escaped": {exception: traceback tail}}``, where
#: ``escaped`` lists every exception that was not a memshard error. A child process, so that a
#: crash of the HDF5 library on a damaged file cannot take the test runner along.
DAMAGED_CHILD = textwrap.dedent(
    """
    import json, os, random, shutil, sys, traceback, warnings
    from pathlib import Path
    import memshard as ms
    from memshard.errors import MemshardError, SmallShardWarning

    warnings.simplefilter("ignore", SmallShardWarning)  # tiny shards, on purpose

    kind, source, trials, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    work = source.parent / "damaged"
    report = {"converted": 0, "refused": 0, "escaped": {}}
    for trial in range(trials):
        copy, dst = work / f"copy{trial}{source.suffix}", work / f"out{trial}"
        if kind == "hdf5":
            os.makedirs(work, exist_ok=True)
            shutil.copyfile(source, copy)
            victims = [copy]
        else:
            shutil.copytree(source, copy)
            victims = sorted(path for path in copy.rglob("*") if path.is_file())
        victim = rng.choice(victims)
        data = bytearray(victim.read_bytes())
        for _ in range(rng.randint(1, 4)):
            limit = 4096 if kind == "hdf5" and rng.random() < 0.8 else len(data)
            data[rng.randrange(max(1, min(limit, len(data))))] = rng.randrange(256)
        victim.write_bytes(bytes(data))
        convert = ms.from_hdf5 if kind == "hdf5" else ms.from_zarr
        try:
            convert(copy, dst, progress=False)
        except MemshardError:
            report["refused"] += 1
            assert not os.path.lexists(dst), dst
        except Exception as exc:
            key = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:100]}"
            report["escaped"][key] = traceback.format_exc().splitlines()[-4:]
        else:
            report["converted"] += 1
            assert ms.open(dst).verify().ok
    print(json.dumps(report))
    """
)


def convert_damaged(kind: str, source: Path, trials: int, seed: int) -> dict[str, Any]:
    """Run :data:`DAMAGED_CHILD`; its report."""
    result = subprocess.run(
        [sys.executable, "-c", DAMAGED_CHILD, kind, str(source), str(trials), str(seed)],
        env=environment_without(source.parent),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
