"""Hard-example tensors as files, content-addressed by example id.

An example's id is the sha256 of its content (:func:`edgecascade.device_sdk.learning.records.content_id`),
so a file named after it never needs to change: storing the same example twice writes the
same bytes, and two workers racing on one example cannot corrupt it. Files are written
atomically (temp file, fsync, rename), so a reader sees a whole tensor body or no file.
The database keeps paths relative to the blob directory, so the directory can move.

Layout: ``<blob_dir>/<first two hex digits>/<id>.<kind>`` with ``kind`` ``features`` or
``raw``; the bytes are the wire tensor body exactly as uploaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.files import atomic_write

KINDS = ("features", "raw")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Tensor bodies on disk under one root directory (created 0700 when missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the blob directory {self.root}: {exc}") from None

    @staticmethod
    def relative_path(example_id: str, kind: str) -> str:
        """Where an example's tensor lives, relative to the root; ids must be sha256 hex."""
        if not _ID_RE.match(example_id) or kind not in KINDS:
            raise ValueError(f"not a blob name: {example_id!r}, {kind!r}")
        return f"{example_id[:2]}/{example_id}.{kind}"

    def put(self, example_id: str, kind: str, data: bytes) -> str:
        """Store ``data`` atomically; returns its relative path."""
        relative = self.relative_path(example_id, kind)
        target = self.root / relative
        target.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(target, data, mode=0o600)
        return relative

    def get(self, relative: str) -> bytes:
        """The bytes at a relative path this store returned; refuses paths outside the root."""
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"blob path {relative!r} leaves the blob directory")
        return target.read_bytes()
