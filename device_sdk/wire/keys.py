"""Payload key files: a device's own keys, and the gateways' keyring of device public keys.

Files are PEM (read by :func:`~edgecascade.device_sdk.wire.crypto.load_x25519_private` and
:func:`~edgecascade.device_sdk.wire.crypto.load_x25519_public`): X25519 private keys PKCS8, unencrypted,
mode 0600; public keys SubjectPublicKeyInfo. A device keeps ``x25519-k<key id>.key`` per
key generation and the gateways' ``gateway-x25519.pub``; the gateways keep
``gateway-x25519.key`` and a directory of ``<device id>.k<key id>.pub`` files (written by
``edgecascade certs device`` or by the cloud's enrolment). :func:`load_device_crypto` and
:func:`load_gateway_crypto` turn them into the :mod:`edgecascade.device_sdk.wire.crypto` objects; every
problem is a :class:`~edgecascade.device_sdk.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgecascade.device_sdk.errors import ConfigError, UnknownKeyError
from edgecascade.device_sdk.wire.crypto import (
    DEFAULT_GATEWAY_NAME,
    DEVICE_KEY_RE,
    PUBLIC_KEY_RE,
    DeviceCrypto,
    GatewayCrypto,
    PairKeys,
    device_pair_keys,
    gateway_pair_keys,
    load_x25519_private,
    load_x25519_public,
)
from edgecascade.device_sdk.wire.replay import WINDOW

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


def load_device_crypto(
    directory: str | Path,
    device_id: str,
    *,
    gateway_public: str | Path | None = None,
    gateway_name: str = DEFAULT_GATEWAY_NAME,
) -> DeviceCrypto:
    """A device's keys from the directory ``edgecascade certs device`` made for it.

    Reads every ``x25519-k<n>.key`` (the newest seals) and ``gateway-x25519.pub`` (or
    ``gateway_public``); ConfigError names what is missing.
    """
    directory = Path(directory)
    gateway_key = load_x25519_public(Path(gateway_public or directory / "gateway-x25519.pub"))
    keys = {}
    for path in sorted(directory.glob("x25519-k*.key")):
        match = DEVICE_KEY_RE.fullmatch(path.name)
        if match is not None:
            key_id = int(match.group(1))
            keys[key_id] = device_pair_keys(
                load_x25519_private(path), gateway_key, device_id, key_id, gateway_name
            )
    if not keys:
        raise ConfigError(f"no payload key (x25519-k<n>.key) for device {device_id!r} in {directory}")
    return DeviceCrypto(device_id, keys)


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
