"""Names of the files in a dataset directory, and opening them without leaving it.

::

    DATASET/
      manifest.json                 the committed manifest (the only file a reader starts from)
      .memshard.lock                the appender's lock (readers never touch it)
      shards/TOKEN-NNNNNNNN.FIELD.npy   one file per field per shard
      parts/PART.json               a finished part, not yet committed (spec/PARTS.md)

Everything else in the directory (temporary manifests, stray shards of an interrupted
append) is ignored by readers.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from .errors import (
    DatasetNotFoundError,
    MemshardError,
    ReadFailedError,
    SchemaError,
    ShardMissingError,
    UnsafePathError,
)

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".memshard.lock"
SHARDS_DIR = "shards"
#: Prefix of the temporary file a commit writes before renaming it to ``manifest.json``.
MANIFEST_TEMP_PREFIX = ".manifest.json.tmp-"
#: The directory holding part records and part locks (spec/PARTS.md).
PARTS_DIR = "parts"
#: Suffix of the directory a conversion or a build to ``DST`` writes before renaming it to
#: ``DST`` (spec/CONVERSION.md).
STAGING_SUFFIX = ".memshard-partial"
#: Longest field name; names appear in file names, so they are short and portable.
MAX_FIELD_NAME = 64
FIELD_NAME_PATTERN = re.compile(rf"[A-Za-z_][A-Za-z0-9_\-]{{0,{MAX_FIELD_NAME - 1}}}")
#: A shard path in the manifest: one plain file name inside ``shards/``. No separators other
#: than the first ``/``, no ``..``, no backslash or NUL, no absolute path.
SHARD_PATH_PATTERN = re.compile(r"shards/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,250}\.npy")


def staging_path(dst: str | os.PathLike[str]) -> str:
    """Where a conversion or a build to ``dst`` writes the dataset before renaming it."""
    return os.path.abspath(os.fspath(dst)) + STAGING_SUFFIX


def not_found(root: str) -> DatasetNotFoundError:
    """The error for a ``root`` holding no ``manifest.json``, saying what is there instead."""
    if os.path.isdir(root):
        return DatasetNotFoundError(f"{root}: is not a memshard dataset (no manifest.json)")
    if os.path.lexists(root):
        return DatasetNotFoundError(f"{root}: is a file, not a memshard dataset directory")
    return DatasetNotFoundError(f"{root}: does not exist")


def check_field_name(name: object) -> str:
    """Return ``name`` if it is a valid field name, else raise :class:`SchemaError`."""
    if not isinstance(name, str) or not FIELD_NAME_PATTERN.fullmatch(name):
        raise SchemaError(
            f"field name {name!r} is invalid: use 1-{MAX_FIELD_NAME} characters from "
            f"[A-Za-z0-9_-], starting with a letter or underscore"
        )
    return name


def shard_file_name(token: str, index: int, field: str) -> str:
    """The manifest path of field ``field`` in shard ``index`` of the writer ``token``.

    Example:
        >>> shard_file_name("5f0c", 3, "x")
        'shards/5f0c-00000003.x.npy'
    """
    return f"{SHARDS_DIR}/{token}-{index:08d}.{field}.npy"


def is_safe_shard_path(path: str) -> bool:
    """Whether ``path`` is a shard path a manifest may contain."""
    return SHARD_PATH_PATTERN.fullmatch(path) is not None and ".." not in path


def open_shard(root: str, relpath: str) -> int:
    """Open a shard file read-only and return its descriptor, refusing any symlink.

    Neither ``shards/`` nor the file may be a symbolic link, and the file must be a regular
    file, so a manifest can never make a reader open something outside the dataset.

    Raises:
        ShardMissingError: the file does not exist or is not a regular file.
        UnsafePathError: ``shards/`` or the file is a symlink, or ``relpath`` is not a shard path.
    """
    if not is_safe_shard_path(relpath):
        raise UnsafePathError(f"{root}: {relpath!r} is not a shard path inside the dataset")
    directory, name = relpath.split("/")
    where = os.path.join(root, relpath)
    # O_NONBLOCK: opening a FIFO planted in place of a shard must not wait for a writer.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        dir_fd = os.open(os.path.join(root, directory), flags | os.O_DIRECTORY)
    except FileNotFoundError:
        raise ShardMissingError(f"{where}: shard directory is missing") from None
    except OSError as exc:
        raise _open_error(exc, where, f"{directory!r} is not a plain directory") from None
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ShardMissingError(f"{where}: shard file is missing") from None
    except OSError as exc:
        raise _open_error(exc, where, "the shard is a symbolic link") from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ShardMissingError(f"{where}: shard is not a regular file")
    return fd


def _open_error(exc: OSError, where: str, unsafe: str) -> MemshardError:
    """The typed error for a failed ``open`` of a shard path: a link or a non-directory in the
    way is unsafe, something that is not a file is missing, anything else (too many open
    files, no permission, an I/O error) is a failure to read."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePathError(f"{where}: {unsafe} ({exc.strerror})")
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EISDIR):
        return ShardMissingError(f"{where}: shard is not a regular file ({exc.strerror})")
    return ReadFailedError(exc.errno, f"{where}: cannot open shard ({exc.strerror})")
