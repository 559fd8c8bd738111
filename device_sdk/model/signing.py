"""Signed model bundles: the cloud signs ``manifest.json`` with Ed25519, every tier verifies it.

The manifest lists the sha256 of every partition file, so one signature over the manifest
covers the whole bundle. What is signed is ``CONTEXT + manifest bytes``: the exact bytes of
``manifest.json`` as written by :meth:`~.bundle.Manifest.to_json` (canonical), with
a fixed prefix so a signature the same key makes over anything else (say, a weight update)
can never pass as a bundle signature.

``manifest.sig`` is a small JSON object rather than the raw 64 bytes::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

The key id (a hash of the public key) lets a node say *which* key signed a bundle it
refuses, which is what an operator needs during a key rotation; it is only a hint, the
signature is always checked against the key the node trusts. The algorithm field leaves
room for another scheme without guessing from a file length.

Key files follow the names ``edgecascade certs init`` writes: ``cloud-signing.key`` (PEM
PKCS#8, unencrypted, mode 0600) and ``cloud-signing.pub`` (PEM SubjectPublicKeyInfo).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgecascade.device_sdk.errors import ConfigError, SignatureError
from edgecascade.device_sdk.files import atomic_write

logger = logging.getLogger(__name__)

SIGNATURE = "manifest.sig"
SIGNING_KEY_FILE = "cloud-signing.key"
SIGNING_PUB_FILE = "cloud-signing.pub"
ALGORITHM = "ed25519"
CONTEXT = b"edgecascade bundle manifest v1\0"
_MAX_SIGNATURE_FILE = 4096  # a real one is ~150 bytes; refuse to read anything large

PublicKeySource = Ed25519PublicKey | str | Path
PrivateKeySource = Ed25519PrivateKey | str | Path


def generate_signing_key(directory: str | Path) -> tuple[Path, Path]:
    """Create ``cloud-signing.key`` (0600) and ``cloud-signing.pub`` in ``directory``.

    Refuses to replace an existing key: bundles signed with it would stop verifying.
    """
    out = Path(directory)
    key_path, pub_path = out / SIGNING_KEY_FILE, out / SIGNING_PUB_FILE
    if key_path.exists() or pub_path.exists():
        raise ConfigError(f"{key_path} or {pub_path} already exists; refusing to replace a signing key")
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(key_path, private_pem, mode=0o600)
    atomic_write(pub_path, public_pem, mode=0o644)
    return key_path, pub_path


def load_private_key(source: PrivateKeySource) -> Ed25519PrivateKey:
    """An Ed25519 private key, or its unencrypted PEM PKCS#8 file; anything else is a ConfigError."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    try:
        key = serialization.load_pem_private_key(Path(source).read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {source}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_public_key(source: PublicKeySource) -> Ed25519PublicKey:
    """An Ed25519 public key, or its PEM SubjectPublicKeyInfo file; anything else is a ConfigError."""
    if isinstance(source, Ed25519PublicKey):
        return source
    try:
        key = serialization.load_pem_public_key(Path(source).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read verify key {source}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{source}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest_bytes: bytes, private_key: PrivateKeySource) -> bytes:
    """The content of ``manifest.sig`` for these exact manifest bytes."""
    key = load_private_key(private_key)
    signature = key.sign(CONTEXT + manifest_bytes)
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(record, sort_keys=True, indent=2) + "\n").encode()


def verify_manifest(root: str | Path, manifest_bytes: bytes, public_key: PublicKeySource) -> None:
    """Check ``root/manifest.sig`` over ``manifest_bytes`` with the trusted key, or raise SignatureError."""
    key = load_public_key(public_key)
    path = Path(root) / SIGNATURE
    try:
        with open(path, "rb") as f:
            content = f.read(_MAX_SIGNATURE_FILE + 1)
    except FileNotFoundError:
        raise SignatureError(f"bundle {root} is not signed: no {SIGNATURE}") from None
    if len(content) > _MAX_SIGNATURE_FILE:
        raise SignatureError(f"{path}: larger than {_MAX_SIGNATURE_FILE} bytes, not a signature file")
    try:
        record = json.loads(content.decode())
        algorithm, signer, encoded = record["algorithm"], record["key_id"], record["signature"]
        signature = base64.b64decode(encoded, validate=True)
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, binascii.Error) as exc:
        raise SignatureError(f"{path}: malformed signature file ({exc!r})") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"{path}: unsupported signature algorithm {algorithm!r}")
    trusted = key_id(key)
    if signer != trusted:
        raise SignatureError(
            f"bundle {root} was signed with key {signer!r}; this node trusts key {trusted!r}"
        )
    try:
        key.verify(signature, CONTEXT + manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"the signature in {path} does not match the manifest: it was changed after signing"
        ) from None
