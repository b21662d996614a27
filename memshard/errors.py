"""Typed errors raised by memshard.

Every error is a :class:`MemshardError`. Leaves also inherit the builtin exception a caller
would naturally catch (``IndexError``, ``ValueError``, ``FileNotFoundError``, ...), so ordinary
``except`` clauses keep working. Messages name the dataset path, field, shard file, the value
received and what was allowed.
"""

from __future__ import annotations


class MemshardError(Exception):
    """Base class of every error memshard raises on purpose."""


class InvalidDatasetError(MemshardError, ValueError):
    """The dataset on disk breaks the format: a bad manifest, header or shard file."""


class ManifestError(InvalidDatasetError):
    """``manifest.json`` is missing a key, has a wrong value, or is not strict JSON."""


class ManifestTooLargeError(ManifestError):
    """A manifest or part record larger than ``MAX_MANIFEST_BYTES``: refused by readers, and
    never published by writers."""


class UnsupportedVersionError(ManifestError):
    """The manifest declares a format major version this library cannot read."""


class ShardHeaderError(InvalidDatasetError):
    """A shard's ``.npy`` header is malformed or disagrees with the manifest."""


class ShardSizeError(InvalidDatasetError):
    """A shard file is shorter (truncated) or longer than the manifest says."""


class UnsafePathError(InvalidDatasetError):
    """A path in the manifest escapes the dataset directory or is a symlink."""


class DatasetNotFoundError(MemshardError, FileNotFoundError):
    """No dataset (no ``manifest.json``) at the given path."""


class ShardMissingError(InvalidDatasetError, FileNotFoundError):
    """A shard file named by the manifest does not exist or is not a regular file."""


class DatasetExistsError(MemshardError, FileExistsError):
    """``create`` was asked to write where something already exists."""


class DatasetLockedError(MemshardError, BlockingIOError):
    """Another appender holds the dataset's write lock."""


class DatasetChangedError(MemshardError, RuntimeError):
    """The dataset was replaced or rolled back under an open reader."""


class SchemaError(MemshardError, ValueError):
    """A field definition, label vocabulary or attribute given to ``create`` is invalid."""


class UnsupportedDtypeError(SchemaError, TypeError):
    """A dtype that memshard cannot store: object, structured, big-endian, ..."""


class BatchError(MemshardError, ValueError):
    """A row or batch given to the appender does not match the dataset's fields."""


class ArrayConversionError(BatchError, RuntimeError):
    """A value's own conversion to an array failed, e.g. a torch tensor that requires grad
    (``RuntimeError`` from torch: detach it first)."""


class CastError(BatchError, TypeError):
    """A value cannot be stored in a field without losing information."""


class LabelError(BatchError):
    """A label value lies outside its field's vocabulary."""


class RaggedArrayError(MemshardError, TypeError):
    """A ragged batch (:class:`memshard.ragged.Ragged`) used where a rectangular array is
    needed, e.g. ``np.asarray(ragged)``: its rows have different lengths. Use
    ``ragged.to_padded()`` for a padded array or ``ragged.values`` for the packed elements."""


class FieldNotFoundError(MemshardError, KeyError):
    """A field name that the dataset does not have."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; show the message as written.
        return str(self.args[0]) if self.args else ""


class InvalidIndexError(MemshardError, IndexError):
    """An index that numpy would also reject: out of range, wrong type, bad shape.

    Where numpy rejects a key with another builtin than ``IndexError``, the error is one of
    the subclasses below, which inherit that builtin too.
    """


class IndexOverflowError(InvalidIndexError, OverflowError):
    """An integer index outside the int64 range numpy indexes with, e.g. ``2**63``: out of
    range of every column (``IndexError``), and what numpy raises for it (``OverflowError``)."""


class IndexValueError(InvalidIndexError, ValueError):
    """A key numpy refuses with ``ValueError``: a slice with step 0."""


class IndexTypeError(InvalidIndexError, TypeError):
    """A key numpy refuses with ``TypeError``: a slice whose start, stop or step is not an
    integer or None."""


class OutArrayError(MemshardError, ValueError):
    """An ``out=`` array of the wrong shape, dtype or layout."""


class AppenderClosedError(MemshardError, RuntimeError):
    """The appender was closed, failed permanently, or is used from another process."""


class WriteFailedError(MemshardError, OSError):
    """Writing or syncing a dataset failed; the appender stops, committed rows stay valid."""


class TransformError(MemshardError, TypeError):
    """A user transform returned something other than a mapping of field -> tensor."""


class SamplerError(MemshardError, ValueError):
    """A sampler was given an invalid world size, rank, window or seed."""


class ArgumentError(MemshardError, ValueError):
    """Arguments that contradict each other."""


class ShardDataError(InvalidDatasetError):
    """A shard's data breaks the format: a bool element stored as a byte other than 00 or 01."""


class FieldTooLargeError(MemshardError, ValueError):
    """A field whose sample is larger than a numpy array can address (more than
    ``2**63 - 1`` bytes), so no row of it, not even an empty selection, can be read."""


