"""Answering another tier's request: its features checked against the model, replies, error codes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.core.tier import TierModel
from edgecascade.device_sdk.errors import (
    DecryptError,
    EdgeCascadeError,
    ModelVersionError,
    SchemaVersionError,
    StorageError,
    TensorSpecError,
    WireError,
)
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec


@pytest.fixture(scope="module")
def gateway(tiny_bundle: Path) -> TierModel:
    return TierModel.load(load_bundle(tiny_bundle), "gateway")


def _request(model: TierModel, body: bytes, **header: object) -> wire.Envelope:
    fields = {
        "msg_type": wire.MessageType.INFER_REQUEST,
        "device_id": "cam-01",
        "model_version": model.version,
    }
    return wire.Envelope(wire.Header(**{**fields, **header}), body)  # type: ignore[arg-type]


def test_the_features_of_a_valid_request(gateway: TierModel) -> None:
    shape = gateway.spec.input.shape
    cut = np.sign(np.random.default_rng(0).normal(size=shape)).astype(np.float32)
    features = serving.request_features(
        _request(gateway, codec.encode_features(cut, gateway.cut_encoding)), gateway
    )
    np.testing.assert_array_equal(features, cut)


def test_nothing_invalid_reaches_the_model(gateway: TierModel) -> None:
    shape = gateway.spec.input.shape
    good = codec.encode_features(np.ones(shape, np.float32), gateway.cut_encoding)
    with pytest.raises(WireError, match="INFER_REQUEST"):
        serving.request_features(_request(gateway, good, msg_type=wire.MessageType.RESULT), gateway)
    with pytest.raises(ModelVersionError):
        serving.request_features(_request(gateway, good, model_version=gateway.version + 1), gateway)
    wrong_shape = codec.encode_features(
        np.ones((*shape[:-1], shape[-1] + 8), np.float32), gateway.cut_encoding
    )
    with pytest.raises(TensorSpecError, match=r"gateway partition: .* where \[7, 7, 16\] is expected"):
        serving.request_features(_request(gateway, wrong_shape), gateway)
    with pytest.raises(TensorSpecError):  # another encoding than the manifest's cut
        serving.request_features(_request(gateway, wire.encode_tensor(np.ones(shape, np.float32))), gateway)


def test_replies_answer_the_request_they_reply_to(gateway: TierModel) -> None:
    request = _request(gateway, b"")
    result = wire.Result(3, np.eye(10, dtype=np.float32)[3], wire.Tier.GATEWAY)
    reply = serving.result_reply(request.header, result)
    assert reply.header.request_id == request.header.request_id
    assert reply.header.msg_type is wire.MessageType.RESULT and wire.decode_result(reply.body).label == 3
    error = serving.error_reply(request.header, TensorSpecError("bad"))
    assert error.header.msg_type is wire.MessageType.ERROR
    assert wire.decode_error(error.body) == (wire.ErrorCode.BAD_TENSOR, "bad")
    unknown = serving.unknown_version(9, (2, 1))
    assert isinstance(unknown, ModelVersionError) and "serving v2, v1" in str(unknown)
    bug = serving.error_reply(request.header, KeyError("/srv/secret/path"))  # not ours to tell
    assert wire.decode_error(bug.body) == (wire.ErrorCode.INTERNAL, "internal error")


def test_a_shape_whose_element_count_wraps_around_is_a_tensor_error(gateway: TierModel) -> None:
    """(65536,) * 4 holds 2**64 elements: an int64 count of 0, which once matched an empty body."""
    head = struct.pack(">BB4I", int(codec.Encoding(gateway.cut_encoding).code), 4, *(65536,) * 4)
    for data in (b"", b"\0" * 5, b"\0" * 64):
        with pytest.raises(TensorSpecError, match=r"\[65536, 65536, 65536, 65536\]"):
            serving.request_features(_request(gateway, head + data), gateway)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (DecryptError("x"), wire.ErrorCode.UNAUTHORIZED),
        (SchemaVersionError("x"), wire.ErrorCode.UNSUPPORTED_SCHEMA),
        (TensorSpecError("x"), wire.ErrorCode.BAD_TENSOR),
        (ModelVersionError("x"), wire.ErrorCode.UNKNOWN_MODEL_VERSION),
        (WireError("x"), wire.ErrorCode.MALFORMED),
        (StorageError("x"), wire.ErrorCode.UNAVAILABLE),
        (EdgeCascadeError("x"), wire.ErrorCode.UNAVAILABLE),
        (RuntimeError("x"), wire.ErrorCode.INTERNAL),
    ],
)
def test_error_codes(exc: Exception, code: wire.ErrorCode) -> None:
    assert serving.error_code(exc) is code
