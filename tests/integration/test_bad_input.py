"""Malformed, mis-shaped and mis-versioned requests against the real gateway and cloud."""

from __future__ import annotations

import dataclasses
import queue
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from device_sdk import codec, wire
from device_sdk.bundle import load_bundle
from device_sdk.client import DeviceClient
from device_sdk.config import MqttConfig
from device_sdk.mqtt import MqttLink
from device_sdk.policy import NeverExit
from device_sdk.transport import MqttTransport
from edge_gateway.daemon import GatewayDaemon

from .conftest import CloudServer

pytestmark = pytest.mark.integration

DEVICE = "rogue-device"


class RawDevice:
    """A device that sends whatever bytes it is given and collects the replies."""

    def __init__(self, mqtt: MqttConfig) -> None:
        self.replies: queue.Queue[tuple[bytes, bytes | None]] = queue.Queue()
        self.link = MqttLink(mqtt, "raw-" + uuid.uuid4().hex[:8])
        self.link.subscribe(wire.response_topic(DEVICE), lambda t, p, r, c: self.replies.put((p, c)))
        self.link.connect(5)

    def ask(self, payload: bytes, correlation: bytes | None = None) -> wire.Envelope:
        correlation = correlation or uuid.uuid4().bytes
        self.link.publish(
            wire.request_topic(DEVICE),
            payload,
            response_topic=wire.response_topic(DEVICE),
            correlation_data=correlation,
        )
        reply, got = self.replies.get(timeout=5)
        assert got == correlation
        return wire.envelope_from_bytes(reply)


@pytest.fixture
def raw(gateway: GatewayDaemon, mqtt_config: MqttConfig) -> Iterator[RawDevice]:
    device = RawDevice(mqtt_config)
    yield device
    device.link.close()


def _request(
    bundle_dir: Path,
    tensor: np.ndarray,
    version: int | None = None,
    device: str = DEVICE,
    encoding: str | None = None,
) -> bytes:
    """An INFER_REQUEST with ``tensor`` in ``encoding`` (default: the cut's own); else raw dtype."""
    manifest = load_bundle(bundle_dir).manifest
    header = wire.Header(
        wire.MessageType.INFER_REQUEST, device, manifest.version if version is None else version
    )
    body = codec.encode_features(tensor, encoding) if encoding else wire.encode_tensor(tensor)
    return wire.envelope_to_bytes(wire.Envelope(header, body))


def _envelope(body: bytes, bundle_dir: Path) -> bytes:
    header = wire.Header(wire.MessageType.INFER_REQUEST, DEVICE, load_bundle(bundle_dir).manifest.version)
    return wire.envelope_to_bytes(wire.Envelope(header, body))


def _cut1(bundle_dir: Path) -> np.ndarray:
    spec = load_bundle(bundle_dir).manifest.partition("gateway").input
    return np.zeros(spec.shape, np.float32)


def _error(reply: wire.Envelope) -> wire.ErrorCode:
    assert reply.header.msg_type is wire.MessageType.ERROR
    code, message = wire.decode_error(reply.body)
    assert message
    return code