class ChecksumError(InvalidDatasetError):
    """The data of a sealed shard does not match the checksum the manifest records."""


class ShardTableError(InvalidDatasetError):
    """The shard table (``shard_table.npy``, format 2) is missing, damaged, or disagrees with
    the manifest."""


class UpgradeError(MemshardError, ValueError):
    """A dataset cannot be upgraded to the format version this library writes."""


class SourceError(MemshardError, ValueError):
    """A conversion source is missing, unreadable, or holds nothing memshard can take."""


class UnsupportedSourceError(SourceError):
    """A source array of a kind memshard cannot store: compound, string, variable-length,
    object, reference or scalar data."""


class ImageDecodeError(SourceError):
    """An image of an image folder cannot be decoded: damaged, truncated, not an image, or
    gone; the message names the file."""


class ConversionStateError(MemshardError, RuntimeError):
    """An interrupted conversion is in the way, or does not match the one asked to resume."""


class ConversionFailedError(MemshardError, RuntimeError):
    """A conversion worker died; the rows committed so far are kept for a resume."""


class MissingDependencyError(MemshardError, ImportError):
    """An optional dependency (h5py, zarr, torch, tqdm) that this operation needs is missing."""


class PartError(MemshardError, ValueError):
    """A part cannot be committed: its record is damaged, belongs to another dataset or
    another schema, or the parts given contradict each other (the same part twice, keys that
    cannot be ordered)."""


class PartIncompleteError(PartError):
    """A part has no record: it is still being written, or its writer failed or was killed.
    Such a part is never committed; write it again and discard the remains."""


class PartCommittedError(PartError):
    """A part was committed to the dataset already; committing it again would repeat rows."""


class ReadFailedError(MemshardError, OSError):
    """Reading a dataset failed for a reason outside it: too many open files, no permission,
    an I/O error. The dataset may be fine; the process or the system is not."""


class MappingLimitError(ReadFailedError):
    """The kernel refused to map a shard (``ENOMEM``): the process has used up its memory
    areas (``vm.max_map_count``) or its address space. Reads through a :class:`Column` never
    raise it (they copy rows instead); :func:`memshard.mappings.map_segment` does."""


class CommitNotDurableError(WriteFailedError):
    """A commit became visible (the manifest was renamed into place) but the ``fsync`` that
    makes the rename durable failed: readers see the new rows, a power cut may lose them. The
    appender stops; do not append those rows again."""


class DatasetClosedError(MemshardError, ValueError):
    """A :class:`~memshard.Dataset`, or a :class:`~memshard.Column` of it, read after
    :meth:`~memshard.Dataset.close` (as a closed file refuses reads with ``ValueError``)."""


class MetadataError(SchemaError):
    """An edit of a dataset's attributes or label vocabularies that would make stored rows
    invalid or break the format: a vocabulary that no longer covers a stored value, a
    vocabulary for a field that is not an integer field, attributes that are not JSON."""


class MemshardWarning(UserWarning):
    """Base class of every warning memshard issues."""


class SmallShardWarning(MemshardWarning):
    """A conversion would write more than one shard, each holding less than
    :data:`memshard.convert.MIN_SHARD_BYTES` of data: many files, slow to write and list."""


class BlockError(InvalidDatasetError):
    """A block of a compressed field that is not what its offsets say: a damaged frame, one
    that claims or inflates to another size than its rows' (a decompression bomb), or one that
    ends early."""


class BuildError(MemshardError, RuntimeError):
    """:func:`memshard.build` failed: a worker process died (killed, out of memory) or a Dask
    worker was lost too often. The inputs committed so far are kept: the same call with
    ``resume=True`` continues."""


class BuildInputError(BuildError):
    """The build's function failed on one input (``on_error="raise"``). The message names
    the input (its index and ``repr``) and holds the traceback from the process that ran it;
    nothing of that input was committed.

    Attributes:
        index: the input's index in ``inputs``.
        input_repr: the input's ``repr`` (shortened).
        traceback: the traceback text, from the process that ran the function.
    """

    def __init__(
        self, message: str, *, index: int = -1, input_repr: str = "", traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.index = index
        self.input_repr = input_repr
        self.traceback = traceback


class BuildRowError(BuildInputError, BatchError):
    """What the build's function returned for one input does not match the fields: a row of
    another shape or dtype, a missing or extra field, a mapping that is neither one row nor a
    batch, or no mapping at all. The message names the input and the field."""


class BuildFieldsError(BuildError, ValueError):
    """The fields of a build cannot be inferred from the function's first output: it is a
    mapping that could be one row or a batch, its rows disagree, or no input gave a row.
    Declare them with ``fields=``."""


class BuildPicklingError(BuildError, TypeError):
    """The build's function, or an input, cannot be sent to a worker process: it cannot be
    pickled (a lambda, a local function, an open file), or a worker cannot load it (a
    function defined in an interactive session). The message names what."""


class BuildStateError(BuildError):
    """An interrupted build is in the way (without ``resume``), or it is not the build asked
    to resume: another function, other inputs, other fields or another part size."""
