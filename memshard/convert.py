"""Converting from HDF5, zarr, NumPy, Arrow, Parquet and image folders into memshard, and
back.

A conversion builds the dataset under a staging name, ``DST.memshard-partial``, and renames
it to ``DST`` once every row is committed, so ``DST`` appears whole or not at all
(``spec/CONVERSION.md``). The staging directory is an ordinary dataset that grows by whole
sealed shards: shard ``k`` holds source rows ``k * shard_rows`` onwards and is written by one
worker, which reads the source in blocks aligned to its chunks and never holds more than one
block per field. Finished shards are committed in row order, so an interrupted conversion
keeps a prefix of the rows that ``resume=True`` continues from.

With ``workers > 1``, each worker is a separate *spawned* process that opens the source
itself (HDF5 handles must never cross a ``fork``); in-memory NumPy arrays are read by threads.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import interrupt
from . import manifest as manifest_io
from .appender import Appender, append, create, is_memshard_dataset
from .convertjob import CONVERT_GROUP, ConvertWork, ShardJob, part_rows_for, write_shard
from .errors import (
    ArgumentError,
    ConversionFailedError,
    ConversionStateError,
    DatasetExistsError,
    LabelError,
    MemshardError,
    SmallShardWarning,
)
from .exportcodec import CompressionChoice
from .layout import MANIFEST_NAME
from .layout import STAGING_SUFFIX as STAGING_SUFFIX
from .layout import staging_path as staging_path
from .manifest import Codec, Manifest
from .ordercommit import COMMIT_BYTES as COMMIT_BYTES
from .ordercommit import COMMIT_GROWTH as COMMIT_GROWTH
from .ordercommit import OrderedCommit
from .parts import Part, PartTarget, discard_parts
from .progress import format_bytes, progress_bar
from .reader import Dataset
from .reader import open as open_dataset
from .schema import (
    DEFAULT_SHARD_BYTES,
    CodecChoice,
    chosen_codecs,
    codec_options,
    describe_codec,
    json_attrs,
    shard_size_mismatch,
)
from .sources import SOURCE_ATTR as SOURCE_ATTR  # re-exported: where it always was
from .sources import SourceField, SourcePlan
from .workerjob import MAX_WORKERS as MAX_WORKERS
from .workerjob import Failed, Progress

#: A conversion into shards smaller than this (data of all fields, when there is more than
#: one shard) warns (:class:`~memshard.errors.SmallShardWarning`): every shard costs a file
#: per field with a 4 KiB header, and a commit, so tiny shards spend more on those than on
#: data (``--shard-size 1k`` with 48 KiB rows: one row per shard, tens of thousands of files).
MIN_SHARD_BYTES = 1 << 20

PathLike = str | os.PathLike[str]


def from_hdf5(
    src: PathLike,
    dst: PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    shard_bytes: int | None = None,
    workers: int = 1,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_attr: str | None = "labels",
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Convert an HDF5 file into a memshard dataset at ``dst`` and open it.

    A one-dimensional variable-length dataset of numbers (``h5py.vlen_dtype(np.int32)``,
    PyTables' ``VLArray``) becomes a ragged field of rows ``(n,)``; of rows ``(n, *tail)``
    when its elements are HDF5 arrays of shape ``tail`` or when it carries the attribute
    ``memshard_tail`` that :func:`to_hdf5` writes. Its rows are read in blocks sized by
    their mean length, estimated from a few runs of rows while planning.

    Parameters:
        fields: ``{field name: dataset path}``, e.g. ``{"x": "/images", "y": "/labels"}``.
            Omitted: every numeric dataset (in any group) whose first axis has the file's row
            count, named after its path; the choice is printed when ``progress`` is on and
            recorded in ``ds.attrs["memshard.source"]``.
        shard_bytes: target size of a shard (all fields), as for :func:`memshard.create`;
            default :data:`~memshard.DEFAULT_SHARD_BYTES` (256 MiB), or on a resume the size
            of the interrupted run. Shards below :data:`MIN_SHARD_BYTES` (1 MiB) warn
            (:class:`~memshard.errors.SmallShardWarning`). With ragged fields each worker
            writes the rows estimated to fill nine tenths of a shard at a time, and a shard
            holds at most ``shard_bytes`` of data (unless one row is larger).
        workers: processes reading disjoint shards in parallel, each opening the file itself.
        labels: ``{field: vocabulary}`` for integer label fields.
        label_attr: an integer dataset with an attribute of this name holding a list of
            strings gets that list as its vocabulary (``None`` to turn off).
        attrs: extra manifest attributes; JSON-representable HDF5 attributes of the root
            group are copied, those of each dataset go under ``memshard.source``.
        codecs: compress fields as :func:`memshard.create` does (``docs/compression.md``):
            one codec for every field, as text (``"zstd:3"``, ``"blosc:lz4:5"``) or options
            (``{"codec": "zstd", "level": 3, "block_bytes": 1 << 20}``), or
            ``{field: codec}`` for some fields (the others, and any given ``None`` or
            ``"none"``, are stored uncompressed). Every worker compresses the shards it
            writes. A resume must ask for the codecs of the first run.
        resume: continue the interrupted conversion to ``dst``, or, if it finished already,
            return ``dst`` once it is found to be this conversion (see ``spec/CONVERSION.md``),
            so the same call can be repeated until it succeeds.
        overwrite: replace an existing memshard dataset at ``dst`` once the conversion ends;
            without ``resume``, also start over from scratch if an interrupted conversion
            to ``dst`` is in the way (it is deleted).
        progress: show a progress bar on stderr; ``None`` means only when stderr is a terminal.

    Raises:
        SourceError, UnsupportedSourceError: the file cannot be read, a requested dataset is
            missing, is compound, string, object, reference or scalar data, variable-length
            data of something other than numbers or of more than one dimension, or cannot be
            read here (a filter that is not installed, a damaged first chunk);
            nothing is written. Without ``fields`` such datasets are left out instead (the
            plan lists them). A read that fails while copying raises them too, naming the
            file, the dataset and the rows; the rows committed so far are kept for a resume.
        DatasetExistsError: ``dst`` exists (without ``overwrite``; with ``resume``, and it is
            not this conversion finished: another source, fields, vocabularies or row count).
        ConversionStateError: an interrupted conversion to ``dst`` exists (without
            ``resume`` or ``overwrite``), or it was started from another source, with other
            fields (the message names the field and what differs), other codecs, or with
            another shard size than an explicit ``shard_bytes``.
        SchemaError: ``codecs`` names a field the conversion does not have, an unknown codec
            or parameter, or a value out of range; nothing is written.
        DatasetLockedError: the interrupted conversion is still running (its lock is held).
        LabelError: a label field holds a value outside its vocabulary.
        ConversionFailedError: a worker process died; committed rows are kept for a resume.
        KeyboardInterrupt: Ctrl-C; it is taken between blocks (never lost, see
            :mod:`memshard.interrupt`) and the committed shards are kept for a resume.
    """
    from . import hdf5

    plan = hdf5.plan(src, fields, labels=labels, label_attr=label_attr)
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=codecs, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


