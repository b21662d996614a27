"""Writing a dataset: :func:`create`, :func:`append` and the :class:`Appender`.

The appender writes rows with ordinary file writes (never through a writable mapping, which
turns a full disk into SIGBUS), rolls to a new shard when one reaches ``shard_rows`` rows, and
publishes rows with :meth:`Appender.commit` following the protocol in :mod:`memshard.durable`.
One appender per dataset at a time: it holds an exclusive ``flock`` on ``.memshard.lock``,
released by the kernel if the process dies.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid as uuid_module
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import manifest as manifest_io
from .batch import validated_batch
from .durable import fsync_directory, write_file_durably
from .errors import (
    AppenderClosedError,
    ArgumentError,
    ChecksumError,
    CommitNotDurableError,
    DatasetChangedError,
    DatasetExistsError,
    DatasetLockedError,
    DatasetNotFoundError,
    ManifestError,
    MemshardError,
    ShardMissingError,
    UnsafePathError,
    UnsupportedVersionError,
    UpgradeError,
    WriteFailedError,
)
from .handles import FileLock
from .layout import LOCK_NAME, MANIFEST_NAME, MANIFEST_TEMP_PREFIX, SHARDS_DIR, shard_file_name
from .manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FieldSpec,
    Manifest,
    Shard,
    TableRef,
    shard_files,
)
from .mappings import SegmentFile, check_shard_file
from .publish import publish_manifest
from .schema import DEFAULT_SHARD_BYTES, field_specs, json_attrs, label_vocabularies, rows_per_shard
from .shardsequence import ClosedOnExit, OpenShard, Rows, ShardSequence
from .shardtable import TABLE_NAME, Shards, TableWriter, empty_table, stem_of
from .smallfile import read_small_file

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: How often :func:`append` retries when the dataset's directory is replaced while it takes
#: the lock (a ``create(overwrite=True)`` of the same path) before giving up.
LOCK_ATTEMPTS = 8


def create(
    path: str | os.PathLike[str],
    fields: Mapping[str, Any],
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    labels: Mapping[str, Iterable[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Appender:
    """Create an empty dataset at ``path`` and return an :class:`Appender` for it.

    The directory appears atomically, already holding a valid empty manifest: it is built
    under a temporary name next to ``path`` and renamed into place.

    Used as ``with create(...) as w:``, the block either leaves what it committed or nothing:
    an exception raised in it before any commit removes the new dataset again (the rows
    appended are lost, and running the block again does not meet ``DatasetExistsError``);
    after an explicit :meth:`Appender.commit`, the dataset stays with the committed rows,
    as :func:`append` leaves it. (An appender that failed on a write, and so released the
    dataset, leaves it empty.)

    Parameters:
        fields: ``{name: (dtype, sample_shape)}``, e.g. ``{"x": ("float32", (3, 64, 64))}``;
            a sample shape ``(None, *tail)`` declares a ragged field, and a third member
            ``{"codec": "zstd", ...}`` a compressed one (see
            :func:`memshard.schema.field_specs`).
        shard_bytes: a shard rolls over once its rows reach this many bytes (all fields,
            compressed ones counted uncompressed).
        labels: ``{field: [label, ...]}`` vocabularies for integer label fields.
        attrs: JSON-representable user attributes stored in the manifest.
        overwrite: replace an existing memshard dataset at ``path`` (never anything else).

    Raises:
        SchemaError, UnsupportedDtypeError: bad ``fields``, ``labels``, ``attrs`` or
            ``shard_bytes``.
        DatasetExistsError: ``path`` exists (and ``overwrite`` is false, or it is not a
            memshard dataset).
        DatasetLockedError: ``overwrite`` of a dataset that an appender holds.
        ManifestError, UnsafePathError: ``overwrite`` of a path whose ``manifest.json`` is a
            FIFO, socket, device or symbolic link (see :func:`is_memshard_dataset`).
        WriteFailedError: the file system refused (read-only, full, I/O error); nothing is
            left behind.
    """
    root = os.path.abspath(os.fspath(path))
    specs = field_specs(fields)
    manifest = Manifest(
        format=FORMAT_NAME,
        version=FORMAT_VERSION,
        uuid=uuid_module.uuid4().hex,
        generation=0,
        rows=0,
        shard_rows=rows_per_shard(specs, shard_bytes),
        fields=specs,
        labels=label_vocabularies(labels, specs),
        attrs=json_attrs(attrs),
        shard_bytes=shard_bytes if any(spec.ragged for spec in specs.values()) else None,
        table=TableRef(records=0, rows=0, chain=None),
        shards=(),
    )
    if os.path.lexists(root) and not overwrite:
        raise DatasetExistsError(
            f"{root}: already exists (pass overwrite=True to replace a dataset)"
        )
    manifest_io.dumps_checked(manifest, where=root)
    _remove_abandoned_staging(root)
    staging = f"{root}{STAGING_INFIX}{manifest.uuid[:12]}"
    lock = None
    try:
        os.makedirs(os.path.join(staging, SHARDS_DIR))
        lock = _lock(staging)
        write_file_durably(os.path.join(staging, TABLE_NAME), empty_table(specs))
        publish_manifest(staging, manifest)
        fsync_directory(os.path.join(staging, SHARDS_DIR))
        move_into_place(staging, root, overwrite)
    except BaseException as exc:
        if lock is not None:
            lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, MemshardError):
            raise WriteFailedError(
                exc.errno, f"{root}: cannot create the dataset ({exc.strerror or exc})"
            ) from exc
        raise
    appender = Appender(root, manifest, lock)
    appender._created = True
    return appender


#: What a writer puts between a dataset's path and a suffix of its own to name the directory
#: it builds the dataset in before renaming it into place.
STAGING_INFIX = ".memshard-tmp-"


def _remove_abandoned_staging(root: str) -> None:
    """Delete what an interrupted ``create`` of ``root`` left: ``root.memshard-tmp-*``
    directories that hold a manifest and whose lock no process holds.

    A writer takes its staging lock before it writes the manifest and keeps it until the
    directory is renamed into place, so a directory with a manifest and a free lock is
    abandoned; one without a manifest may be a ``create`` that has not locked it yet, and is
    left alone.
    """
    parent, prefix = os.path.dirname(root), os.path.basename(root) + STAGING_INFIX
    try:
        entries = [entry for entry in os.listdir(parent) if entry.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        staging = os.path.join(parent, entry)
        if os.path.islink(staging) or not os.path.isfile(os.path.join(staging, MANIFEST_NAME)):
            continue
        try:
            lock = FileLock.acquire(os.path.join(staging, LOCK_NAME), create=False)
        except (OSError, MemshardError):
            continue  # renamed or removed meanwhile, or not ours to judge
        if lock is None:
            continue  # held by a running writer
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            lock.release()


def move_into_place(staging: str, root: str, overwrite: bool) -> None:
    """Rename the finished dataset directory ``staging`` to ``root``, atomically.

    The caller holds ``staging``'s lock, and keeps it until this returns. With
    ``overwrite``, an existing memshard dataset at ``root`` (and nothing else) is replaced:
    its lock is taken first and held until it is gone, so an appender of the old dataset
    either holds it now (and the replacement fails) or fails itself with a typed error
    (:func:`append` checks that the lock it took is still the dataset's, and every commit
    checks it again); the two never both succeed.

    Raises:
        DatasetExistsError: ``root`` exists and may not be replaced.
        DatasetLockedError: the dataset to replace is being appended to.
    """
    if overwrite and os.path.lexists(root):
        if os.path.islink(root) or not is_memshard_dataset(root):
            raise DatasetExistsError(
                f"{root}: exists and is not a memshard dataset; not replacing it"
            )
        old = _lock(root)  # refuses while another appender writes to the old dataset
        try:
            _swap(staging, root, f"{staging}-old")
        finally:
            old.release()
    else:
        try:
            os.rename(staging, root)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise DatasetExistsError(f"{root}: already exists") from None
            raise
        fsync_directory(os.path.dirname(root))


def _swap(staging: str, root: str, trash: str) -> None:
    """Put ``staging`` where ``root`` is, then delete the old ``root`` (by then at ``trash``)."""
    os.rename(root, trash)
    try:
        os.rename(staging, root)
    except BaseException:
        os.rename(trash, root)
        raise
    fsync_directory(os.path.dirname(root))
    shutil.rmtree(trash, ignore_errors=True)


def is_memshard_dataset(root: str) -> bool:
    """Whether ``root`` holds a manifest declaring the memshard format (valid or damaged).

    Raises:
        ManifestError, UnsafePathError, ReadFailedError: ``manifest.json`` is a FIFO, socket,
            device or symbolic link, is too large, or cannot be read (see
            :func:`memshard.smallfile.read_small_file`): nothing to judge, so nothing to replace.
    """
    where = os.path.join(root, MANIFEST_NAME)
    try:
        data = read_small_file(
            where, what="the manifest", limit=manifest_io.MAX_MANIFEST_BYTES, error=ManifestError
        )
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False
    try:
        content = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(content, dict) and content.get("format") == FORMAT_NAME


def append(path: str | os.PathLike[str]) -> Appender:
    """Open the existing dataset at ``path`` to append more rows.

    Leftovers of an interrupted appender are cleaned first: temporary manifests and shard files
    the manifest does not name are removed, and an unsealed last shard is cut back to its
    committed rows and continued.

    Raises:
        DatasetNotFoundError: no dataset at ``path``.
        DatasetLockedError: another appender holds the dataset.
        UnsupportedVersionError: the dataset was written in a newer minor format version,
            which this library reads but must not rewrite.
        ManifestError, ShardHeaderError, ShardSizeError, ShardMissingError, UnsafePathError:
            the dataset is damaged.
        ChecksumError: the committed rows of the unsealed last shard do not match their
            ``prefix_checksum``.
        DatasetChangedError: the directory was replaced again and again while taking its lock.
    """
    root = os.path.abspath(os.fspath(path))
    lock = _lock_current(root)
    try:
        manifest = manifest_io.load(os.path.join(root, MANIFEST_NAME))
        if manifest_io.is_newer_version(manifest.version):
            raise UnsupportedVersionError(
                f"{root}: written in format version {manifest.version}; this library writes "
                f"{FORMAT_VERSION} and must not rewrite a newer manifest"
            )
        _check_shards_directory(root)
        shards = Shards.of(root, manifest)
        _check_upgradable(root, manifest)
        _remove_leftovers(root, manifest, shards)
        return Appender(root, manifest, lock, shards)
    except BaseException:
        lock.release()
        raise


def upgrade(path: str | os.PathLike[str]) -> str | None:
    """Upgrade the dataset at ``path`` to the format version this library writes, in place.

    A dataset of format 1.x gets its shard table: one commit writes the records of every
    sealed shard to ``shard_table.npy``, then publishes a format 2.1 manifest (a crash at any
    point leaves the old manifest or the new one, both complete). No shard file is touched,
    and an unsealed last shard stays unsealed. Appending to an old dataset upgrades it the
    same way at its first commit.

    Returns:
        The version the dataset had, or None if it was already of this version.

    Raises:
        DatasetNotFoundError, DatasetLockedError, UnsupportedVersionError: as :func:`append`.
        UpgradeError: a shard's files are not named so that a table can record them.
    """
    appender = append(path)
    try:
        version = appender.manifest.version
        if version == FORMAT_VERSION:
            return None
        appender.commit()
        return version
    finally:
        appender.abort()  # nothing was appended: the unsealed shard stays as it is


def _lock_current(root: str) -> FileLock:
    """Lock the dataset that is at ``root`` now.

    The lock file is found by path, so the directory may be replaced (``create`` with
    ``overwrite``) between opening the file and locking it; then the lock taken is the old
    dataset's, and it is dropped and taken again on the new one.
    """
    for _ in range(LOCK_ATTEMPTS):
        if not os.path.isfile(os.path.join(root, MANIFEST_NAME)):
            raise DatasetNotFoundError(f"{root}: no memshard dataset here (no manifest.json)")
        try:
            lock = _lock(root)
        except WriteFailedError as exc:
            if exc.errno == errno.ENOENT:
                continue  # the directory is being replaced
            raise
        if lock.is_at(os.path.join(root, LOCK_NAME)):
            return lock
        lock.release()
    raise DatasetChangedError(
        f"{root}: the dataset was replaced {LOCK_ATTEMPTS} times while taking its lock"
    )


def _lock(root: str) -> FileLock:
    """Take the write lock of the dataset directory ``root``.

    Raises:
        DatasetLockedError: another appender holds it.
        UnsafePathError: the lock file is not a regular file.
        WriteFailedError: it cannot be opened or created.
    """
    lock_path = os.path.join(root, LOCK_NAME)
    try:
        lock = FileLock.acquire(lock_path)
    except OSError as exc:
        raise WriteFailedError(
            exc.errno, f"{root}: cannot open the write lock {lock_path} ({exc.strerror})"
        ) from None
    if lock is None:
        raise DatasetLockedError(
            f"{root}: another appender is writing to this dataset (lock {lock_path} is held)"
        )
    return lock


def _check_shards_directory(root: str) -> None:
    """``shards/`` must be a real directory: never follow a link out of the dataset."""
    where = os.path.join(root, SHARDS_DIR)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        raise ShardMissingError(f"{where}: the shard directory is missing") from None
    except OSError as exc:
        raise UnsafePathError(f"{where}: not a plain directory ({exc.strerror})") from None
    os.close(fd)


def _check_upgradable(root: str, manifest: Manifest) -> None:
    """A format 1 dataset is upgraded by the next commit, which moves its sealed shards into
    the shard table; every one of them must fit a table record.

    Raises:
        UpgradeError: naming the first shard whose file names do not fit.
    """
    if manifest.table is not None:
        return
    for shard in manifest.shards:
        if shard.sealed and stem_of(shard) is None:
            paths = sorted(file.path for file in shard.files.values())
            raise UpgradeError(
                f"{root}: the shard at row {shard.row_offset} has files {paths}, not named "
                f"shards/<stem>.<field>.npy with one stem, so this library cannot upgrade the "
                f"dataset to format {FORMAT_VERSION} to append to it (it can still read it)"
            )


def _remove_leftovers(root: str, manifest: Manifest, shards: Shards) -> None:
    named = {path.split("/", 1)[1] for path in shards.file_paths()}
    for entry in os.listdir(root):
        if entry.startswith(MANIFEST_TEMP_PREFIX):
            os.unlink(os.path.join(root, entry))
    # Only this dataset's own shard names (TOKEN-...): files of parts (p-...) belong to part
    # writers that may still be running, and only discard_parts may remove them.
    own = manifest.uuid[:12] + "-"
    shards_dir = os.path.join(root, SHARDS_DIR)
    for entry in os.listdir(shards_dir):
        if entry.startswith(own) and entry.endswith(".npy") and entry not in named:
            os.unlink(os.path.join(shards_dir, entry))


class Appender(ClosedOnExit):
    """Appends rows to one dataset. Obtain from :func:`create` or :func:`append`.

    Rows become visible to readers, and durable, at :meth:`commit`. :meth:`close` commits and
    seals the last shard. Used as a context manager, a clean exit closes; an exception
    discards the rows appended since the last commit (the dataset stays as last committed).

    An appender belongs to the process that opened it; using it in a forked child raises
    :class:`AppenderClosedError`, and a forked child never holds the dataset's lock.

    If a write, ``fsync`` or commit fails, the appender fails for good and at once releases
    the dataset (its lock and every descriptor), so that a new :func:`append` can continue
    from the last commit; its error says what failed.

    It keeps at most :data:`memshard.shardwriter.MAX_OPEN_SHARD_FILES` shard files open,
    however many fields the dataset has, plus its lock.
    """

    def __init__(
        self, root: str, manifest: Manifest, lock: FileLock, shards: Shards | None = None
    ) -> None:
        self.path = root
        self._lock: FileLock | None = lock
        self._pid = os.getpid()
        self._committed = manifest
        self._committed_shards = shards
        self._specs: dict[str, FieldSpec] = dict(manifest.fields)
        self._table = TableWriter(root, manifest)
        # A format 1 dataset's sealed shards, which the next commit moves into the table.
        self._upgrade = (
            []
            if manifest.table is not None
            else [shard for shard in manifest.shards if shard.sealed]
        )
        self._pending: list[Shard] = []  # sealed or adopted since the last commit
        self._adopted_files = False
        self._failure: str | None = None
        token = manifest.uuid[:12]
        self._shards = ShardSequence(
            root,
            self._specs,
            manifest.shard_rows,
            lambda index, name: shard_file_name(token, index, name),
            first_row=manifest.rows,
            next_index=self._sealed_committed_count + len(manifest.shards) - len(self._upgrade),
            shard_bytes=manifest.shard_bytes,
        )
        self._created = False  # by create(), which leaves nothing if nothing is committed
        self._metadata: dict[str, Any] = {}  # labels/attrs for the next commit (memshard.edit)
        if manifest.shards and not manifest.shards[-1].sealed:
            self._continue(manifest.shards[-1], self._sealed_committed_count)

    @property
    def _sealed_committed_count(self) -> int:
        """Sealed shards of the last commit: the table's records, and for a format 1 dataset
        not yet upgraded, the sealed shards its manifest lists."""
        return self._table.records + len(self._upgrade)

    # -- public API --------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Rows appended so far, committed or not."""
        return self._shards.rows

    @property
    def committed_rows(self) -> int:
        """Rows that the last commit made durable and visible."""
        return self._committed.rows

    @property
    def manifest(self) -> Manifest:
        """The manifest of the last commit."""
        return self._committed

    @property
    def shards(self) -> Shards:
        """Every shard of the last commit, in row order."""
        if self._committed_shards is None:
            self._committed_shards = Shards.of(self.path, self._committed)
        return self._committed_shards

    @property
    def fields(self) -> dict[str, FieldSpec]:
        """The dataset's field specs."""
        return dict(self._specs)

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row: ``{field: value}`` with every field, each of the sample shape.

        Raises:
            BatchError: a missing or extra field, or a value of the wrong shape.
            CastError: a value that the field's dtype cannot hold (e.g. a float in an int field).
            LabelError: a label outside the field's vocabulary.
        """
        self._check_usable()
        self._write(self._validated(row, single_row=True))

    def extend(self, batch: Mapping[str, Any]) -> None:
        """Append many rows: ``{field: array}`` stacked along axis 0, equal lengths.

        Every field is validated before a byte is written; see :meth:`append` for errors.
        """
        self._check_usable()
        self._write(self._validated(batch, single_row=False))

    def commit(self) -> None:
        """Make every row appended so far durable and visible to readers, atomically.

        Raises:
            WriteFailedError: a write or fsync failed; the appender is then unusable and the
                dataset stays as it was at the previous commit.
            CommitNotDurableError: the commit became visible, but the last ``fsync`` (of the
                directory, after the rename) failed, so it may not survive a power cut; the
                appender is unusable and :attr:`committed_rows` counts the new rows.
        """
        self._check_usable()
        self._guarded(self._commit)

    def commit_metadata(self, changes: Mapping[str, Any]) -> None:
        """Commit a manifest whose top-level ``attrs`` and ``labels`` are replaced by those in
        ``changes``, already validated (:func:`memshard.edit` checks them against the stored
        rows), together with every row appended so far. No row is touched.

        Raises:
            ArgumentError: ``changes`` names a key other than ``attrs`` and ``labels``.
            WriteFailedError: as for :meth:`commit`.
        """
        self._check_usable()
        _check_metadata_keys(self.path, changes)
        self._metadata = dict(changes)
        self._guarded(self._commit)

    def adopt_shards(
        self, shards: Sequence[Shard], *, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Commit sealed shards written elsewhere, after the rows appended so far.

        For writers that build whole shards in other processes (conversion workers, parts):
        each record must be sealed, start where the rows so far end, name files in ``shards/``
        holding its rows, and those files must already be durable (``fsync``-ed). The files
        are checked (size and header) before the commit that publishes them. The open shard,
        if any, is sealed first and committed with them, with every row appended so far.
        ``metadata``, validated as :meth:`commit_metadata` takes it, is committed with them.

        Raises:
            ArgumentError: a record does not follow on, or ``metadata`` names a key other
                than ``attrs`` and ``labels``.
            ShardMissingError, ShardSizeError, ShardHeaderError: a file does not match.
            WriteFailedError: the commit failed (see :meth:`commit`).
        """
        self._check_usable()
        _check_metadata_keys(self.path, metadata or {})
        self._guarded(self._seal_open_shard)  # the adopted shards follow it, so it is sealed
        self._collect_sealed()
        rows = self.rows
        for record in shards:
            if (
                not record.sealed
                or record.row_offset != rows
                or set(record.files) != set(self._specs)
            ):
                raise ArgumentError(
                    f"{self.path}: shard record at row {record.row_offset} does not follow row "
                    f"{rows}, is unsealed, or has other fields than {sorted(self._specs)}"
                )
            for name, field_file in record.files.items():
                files = shard_files(self._specs[name], field_file, record.rows, sealed=True)
                for stored, file, count in files:
                    part = SegmentFile(file=file, manifest_rows=count, sealed=True, rows=count)
                    check_shard_file(self.path, stored, part)
            rows += record.rows
        self._pending.extend(shards)
        self._shards.rows = rows
        self._shards.next_index = self._sealed_committed_count + len(self._pending)
        self._adopted_files = True
        self._metadata = dict(metadata or {})
        self._guarded(self._commit)

    def close(self) -> None:
        """Seal the last shard, commit, and release the dataset. Idempotent."""
        if self._lock is None:
            return
        try:
            if self._failure is None and os.getpid() == self._pid:
                self._guarded(self._seal_open_shard)
                self._guarded(self._commit)
        finally:
            self._release()

    def close_into(self, root: str, *, overwrite: bool) -> None:
        """Close, then rename the dataset (built under a staging name) to ``root`` before
        releasing its lock, so that no cleanup of abandoned staging directories can take it
        in between. See :func:`move_into_place` for ``overwrite`` and the errors."""
        self._check_usable()
        try:
            self._guarded(self._seal_open_shard)
            self._guarded(self._commit)
            move_into_place(self.path, root, overwrite)
        finally:
            self._release()

    def abort(self) -> None:
        """Release the dataset, discarding rows appended since the last commit."""
        if self._lock is not None:
            self._release()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        nothing_committed = self._created and self._committed.generation == 0
        if exc_type is not None and nothing_committed and self._lock is not None:
            self._remove_created()
            return
        super().__exit__(exc_type, exc, traceback)

    def _remove_created(self) -> None:
        """Delete the dataset that :func:`create` made for this appender and that nothing was
        ever committed to, under its lock, if the directory at :attr:`path` is still it."""
        lock, self._lock = self._lock, None  # held until the directory is gone
        try:
            self._release()
            ours = lock is not None and lock.is_at(os.path.join(self.path, LOCK_NAME))
            if ours and os.getpid() == self._pid:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if lock is not None:
                lock.release()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None and os.getpid() == self._pid:
            if self.rows != self._committed.rows:
                warnings.warn(
                    f"{self.path}: appender dropped without close(); "
                    f"{self.rows - self._committed.rows} uncommitted rows are lost",
                    ResourceWarning,
                    stacklevel=1,
                )
            self._release()

    def __repr__(self) -> str:
        return (
            f"<memshard.Appender {self.path!r} rows={self.rows} committed={self._committed.rows}>"
        )

    # -- validation --------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise AppenderClosedError(
                f"{self.path}: this appender belongs to process {self._pid}; open a new one with "
                "memshard.append() in this process"
            )
        if self._failure is not None:
            raise AppenderClosedError(
                f"{self.path}: the appender failed earlier ({self._failure}) and released "
                "the dataset; open a new one with memshard.append() to continue"
            )
        if self._lock is None:
            raise AppenderClosedError(f"{self.path}: the appender is closed")

    def _validated(self, values: Any, *, single_row: bool) -> dict[str, Rows]:
        return validated_batch(
            values, self._specs, self._committed.labels, where=self.path, single_row=single_row
        )

    # -- writing -----------------------------------------------------------------------------
    def _write(self, arrays: dict[str, Rows]) -> None:
        self._guarded(self._shards.write, arrays)

    def _continue(self, record: Shard, index: int) -> None:
        """Continue the unsealed last shard: cut it back to its committed rows."""
        for name, spec in self._specs.items():
            for stored, file, count in shard_files(
                spec, record.files[name], record.rows, sealed=False
            ):
                part = SegmentFile(file=file, manifest_rows=count, sealed=False, rows=count)
                check_shard_file(self.path, stored, part)
        opened = self._shards.continue_shard(index, record.row_offset, dict(record.files))
        try:
            _check_prefix_checksums(self.path, record, opened)
        except BaseException:
            self._shards.release()
            raise

    def _seal_open_shard(self) -> None:
        self._shards.seal_open()

    def _collect_sealed(self) -> None:
        """Queue the shards sealed so far for the next commit, after those queued before."""
        self._pending += [
            Shard(row_offset=shard.row_offset, rows=shard.rows, sealed=True, files=shard.files)
            for shard in self._shards.take_sealed()
        ]

    def _commit(self) -> None:
        self._shards.sync_sealed()
        open_files = self._shards.sync_open()
        if self._shards.created_files or self._adopted_files:
            fsync_directory(os.path.join(self.path, SHARDS_DIR))
        self._collect_sealed()
        previous = self._committed
        sealed = [*self._upgrade, *self._pending]
        tail = []
        if open_files is not None and self._shards.open is not None:
            shard = self._shards.open
            tail.append(
                Shard(row_offset=shard.row_offset, rows=shard.rows, sealed=False, files=open_files)
            )
        if (
            self.rows == previous.rows
            and len(tail) == len(previous.shards)
            and not sealed
            and not self._metadata
            and previous.table is not None  # a format 1 dataset is upgraded by any commit
        ):
            return
        records = self._table.prepare(sealed)
        manifest = previous.model_copy(
            update={
                "version": FORMAT_VERSION,  # a dataset of an older version is upgraded
                "generation": previous.generation + 1,
                "rows": self.rows,
                "table": records.ref,
                "shards": tuple(tail),
                **self._metadata,
            }
        )
        manifest = Manifest.model_validate(manifest.model_dump())
        manifest_io.dumps_checked(manifest, where=self.path)  # refused before anything is written
        self._check_still_ours()
        # The new records are durable before a manifest counts them (commit protocol).
        self._table.append_records(records)
        try:
            publish_manifest(self.path, manifest)
        except CommitNotDurableError:
            self._published(manifest)  # visible: never commit these rows twice
            raise
        self._published(manifest)

    def _check_still_ours(self) -> None:
        """The lock held must still be the one of the dataset at :attr:`path`: a directory
        replaced under the appender must never receive its manifest."""
        if self._lock is None or not self._lock.is_at(os.path.join(self.path, LOCK_NAME)):
            raise DatasetChangedError(
                f"{self.path}: the dataset directory was replaced or removed while this "
                "appender held it; nothing was committed to the new one"
            )

    def _published(self, manifest: Manifest) -> None:
        self._committed = manifest
        self._committed_shards = None
        self._upgrade = []
        self._pending = []
        self._shards.created_files = self._adopted_files = False
        self._metadata = {}

    def _guarded(self, operation: Any, *args: Any) -> Any:
        """Run a file operation; an OS error or a replaced directory makes the appender fail
        for good and release the dataset at once (a failed fsync must never be retried: the
        kernel may have dropped the dirty pages)."""
        try:
            return operation(*args)
        except (OSError, DatasetChangedError) as exc:
            self._failure = f"{type(exc).__name__}: {exc}"
            self._release()
            if isinstance(exc, MemshardError):
                raise
            raise WriteFailedError(
                exc.errno,
                f"{self.path}: write failed, nothing after the last commit was saved; the "
                f"appender released the dataset ({exc})",
            ) from exc

    def _release(self) -> None:
        self._shards.release()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _check_metadata_keys(root: str, changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - {"attrs", "labels"}
    if unknown:
        raise ArgumentError(f"{root}: only attrs and labels can be edited, not {unknown}")


def _check_prefix_checksums(root: str, record: Shard, opened: OpenShard) -> None:
    """The committed rows of a reopened shard must match the ``prefix_checksum`` recorded:
    sealing would otherwise record a checksum of damaged rows as if they were good.

    Raises:
        ChecksumError: naming the fields whose committed data does not match.
    """
    bad = [
        name
        for name, writer in opened.files.items()
        if record.files[name].prefix_checksum not in (None, writer.checksum.digest())
    ]
    bad += [
        f"{name} (offsets)"
        for name, writer in opened.offsets.items()
        if record.files[name].offsets_prefix_checksum != writer.checksum.digest()
    ]
    if bad:
        raise ChecksumError(
            f"{root}: fields {bad} of the unsealed shard: the committed data does not match "
            "its prefix_checksum (corrupt data)"
        )
