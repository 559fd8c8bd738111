"""A device's payload key files, made by ``edgecascade certs device``.

Files are PEM (read by :func:`~.crypto.load_x25519_private` and
:func:`~.crypto.load_x25519_public`): X25519 private keys PKCS8, unencrypted, mode 0600;
public keys SubjectPublicKeyInfo. A device keeps ``x25519-k<key id>.key`` per key
generation and the gateways' ``gateway-x25519.pub``; :func:`load_device_crypto` turns them
into a :class:`~.crypto.DeviceCrypto`, and every problem is a
:class:`~edgecascade.device_sdk.errors.ConfigError`. The gateways' side (their keyring of
device public keys) is ``edgecascade.edge_gateway.crypto``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.wire.crypto import (
    DEFAULT_GATEWAY_NAME,
    DEVICE_KEY_RE,
    DeviceCrypto,
    device_pair_keys,
    load_x25519_private,
    load_x25519_public,
)

logger = logging.getLogger(__name__)


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
