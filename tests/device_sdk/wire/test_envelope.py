from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import SchemaVersionError, TensorSpecError, WireError


def _header(msg_type: wire.MessageType = wire.MessageType.INFER_REQUEST) -> wire.Header:
    return wire.Header(msg_type, "cam-01", model_version=7, seq=42)


def test_envelope_round_trip_keeps_every_header_field() -> None:
    header = wire.Header(
        wire.MessageType.INFER_REQUEST, "cam_01.a-b", 2**32 - 1, 2**64 - 1, b"r" * 16, flags=1
    )
    data = wire.envelope_to_bytes(wire.Envelope(header, b"payload"))
    back = wire.envelope_from_bytes(data)
    assert back.header == header
    assert back.body == b"payload"


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8"])
def test_tensor_round_trip_is_exact(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((7, 7, 8)) * 50).astype(dtype)
    back = wire.decode_tensor(wire.encode_tensor(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_result_round_trip() -> None:
    probs = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    result = wire.Result(1, probs, wire.Tier.CLOUD, degraded=True, upstream_bytes=123)
    back = wire.decode_result(wire.encode_result(result))
    assert (back.label, back.tier, back.degraded, back.upstream_bytes) == (1, wire.Tier.CLOUD, True, 123)
    np.testing.assert_array_equal(back.probabilities, probs)


def test_error_round_trip() -> None:
    code, message = wire.decode_error(wire.encode_error(wire.ErrorCode.BAD_TENSOR, "shape (3,) ≠ (7,)"))
    assert code is wire.ErrorCode.BAD_TENSOR and message == "shape (3,) ≠ (7,)"


def test_reply_header_answers_the_request() -> None:
    request = _header()
    reply = request.reply(wire.MessageType.RESULT)
    assert reply.request_id == request.request_id and reply.device_id == request.device_id
    assert reply.msg_type is wire.MessageType.RESULT


def test_truncated_envelope_is_rejected() -> None:
    data = wire.envelope_to_bytes(wire.Envelope(_header(), b"0123456789"))
    for cut in (0, 5, 30, len(data) - 1):
        with pytest.raises(WireError):
            wire.envelope_from_bytes(data[:cut])


def test_unknown_schema_version_is_its_own_error() -> None:
    data = bytearray(wire.envelope_to_bytes(wire.Envelope(_header(), b"")))
    data[2] = wire.SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError):
        wire.envelope_from_bytes(bytes(data))


def test_bad_magic_and_message_type_are_rejected() -> None:
    data = bytearray(wire.envelope_to_bytes(wire.Envelope(_header(), b"")))
    with pytest.raises(WireError, match="magic"):
        wire.envelope_from_bytes(b"XX" + bytes(data[2:]))
    data[3] = 99
    with pytest.raises(WireError, match="message type"):
        wire.envelope_from_bytes(bytes(data))


@pytest.mark.parametrize("device_id", ["", "a/b", "x" * 65, "dev#1", "é"])
def test_invalid_device_ids_are_refused(device_id: str) -> None:
    with pytest.raises(WireError):
        wire.Header(wire.MessageType.INFER_REQUEST, device_id, 1)


def test_tensor_length_must_match_shape() -> None:
    body = wire.encode_tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(WireError):
        wire.decode_tensor(body[:-1])
    with pytest.raises(WireError):
        wire.decode_tensor(body + b"\0")


def test_non_finite_tensor_is_rejected() -> None:
    with pytest.raises(TensorSpecError):
        wire.decode_tensor(wire.encode_tensor(np.array([1.0, np.nan], np.float32)))
    with pytest.raises(TensorSpecError):
        wire.decode_tensor(wire.encode_tensor(np.array([np.inf], np.float16)))


def test_unknown_dtype_and_huge_rank_are_rejected() -> None:
    with pytest.raises(TensorSpecError):
        wire.decode_tensor(struct.pack(">BB", 99, 0))
    with pytest.raises(TensorSpecError):
        wire.decode_tensor(struct.pack(">BB", 1, 200))
    with pytest.raises(TensorSpecError):
        wire.encode_tensor(np.zeros(3, np.complex64))


def test_result_label_must_be_a_class() -> None:
    body = wire.encode_result(wire.Result(0, np.ones(3, np.float32) / 3, wire.Tier.GATEWAY))
    bad = bytearray(body)
    bad[2:4] = struct.pack(">H", 3)
    with pytest.raises(WireError, match="label"):
        wire.decode_result(bytes(bad))


def test_topics_identify_the_device() -> None:
    assert wire.device_id_from_topic(wire.request_topic("cam-7")) == "cam-7"
    assert wire.device_id_from_topic(wire.response_topic("cam-7")) is None
    assert wire.device_id_from_topic("ec/v1/dev/a/b/req") is None
    assert wire.gateway_subscription().startswith("$share/")
    assert wire.upload_topic("cam-7") == "ec/v1/dev/cam-7/hx"
    assert wire.device_id_from_topic(wire.upload_topic("cam-7"), "hx") == "cam-7"
    assert wire.device_id_from_topic(wire.upload_topic("cam-7")) is None  # not a request topic
    assert wire.gateway_subscriptions(shared=False) == ("ec/v1/dev/+/req", "ec/v1/dev/+/hx")


def test_hard_example_envelopes_round_trip() -> None:
    header = wire.Header(wire.MessageType.HARD_EXAMPLES, "cam-7", 3, 42)
    upload = wire.Envelope(header, b'{"examples": []}')
    assert wire.envelope_from_bytes(wire.envelope_to_bytes(upload)) == upload
    ack = wire.Envelope(header.reply(wire.MessageType.HARD_EXAMPLES_ACK), b'{"accepted": []}')
    parsed = wire.envelope_from_bytes(wire.envelope_to_bytes(ack))
    assert parsed == ack and parsed.header.request_id == header.request_id


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_bytes_raise_only_wire_errors(data: bytes) -> None:
    for decode in (wire.envelope_from_bytes, wire.decode_tensor, wire.decode_result, wire.decode_error):
        with contextlib.suppress(WireError):
            decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 400), st.integers(0, 255))
def test_mutated_envelopes_raise_only_wire_errors(body: bytes, position: int, value: int) -> None:
    data = bytearray(wire.envelope_to_bytes(wire.Envelope(_header(), body)))
    data[position % len(data)] = value
    with contextlib.suppress(WireError):
        wire.envelope_from_bytes(bytes(data))
