"""End-to-end payload encryption between a device and the gateways (AES-256-GCM).

Keys. Each device has an X25519 key pair per *key id* (a u16 generation number) and the
gateways of a site share one X25519 key pair. Both sides compute the same shared secret
and expand it with HKDF-SHA256 into two AES-256 keys, one per direction (device to gateway,
gateway to device). The HKDF info binds a fixed label, the device id, the gateway name,
the key id and both public keys, so a key derived for one device, gateway or generation is
useless for any other. Rotation: a device gets generation n+1 (``edgecascade certs device
--rotate``) and seals with its newest key; a gateway accepts every generation it holds a
public key for and answers with the generation the request used.

Encrypted body. The envelope header gets ``FLAG_ENCRYPTED`` and is then the AAD, so no
header field (type, device, model version, sequence number, request id) can be altered
or stripped; the body becomes::

    key id (u16, big-endian) | nonce (12 bytes) | AES-GCM ciphertext of the plain body | tag (16)

30 bytes more than the plain body.

Nonces are random (``os.urandom``), not derived from the sequence number. A deterministic
nonce is only safe if a (key, sequence number) pair is never sealed twice, and here it would
be: a device that restarts reuses numbers unless it keeps state on disk, and with a shared
subscription several gateway processes seal replies under the same key, each with its own
in-memory view. GCM with a repeated nonce leaks the XOR of two plaintexts and the
authentication key. Random 96-bit nonces collide with probability about n²/2⁹⁷, which stays
negligible for the 2³² messages NIST SP 800-38D allows per key; rotation starts a new key.

Replays. A gateway keeps a sliding window (``edgecascade.edge_gateway.replay``) of the last 64
sequence numbers per device: a number seen before raises
:class:`~edgecascade.device_sdk.errors.ReplayError`, one older than the window
:class:`~edgecascade.device_sdk.errors.SequenceTooOldError`, one further ahead than the gateway
allows (a bound over its own clock) :class:`~edgecascade.device_sdk.errors.SequenceTooFarAheadError`.
The window moves only after the tag verifies and only within that bound, so neither forged
nor far-ahead numbers can push it out of a device's reach. A refused message that
authenticated is answered sealed with where the device's numbers may continue
(:mod:`.sequence`), and the device resynchronises. A device needs no window: it accepts a
reply only for a request it has in flight (request id and sequence number are in the
AAD), once. Devices start their sequence at the clock in microseconds
(:func:`initial_sequence`), so a restarted device continues above what the gateways have
seen. A gateway can keep its windows' high-water marks on disk, so a restart does not
reopen old numbers; the gateways of a share group keep separate windows, and the broker
ACL (only the device itself may publish on its request topic) is the other half of the
defence.

A device's key files are read by :mod:`.keys`; the gateways' side (their keyring, opening
requests with replay windows, sealing replies) is ``edgecascade.edge_gateway.crypto``. Every
failure is a :class:`~edgecascade.device_sdk.errors.CryptoError`, or another ``WireError``
for an envelope that does not parse; nothing else escapes :meth:`DeviceCrypto.open`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import (
    ConfigError,
    DecryptError,
    DependencyError,
    NotEncryptedError,
    UnknownKeyError,
    WireError,
)
from edgecascade.device_sdk.wire.sequence import initial_sequence as initial_sequence  # re-exported

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise DependencyError("cryptography", "device") from exc

KEY_ID = struct.Struct(">H")
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = KEY_ID.size + NONCE_SIZE + TAG_SIZE
MAX_KEY_ID = 2**16 - 1
DEFAULT_GATEWAY_NAME = "gateway"
_LABEL = b"edgecascade/v1 e2e aes-256-gcm"

#: A device's payload key file (``x25519-k<generation>.key``) and a gateway keyring entry.
DEVICE_KEY_RE = re.compile(r"x25519-k(\d{1,5})\.key")
PUBLIC_KEY_RE = re.compile(r"(?P<device>[A-Za-z0-9_.-]{1,64})\.k(?P<key_id>\d{1,5})\.pub")


def device_key_file(directory: Path, key_id: int) -> Path:
    """Where a device keeps its private payload key of generation ``key_id``."""
    return Path(directory) / f"x25519-k{key_id}.key"


def device_public_key_file(directory: Path, device_id: str, key_id: int) -> Path:
    """The name of a device's public key in a gateway's keyring directory."""
    return Path(directory) / f"{device_id}.k{key_id}.pub"


# ------------------------------------------------------------------------- key derivation
@dataclass(frozen=True)
class PairKeys:
    """The two AES-256-GCM keys one device shares with the gateways under one key id."""

    key_id: int
    to_gateway: AESGCM = dataclasses.field(repr=False)
    to_device: AESGCM = dataclasses.field(repr=False)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive_pair_keys(
    shared_secret: bytes,
    *,
    device_id: str,
    gateway_name: str,
    key_id: int,
    device_public: X25519PublicKey,
    gateway_public: X25519PublicKey,
) -> PairKeys:
    """HKDF-SHA256 of an X25519 secret into both directions' keys, bound to ids and public keys."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ConfigError(f"key id {key_id} outside 0..{MAX_KEY_ID}")
    if not 0 < len(gateway_name) <= 64:
        raise ConfigError(f"gateway name must be 1..64 characters, got {len(gateway_name)}")
    fields = [device_id.encode(), gateway_name.encode(), KEY_ID.pack(key_id)]
    fields += [_raw(device_public), _raw(gateway_public)]
    info = _LABEL + b"".join(struct.pack(">H", len(f)) + f for f in fields)
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=info).derive(shared_secret)
    return PairKeys(key_id, AESGCM(okm[:32]), AESGCM(okm[32:]))


