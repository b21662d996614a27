"""Changing a dataset's metadata, its attributes and label vocabularies, after the fact:
:func:`edit`.

An edit never touches a row. It is a commit like any other (``spec/FORMAT.md`` section 7):
under the writer lock, a new manifest with the next generation is written to a temporary
file, synced and renamed over ``manifest.json``, so a crash leaves either the old metadata
or the new, and the manifest's own checksum stays right (a hand edit breaks it).

A vocabulary may change only so that every stored value keeps a label (spec section 6.3.8):

- renaming labels, or appending labels at the end, is always allowed (a writer never stored
  a value past the old vocabulary);
- removing a field's vocabulary is always allowed (its values become plain integers);
- a shorter vocabulary, or one for a field that had none, is allowed only if every stored
  value of the field lies in ``0 .. len(vocabulary) - 1``: the field's committed rows are
  read to check (:data:`SCAN_ROWS` at a time).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from . import interrupt
from .appender import Appender, append
from .errors import MetadataError
from .manifest import Manifest
from .reader import open as open_dataset
from .schema import json_attrs, label_vocabularies

#: Rows of a label field read at once when a vocabulary change needs the stored values.
SCAN_ROWS = 1 << 20

#: Passed for a field in ``labels``: remove the field's vocabulary.
REMOVE = None


def edit(
    path: str | os.PathLike[str],
    *,
    attrs: Mapping[str, Any] | None = None,
    labels: Mapping[str, Sequence[str] | None] | None = None,
) -> Manifest:
    """Replace the attributes and/or label vocabularies of the dataset at ``path``.

    Parameters:
        attrs: the new attributes, replacing the old ones whole (to change one key:
            ``{**ms.open(path).attrs, "key": value}``); ``None`` keeps them.
        labels: ``{field: vocabulary}`` for the fields to change; a vocabulary of ``None``
            removes the field's vocabulary; fields not named keep theirs.

    Returns:
        The manifest committed (its generation is one more than before).

    Raises:
        DatasetNotFoundError, DatasetLockedError: as :func:`memshard.append`.
        SchemaError: attributes that are not JSON, a vocabulary for a field that does not
            exist or is not an integer field, or labels that are not distinct strings.
        MetadataError: a vocabulary that would leave a stored value without a label (the
            message names the field, the value and the row).
        WriteFailedError: the commit failed; the dataset is as before.

    Example:
        >>> import memshard as ms, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ds")
        >>> with ms.create(path, {"y": ("int64", ())}, labels={"y": ["cat", "dog"]}) as w:
        ...     w.extend({"y": np.array([0, 1, 1])})
        >>> new = ms.edit(path, attrs={"source": "camera 2"}, labels={"y": ["cat", "dog", "fox"]})
        >>> new.generation, new.attrs
        (2, {'source': 'camera 2'})
        >>> ms.open(path).labels
        {'y': ('cat', 'dog', 'fox')}
    """
    appender = append(path)
    try:
        return edit_appender(appender, attrs=attrs, labels=labels)
    finally:
        appender.abort()  # the edit is committed; leave the last shard as it was (unsealed)


def edit_appender(
    appender: Appender,
    *,
    attrs: Mapping[str, Any] | None = None,
    labels: Mapping[str, Sequence[str] | None] | None = None,
) -> Manifest:
    """:func:`edit` through an open appender: the rows appended so far are committed first,
    then the new metadata in a commit of its own. See :func:`edit`."""
    manifest = appender.manifest
    changes: dict[str, Any] = {}
    if attrs is not None:
        changes["attrs"] = json_attrs(attrs)
    if labels is not None:
        changes["labels"] = _new_labels(manifest, labels)
    appender.commit()  # the stored values checked below include every row appended
    if "labels" in changes:
        _check_stored_values(appender, changes["labels"])
    appender.commit_metadata(changes)
    return appender.manifest


def _new_labels(
    manifest: Manifest, labels: Mapping[str, Sequence[str] | None]
) -> dict[str, tuple[str, ...]]:
    if not isinstance(labels, Mapping):
        raise MetadataError(
            f"labels must be a mapping of field -> labels or None, got {labels!r:.80}"
        )
    kept = {name: vocab for name, vocab in manifest.labels.items() if name not in labels}
    given = {name: vocab for name, vocab in labels.items() if vocab is not REMOVE}
    checked = label_vocabularies(given, manifest.fields)
    for name in labels:
        if name not in manifest.fields:
            raise MetadataError(
                f"labels: no field named {name!r}; fields are {list(manifest.fields)}"
            )
    # Keep the order of the fields, as create() writes it.
    new = {**kept, **checked}
    return {name: new[name] for name in manifest.fields if name in new}


def _check_stored_values(appender: Appender, labels: dict[str, tuple[str, ...]]) -> None:
    """Every committed value of a field whose vocabulary shrinks, or gets one, must have a
    label in the new vocabulary."""
    old = appender.manifest.labels
    to_scan = {
        name: len(vocabulary)
        for name, vocabulary in labels.items()
        if name not in old or len(vocabulary) < len(old[name])
    }
    if not to_scan or appender.manifest.rows == 0:
        return
    with open_dataset(appender.path) as dataset:
        for name, size in to_scan.items():
            _check_column(dataset, name, size)


def _check_column(dataset: Any, name: str, size: int) -> None:
    column = dataset[name]
    for start in range(0, len(column), SCAN_ROWS):
        interrupt.check()  # a long scan stops at Ctrl-C, changing nothing
        values = column[start : start + SCAN_ROWS]
        bad = (values < 0) | (values >= size)
        if bad.any():
            row = start + int(bad.argmax())
            raise MetadataError(
                f"{dataset.path}: field {name!r}: row {row} holds {int(values[row - start])}, "
                f"which a vocabulary of {size} labels does not cover (values must be 0 to "
                f"{size - 1}); nothing was changed"
            )
