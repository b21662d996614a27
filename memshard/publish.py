"""Publishing a manifest: steps 3 to 5 of the commit protocol (``spec/FORMAT.md``, "Commit
protocol"; the steps before are in :mod:`memshard.durable`)."""

from __future__ import annotations

import os

from .durable import fsync_directory, write_file_durably
from .errors import CommitNotDurableError
from .layout import MANIFEST_NAME, MANIFEST_TEMP_PREFIX
from .manifest import Manifest, dumps_checked


def publish_manifest(root: str, manifest: Manifest) -> None:
    """Steps 3-5 of a commit: atomically replace ``root/manifest.json`` with ``manifest``.

    Raises:
        ManifestTooLargeError: ``manifest`` is larger than readers accept; nothing is written.
        OSError: before the rename; ``manifest.json`` is unchanged.
        CommitNotDurableError: after it; ``manifest`` is visible but not known to be durable.
    """
    data = dumps_checked(manifest, where=root)
    temporary = os.path.join(root, f"{MANIFEST_TEMP_PREFIX}{os.getpid()}")
    write_file_durably(temporary, data)
    os.replace(temporary, os.path.join(root, MANIFEST_NAME))
    try:
        fsync_directory(root)
    except OSError as exc:
        raise CommitNotDurableError(
            exc.errno,
            f"{root}: generation {manifest.generation} ({manifest.rows} rows) is visible but may "
            f"not survive a power cut: syncing the directory failed ({exc.strerror})",
        ) from exc
