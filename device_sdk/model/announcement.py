"""The cloud's model announcement: which signed bundle every node should run now.

The cloud publishes it retained on :data:`~edgecascade.device_sdk.wire.MODELS_TOPIC` when it promotes
or rolls back a version, so a node that connects later gets it at once. It is a small
JSON object::

    {"name": "fashion-mnist", "version": 2, "rollback_of": null,
     "manifest_sha256": "<hex>", "url": "https://cloud.example/v1/models/2",
     "issued_at": 1767000000.0, "key_id": "<16 hex>", "signature": "<base64>"}

It is signed with the cloud's bundle-signing key (Ed25519) under its own context prefix,
so a bundle signature can never pass for an announcement nor the reverse; a node drops a
forged one before downloading anything. The announcement is not what makes an update
safe, though: the node verifies the bundle it downloads (manifest signature, every file's
sha256, the version rule) before using it, and ``manifest_sha256`` ties that download to
the announcement.

A node downloads from the cloud URL it was configured with, at :func:`release_path`,
never from the ``url`` in the message (which is for people and tools): its bearer token
only ever goes to the cloud it trusts.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import SignatureError, WireError
from edgecascade.device_sdk.model.signing import (
    PrivateKeySource,
    PublicKeySource,
    key_id,
    load_private_key,
    load_public_key,
)

CONTEXT = b"edgecascade model announcement v1\0"
MAX_BYTES = 8192  # a real one is ~400 bytes
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


def release_name(version: int, rollback_of: int | None = None) -> str:
    """Directory-safe name of a release: ``v2``, or ``v1-rollback-of-2`` for a signed rollback."""
    return f"v{version}" if rollback_of is None else f"v{version}-rollback-of-{rollback_of}"


def release_path(version: int, rollback_of: int | None = None) -> str:
    """The cloud route under which a release's files are served (append ``/<file>``)."""
    base = f"{wire.ROUTE_MODELS}/{version}"
    return base if rollback_of is None else f"{base}/rollback-of/{rollback_of}"


@dataclass(frozen=True)
class Announcement:
    """The release every node should run: version, its signed manifest's sha256, where it is."""

    name: str
    version: int
    manifest_sha256: str
    rollback_of: int | None = None
    url: str = ""
    issued_at: float = 0.0
    key_id: str = ""
    signature: str = ""  # base64 Ed25519 over CONTEXT + signed_bytes()

    @property
    def release(self) -> str:
        return release_name(self.version, self.rollback_of)

    def signed_bytes(self) -> bytes:
        """Canonical JSON of every field but the signature: what the signature covers."""
        data = asdict(self)
        del data["signature"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def sign(self, private_key: PrivateKeySource) -> Announcement:
        """This announcement signed by the cloud's key (its key id filled in)."""
        key = load_private_key(private_key)
        unsigned = replace(self, key_id=key_id(key.public_key()), signature="")
        signature = key.sign(CONTEXT + unsigned.signed_bytes())
        return replace(unsigned, signature=base64.b64encode(signature).decode("ascii"))

    def verify(self, public_key: PublicKeySource) -> None:
        """Raise :class:`SignatureError` unless the trusted key signed exactly these fields."""
        key = load_public_key(public_key)
        trusted = key_id(key)
        if self.key_id != trusted:
            raise SignatureError(
                f"announcement of {self.release} is signed with key {self.key_id!r}, not {trusted!r}"
            )
        try:
            signature = base64.b64decode(self.signature, validate=True)
            key.verify(signature, CONTEXT + self.signed_bytes())
        except (binascii.Error, ValueError, InvalidSignature):
            raise SignatureError(f"announcement of {self.release}: the signature does not verify") from None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Announcement:
        """Parse and validate; anything malformed is a :class:`WireError` naming every problem."""
        if len(data) > MAX_BYTES:
            raise WireError(f"announcement larger than {MAX_BYTES} bytes")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise WireError(f"announcement is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise WireError("announcement must be a JSON object")
        problems = _problems(raw)
        if problems:
            raise WireError("invalid announcement: " + "; ".join(problems))
        return cls(**raw)


def _problems(raw: dict[str, Any]) -> list[str]:
    fields = {"name", "version", "manifest_sha256", "rollback_of", "url", "issued_at", "key_id", "signature"}
    found = [f"unknown field {k!r}" for k in raw if k not in fields]
    found += [f"missing field {k!r}" for k in sorted(fields) if k not in raw]
    if found:
        return found

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (isinstance(raw["name"], str) and 0 < len(raw["name"]) <= 128):
        found.append("name must be a string of 1-128 characters")
    if not (is_int(raw["version"]) and 1 <= raw["version"] < 2**32):
        found.append("version must be an integer in 1..2^32-1")
    rollback = raw["rollback_of"]
    if rollback is not None and not (
        is_int(rollback) and is_int(raw["version"]) and rollback > raw["version"]
    ):
        found.append("rollback_of must be null or an integer above version")
    if not (isinstance(raw["manifest_sha256"], str) and _HEX64.match(raw["manifest_sha256"])):
        found.append("manifest_sha256 must be 64 lowercase hex digits")
    if not (isinstance(raw["url"], str) and len(raw["url"]) <= 2048):
        found.append("url must be a string of at most 2048 characters")
    issued = raw["issued_at"]
    if not (isinstance(issued, int | float) and not isinstance(issued, bool) and math.isfinite(issued)):
        found.append("issued_at must be a finite number")
    if not (isinstance(raw["key_id"], str) and _HEX16.match(raw["key_id"])):
        found.append("key_id must be 16 lowercase hex digits")
    if not (isinstance(raw["signature"], str) and len(raw["signature"]) <= 256):
        found.append("signature must be a base64 string")
    return found