def _exchange(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError as exc:  # a low-order public key gives an all-zero secret
        raise ConfigError(f"unusable X25519 public key: {exc}") from None


def device_pair_keys(
    private: X25519PrivateKey,
    gateway_public: X25519PublicKey,
    device_id: str,
    key_id: int,
    gateway_name: str = DEFAULT_GATEWAY_NAME,
) -> PairKeys:
    """The device's side of the derivation."""
    return derive_pair_keys(
        _exchange(private, gateway_public),
        device_id=device_id,
        gateway_name=gateway_name,
        key_id=key_id,
        device_public=private.public_key(),
        gateway_public=gateway_public,
    )


def gateway_pair_keys(
    private: X25519PrivateKey,
    device_public: X25519PublicKey,
    device_id: str,
    key_id: int,
    gateway_name: str = DEFAULT_GATEWAY_NAME,
) -> PairKeys:
    """The gateway's side of the derivation (the same keys as :func:`device_pair_keys`)."""
    return derive_pair_keys(
        _exchange(private, device_public),
        device_id=device_id,
        gateway_name=gateway_name,
        key_id=key_id,
        device_public=device_public,
        gateway_public=private.public_key(),
    )


# --------------------------------------------------------------------------- seal / open
def seal(envelope: wire.Envelope, aead: AESGCM, key_id: int) -> bytes:
    """Serialised envelope with ``FLAG_ENCRYPTED`` set and the body encrypted (header = AAD)."""
    return wire.envelope_to_bytes(seal_envelope(envelope, aead, key_id))


def seal_envelope(envelope: wire.Envelope, aead: AESGCM, key_id: int) -> wire.Envelope:
    """The encrypted envelope itself, for a caller that serialises it later (:func:`seal`'s bytes)."""
    header = dataclasses.replace(envelope.header, flags=envelope.header.flags | wire.FLAG_ENCRYPTED)
    nonce = os.urandom(NONCE_SIZE)
    ciphertext = aead.encrypt(nonce, envelope.body, wire.header_to_bytes(header))
    return wire.Envelope(header, KEY_ID.pack(key_id) + nonce + ciphertext)


def key_id_of(envelope: wire.Envelope) -> int:
    """The key id of an encrypted envelope's body."""
    if len(envelope.body) < OVERHEAD:
        raise DecryptError(f"encrypted body of {len(envelope.body)} bytes is shorter than {OVERHEAD}")
    return int(KEY_ID.unpack_from(envelope.body)[0])


def open_sealed(envelope: wire.Envelope, aead: AESGCM) -> wire.Envelope:
    """The plain envelope (flag cleared) of an encrypted one; DecryptError if it does not verify."""
    key_id_of(envelope)  # length check
    nonce = envelope.body[KEY_ID.size : KEY_ID.size + NONCE_SIZE]
    try:
        body = aead.decrypt(
            nonce, envelope.body[KEY_ID.size + NONCE_SIZE :], wire.header_to_bytes(envelope.header)
        )
    except InvalidTag:
        raise DecryptError("ciphertext does not authenticate (wrong key, or altered in transit)") from None
    plain = dataclasses.replace(envelope.header, flags=envelope.header.flags & ~wire.FLAG_ENCRYPTED)
    return wire.Envelope(plain, body)


# --------------------------------------------------------------------------- device side
class DeviceCrypto:
    """A device's sealing and opening: seals with its newest key id, opens any it holds."""

    def __init__(self, device_id: str, keys: Mapping[int, PairKeys]) -> None:
        if not keys:
            raise ConfigError(f"device {device_id!r} has no payload keys")
        self.device_id = device_id
        self._keys = dict(keys)
        self.key_id = max(self._keys)

    def seal(self, envelope: wire.Envelope) -> bytes:
        """Encrypt a request of this device."""
        if envelope.header.device_id != self.device_id:
            raise WireError(
                f"cannot seal for {envelope.header.device_id!r}: these keys are {self.device_id!r}'s"
            )
        return seal(envelope, self._keys[self.key_id].to_gateway, self.key_id)

    def open(self, data: bytes) -> wire.Envelope:
        """Parse and decrypt a reply; an unencrypted reply is rejected (its text is only quoted)."""
        envelope = wire.envelope_from_bytes(data)
        if envelope.header.device_id != self.device_id:
            raise WireError(f"reply addressed to {envelope.header.device_id!r}, not {self.device_id!r}")
        if not envelope.header.flags & wire.FLAG_ENCRYPTED:
            said = ""
            if envelope.header.msg_type == wire.MessageType.ERROR:
                code, message = wire.decode_error(envelope.body)
                said = f" (unverified text: {int(code)} {message})"
            raise NotEncryptedError(f"unencrypted {envelope.header.msg_type.name} reply rejected{said}")
        key_id = key_id_of(envelope)
        keys = self._keys.get(key_id)
        if keys is None:
            raise UnknownKeyError(f"reply sealed with key id {key_id}, which this device does not hold")
        return open_sealed(envelope, keys.to_device)


# ------------------------------------------------------------------------------ PEM files
def load_x25519_private(path: Path) -> X25519PrivateKey:
    """An X25519 private key from a PKCS8 PEM file, or ConfigError."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read X25519 private key {path}: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"{path} is not an X25519 private key")
    return key


def load_x25519_public(path: Path) -> X25519PublicKey:
    """An X25519 public key from a SubjectPublicKeyInfo PEM file, or ConfigError."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read X25519 public key {path}: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise ConfigError(f"{path} is not an X25519 public key")
    return key