def test_gateway_answers_bad_requests_with_errors_and_keeps_serving(
    raw: RawDevice, gateway: GatewayDaemon, tiny_bundle: Path
) -> None:
    counters = gateway.service.counters
    before = dict(counters)
    bits = load_bundle(tiny_bundle).manifest.partition("device").encoding
    assert bits == "1bit"
    good = _request(tiny_bundle, _cut1(tiny_bundle), encoding=bits)
    future_schema = bytearray(good)
    future_schema[2] = wire.SCHEMA_VERSION + 1
    packed = codec.encode_features(_cut1(tiny_bundle), bits)

    assert _error(raw.ask(b"\x00garbage")) is wire.ErrorCode.MALFORMED
    assert _error(raw.ask(good[:-3])) is wire.ErrorCode.MALFORMED
    assert _error(raw.ask(_envelope(packed[:-1], tiny_bundle))) is wire.ErrorCode.MALFORMED  # bits short
    assert _error(raw.ask(bytes(future_schema))) is wire.ErrorCode.UNSUPPORTED_SCHEMA
    wrong_shape = _request(tiny_bundle, np.zeros((3, 3), np.float32), encoding=bits)
    assert _error(raw.ask(wrong_shape)) is wire.ErrorCode.BAD_TENSOR
    float16 = _request(tiny_bundle, _cut1(tiny_bundle).astype(np.float16))  # not this cut's encoding
    assert _error(raw.ask(float16)) is wire.ErrorCode.BAD_TENSOR
    nan = _cut1(tiny_bundle)
    nan.flat[0] = np.nan
    assert _error(raw.ask(_request(tiny_bundle, nan))) is wire.ErrorCode.BAD_TENSOR
    assert (
        _error(raw.ask(_request(tiny_bundle, _cut1(tiny_bundle), version=999, encoding=bits)))
        is wire.ErrorCode.UNKNOWN_MODEL_VERSION
    )
    # an envelope claiming to come from another device than its topic says
    assert (
        _error(raw.ask(_request(tiny_bundle, _cut1(tiny_bundle), device="someone-else", encoding=bits)))
        is wire.ErrorCode.MALFORMED
    )

    reply = raw.ask(good)
    assert reply.header.msg_type is wire.MessageType.RESULT
    assert wire.decode_result(reply.body).tier in (wire.Tier.GATEWAY, wire.Tier.CLOUD)
    assert counters["rejected_malformed"] - before.get("rejected_malformed", 0) == 4
    assert counters["rejected_bad_tensor"] - before.get("rejected_bad_tensor", 0) == 3
    assert counters["rejected_unsupported_schema"] - before.get("rejected_unsupported_schema", 0) == 1
    assert counters["rejected_unknown_model_version"] - before.get("rejected_unknown_model_version", 0) == 1


def test_device_turns_error_replies_into_degraded_answers(
    gateway: GatewayDaemon, tiny_bundle: Path, fmnist, make_client: Callable[..., DeviceClient]
) -> None:
    bundle = load_bundle(tiny_bundle)
    stale = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, version=999))

    client = DeviceClient(
        stale, "stale-device", MqttTransport(gateway.config.mqtt, "stale-device"), policy=NeverExit()
    )
    try:
        prediction = client.predict(fmnist.x_test[0])
    finally:
        client.close()
    assert prediction.degraded and prediction.tier == "device"
    assert "409" in (prediction.error or "")


def test_cloud_http_errors_are_json(cloud: CloudServer, tiny_bundle: Path) -> None:
    url = cloud.url + wire.ROUTE_INFER
    spec = load_bundle(tiny_bundle).manifest.partition("cloud").input
    int8 = load_bundle(tiny_bundle).manifest.partition("gateway").encoding
    good = _request(tiny_bundle, np.zeros(spec.shape, np.float32), encoding=int8)
    no_scale = codec.encode_features(np.zeros(spec.shape, np.float32), int8)
    no_scale = no_scale[: 2 + 4 * len(spec.shape)] + no_scale[2 + 4 * len(spec.shape) + 5 :]
    nan_scale = bytearray(codec.encode_features(np.ones(spec.shape, np.float32), int8))
    nan_scale[2 + 4 * len(spec.shape) : 6 + 4 * len(spec.shape)] = struct.pack("<f", float("nan"))

    ok = requests.post(url, data=good, timeout=5)
    assert ok.status_code == 200
    assert wire.decode_result(wire.envelope_from_bytes(ok.content).body).tier is wire.Tier.CLOUD

    cases = {
        400: b"not an envelope",
        422: _request(tiny_bundle, np.zeros((2, 2), np.float32), encoding=int8),
        409: _request(tiny_bundle, np.zeros(spec.shape, np.float32), version=999, encoding=int8),
        413: b"\0" * (65 * 1024),
    }
    for status, body in cases.items():
        response = requests.post(url, data=body, timeout=5)
        assert response.status_code == status, (status, response.text)
        assert response.json()["message"]
    for status, body in ((400, no_scale), (422, bytes(nan_scale))):  # int8 without scale; NaN scale
        response = requests.post(url, data=_envelope(body, tiny_bundle), timeout=5)
        assert response.status_code == status, (status, response.text)
    assert requests.get(cloud.url + "/v1/nowhere", timeout=5).json()["error"] == "not_found"
    health = requests.get(cloud.url + wire.ROUTE_HEALTH, timeout=5).json()
    assert health["status"] == "ok" and health["version"] == load_bundle(tiny_bundle).manifest.version
    assert requests.post(url, data=good, timeout=5).status_code == 200  # still serving