def from_zarr(
    src: PathLike,
    dst: PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    shard_bytes: int | None = None,
    workers: int = 1,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_attr: str | None = "labels",
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Convert a zarr store (format 2 or 3; a group or a single array) into memshard.

    Behaves as :func:`from_hdf5`; ``fields`` maps field names to array paths in the store.
    Reads follow the store's chunks (its shards, for a sharded array). Variable-length arrays
    (zarr-python 2's object arrays with the ``vlen-array`` codec) are refused by name:
    zarr-python 3 cannot read them.
    """
    from . import zarr

    plan = zarr.plan(src, fields, labels=labels, label_attr=label_attr)
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=codecs, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


def from_numpy(
    src: Any,
    dst: PathLike,
    *,
    shard_bytes: int | None = None,
    workers: int = 1,
    labels: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Convert NumPy arrays or ``.npy`` files into memshard.

    ``src`` is an array, a ``.npy`` path, a list of arrays, or ``{field: any of those}``; a
    lone array or list is field ``x``, a lone file is named after its stem. A list (or tuple,
    or one-dimensional object array) of arrays is a ragged field, one row per array: the rows
    must have at least one dimension, one shape after the first axis and one dtype of numbers
    (a row with no elements may differ), or the plan fails with a :class:`SourceError`
    (:class:`UnsupportedSourceError` for rows that are not numbers) naming the field and the
    row. Files are read in blocks, never loaded; with ``workers > 1`` files are read by
    worker processes and in-memory data by threads. See :func:`from_hdf5` for the other
    parameters and errors.
    """
    from . import npysource

    plan = npysource.plan(src, labels=labels)
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=codecs, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


def from_arrow(
    src: Any,
    dst: PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    shard_bytes: int | None = None,
    workers: int = 1,
    labels: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Convert in-memory Apache Arrow data into memshard (needs the ``arrow`` extra).

    ``src`` is a ``pyarrow.Table``, a ``RecordBatch``, a ``RecordBatchReader`` (read whole
    first) or a list of record batches of one schema. ``fields`` maps field names to column
    names; omitted, every column of a supported type is taken, named after the column, and
    the others are listed in the plan as left out. Supported: ``bool``, integer and floating
    point columns (one value per row), ``fixed_size_list`` of them (nested for more axes), the
    ``arrow.fixed_shape_tensor`` extension type (its logical shape), and ``list`` or
    ``large_list`` columns of any of those, which become ragged fields (``(None, *shape)``).
    With ``workers > 1`` the table is read by threads. See :func:`from_hdf5` for the other
    parameters.

    Raises:
        SourceError: ``src`` is not Arrow data, a requested column is missing, or no column
            can be taken; nothing is written.
        UnsupportedSourceError: a requested column is of a type memshard cannot store
            (strings, binary, structs, dictionaries, lists of lists, ...), or a column taken
            holds a null; the message names the column (and the first row with a null).
        MissingDependencyError: pyarrow is not installed.
        DatasetExistsError, ConversionStateError, LabelError: as for :func:`from_hdf5`.
    """
    from . import arrow

    plan = arrow.plan_table(src, fields, labels=labels)
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=codecs, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


def from_parquet(
    src: PathLike | Sequence[PathLike],
    dst: PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    shard_bytes: int | None = None,
    workers: int = 1,
    labels: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Convert Parquet files into memshard (needs the ``arrow`` extra).

    ``src`` is a Parquet file, a directory (its ``.parquet`` files, in name order, as one
    table) or a list of files sharing one schema. Columns are taken as by :func:`from_arrow`.
    The files are read row group by row group, in batches, so memory stays bounded; with
    ``workers > 1`` each worker process opens the files itself. A resume checks that the
    files (their names, sizes and modification times) are those of the first run. See
    :func:`from_hdf5` for the other parameters.

    Raises:
        SourceError: a file is missing, not Parquet, or its schema differs from the first
            file's; a requested column is missing, or no column can be taken. A read that
            fails while copying raises it too, naming the file and the rows; the rows
            committed so far are kept for a resume.
        UnsupportedSourceError: a requested column is of a type memshard cannot store, or a
            column taken holds a null: before anything is written when the files' statistics
            count one, else when its row is read; the message names the column and the row.
        MissingDependencyError: pyarrow is not installed.
        DatasetExistsError, ConversionStateError, DatasetLockedError: as for :func:`from_hdf5`.
        LabelError, ConversionFailedError, KeyboardInterrupt: as for :func:`from_hdf5`.
    """
    from . import arrow

    plan = arrow.plan_parquet(src, fields, labels=labels)
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=codecs, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


def recompress(
    src: Dataset | PathLike,
    dst: PathLike,
    *,
    codecs: CodecChoice = None,
    shard_bytes: int | None = None,
    workers: int = 1,
    attrs: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Copy the memshard dataset ``src`` to a new dataset at ``dst`` with other codecs.

    A conversion like the others (parallel, resumable, ``dst`` appearing whole), whose source
    is a memshard dataset (:mod:`memshard.datasetsource`): its rows (those ``src`` shows, if
    it is an open dataset), label vocabularies and attributes are copied; the record of the
    conversion that brought the rows into memshard (HDF5, zarr, ...) is kept in
    ``attrs["memshard.source"]["upstream"]``.

    Parameters:
        codecs: as for :func:`from_hdf5`, except that a field it does not name keeps its
            codec: ``"zstd:3"`` compresses every field, ``"none"`` decompresses every field,
            ``{"img": "lz4", "emb": None}`` changes two fields and copies the others as they
            are stored. Omitted, every field keeps its codec (a copy, e.g. with another
            ``shard_bytes``).
        shard_bytes: the new dataset's shard size (default
            :data:`~memshard.DEFAULT_SHARD_BYTES`, whatever the source's).

    See :func:`from_hdf5` for the other parameters and errors; also:

    Raises:
        DatasetNotFoundError: ``src`` is no memshard dataset.
        InvalidDatasetError: a shard of ``src`` cannot be read (truncated, offsets out of
            order, a frame that does not decompress: :class:`~memshard.errors.BlockError`),
            naming the file; the rows committed are kept for a resume. Reads do not
            recompute checksums, as :meth:`~memshard.Dataset.verify` does: verify ``src``
            first to copy only intact data.

    Example:
        >>> import numpy as np, memshard as ms, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> ds = ms.from_numpy(np.zeros((100, 32, 32), np.uint8), os.path.join(d, "raw"))
        >>> small = ms.recompress(ds, os.path.join(d, "small"), codecs="zstd:9")
        >>> small["x"].codec.params, small["x"].nbytes // small["x"].stored_bytes > 100
        ({'level': 9}, True)
    """
    from . import datasetsource

    source = src if isinstance(src, Dataset) else open_dataset(src)
    try:
        plan = datasetsource.plan(source)
        kept: dict[str, Codec | None] = {
            name: spec.codec for name, spec in source.manifest.fields.items()
        }
    finally:
        if source is not src:
            source.close()
    chosen = {**kept, **chosen_codecs(codecs, list(plan.fields))}
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=chosen, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


def from_image_folder(
    src: PathLike,
    dst: PathLike,
    *,
    size: int | Sequence[int],
    mode: str = "RGB",
    shard_bytes: int | None = None,
    workers: int = 1,
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Convert a folder of class folders of JPEG and PNG images into memshard (needs the
    ``images`` extra, Pillow).

    The dataset has a field ``image``, ``uint8`` of shape ``(C, height, width)`` (channels
    first; ``C`` is 3 for ``mode="RGB"``, 1 for ``"L"``), each file decoded, converted to
    ``mode`` and resized to exactly ``size`` (an int for a square, or ``(width, height)`` as
    Pillow gives sizes); and a field ``label``, ``int64``, whose vocabulary is the sorted
    names of the class folders. Rows are in class order, then path order
    (:mod:`memshard.imagefolder` says which files are taken). With ``workers > 1`` each
    worker process decodes the images of whole shards: a folder whose images fill fewer
    shards than there are workers keeps some idle, so pass a smaller ``shard_bytes`` for a
    small folder. A resume checks that the folder lists the same files in the same classes
    (not their content: a damaged file replaced by a good copy lets it continue). See
    :func:`from_hdf5` for the other parameters (``codecs="zstd:3"`` compresses the images).

    ``from_image_folder("photos", "ds", size=(64, 48))`` of a folder of 1,000 images in
    ``photos/cat`` and ``photos/dog`` gives ``ds["image"].shape == (1000, 3, 48, 64)`` and
    ``ds.labels["label"] == ("cat", "dog")`` (``docs/converting.md`` runs an example).

    Raises:
        ArgumentError: ``size`` is not one or two ints, or ``mode`` is not ``"RGB"`` or
            ``"L"``.
        SourceError: ``src`` is not a folder of class folders holding images; nothing is
            written.
        ImageDecodeError: an image cannot be decoded (damaged, truncated, not an image); the
            message names the file, and the rows committed before it are kept for a resume.
        MissingDependencyError: Pillow is not installed.
        DatasetExistsError, ConversionStateError, DatasetLockedError: as for :func:`from_hdf5`.
        ConversionFailedError, KeyboardInterrupt: as for :func:`from_hdf5`.
    """
    from . import imagefolder

    plan = imagefolder.plan(src, size=size, mode=mode)
    return convert(plan, dst, shard_bytes=shard_bytes, workers=workers, attrs=attrs,
                   codecs=codecs, resume=resume, overwrite=overwrite,
                   progress=progress)  # fmt: skip


@interrupt.deferring
def to_hdf5(
    dataset: Dataset | PathLike,
    dst: PathLike,
    *,
    fields: Sequence[str] | None = None,
    compression: CompressionChoice = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write a memshard dataset to an HDF5 file, one chunked dataset per field.

    Label vocabularies become a ``labels`` attribute of their dataset and the manifest
    attributes a JSON string in the root attribute ``memshard_attrs``, both of which
    :func:`from_hdf5` reads back. A ragged field becomes a one-dimensional variable-length
    dataset of its dtype (``h5py.vlen_dtype``); h5py cannot write rows of HDF5 array
    elements, so the rows of a field ``(None, *tail)`` are written flattened and ``tail`` is
    stored in the dataset's attribute ``memshard_tail``, from which :func:`from_hdf5` gives
    them their shape again. The file appears atomically (written under a temporary name and
    renamed).

    ``compression`` compresses the chunks: ``"gzip"`` (``"gzip:9"``, levels 0-9, default 4),
    ``"lzf"``, or, with ``hdf5plugin`` (the ``hdf5`` extra), ``"zstd:3"``, ``"lz4"`` or
    ``"blosc:lz4:5:bit"`` as memshard's codecs are named; ``"none"`` for none; one text for
    every field or ``{field: text}`` for some. A field it does not name mirrors its codec: a
    field compressed with zstd, lz4 or blosc is written with the same filter and parameters
    (if ``hdf5plugin`` is there; else uncompressed), any other uncompressed. Of a ragged
    field a compression compresses only the chunks, which hold references to the rows, not
    the rows, so a ragged field's codec is not mirrored.

    Raises:
        DatasetExistsError: ``dst`` exists (without ``overwrite``).
        FieldNotFoundError: a requested field does not exist.
        SchemaError: ``compression`` names an unknown compression or a field not exported,
            or a plugin filter when ``hdf5plugin`` is not installed.
    """
    from . import hdf5

    hdf5.export(_as_dataset(dataset), dst, fields=fields, compression=compression,
                overwrite=overwrite, progress=progress)  # fmt: skip


@interrupt.deferring
def to_zarr(
    dataset: Dataset | PathLike,
    dst: PathLike,
    *,
    fields: Sequence[str] | None = None,
    zarr_format: int = 3,
    compression: CompressionChoice = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> None:
    """Write a memshard dataset to a zarr directory store (a group with one array per field).

    Labels become each array's ``labels`` attribute and the manifest attributes the group's
    attributes. The store appears atomically.

    ``compression`` compresses the chunks: ``"zstd:3"``, ``"blosc:lz4:5:bit"``, ``"lz4"``
    or ``"gzip:6"`` (as for :func:`to_hdf5`; ``"lzf"`` is no zarr codec), ``"none"`` for
    none; one text for every field or ``{field: text}`` for some. A field it does not name
    mirrors its codec, with the same parameters; zarr format 3 has no lz4 codec of its own, so
    lz4 is written there as blosc with lz4 and no shuffle (format 2: numcodecs' LZ4). Without
    a codec, a field is written uncompressed (zarr's own default compresses every array with
    zstd; pass ``compression="zstd:3"`` for that).

    Raises:
        DatasetExistsError: ``dst`` exists (without ``overwrite``).
        FieldNotFoundError: a requested field does not exist.
        SchemaError: a field to export is ragged: zarr-python 3 writes no variable-length
            arrays (pass ``fields`` without it, or use :func:`to_hdf5`); or ``compression``
            names an unknown compression, lzf, or a field not exported.
    """
    from . import zarr

    zarr.export(_as_dataset(dataset), dst, fields=fields, zarr_format=zarr_format,
                compression=compression, overwrite=overwrite, progress=progress)  # fmt: skip


def _as_dataset(dataset: Dataset | PathLike) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else open_dataset(dataset)


# -- the conversion ----------------------------------------------------------------------------


@interrupt.deferring
def convert(
    plan: SourcePlan,
    dst: PathLike,
    *,
    shard_bytes: int | None = None,
    workers: int = 1,
    attrs: Mapping[str, Any] | None = None,
    codecs: CodecChoice = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Dataset:
    """Write the rows ``plan`` describes to a new dataset at ``dst`` and open it.

    The format-specific functions above build the plan; see :func:`from_hdf5` for the
    parameters and errors.
    """
    root = os.path.abspath(os.fspath(dst))
    workers = _check_workers(workers)
    chosen = chosen_codecs(codecs, list(plan.fields))
    field_codecs = {name: chosen.get(name) for name in plan.fields}
    if resume and os.path.lexists(root) and not os.path.lexists(root + STAGING_SUFFIX):
        finished = _finished_conversion(plan, field_codecs, root, overwrite, shard_bytes)
        if finished is not None:
            return finished
    if os.path.lexists(root) and not overwrite:
        raise DatasetExistsError(f"{root}: already exists (pass overwrite=True to replace it)")
    if os.path.lexists(root) and (os.path.islink(root) or not is_memshard_dataset(root)):
        raise DatasetExistsError(f"{root}: exists and is not a memshard dataset; not replacing it")
    _announce(plan, progress)
    appender = _open_staging(plan, field_codecs, root, shard_bytes, attrs, resume, overwrite)
    try:
        _write_rows(plan, appender, workers, progress)
        if appender.rows != plan.rows:
            raise ConversionFailedError(
                f"{appender.path}: {appender.rows} of {plan.rows} rows were written; "
                "run the conversion again with resume=True to complete it"
            )
        # Parts still written when a resume began belong to workers of a killed run, which die
        # with it but may not have yet: wait for their locks, then delete what they left.
        discard_parts(appender, group=CONVERT_GROUP, wait=True)
        appender.close_into(root, overwrite=overwrite)
    except LabelError:
        # The source itself is bad: no resume can complete this conversion.
        appender.abort()
        shutil.rmtree(appender.path, ignore_errors=True)
        raise
    except BaseException:
        appender.abort()
        raise
    return open_dataset(root)


def _finished_conversion(
    plan: SourcePlan,
    codecs: dict[str, Codec | None],
    root: str,
    overwrite: bool,
    shard_bytes: int | None,
) -> Dataset | None:
    """``root`` opened, if it is the dataset this conversion made in an earlier run (a resume
    repeated after the final rename, CONVERSION.md section 6); ``None`` if it is something else
    that ``overwrite`` lets this conversion replace.

    Raises:
        DatasetExistsError: something else is at ``root`` and ``overwrite`` is false; the
            message says how it differs.
    """
    problem = _not_finished_here(plan, codecs, root, shard_bytes)
    if problem is None:
        return open_dataset(root)
    if overwrite:
        return None
    raise DatasetExistsError(
        f"{root}: already exists and is not this conversion, finished: it {problem}; "
        "pass overwrite=True to replace it"
    )


def _not_finished_here(
    plan: SourcePlan, codecs: dict[str, Codec | None], root: str, shard_bytes: int | None
) -> str | None:
    """Why ``root`` is not the finished conversion of ``plan``, or ``None`` if it is: every
    source row in sealed shards, from the source and with the fields, vocabularies and
    ``codecs`` recorded (and the shard size of ``shard_bytes``, if given)."""
    if os.path.islink(root):
        return "is a symbolic link"
    try:
        manifest = manifest_io.load(os.path.join(root, MANIFEST_NAME))
    except (OSError, MemshardError) as exc:
        return f"is no readable memshard dataset ({exc})"
    mismatch = _source_mismatch(manifest, source_record(plan), plan.labels) or _codec_mismatch(
        manifest, codecs
    )
    if mismatch is not None:
        return mismatch
    if manifest.rows != plan.rows:
        return f"holds {manifest.rows} rows, the source {plan.rows}"
    if not all(shard.sealed for shard in manifest.shards):
        return "holds an unsealed shard, which a conversion never leaves"
    return shard_size_mismatch(manifest, shard_bytes)


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ArgumentError(f"workers must be an int in 1..{MAX_WORKERS}, got {workers!r}")
    return workers


def _announce(plan: SourcePlan, progress: bool | None) -> None:
    from .progress import is_enabled, say

    if not is_enabled(progress):
        return
    for name, source in plan.fields.items():
        shape = source.declared_shape
        say(f"{source.origin} -> field {name!r}: {source.dtype}, sample shape {shape}")
    for note in skipped_notes(plan):
        say(note)


def skipped_notes(plan: SourcePlan) -> list[str]:
    """One line for each array or attribute of the source that the plan leaves out, and why."""
    return [f"{origin}: not taken ({why})" for origin, why in plan.skipped.items()]


def source_record(plan: SourcePlan) -> dict[str, Any]:
    """What the manifest records about the source, and what a resume must find unchanged."""
    return {
        "format": plan.kind,
        "location": plan.location,
        "rows": plan.rows,
        "identity": plan.identity,
        "fields": {
            name: {
                "origin": source.origin,
                "dtype": source.dtype.str,
                "shape": list(source.shape),
                "attrs": source.attrs,
                **({"kind": "ragged"} if source.ragged else {}),
            }
            for name, source in plan.fields.items()
        },
        **({} if plan.upstream is None else {"upstream": plan.upstream}),
    }


def _open_staging(
    plan: SourcePlan,
    codecs: dict[str, Codec | None],
    root: str,
    shard_bytes: int | None,
    attrs: Mapping[str, Any] | None,
    resume: bool,
    overwrite: bool,
) -> Appender:
    """The appender of the staging dataset: a new one, its fields compressed with ``codecs``,
    or the interrupted one to resume."""
    staging = root + STAGING_SUFFIX
    record = source_record(plan)
    if os.path.lexists(staging) and not resume and not overwrite:
        raise ConversionStateError(
            f"{staging}: an interrupted conversion to {root} is here; pass resume=True to "
            "complete it, or overwrite=True to delete it and start over"
        )
    if not os.path.lexists(staging) or not resume:
        fields = {name: _declaration(source, codecs[name]) for name, source in plan.fields.items()}
        all_attrs = {**plan.attrs, **(attrs or {}), SOURCE_ATTR: record}
        # With overwrite, create() replaces an interrupted run, taking its lock first: one
        # still running is reported (DatasetLockedError), never deleted under its writer.
        appender = create(staging, fields, labels=plan.labels, attrs=all_attrs,
                          shard_bytes=DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes,
                          overwrite=overwrite)  # fmt: skip
        _warn_if_small_shards(appender.manifest, plan, root)
        return appender
    appender = append(staging)
    try:
        _check_resumable(appender, record, plan.labels, codecs, staging, shard_bytes)
        discard_parts(appender)  # the shards that were being written when it stopped
    except BaseException:
        appender.abort()
        raise
    return appender


def _declaration(source: SourceField, codec: Codec | None) -> tuple[Any, ...]:
    """The field :func:`memshard.create` declares for ``source``, compressed with
    ``codec``."""
    shape = source.declared_shape
    return (source.dtype, shape) if codec is None else (source.dtype, shape, codec_options(codec))


def _warn_if_small_shards(manifest: Manifest, plan: SourcePlan, root: str) -> None:
    """Warn when the conversion to ``root`` would write more than one shard, each holding
    less than :data:`MIN_SHARD_BYTES` of data (with ragged fields, rows counted at their
    mean length: about as many)."""
    row_bytes = max(1, sum(source.row_bytes for source in plan.fields.values()))
    shard_data = manifest.shard_rows * row_bytes
    if manifest.shard_bytes is not None:  # ragged fields: shards roll on their data size
        shard_data = min(shard_data, manifest.shard_bytes)
    shards = -(-plan.rows * row_bytes // shard_data)
    if shards > 1 and shard_data < MIN_SHARD_BYTES:
        warnings.warn(
            SmallShardWarning(
                f"{root}: shard_bytes gives shards of {max(1, shard_data // row_bytes):,} rows "
                f"({format_bytes(shard_data)} of data), {shards:,} shards and "
                f"{shards * len(manifest.fields):,} files; shards smaller than "
                f"{format_bytes(MIN_SHARD_BYTES)} cost more in files, headers and commits "
                f"than they hold. The default shard_bytes is {format_bytes(DEFAULT_SHARD_BYTES)}"
            ),
            stacklevel=2,
        )


def _check_resumable(
    appender: Appender,
    record: dict[str, Any],
    labels: dict[str, list[str]],
    codecs: dict[str, Codec | None],
    staging: str,
    shard_bytes: int | None,
) -> None:
    """The staging dataset holds the first rows of this very conversion, its fields
    compressed with ``codecs``, in sealed shards of
    the size asked for (if one is): whole shards, the last one short only when it ends the
    source; with ragged fields, shards rolled on their data size, which any number of rows
    may fill."""
    manifest = appender.manifest
    rows = record["rows"]
    mismatch = (
        _source_mismatch(manifest, record, labels)
        or _codec_mismatch(manifest, codecs)
        or shard_size_mismatch(manifest, shard_bytes)
    )
    if mismatch is not None:
        raise ConversionStateError(
            f"{staging}: the interrupted conversion {mismatch}; pass overwrite=True to "
            "delete it and start over"
        )
    if any(not shard.sealed for shard in manifest.shards) or not _whole_parts(appender, rows):
        raise ConversionStateError(
            f"{staging}: holds shards a conversion does not write (unsealed or short); "
            "pass overwrite=True to delete it and start over"
        )


def _whole_parts(appender: Appender, rows: int) -> bool:
    """Whether the dataset's shards are those a conversion of ``rows`` rows commits: each
    ``shard_rows`` rows, the last one short only when it ends the source; with ragged fields
    (shards rolled on their data size, parts of estimated size) any rows up to ``rows``."""
    manifest = appender.manifest
    if manifest.shard_bytes is not None:
        return manifest.rows <= rows
    _, sizes = appender.shards.columns()
    short = np.flatnonzero(sizes != manifest.shard_rows).tolist()
    return not short or (manifest.rows == rows and short == [len(sizes) - 1])


def _source_mismatch(
    manifest: Manifest, record: dict[str, Any], labels: dict[str, list[str]]
) -> str | None:
    """How the conversion ``manifest`` records differs from the one asked for now (its source
    ``record`` and label vocabularies), as a clause; ``None`` if it does not."""
    recorded = manifest.attrs.get(SOURCE_ATTR)
    if not isinstance(recorded, dict):
        return f"records no {SOURCE_ATTR}: it is not a conversion"
    normalised = json_attrs(record)
    for key in ("format", "location", "rows", "identity"):
        if recorded.get(key) != normalised[key]:
            return (
                f"was converted with another source {key} "
                f"({recorded.get(key)!r:.200} there, {normalised[key]!r:.200} now)"
            )
    fields = _fields_mismatch(recorded.get("fields"), normalised["fields"])
    if fields is not None:
        return fields
    for name in sorted({*manifest.labels, *labels}):
        there = list(manifest.labels[name]) if name in manifest.labels else None
        if there != labels.get(name):
            return (
                f"has another label vocabulary for field {name!r} "
                f"({there!r:.200} there, {labels.get(name)!r:.200} now)"
            )
    return None


def _codec_mismatch(manifest: Manifest, codecs: dict[str, Codec | None]) -> str | None:
    """Which field of ``manifest`` is stored with another codec than ``codecs`` asks for, and
    both codecs, as a clause; ``None`` if none is (or the fields differ: see
    :func:`_fields_mismatch`)."""
    for name, codec in codecs.items():
        spec = manifest.fields.get(name)
        if spec is not None and spec.codec != codec:
            return (
                f"stores field {name!r} with codec {describe_codec(spec.codec)}, and this "
                f"conversion asks for {describe_codec(codec)}; pass the codecs of the first run"
            )
    return None


def _fields_mismatch(recorded: Any, now: dict[str, Any]) -> str | None:
    """How the fields a conversion recorded differ from those asked for ``now``, naming the
    field and the property that differs; ``None`` if they do not."""
    if not isinstance(recorded, dict):
        return f"records no fields in {SOURCE_ATTR}"
    if set(recorded) != set(now):
        return f"has the fields {sorted(recorded)!r:.200}, this conversion {sorted(now)!r:.200}"
    for name, field in now.items():
        there = recorded[name]
        for key in field:
            value = there.get(key) if isinstance(there, dict) else None
            if value != field[key]:
                return (
                    f"took field {name!r} with another {key} "
                    f"({value!r:.200} there, {field[key]!r:.200} now)"
                )
        if there != field:
            return f"took field {name!r} as {there!r:.200}, this conversion as {field!r:.200}"
    return None


def _write_rows(plan: SourcePlan, appender: Appender, workers: int, progress: bool | None) -> None:
    manifest = appender.manifest
    target = PartTarget(
        root=appender.path,
        uuid=manifest.uuid,
        fields=dict(manifest.fields),
        labels=dict(manifest.labels),
        shard_rows=manifest.shard_rows,
        shard_bytes=manifest.shard_bytes,
    )
    job = ShardJob(
        target=target,
        sources=plan.fields,
        vocabulary_sizes={name: len(vocab) for name, vocab in manifest.labels.items()},
        part_rows=part_rows_for(target, plan.fields),
    )
    # Parts start at the committed rows: without ragged fields, a multiple of shard_rows
    # (_check_resumable), so that part k is shard k.
    parts = job.parts(manifest.rows, plan.rows)
    row_bytes = sum(source.row_bytes for source in plan.fields.values())
    committer = OrderedCommit(appender, parts[0][0] if parts else 0, job.part_rows * row_bytes)
    description = os.path.basename(plan.location) or plan.kind
    with progress_bar(plan.rows * row_bytes, desc=description, enabled=progress) as bar:
        bar.update(manifest.rows * row_bytes)
        if workers == 1 or len(parts) <= 1:
            _write_in_process(plan, job, parts, committer, bar.update)
        elif plan.in_memory:
            _write_with_threads(plan, job, parts, committer, workers, bar.update)
        else:
            _write_with_processes(plan, job, parts, committer, workers, bar)
    committer.flush()


#: A part of a conversion: ``(index, start, stop)``, see :meth:`ShardJob.parts`.
PartRange = tuple[int, int, int]


def _write_in_process(
    plan: SourcePlan,
    job: ShardJob,
    parts: list[PartRange],
    committer: OrderedCommit,
    report: Callable[[int], Any],
) -> None:
    reader = plan.opener()
    try:
        for index, start, stop in parts:
            committer.finished(index, write_shard(job, reader, index, start, stop, report))
    finally:
        reader.close()


def _write_with_threads(
    plan: SourcePlan,
    job: ShardJob,
    parts: list[PartRange],
    committer: OrderedCommit,
    workers: int,
    report: Callable[[int], Any],
) -> None:
    reader = plan.opener()
    try:
        with futures.ThreadPoolExecutor(workers, thread_name_prefix="memshard-convert") as pool:

            def submit(part: PartRange) -> futures.Future[Part]:
                return pool.submit(write_shard, job, reader, *part, report)

            _run_ordered(parts, submit, committer, workers)
    finally:
        reader.close()


def _write_with_processes(
    plan: SourcePlan, job: ShardJob, parts: list[PartRange], committer: OrderedCommit,
    workers: int, bar: Any,
) -> None:  # fmt: skip
    """Two parts in flight per worker process; results are committed in row order."""
    # Imported here: the package never imports the module a worker runs (python -m).
    from .workers import WorkerProcesses

    unsent = list(parts)
    unsent.reverse()
    in_flight = 0

    def give(pool: WorkerProcesses, connection: Any) -> None:
        nonlocal in_flight
        if unsent and pool.send(connection, unsent[-1]):
            unsent.pop()
            in_flight += 1

    work = ConvertWork(plan.opener, job)
    with WorkerProcesses(min(workers, len(parts)), work, not bar.disable) as pool:
        for connection in pool.connections:
            give(pool, connection)
            give(pool, connection)
        for connection, message in pool.messages():
            if isinstance(message, Progress):
                bar.update(message.count)
                continue
            if isinstance(message, Failed):
                raise message.error
            in_flight -= 1
            committer.finished(message.index, message.result)
            give(pool, connection)
            if in_flight == 0 and not unsent:
                return


def _run_ordered(
    parts: Iterable[PartRange],
    submit: Callable[[PartRange], futures.Future[Part]],
    committer: OrderedCommit,
    workers: int,
) -> None:
    """Keep ``2 * workers`` parts in flight and commit them in order as they finish."""
    pending = iter(parts)
    running: dict[futures.Future[Part], int] = {}
    try:
        for part in pending:
            running[submit(part)] = part[0]
            if len(running) >= 2 * workers:
                break
        while running:
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in sorted(done, key=running.__getitem__):
                index = running.pop(future)
                committer.finished(index, future.result())
                following = next(pending, None)
                if following is not None:
                    running[submit(following)] = following[0]
    finally:
        for future in running:
            future.cancel()
