"""Devices' messages as the gateway reads them: parsed once, sender checked, opened, answered."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import NotEncryptedError, ReplayError, TensorSpecError, WireError
from edgecascade.device_sdk.wire import crypto
from edgecascade.device_sdk.wire.sequence import parse_resync
from edgecascade.edge_gateway.crypto import GatewayCrypto, GatewayKeyring
from edgecascade.edge_gateway.messages import Message, open_message, read, refusal, seal_reply

DEVICE = "cam-01"


def _request(seq: int = 1) -> wire.Envelope:
    return wire.Envelope(wire.Header(wire.MessageType.INFER_REQUEST, DEVICE, 3, seq), b"features")


def _site() -> tuple[crypto.DeviceCrypto, GatewayCrypto]:
    gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    keyring = GatewayKeyring(gateway_key)
    keyring.add(DEVICE, 1, device_key.public_key())
    pair = crypto.device_pair_keys(device_key, gateway_key.public_key(), DEVICE, 1)
    return crypto.DeviceCrypto(DEVICE, {1: pair}), GatewayCrypto(keyring)


def test_read_checks_the_envelope_names_the_device_of_its_topic() -> None:
    payload = wire.envelope_to_bytes(_request())
    assert read(Message(payload, DEVICE)).body == b"features"
    assert read(Message(payload)).header.device_id == DEVICE  # no topic: in-process callers
    with pytest.raises(WireError, match="does not match its topic"):
        read(Message(payload, "cam-02"))


def test_an_encrypted_request_opens_once_and_its_reply_is_sealed_with_its_key() -> None:
    device, gateway = _site()
    request = _request()
    opened = open_message(gateway, read(Message(device.seal(request), DEVICE)))
    assert opened.key_id == 1 and opened.envelope == request and opened.header == request.header
    reply = wire.Envelope(request.header.reply(wire.MessageType.RESULT), b"answer")
    assert device.open(seal_reply(gateway, reply, opened.key_id)).body == b"answer"
    with pytest.raises(NotEncryptedError):
        open_message(gateway, request)  # plaintext is refused where encryption is required


def test_without_crypto_messages_pass_as_they_are_and_replies_stay_plain() -> None:
    opened = open_message(None, _request())
    assert opened.key_id is None and opened.envelope.body == b"features"
    reply = wire.Envelope(_request().header.reply(wire.MessageType.RESULT), b"answer")
    assert seal_reply(None, reply, None) == wire.envelope_to_bytes(reply)


def test_refusals_are_addressed_by_the_envelope_or_by_topic_and_correlation() -> None:
    parsed = _request()
    reply = refusal(Message(b"", DEVICE), parsed, TensorSpecError("bad"), wire.MessageType.INFER_REQUEST)
    assert reply is not None and reply.header.request_id == parsed.header.request_id
    assert wire.decode_error(reply.body)[0] is wire.ErrorCode.BAD_TENSOR
    correlation = b"r" * 16
    garbage = Message(b"not an envelope", DEVICE, correlation)
    reply = refusal(garbage, None, WireError("bad magic"), wire.MessageType.INFER_REQUEST)
    assert reply is not None and reply.header.request_id == correlation and reply.header.device_id == DEVICE
    assert refusal(Message(b"x", DEVICE), None, WireError("x"), wire.MessageType.INFER_REQUEST) is None
    assert (
        refusal(Message(b"x", None, correlation), None, WireError("x"), wire.MessageType.INFER_REQUEST)
        is None
    )


def test_a_refused_sequence_number_is_answered_sealed_and_other_refusals_plain() -> None:
    device, gateway = _site()
    message = Message(device.seal(_request(seq=2**40)), DEVICE, b"c" * 16)
    open_message(gateway, read(message))
    with pytest.raises(ReplayError) as replayed:
        open_message(gateway, read(message))
    reply = refusal(message, read(message), replayed.value, wire.MessageType.INFER_REQUEST)
    assert reply is not None and reply.header.flags & wire.FLAG_ENCRYPTED
    opened = device.open(wire.envelope_to_bytes(reply))  # the device believes it: it decrypts
    assert opened.header.request_id == read(message).header.request_id
    code, text = wire.decode_error(opened.body)
    window = parse_resync(text)
    assert code is wire.ErrorCode.UNAUTHORIZED and window is not None and window[0] == 2**40 + 1
    plain = refusal(message, read(message), ReplayError("seen"), wire.MessageType.INFER_REQUEST)
    assert plain is not None and not plain.header.flags & wire.FLAG_ENCRYPTED  # no answer made: plain
