"""Reading a dataset: :func:`open`, :class:`Dataset` and :class:`Column`.

A :class:`Dataset` is a snapshot of a committed manifest. It maps shard files lazily, in the
process that reads them, through the process-wide cache in :mod:`memshard.mappings`; it never
holds a file descriptor of its own, so it survives ``fork`` and pickles to a few hundred bytes
(path, dataset id, generation and row count) for ``spawn`` and ``forkserver`` children.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import numpy as np

from . import manifest as manifest_io
from .compressedread import CompressedLayout
from .errors import (
    DatasetChangedError,
    DatasetClosedError,
    DatasetNotFoundError,
    FieldNotFoundError,
    FieldTooLargeError,
    IndexTypeError,
    InvalidIndexError,
    MemshardError,
    OutArrayError,
    RaggedArrayError,
    ReadFailedError,
)
from .indexing import (
    NUMPY_REFUSALS,
    IndexRows,
    Piece,
    SegmentTable,
    SliceRows,
    as_index_array,
    check_indices,
    checked_int,
    plan,
    project_indices,
    project_slice,
    slice_rows,
    split_pieces,
)
from .layout import MANIFEST_NAME, not_found
from .lengthstats import LengthStats, length_stats
from .manifest import Codec, FieldSpec, Manifest
from .mappings import (
    CACHE,
    SegmentFile,
    read_rows,
    segment_areas,
    segment_breaks_after,
)
from .pagecache import advise_will_need, advised_ahead, is_resident, page_aligned_empty
from .ragged import Allocator, Ragged
from .raggedread import RaggedLayout
from .shardtable import Shards
from .verify import VerifyReport, verify_dataset

#: Rows at least this large are scattered into a multi-segment gather one by one, which copies
#: each byte once; smaller rows are gathered per segment and scattered with numpy, which copies
#: twice but costs nothing per index in Python.
ROW_BY_ROW_MIN_BYTES = 16 << 10
#: A gather of at least this many rows, or of this many bytes, checks whether its first row
#: is in the page cache and, if it is not, asks the kernel for all its rows at once (see
#: :meth:`Column._gather`). The check (one ``mincore`` call and finding the first row) cost
#: about 10 us on this VM, 10% of a warm gather of 1024 rows of 512 bytes, hence 4096 rows
#: (a few percent); a batch of fewer, smaller rows needs ``prefetch`` when it is cold.
COLD_CHECK_MIN_ROWS = 4096
COLD_CHECK_MIN_BYTES = 1 << 20
#: The check looks at one row per this many bytes of the batch, spread over it, and at
#: :data:`COLD_SAMPLE_ROWS` rows at most (each look costs about 3 us: a few percent of a warm
#: gather of that many bytes).
COLD_SAMPLE_BYTES = 1 << 20
COLD_SAMPLE_ROWS = 16
#: A cold gather advises and copies its rows in pieces of about this many bytes (one row at
#: least): copying a piece overlaps the advice of the next, which helps large rows (measured
#: +20-35% for 48 KiB rows); a batch of small rows is one piece, advised then copied.
ADVISE_CHUNK_BYTES = 4 << 20
#: Largest sample a field may have to be read: numpy refuses any array, even an empty one,
#: whose non-zero dimensions multiply to more bytes than this.
MAX_READ_ROW_BYTES = 2**63 - 1
#: Rows whose lengths :meth:`RaggedColumn.length_stats` holds at once (8 bytes each).
LENGTH_BLOCK_ROWS = 1 << 20


class FieldInfo(NamedTuple):
    """A field's dtype and the shape of one sample (of a ragged field, ``(None, *tail)``);
    accepted back by :func:`memshard.create`."""

    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]


class _Segments(Sequence[Any]):
    """The shard files (:meth:`parts`) or the mapping cache key (:meth:`key`) of each segment
    of one field, built on first use and kept: a dataset of 100,000 shards opens without
    building an object per shard. (No closures: a closure would reach the module's globals,
    and a dataset must reach few objects, see ``tests/test_reader.py``.)"""

    def __init__(
        self,
        root: str,
        name: str,
        shards: Shards,
        lengths: np.ndarray,
        bounds: np.ndarray,
        keys: bool,
    ) -> None:
        self._root = root
        self._name = name
        self._shards = shards
        self._lengths = lengths
        self._bounds = bounds  # segment s holds shards bounds[s] to bounds[s + 1]
        self._keys = keys
        self._made: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, segment: Any) -> Any:
        value = self._made.get(segment)
        if value is None:
            first, end = int(self._bounds[segment]), int(self._bounds[segment + 1])
            value = self._key(first, end) if self._keys else self._parts(first, end)
            self._made[segment] = value
        return value

    def _parts(self, first: int, end: int) -> tuple[SegmentFile, ...]:
        return tuple(
            SegmentFile(
                file=self._shards[index].files[self._name],
                manifest_rows=self._shards[index].rows,
                sealed=self._shards[index].sealed,
                rows=int(self._lengths[index]),
            )
            for index in range(first, end)
        )

    def _key(self, first: int, end: int) -> Hashable:
        last = end - 1
        return (
            self._root,
            self._shards[first].files[self._name].path,
            self._shards[last].files[self._name].path,
            int(self._lengths[last]),
            end - first,
        )


@dataclass(frozen=True)
class _FieldLayout:
    """How one field's rows are mapped: segments of shards mapped back to back (a shard whose
    data is not whole pages ends its segment), or one shard per segment.

    ``table`` holds the segment offsets (``starts`` as a tuple); ``keys[s]`` identifies
    segment ``s`` in the mapping cache and ``parts[s]`` lists its shard files (both built on
    first use)."""

    table: SegmentTable
    starts: tuple[int, ...]
    keys: Sequence[Hashable]
    parts: Sequence[tuple[SegmentFile, ...]]
    memory_areas: int

    @classmethod
    def of(
        cls,
        root: str,
        name: str,
        spec: FieldSpec,
        shards: Shards,
        lengths: np.ndarray,
        shard_per_segment: bool,
    ) -> _FieldLayout:
        breaks = segment_breaks_after(spec, lengths) | shard_per_segment
        breaks[-1:] = True
        bounds = np.concatenate(([0], np.flatnonzero(breaks) + 1)).astype(np.int64)
        row_ends = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        starts = row_ends[bounds]
        segments = len(bounds) - 1
        return cls(
            SegmentTable.from_offsets(starts),
            tuple(starts.tolist()),
            _Segments(root, name, shards, lengths, bounds, keys=True),
            _Segments(root, name, shards, lengths, bounds, keys=False),
            len(lengths) + segments * segment_areas(0),  # an area per file, and per segment
        )


@dataclass(frozen=True)
class _Snapshot:
    """The first ``rows`` rows of a committed manifest, ready for indexing. The rows are those
    of generation ``generation``; ``manifest`` may be a later one (rows are append-only)."""

    root: str
    manifest: Manifest
    generation: int
    rows: int
    shards: Shards
    layouts: dict[str, _FieldLayout]
    ragged: dict[str, RaggedLayout]
    compressed: dict[str, CompressedLayout]

    @classmethod
    def of(cls, root: str, manifest: Manifest, rows: int, generation: int) -> _Snapshot:
        """The first ``rows`` rows of ``manifest``.

        Raises:
            FieldTooLargeError: a field's sample is larger than a numpy array can hold.
            ShardTableError: the shard table is missing or damaged.
        """
        _check_readable(root, manifest)
        shards = Shards.of(root, manifest).first_rows(rows)
        offsets, sizes = shards.columns()
        lengths = np.minimum(sizes, rows - offsets)

        def layouts_of(shard_per_segment: bool) -> dict[str, _FieldLayout]:
            return {
                name: _FieldLayout.of(root, name, spec, shards, lengths, shard_per_segment)
                for name, spec in manifest.fields.items()
                if not spec.has_offsets
            }

        ragged: dict[str, RaggedLayout] = {}
        compressed: dict[str, CompressedLayout] = {}
        for name, spec in manifest.fields.items():
            if spec.compressed:
                layout = CompressedLayout(root, name, spec, shards, lengths)
                (ragged if spec.ragged else compressed)[name] = layout
            elif spec.ragged:
                ragged[name] = RaggedLayout(root, name, spec, shards, lengths)
        areas = sum(layout.memory_areas for layout in [*ragged.values(), *compressed.values()])
        # Whole runs of shards (slices across them are views) while every field's segments
        # fit in the mapping cache together. If they cannot, reads map and unmap as they go,
        # and a miss should map only the shard it needs, not the run around it.
        layouts = layouts_of(False)
        if areas + sum(layout.memory_areas for layout in layouts.values()) > CACHE.capacity:
            layouts = layouts_of(True)
        return cls(root, manifest, generation, rows, shards, layouts, ragged, compressed)


def _check_readable(root: str, manifest: Manifest) -> None:
    for name, spec in manifest.fields.items():
        if spec.row_bytes > MAX_READ_ROW_BYTES:
            raise FieldTooLargeError(
                f"{root}: field {name!r}: a sample of shape {list(spec.shape)} and dtype "
                f"{spec.dtype!r} is {spec.row_bytes} bytes; numpy holds at most "
                f"{MAX_READ_ROW_BYTES} bytes in one array, so the field cannot be read"
            )


def open(path: str | os.PathLike[str]) -> Dataset:  # noqa: A001 - mirrors the public name
    """Open the dataset at ``path`` for reading.

    Nothing is mapped yet; shards are mapped on first access, in the process that reads.

    Raises:
        DatasetNotFoundError: ``path`` has no ``manifest.json``.
        ManifestError: the manifest is invalid (see :func:`memshard.manifest.loads`).
        FieldTooLargeError: a field's sample is larger than a numpy array can hold (a valid
            manifest of 0 rows may state such a shape).

    Example:
        >>> import memshard as ms, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ds")
        >>> with ms.create(path, fields={"x": ("float32", (2,))}) as w:
        ...     w.extend({"x": np.ones((3, 2))})
        >>> ds = ms.open(path)
        >>> len(ds), ds["x"].shape
        (3, (3, 2))
    """
    root = os.path.abspath(os.fspath(path))
    return Dataset._from_manifest(root, _load_manifest(root))


def _load_manifest(root: str) -> Manifest:
    manifest_path = os.path.join(root, MANIFEST_NAME)
    try:
        return manifest_io.load(manifest_path)
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(root) from None
    except IsADirectoryError:
        raise DatasetNotFoundError(f"{manifest_path}: is a directory, not a manifest") from None


def _restore(root: str, uuid: str, generation: int, rows: int) -> Dataset:
    manifest = _load_manifest(root)
    _check_same_dataset(root, manifest, uuid, generation, rows)
    return Dataset._from_manifest(root, manifest, rows, generation)


def _check_same_dataset(
    root: str, manifest: Manifest, uuid: str, generation: int, rows: int
) -> None:
    if manifest.uuid != uuid:
        raise DatasetChangedError(
            f"{root}: the dataset was replaced (id {manifest.uuid}, expected {uuid})"
        )
    if manifest.generation < generation or manifest.rows < rows:
        raise DatasetChangedError(
            f"{root}: the manifest went back from generation {generation} ({rows} rows) to "
            f"{manifest.generation} ({manifest.rows} rows)"
        )


class Dataset:
    """A read-only view of the committed rows of a dataset. Create with :func:`memshard.open`.

    ``len(ds)`` rows; ``ds["x"]`` is a :class:`Column`; ``ds[i]`` / ``ds[indices]`` /
    ``ds[a:b]`` give a dict of every field; :meth:`take` gathers a batch of every field.

    Shard files are mapped on first read and the mappings are kept in a per-process cache
    (:data:`memshard.mappings.CACHE`) that outlives the object; :meth:`close`, or leaving
    ``with memshard.open(path) as ds:``, lets them go.
    """

    _snapshot: _Snapshot
    _change_token: tuple[object, ...] | None
    _closed: bool

    def __init__(self) -> None:
        raise TypeError("use memshard.open(path) to open a dataset")

    @classmethod
    def _from_manifest(
        cls, root: str, manifest: Manifest, rows: int | None = None, generation: int | None = None
    ) -> Dataset:
        dataset = object.__new__(cls)
        dataset._snapshot = _Snapshot.of(
            root,
            manifest,
            manifest.rows if rows is None else rows,
            manifest.generation if generation is None else generation,
        )
        dataset._change_token = None
        dataset._closed = False
        return dataset

    # -- description -------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Absolute path of the dataset directory."""
        return self._snapshot.root

    @property
    def generation(self) -> int:
        """The manifest generation this view was read from."""
        return self._snapshot.generation

    @property
    def uuid(self) -> str:
        """The dataset's identity, fixed at creation."""
        return self._snapshot.manifest.uuid

    def __len__(self) -> int:
        return self._snapshot.rows

    @property
    def fields(self) -> dict[str, FieldInfo]:
        """Field name -> (dtype, sample shape), in definition order; a ragged field's shape
        starts with ``None``, the axis whose length varies."""
        return {
            name: FieldInfo(spec.numpy_dtype, (None, *spec.shape) if spec.ragged else spec.shape)
            for name, spec in self._snapshot.manifest.fields.items()
        }

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Field name -> label vocabulary, for the fields that have one."""
        return dict(self._snapshot.manifest.labels)

    @property
    def attrs(self) -> dict[str, Any]:
        """User attributes stored at creation (a copy)."""
        return copy.deepcopy(self._snapshot.manifest.attrs)

    @property
    def nbytes(self) -> int:
        """Bytes of data in the visible rows, all fields (of a ragged field, its values)."""
        return sum(self.column(name).nbytes for name in self._snapshot.manifest.fields)

    @property
    def shards(self) -> Shards:
        """The manifest records of the shards holding the visible rows, in row order (a
        sequence of :class:`~memshard.manifest.Shard`, each built when first indexed)."""
        return self._snapshot.shards

    @property
    def manifest(self) -> Manifest:
        """The manifest this view was read from (it may list rows committed after the view)."""
        return self._snapshot.manifest

    def verify(self, *, progress: bool | None = False) -> VerifyReport:
        """Check the dataset as it is on disk now: the manifest (strictly parsed, and its own
        checksum) and every shard file it names: presence, size, header, the checksum of every
        committed row's data (each byte is read once) and the bytes of bool fields.

        Returns a :class:`~memshard.verify.VerifyReport`, true exactly when ``report.ok``:
        every committed row checked and found intact. ``report.problems`` names each bad file
        (nothing is raised; ``report.raise_first()`` raises the first problem as its typed
        error); ``report.unchecked`` names the rows that have no checksum to check (the
        unsealed shard of a format 1.0 dataset), which also make ``report.ok`` false.
        """
        return verify_dataset(self.path, progress=progress)

    def keys(self) -> list[str]:
        """The field names."""
        return list(self._snapshot.manifest.fields)

    def shard_files(self, field: str) -> list[str]:
        """The absolute paths of field ``field``'s shard files, in row order.

        File names do not sort in row order (shards written in parallel are named after the
        part that wrote them), so list them with this (or ``memshard ls``) to read them
        without memshard: each sealed file loads with ``np.load(path, mmap_mode="r")``, and
        their rows, concatenated in this order, are the column. The last file of a dataset
        still being appended to may be unsealed: its header may count rows that are not
        committed yet, so read it through memshard, or take only its first
        ``ds.shards[-1].rows`` rows.

        Raises:
            FieldNotFoundError: no such field.
        """
        self._check_field(field)
        return [os.path.join(self.path, shard.files[field].path) for shard in self._snapshot.shards]

    def close(self) -> None:
        """Release the shard mappings of this dataset; reading it afterwards raises
        :class:`~memshard.errors.DatasetClosedError`. Idempotent.

        Mappings are cached per process and shared by every :class:`Dataset` of the same
        path, so this drops them all from the cache (another open one maps its shards again
        when it next reads). Views already handed out (``ds["x"][0:10]``) stay valid: each
        keeps the mapping it points into (the run of shards mapped back to back with its
        own) until it is garbage-collected; until then those files' pages stay in the page
        cache and, where the system forbids deleting a mapped file, the files stay.
        Once no view is left, nothing of the dataset is mapped: its files' pages can be
        evicted (``posix_fadvise(POSIX_FADV_DONTNEED)``) and the files deleted.
        """
        self._closed = True
        self._snapshot.shards.table.release()
        for layout in [*self._snapshot.ragged.values(), *self._snapshot.compressed.values()]:
            layout.release()
        root = self.path
        CACHE.evict(lambda key: isinstance(key, tuple) and key[0] == root)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _closed_error(self) -> DatasetClosedError:
        return DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read")

    def _check_field(self, name: str) -> None:
        if name not in self._snapshot.manifest.fields:
            raise FieldNotFoundError(
                f"{self.path}: no field {name!r}; fields are {list(self._snapshot.manifest.fields)}"
            )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}: {info.dtype}{list(info.shape)}" for name, info in self.fields.items()
        )
        return (
            f"<memshard.Dataset {self.path!r} rows={len(self)} shards={len(self.shards)} "
            f"fields={{{fields}}}>"
        )

    # -- reading -----------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        """``ds["x"]`` -> :class:`Column`; any row key -> ``{field: column[key]}``."""
        if isinstance(key, str):
            return self.column(key)
        if isinstance(key, (list, np.ndarray)):
            try:
                array = np.asarray(key)
            except ValueError:  # a ragged list: the columns refuse it with a typed error
                array = None
            if (
                array is not None
                and array.ndim == 1
                and (array.dtype.kind in "iu" or not array.size)
            ):
                return self.take(array)
        return {name: self.column(name)[key] for name in self._snapshot.manifest.fields}

    def column(self, name: str) -> Column:
        """The column of field ``name``.

        Raises:
            FieldNotFoundError: no such field; the message lists the fields.
            DatasetClosedError: the dataset was closed.
        """
        if self._closed:
            raise self._closed_error()
        self._check_field(name)
        if name in self._snapshot.ragged:
            return RaggedColumn(self, name)
        if name in self._snapshot.compressed:
            return CompressedColumn(self, name)
        return Column(self, name)

    def take(
        self,
        indices: Any,
        out: Mapping[str, np.ndarray | Allocator] | None = None,
        *,
        fields: list[str] | None = None,
        threads: int | None = None,
    ) -> dict[str, Any]:
        """Gather rows ``indices`` (any order, repeats and negatives allowed) of every field.

        The rows are projected onto shards once and copied once per field, grouped by shard,
        and returned in request order: an array per fixed field, a
        :class:`~memshard.ragged.Ragged` batch (its values in one new buffer) per ragged field.

        Parameters:
            indices: a 1-d sequence or array of integers.
            out: optional field -> where its rows go. For a fixed field, an array to fill,
                C-contiguous, writeable, of the field's dtype and shape
                ``(len(indices), *sample_shape)``. For a ragged field, whose size is known
                only once its offsets are read, an :data:`~memshard.ragged.Allocator`:
                ``out[name](shape, dtype)`` is called once, with ``shape`` ``(elements,
                *tail)``, and must return such an array, which becomes the batch's
                ``values``. Fields without one get a new array.
            fields: the fields to read (default: all).
            threads: how many threads decompress the blocks of compressed fields (default:
                :func:`~memshard.compressedread.default_threads`, used for gathers of at
                least :data:`~memshard.compressedread.PARALLEL_MIN_BLOCKS` blocks and
                :data:`~memshard.compressedread.PARALLEL_MIN_BYTES` bytes); 1 decompresses
                in the calling thread.

        Raises:
            InvalidIndexError: an index out of range, or ``indices`` not 1-d integers.
            OutArrayError: an ``out`` array of the wrong shape, dtype or layout, an array
                given for a ragged field, or an allocator's array not the one asked for.
            FieldNotFoundError: an unknown name in ``fields`` or ``out``.
        """
        snapshot = self._snapshot
        names = list(snapshot.manifest.fields) if fields is None else list(fields)
        for name in [*names, *(out or {})]:
            self.column(name)
        array = check_indices(as_index_array(indices, where=self.path), snapshot.rows)
        result: dict[str, Any] = {}
        projections: dict[int, list[Piece]] = {}
        for name in names:
            if name in snapshot.ragged:
                column = self.column(name)
                empty = None if out is None else out.get(name)
                if empty is not None and not callable(empty):
                    raise OutArrayError(
                        f"{column._where()}: a ragged field takes no out array, its size is "
                        "known only once its offsets are read; give a function "
                        f"(shape, dtype) -> array instead, got {type(empty).__name__}"
                    )
                ragged = snapshot.ragged[name]
                try:
                    if isinstance(ragged, CompressedLayout):
                        result[name] = ragged.gather_ragged(array, empty, threads)
                    else:
                        result[name] = ragged.gather(array, empty)
                except Exception as exc:
                    column._raise_typed(exc, array)
                continue
            if name in snapshot.compressed:
                compressed = CompressedColumn(self, name)
                target = None if out is None else out.get(name)
                try:
                    result[name] = compressed._take(array, target, threads)
                except Exception as exc:
                    compressed._raise_typed(exc, array)
                continue
            layout = snapshot.layouts[name]
            pieces = projections.get(id(layout.table))
            if pieces is None:
                pieces = projections[id(layout.table)] = project_indices(array, layout.table)
            target = None if out is None else out.get(name)
            column = Column(self, name)
            if callable(target):
                raise OutArrayError(
                    f"{column._where()}: out must be a numpy array for a fixed field, got "
                    f"{type(target).__name__}"
                )
            try:
                result[name] = column._gather(snapshot, layout, pieces, array.size, target)
            except Exception as exc:
                column._raise_typed(exc, array)
        return result

    def prefetch(self, indices: Any, *, fields: list[str] | None = None) -> None:
        """Start reading rows ``indices`` into the page cache without waiting for them.

        A gather does this by itself for a large batch whose first row is not in the page
        cache (:data:`COLD_CHECK_MIN_ROWS`, :data:`COLD_CHECK_MIN_BYTES`). Call it to start
        the reads of a later batch early (while this one is used), for smaller batches, or
        for rows only partly cached: the kernel reads all the rows in parallel, so a
        :meth:`take` right after waits for one round of I/O rather than one read per row. On
        cached data it only costs a system call per run of adjacent rows. Rows of segments
        that cannot be mapped now (see :class:`Column`) are not advised.

        Raises:
            InvalidIndexError, FieldNotFoundError: as :meth:`take`.
        """
        snapshot = self._snapshot
        names = list(snapshot.manifest.fields) if fields is None else list(fields)
        array = check_indices(as_index_array(indices, where=self.path), snapshot.rows)
        for name in names:
            column = self.column(name)
            try:
                if name in snapshot.ragged:
                    snapshot.ragged[name].advise(array)
                elif name in snapshot.compressed:
                    snapshot.compressed[name].advise(array)
                else:
                    layout = snapshot.layouts[name]
                    column._advise(snapshot, layout, project_indices(array, layout.table))
            except Exception as exc:
                column._raise_typed(exc, array)

    def refresh(self) -> bool:
        """Make what was committed since this view was taken visible (rows, or an edit of
        attributes or label vocabularies, :func:`memshard.edit`); return whether anything was.
        Columns taken before keep their rows (see :class:`Column`).

        Raises:
            DatasetChangedError: the dataset was replaced or its manifest went back in time.
            DatasetClosedError: the dataset was closed.
        """
        if self._closed:
            raise self._closed_error()
        token = manifest_io.change_token(os.path.join(self.path, MANIFEST_NAME))
        if token is not None and token == self._change_token:
            return False
        old = self._snapshot
        new = _load_manifest(self.path)
        _check_same_dataset(self.path, new, old.manifest.uuid, old.generation, old.rows)
        self._change_token = token
        if new.generation == old.generation:
            return False
        self._snapshot = _Snapshot.of(self.path, new, new.rows, new.generation)
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        snapshot = self._snapshot
        return (
            _restore,
            (snapshot.root, snapshot.manifest.uuid, snapshot.generation, snapshot.rows),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in range(len(self)):
            yield self[row]


class Column:
    """One field of a dataset as an array of shape ``(len(ds), *sample_shape)``.

    A column is a snapshot: it holds the rows its dataset showed when it was taken
    (``ds["x"]``), and keeps its length when :meth:`Dataset.refresh` later shows more rows
    (take the column again to see them). So a loop over ``range(len(column))`` never meets
    rows that were not there when it began. A column of a closed dataset refuses reads
    (:class:`~memshard.errors.DatasetClosedError`).

    Indexing follows numpy exactly. An integer, or a slice within one mapped segment (a run of
    shards mapped back to back), gives a read-only view of the mapped files (zero copy);
    anything else gives a new array, gathered once per segment and returned in request order.

    Views keep their mapping alive, and the mappings a process keeps are bounded (see
    :class:`memshard.mappings.MappingCache`): once the mappings that views still hold fill
    that bound, an integer or slice that would need a new mapping gives a read-only *copy*
    instead, read without mapping anything; mapped segments still give views. So
    ``list(ds["x"])`` over any number of shards works, and every view given out stays valid.
    The same happens if the kernel refuses a mapping (its ``vm.max_map_count`` reached by
    other code).

    A view reads the file as it is on disk: if the file is truncated while a view maps it,
    reading the lost rows kills the process with ``SIGBUS`` (after one line on stderr naming
    the file, :mod:`memshard.sigbus`); a file truncated before its mapping raises
    :class:`~memshard.errors.ShardSizeError`.
    """

    __slots__ = ("_dataset", "_snapshot", "_spec", "name")

    def __init__(self, dataset: Dataset, name: str) -> None:
        self._dataset = dataset
        self._snapshot = dataset._snapshot
        self.name = name
        self._spec: FieldSpec = self._snapshot.manifest.fields[name]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The field's dtype."""
        return self._spec.numpy_dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, *sample_shape)``."""
        return (self._snapshot.rows, *self._spec.shape)

    @property
    def ndim(self) -> int:
        """``1 + len(sample_shape)``."""
        return 1 + len(self._spec.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the visible rows of this field."""
        return self._snapshot.rows * self._spec.row_bytes

    @property
    def stored_bytes(self) -> int:
        """Bytes the visible rows take on disk: :attr:`nbytes` for a field that is not
        compressed, the frames of their blocks for a compressed one (offsets files and
        headers not counted), so ``nbytes / stored_bytes`` is the compression ratio."""
        return self.nbytes

    @property
    def codec(self) -> Codec | None:
        """The field's codec (name, parameters, block size); ``None`` if not compressed."""
        return self._spec.codec

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The label vocabulary of this field, if it has one."""
        return self._snapshot.manifest.labels.get(self.name)

    def __len__(self) -> int:
        return self._snapshot.rows

    def __repr__(self) -> str:
        return f"<memshard.Column {self.name!r} shape={self.shape} dtype={self.dtype}>"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array: np.ndarray = self[:]
        if dtype is not None and np.dtype(dtype) != array.dtype:
            return array.astype(dtype)
        return array.copy() if copy else array

    def __iter__(self) -> Iterator[np.ndarray]:
        for row in range(len(self)):
            yield self[row]

    def __getitem__(self, key: Any) -> Any:
        """``column[key]``, as ``numpy_array[key]`` would give it.

        Raises:
            InvalidIndexError: numpy would refuse ``key``; the error also inherits the builtin
                numpy raises (see :func:`memshard.indexing.plan`), e.g. a slice with step 0
                gives an :class:`~memshard.errors.IndexValueError`, which is a ``ValueError``.
            ReadFailedError: the system failed to read a shard (an I/O error).
            InvalidDatasetError: a shard file breaks the format (see
                :func:`memshard.mappings.map_segment`).
            DatasetClosedError: the dataset was closed.
        """
        if self._dataset._closed:
            raise self._dataset._closed_error()
        try:
            return self._read(key)
        except Exception as exc:
            self._raise_typed(exc, key)

    def _read(self, key: Any) -> Any:
        """The one read path: select the rows ``key`` needs, read them (views of one segment,
        or a gather), apply the rest of the key. Errors are left to :meth:`_raise_typed`.

        The cheapest selection comes first: an integer or a slice of a column mapped as one
        segment is numpy's own indexing of the mapping; an integer elsewhere is one segment's
        row; every other key is planned (:func:`memshard.indexing.plan`).
        """
        snapshot = self._snapshot
        layout = snapshot.layouts[self.name]
        kind = type(key)
        if kind is int or kind is slice:
            if len(layout.keys) == 1:
                return self._rows_of(snapshot, layout, 0, key)  # numpy checks the key
            if kind is int:
                row = _in_range(checked_int(key), snapshot.rows)
                segment = layout.table.segment_of(row)
                return self._rows_of(snapshot, layout, segment, row - layout.starts[segment])
        selection = plan(key, (snapshot.rows, *self._spec.shape))
        rows = selection.rows
        if isinstance(rows, SliceRows):
            read = self._slice(snapshot, layout, rows)
        else:
            pieces = project_indices(rows.indices, layout.table)
            read = self._gather(snapshot, layout, pieces, rows.indices.size, None)
        return read[selection.key] if selection.key else read

    def _raise_typed(self, exc: Exception, key: Any) -> NoReturn:
        """Raise ``exc``, raised while reading ``key``, as memshard's error: the one place
        where the read path's errors are typed.

        A key numpy refuses (:data:`~memshard.indexing.NUMPY_REFUSALS`) is explained by the
        pure planner, which also gives a huge integer its own message; an ``OSError`` of the
        system (an I/O error) becomes a :class:`~memshard.errors.ReadFailedError`. Index
        errors name the dataset and the field. Anything else, memshard's own errors included,
        is raised unchanged.
        """
        if isinstance(exc, NUMPY_REFUSALS) and not isinstance(exc, MemshardError):
            why = self._refusal(key)
            if why is not None:
                exc = why
        if isinstance(exc, InvalidIndexError):
            raise self._located(exc) from None
        if isinstance(exc, OSError) and not isinstance(exc, MemshardError):
            raise ReadFailedError(
                exc.errno, f"{self._where()}: reading rows failed ({exc.strerror or exc})"
            ) from exc
        raise exc

    def _where(self) -> str:
        return f"{self._dataset.path}: field {self.name!r}"

    def _located(self, error: InvalidIndexError) -> InvalidIndexError:
        """``error``, of the same class, with a message naming the dataset and the field."""
        return type(error)(f"{self._where()}: {error}")

    def _refusal(self, key: Any) -> InvalidIndexError | None:
        """Why the planner refuses ``key`` for this column, or None if it accepts it."""
        try:
            plan(key, self.shape)
        except InvalidIndexError as error:
            return error
        return None

    def _mapped(self, snapshot: _Snapshot, layout: _FieldLayout, segment: int) -> np.ndarray | None:
        """The read-only array of this field's rows in ``segment``, mapped on first use; None
        when the mapping cache has no room for it (see :meth:`MappingCache.map`)."""
        key = layout.keys[segment]
        array = CACHE.get(key)
        if array is None:
            array = CACHE.map(key, snapshot.root, self._spec, layout.parts[segment])
        return array

    def _rows_of(
        self, snapshot: _Snapshot, layout: _FieldLayout, segment: int, rows: int | slice
    ) -> np.ndarray:
        """``rows`` of ``segment`` (numpy refuses an integer out of range): a view of its
        mapping, or a read-only copy when it cannot be mapped."""
        mapped = self._mapped(snapshot, layout, segment)
        if mapped is not None:
            view: np.ndarray = mapped[rows]
            return view
        length = layout.starts[segment + 1] - layout.starts[segment]
        copy = self._copied(snapshot, layout, segment, np.arange(length)[rows])
        copy.flags.writeable = False
        return copy

    def _copied(
        self, snapshot: _Snapshot, layout: _FieldLayout, segment: int, rows: Any
    ) -> np.ndarray:
        """Rows of ``segment`` (an index or an array of indices) read without mapping."""
        copy = read_rows(snapshot.root, self._spec, layout.parts[segment], np.atleast_1d(rows))
        return copy if isinstance(rows, np.ndarray) else copy[0]

    def _slice(self, snapshot: _Snapshot, layout: _FieldLayout, rows: SliceRows) -> np.ndarray:
        pieces = project_slice(rows, layout.table)
        if len(pieces) == 1:
            segment, in_segment, _ = pieces[0]
            return self._rows_of(snapshot, layout, segment, in_segment)
        out = np.empty((rows.count, *self._spec.shape), dtype=self._spec.numpy_dtype)
        for segment, in_segment, in_out in pieces:
            out[in_out] = self._rows_of(snapshot, layout, segment, in_segment)
        return out

    def _gather(
        self,
        snapshot: _Snapshot,
        layout: _FieldLayout,
        pieces: list[Piece],
        count: int,
        out: np.ndarray | None,
    ) -> np.ndarray:
        """Copy the rows of ``pieces`` (``count`` of them, :func:`project_indices`) into
        ``out`` or a new page-aligned array, in request order.

        Cold rows are read in parallel: a batch of at least :data:`COLD_CHECK_MIN_ROWS` rows
        or :data:`COLD_CHECK_MIN_BYTES` bytes of which a sampled row is not in the page cache
        (:meth:`_cold`) has its rows advised (:meth:`_advise`), so that the kernel reads them
        all at once instead of one page fault at a time; in pieces of
        :data:`ADVISE_CHUNK_BYTES`, each copied as soon as it is advised while a thread
        advises the next. Smaller batches are not checked (the check would cost more than a
        few percent of a warm gather);
        :meth:`Dataset.prefetch` advises any.
        """
        if out is None:
            out = page_aligned_empty((count, *self._spec.shape), self._spec.numpy_dtype)
        else:
            self._check_out(out, count)
        row_bytes = self._spec.row_bytes
        if (count >= COLD_CHECK_MIN_ROWS or count * row_bytes >= COLD_CHECK_MIN_BYTES) and (
            self._cold(snapshot, layout, pieces)
        ):
            chunks = split_pieces(pieces, max(1, ADVISE_CHUNK_BYTES // max(1, row_bytes)))
            advised = advised_ahead(chunks, lambda piece: self._advise(snapshot, layout, [piece]))
            try:
                self._copy(snapshot, layout, advised, out)
            finally:
                advised.close()
        else:
            self._copy(snapshot, layout, pieces, out)
        return out

    def _copy(
        self, snapshot: _Snapshot, layout: _FieldLayout, pieces: Iterable[Piece], out: np.ndarray
    ) -> None:
        """Copy the rows of each piece to its positions in ``out``."""
        row_by_row = self._spec.row_bytes >= ROW_BY_ROW_MIN_BYTES
        for segment, local, positions in pieces:
            source = self._mapped(snapshot, layout, segment)
            if source is None:
                out[positions] = self._copied(snapshot, layout, segment, local)
            elif isinstance(positions, slice):  # one segment serves a run of the output
                np.take(source, local, axis=0, out=out[positions], mode="clip")
            elif row_by_row:
                for position, row in zip(positions.tolist(), local.tolist(), strict=True):
                    out[position] = source[row]
            else:
                out[positions] = source[local]

    def _cold(self, snapshot: _Snapshot, layout: _FieldLayout, pieces: list[Piece]) -> bool:
        """Whether the page cache lacks any of a sample of the batch's rows, one per
        :data:`COLD_SAMPLE_BYTES` of it (at least one, at most :data:`COLD_SAMPLE_ROWS`),
        spread over its pieces (rows of segments that cannot be mapped now do not count:
        they are read with ``pread``, not faulted in).

        One row is not enough once part of a dataset larger than memory is cached: a first
        row found cached left the rest to page faults, and each fault's read-ahead read
        megabytes around a 48 KiB row (15 times the data, measured).
        """
        total = sum(_piece_rows(piece).size for piece in pieces)
        sample = min(COLD_SAMPLE_ROWS, max(1, total * self._spec.row_bytes // COLD_SAMPLE_BYTES))
        for piece in pieces:
            rows = _piece_rows(piece)
            share = -(-sample * rows.size // total)
            picked = rows[np.linspace(0, rows.size - 1, num=min(rows.size, share), dtype=int)]
            source = self._mapped(snapshot, layout, piece.segment)
            if source is not None and not all(is_resident(source, int(row)) for row in picked):
                return True
        return False

    def _advise(self, snapshot: _Snapshot, layout: _FieldLayout, pieces: list[Piece]) -> None:
        """Ask the kernel to read the rows of ``pieces`` now, all at once
        (:func:`~memshard.pagecache.advise_will_need`); rows of segments that cannot be mapped
        now are left alone."""
        for segment, local, _ in pieces:
            source = self._mapped(snapshot, layout, segment)
            if source is not None:
                advise_will_need(source, local)

    def _check_out(self, out: np.ndarray, count: int) -> None:
        expected = (count, *self._spec.shape)
        if not isinstance(out, np.ndarray):
            raise OutArrayError(
                f"{self._where()}: out must be a numpy array, got {type(out).__name__}"
            )
        if out.shape != expected or out.dtype != self._spec.numpy_dtype:
            raise OutArrayError(
                f"{self._where()}: out has shape {out.shape} dtype {out.dtype}, "
                f"expected shape {expected} dtype {self._spec.numpy_dtype}"
            )
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise OutArrayError(f"{self._where()}: out must be C-contiguous and writeable")

    def __reduce__(self) -> tuple[Any, ...]:
        snapshot = self._snapshot
        identity = (snapshot.root, snapshot.manifest.uuid, snapshot.generation, snapshot.rows)
        return (_restore_column, (*identity, self.name))


class RaggedColumn(Column):
    """A ragged field: rows of varying length along their first axis (see
    :mod:`memshard.ragged`). A snapshot, as a :class:`Column` is.

    ``column[i]`` is row ``i``: a read-only view of the mapped values, of shape
    ``(n, *tail)``. A slice, a 1-d integer array or list, or a boolean mask gives a
    :class:`~memshard.ragged.Ragged` batch of those rows: a step-1 slice within one shard
    shares its values with the mapping (a view), anything else packs them into one new buffer.
    ``np.asarray(column)`` refuses (rows differ in length); use ``column[:].to_padded()`` or
    ``column[:].values``.
    """

    __slots__ = ("_layout",)

    def __init__(self, dataset: Dataset, name: str) -> None:
        super().__init__(dataset, name)
        self._layout: RaggedLayout = self._snapshot.ragged[name]

    @property
    def shape(self) -> tuple[Any, ...]:
        """``(rows, None, *tail)``: ``None`` is the axis whose length varies."""
        return (self._snapshot.rows, None, *self._spec.shape)

    @property
    def ndim(self) -> int:
        """``2 + len(tail)``."""
        return 2 + len(self._spec.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the visible rows' values."""
        return self._layout.elements() * self._spec.row_bytes

    @property
    def stored_bytes(self) -> int:
        """Bytes the visible rows' values take on disk: :attr:`nbytes`, or the frames of
        their blocks for a compressed field (see :attr:`Column.stored_bytes`)."""
        if isinstance(self._layout, CompressedLayout):
            return self._layout.stored_bytes()
        return self.nbytes

    @property
    def lengths(self) -> np.ndarray:
        """The length of every visible row (int64), in row order."""
        if self._dataset._closed:
            raise self._dataset._closed_error()
        try:
            return self._layout.lengths()
        except Exception as exc:
            self._raise_typed(exc, slice(None))

    def length_stats(self) -> LengthStats | None:
        """The number, total (elements), shortest, median, longest and mean length of the
        visible rows, exact; None when there are no rows.

        Reads the offsets files only, :data:`LENGTH_BLOCK_ROWS` rows at a time (never the
        values, never every length at once: see :mod:`memshard.lengthstats`), so memory stays
        bounded for any number of rows.

        Raises:
            ShardDataError: an offsets file that does not start at 0, decreases, or ends past
                its values (a damaged file, named).
            DatasetClosedError: the dataset was closed.
        """
        if self._dataset._closed:
            raise self._dataset._closed_error()
        layout = self._layout
        try:
            return length_stats(lambda: layout.length_blocks(LENGTH_BLOCK_ROWS))
        except Exception as exc:
            self._raise_typed(exc, slice(None))

    def __repr__(self) -> str:
        return f"<memshard.RaggedColumn {self.name!r} shape={self.shape} dtype={self.dtype}>"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> NoReturn:
        raise RaggedArrayError(
            f"{self._where()}: a ragged field's rows differ in length, so it is no array; "
            "use column[:].to_padded() for a padded array or column[:].values for the packed "
            "elements"
        )

    def __getitem__(self, key: Any) -> Any:
        if type(key) is int and 0 <= key < self._layout.rows and not self._dataset._closed:
            try:  # the one-row fast path; every other key goes through Column.__getitem__
                return self._layout.row(key)
            except Exception as exc:
                self._raise_typed(exc, key)
        return super().__getitem__(key)

    def _read(self, key: Any) -> Any:
        layout = self._layout
        rows = layout.rows
        if type(key) is int:
            return layout.row(_in_range(checked_int(key), rows))
        if type(key) is slice:
            return self._rows(slice_rows(key, rows))
        selection = plan(key, (rows,))
        after = selection.key
        if not after or (len(after) == 1 and _is_everything(after[0])):
            return self._rows(selection.rows)
        if len(after) == 1 and type(after[0]) is int and isinstance(selection.rows, SliceRows):
            return layout.row(selection.rows.start)
        if len(after) == 1 and isinstance(after[0], np.ndarray) and after[0].ndim == 1:
            return layout.gather(_row_indices(selection.rows)[after[0]])
        raise IndexTypeError(
            f"{key!r:.80} selects within rows; a ragged field takes an integer, a slice, or a "
            "1-d integer array, list or boolean mask of rows"
        )

    def _rows(self, rows: SliceRows | IndexRows) -> Ragged:
        layout = self._layout
        if isinstance(rows, IndexRows):
            return layout.gather(rows.indices)
        if rows.step == 1:
            return layout.run(rows.start, rows.start + rows.count)
        return layout.gather(_row_indices(rows))

    def _refusal(self, key: Any) -> InvalidIndexError | None:
        try:
            plan(key, (self._snapshot.rows,))
        except InvalidIndexError as error:
            return error
        return None


