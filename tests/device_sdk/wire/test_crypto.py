"""End-to-end payload encryption, device side: sealing, opening replies, key derivation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import NotEncryptedError, UnknownKeyError, WireError
from edgecascade.device_sdk.wire import crypto

DEVICE = "cam-01"


def _pairs(key_id: int = 1) -> tuple[crypto.DeviceCrypto, crypto.PairKeys]:
    """A device's crypto and the gateway's side of the same pair keys."""
    gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    device = crypto.device_pair_keys(device_key, gateway_key.public_key(), DEVICE, key_id)
    gateway = crypto.gateway_pair_keys(gateway_key, device_key.public_key(), DEVICE, key_id)
    return crypto.DeviceCrypto(DEVICE, {key_id: device}), gateway


_REQUEST = wire.Envelope(wire.Header(wire.MessageType.INFER_REQUEST, DEVICE, 7, 42), b"features")


def _request() -> wire.Envelope:
    return _REQUEST


def test_both_sides_derive_the_same_keys_and_the_header_is_bound() -> None:
    device, gateway = _pairs()
    sealed = wire.envelope_from_bytes(device.seal(_request()))
    assert sealed.header.flags & wire.FLAG_ENCRYPTED and crypto.key_id_of(sealed) == 1
    assert crypto.open_sealed(sealed, gateway.to_gateway) == _request()
    reply = wire.Envelope(_request().header.reply(wire.MessageType.RESULT), b"label 3")
    assert device.open(crypto.seal(reply, gateway.to_device, 1)).body == b"label 3"
    with pytest.raises(WireError):  # the device->gateway key does not open replies
        device.open(crypto.seal(reply, gateway.to_gateway, 1))


def test_the_same_message_seals_differently_each_time() -> None:
    device, _ = _pairs()
    assert device.seal(_request()) != device.seal(_request())  # random nonces


def test_a_device_seals_only_its_own_requests_and_believes_only_sealed_replies() -> None:
    device, gateway = _pairs()
    other = wire.Envelope(wire.Header(wire.MessageType.INFER_REQUEST, "cam-02", 7, 1), b"x")
    with pytest.raises(WireError, match="cam-02"):
        device.seal(other)
    error = wire.Envelope(
        _request().header.reply(wire.MessageType.ERROR),
        wire.encode_error(wire.ErrorCode.UNAUTHORIZED, "nope"),
    )
    with pytest.raises(NotEncryptedError, match="unverified text: 401 nope"):
        device.open(wire.envelope_to_bytes(error))
    reply = wire.Envelope(_request().header.reply(wire.MessageType.RESULT), b"ok")
    with pytest.raises(UnknownKeyError):
        device.open(crypto.seal(reply, gateway.to_device, 2))  # a key id the device does not hold


def test_initial_sequence_grows_across_restarts() -> None:
    first = crypto.initial_sequence()
    assert crypto.initial_sequence() >= first > 1_600_000_000 * 10**6  # microseconds since the epoch
