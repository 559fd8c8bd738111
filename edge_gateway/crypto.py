"""The gateways' side of end-to-end payload encryption: device keys, opening requests, sealing replies.

:class:`GatewayKeyring` derives the AES-GCM pair keys of every device from the gateways'
X25519 private key and a directory of device public keys (``<device id>.k<key id>.pub``,
written by ``edgecascade certs device`` or by the cloud's enrolment), rescanned for new
devices. :class:`GatewayCrypto` opens a request envelope (checking the device's replay
window, :mod:`.replay`) and seals the reply under the key id the request used. The
scheme itself, and the device's side, are :mod:`edgecascade.device_sdk.wire.crypto`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError, NotEncryptedError, UnknownKeyError
from edgecascade.device_sdk.wire.crypto import (
    DEFAULT_GATEWAY_NAME,
    PUBLIC_KEY_RE,
    PairKeys,
    gateway_pair_keys,
    key_id_of,
    load_x25519_private,
    load_x25519_public,
    open_sealed,
    seal,
)
from edgecascade.edge_gateway.replay import WINDOW, ReplayWindow

logger = logging.getLogger(__name__)


class GatewayKeyring:
    """Pair keys per device and key id, from the gateways' private key and device public keys.

    With a ``directory`` (files ``<device id>.k<key id>.pub``), a lookup that misses rescans
    it, at most once per ``rescan_interval`` seconds: newly registered devices are served
    without a restart, and removing a file retires that key generation.
    """

    def __init__(
        self,
        private: X25519PrivateKey,
        gateway_name: str = DEFAULT_GATEWAY_NAME,
        directory: Path | None = None,
        *,
        rescan_interval: float = 5.0,
    ) -> None:
        self._private = private
        self.gateway_name = gateway_name
        self.directory = Path(directory) if directory is not None else None
        self.rescan_interval = rescan_interval
        self._keys: dict[tuple[str, int], PairKeys] = {}
        self._files: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one rescan at a time; lookups only wait for _lock
        self._scanned = float("-inf")
        if self.directory is not None:
            if not self.directory.is_dir():
                raise ConfigError(f"device key directory {self.directory} does not exist")
            self.rescan()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, device_id: str, key_id: int, public: X25519PublicKey) -> None:
        """Register a device's public key of generation ``key_id``."""
        keys = gateway_pair_keys(self._private, public, device_id, key_id, self.gateway_name)
        with self._lock:
            self._keys[(device_id, key_id)] = keys

    def get(self, device_id: str, key_id: int) -> PairKeys:
        """The keys for a device and key id, or UnknownKeyError."""
        with self._lock:
            keys = self._keys.get((device_id, key_id))
            due = self.directory is not None and time.monotonic() - self._scanned >= self.rescan_interval
        if keys is None and due:
            self.rescan()
            with self._lock:
                keys = self._keys.get((device_id, key_id))
        if keys is None:
            raise UnknownKeyError(f"no key {key_id} for device {device_id!r}")
        return keys

    def rescan(self) -> int:
        """Load the directory again: add new public keys, drop removed ones; returns the count."""
        assert self.directory is not None
        with self._scan_lock:
            return self._rescan(self.directory)

    def _rescan(self, directory: Path) -> int:
        seen: dict[tuple[str, int], bytes] = {}
        for path in sorted(directory.glob("*.pub")):
            match = PUBLIC_KEY_RE.fullmatch(path.name)
            if match is None:
                logger.warning("ignoring %s: not named <device id>.k<key id>.pub", path.name)
                continue
            entry = (match.group("device"), int(match.group("key_id")))
            try:
                data = path.read_bytes()
                if self._files.get(entry) != data:
                    self.add(*entry, load_x25519_public(path))
            except (OSError, ConfigError) as exc:
                logger.warning("ignoring device key %s: %s", path.name, exc)
                continue
            seen[entry] = data
        with self._lock:
            for gone in set(self._keys) - set(seen):
                del self._keys[gone]
            self._files = seen
            self._scanned = time.monotonic()
            return len(self._keys)


class GatewayCrypto:
    """The gateway's opening of requests (with replay windows) and sealing of replies."""

    def __init__(self, keyring: GatewayKeyring, *, required: bool = True, window: int = WINDOW) -> None:
        self.keyring = keyring
        self.required = required
        self.window = window
        self._windows: dict[str, ReplayWindow] = {}
        self._lock = threading.Lock()

    def open_request(self, envelope: wire.Envelope) -> tuple[wire.Envelope, int | None]:
        """The plain envelope of a request and the key id it used (None if it came plaintext).

        Raises a :class:`~edgecascade.device_sdk.errors.CryptoError` for a plaintext request
        when encryption is required, an unknown key, a forged or altered message, or a replay.
        """
        header = envelope.header
        if not header.flags & wire.FLAG_ENCRYPTED:
            if self.required:
                raise NotEncryptedError(
                    f"unencrypted request from {header.device_id!r}: encryption is required"
                )
            return envelope, None
        key_id = key_id_of(envelope)
        keys = self.keyring.get(header.device_id, key_id)
        with self._lock:
            window = self._windows.get(header.device_id)
            if window is not None:
                window.check(header.seq)
        plain = open_sealed(envelope, keys.to_gateway)
        with self._lock:  # only an authentic message moves the window
            window = self._windows.setdefault(header.device_id, ReplayWindow(self.window))
            window.accept(header.seq)
        return plain, key_id

    def seal_reply(self, reply: wire.Envelope, key_id: int) -> bytes:
        """Encrypt a reply envelope to its device under ``key_id`` (the request's)."""
        keys = self.keyring.get(reply.header.device_id, key_id)
        return seal(reply, keys.to_device, key_id)


def load_gateway_crypto(
    private_key: str | Path,
    device_keys: str | Path,
    *,
    gateway_name: str = DEFAULT_GATEWAY_NAME,
    required: bool = True,
    window: int = WINDOW,
    rescan_interval: float = 5.0,
) -> GatewayCrypto:
    """The gateway's crypto from its private key file and a directory of device public keys."""
    keyring = GatewayKeyring(
        load_x25519_private(Path(private_key)),
        gateway_name,
        Path(device_keys),
        rescan_interval=rescan_interval,
    )
    logger.info("loaded %d device keys from %s", len(keyring), device_keys)
    return GatewayCrypto(keyring, required=required, window=window)
