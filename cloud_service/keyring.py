"""Device public keys (X25519) learnt at enrolment, in the gateways' keyring layout.

One PEM file per device and key generation, ``<device id>.k<key id>.pub`` (the layout of
:func:`edgecascade.device_sdk.wire.crypto.device_public_key_file` that a gateway's keyring loads), rather
than one shared file: each enrolment is an atomic rename that never rewrites another
device's key, so concurrent enrolments in several workers cannot lose each other's writes.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.wire.crypto import PUBLIC_KEY_RE, device_public_key_file


def parse_x25519(encoded: str) -> X25519PublicKey:
    """A raw 32-byte X25519 public key in base64, or ValueError saying what is wrong with it."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"must be 32 bytes, got {len(raw)}")
    key = X25519PublicKey.from_public_bytes(raw)
    try:  # a low-order point gives an all-zero shared secret, which cryptography refuses
        X25519PrivateKey.generate().exchange(key)
    except ValueError:
        raise ValueError("a low-order point, not a usable X25519 key") from None
    return key


def raw_base64(key: X25519PublicKey) -> str:
    """The raw 32 bytes of ``key`` in base64, as the enrolment API exchanges keys."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


class DeviceKeyring:
    """The directory of enrolled devices' public keys."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def enrol(self, device_id: str, key_id: int, key: X25519PublicKey) -> Path:
        """Make ``key`` the device's only key: write it atomically, then drop its other generations."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = device_public_key_file(self.directory, device_id, key_id)
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        atomic_write(target, pem, mode=0o644)
        for path in self.directory.glob(f"{device_id}.k*.pub"):
            match = PUBLIC_KEY_RE.fullmatch(path.name)
            if path != target and match is not None and match.group("device") == device_id:
                path.unlink(missing_ok=True)
        return target

    def key_ids(self, device_id: str) -> list[int]:
        """The key generations held for ``device_id``."""
        found = []
        for path in self.directory.glob(f"{device_id}.k*.pub"):
            match = PUBLIC_KEY_RE.fullmatch(path.name)
            if match is not None and match.group("device") == device_id:
                found.append(int(match.group("key_id")))
        return sorted(found)
