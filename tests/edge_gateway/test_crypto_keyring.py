"""Key files: loading a device's keys and the gateways' keyring, which rescans for new devices."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError, UnknownKeyError
from edgecascade.device_sdk.wire.crypto import load_x25519_private, load_x25519_public
from edgecascade.device_sdk.wire.keys import load_device_crypto
from edgecascade.edge_gateway.crypto import load_gateway_crypto
from edgecascade.tools.certs import init_pki, issue_device

DEVICE = "cam-01"


_seq = itertools.count(1)


def request(device: str = DEVICE) -> wire.Envelope:
    return wire.Envelope(wire.Header(wire.MessageType.INFER_REQUEST, device, 7, next(_seq)), b"features")


def test_keys_load_from_files_and_the_keyring_rescans(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    issue_device(pki.root, DEVICE)
    device = load_device_crypto(pki.device_dir(DEVICE), DEVICE)
    gateway = load_gateway_crypto(pki.gateway_x25519_key, pki.device_keys, rescan_interval=0)
    assert gateway.open_request(wire.envelope_from_bytes(device.seal(request())))[1] == 1

    issue_device(pki.root, "cam-02")  # registered while the gateway runs
    newcomer = load_device_crypto(pki.device_dir("cam-02"), "cam-02")
    assert gateway.open_request(wire.envelope_from_bytes(newcomer.seal(request(device="cam-02"))))[1] == 1

    issue_device(pki.root, DEVICE, rotate=True)
    rotated = load_device_crypto(pki.device_dir(DEVICE), DEVICE)
    assert (
        rotated.key_id == 2
        and gateway.open_request(wire.envelope_from_bytes(rotated.seal(request())))[1] == 2
    )
    (pki.device_keys / f"{DEVICE}.k1.pub").unlink()  # retire generation 1
    gateway.keyring.rescan()
    with pytest.raises(UnknownKeyError):
        gateway.open_request(wire.envelope_from_bytes(device.seal(request())))

    with pytest.raises(ConfigError, match="no payload key"):
        load_device_crypto(tmp_path, DEVICE, gateway_public=pki.gateway_x25519_pub)
    with pytest.raises(ConfigError, match="not an X25519"):
        load_x25519_private(pki.ca_key)
    with pytest.raises(ConfigError, match="cannot read"):
        load_x25519_public(tmp_path / "missing.pub")
    with pytest.raises(ConfigError, match="does not exist"):
        load_gateway_crypto(pki.gateway_x25519_key, tmp_path / "nowhere")