class CompressedColumn(Column):
    """A compressed fixed field (see :mod:`memshard.compressedread`): indexed exactly as a
    :class:`Column`, but every read is a new array (no zero-copy view of compressed rows),
    each block it touches decompressed once."""

    __slots__ = ("_layout",)

    def __init__(self, dataset: Dataset, name: str) -> None:
        super().__init__(dataset, name)
        self._layout: CompressedLayout = self._snapshot.compressed[name]

    @property
    def stored_bytes(self) -> int:
        """Bytes the visible rows take compressed (the frames of their blocks)."""
        return self._layout.stored_bytes()

    def __repr__(self) -> str:
        codec = self._spec.codec
        assert codec is not None
        return (
            f"<memshard.Column {self.name!r} shape={self.shape} dtype={self.dtype} "
            f"codec={codec.name!r}>"
        )

    def _read(self, key: Any) -> Any:
        layout = self._layout
        rows = self._snapshot.rows
        if type(key) is int:
            return layout.fixed_row(_in_range(checked_int(key), rows))
        selection = plan(key, (rows, *self._spec.shape))
        read = layout.take(_row_indices(selection.rows), None, None)
        return read[selection.key] if selection.key else read

    def _take(self, indices: np.ndarray, out: Any, threads: int | None) -> np.ndarray:
        if callable(out):
            raise OutArrayError(
                f"{self._where()}: out must be a numpy array for a fixed field, got "
                f"{type(out).__name__}"
            )
        if out is not None:
            self._check_out(out, indices.size)
        return self._layout.take(indices, out, threads)


def _row_indices(rows: SliceRows | IndexRows) -> np.ndarray:
    if isinstance(rows, IndexRows):
        return rows.indices
    return np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)[: rows.count]


def _is_everything(item: Any) -> bool:
    return isinstance(item, slice) and item == slice(None)


def _in_range(row: int, rows: int) -> int:
    """Row ``row`` of ``rows`` (a negative one counts from the end).

    Raises:
        InvalidIndexError: with numpy's message, if there is no such row.
    """
    if not -rows <= row < rows:
        raise InvalidIndexError(f"index {row} is out of bounds for axis 0 with size {rows}")
    return row + rows if row < 0 else row


def _piece_rows(piece: Piece) -> np.ndarray:
    """The rows of a segment that ``piece`` reads, as an array."""
    if isinstance(piece.rows, slice):
        return np.arange(piece.rows.start, piece.rows.stop, piece.rows.step or 1)
    return np.atleast_1d(piece.rows)


def _restore_column(root: str, uuid: str, generation: int, rows: int, name: str) -> Column:
    return _restore(root, uuid, generation, rows).column(name)
