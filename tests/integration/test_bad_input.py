"""Malformed, mis-shaped and mis-versioned requests against the real gateway and cloud."""

from __future__ import annotations

import dataclasses
import http.client
import json
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.wire import codec
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, RawDevice, device_crypto

pytestmark = pytest.mark.integration

DEVICE = "rogue-device"


@pytest.fixture
def raw(gateway: GatewayDaemon, make_raw: Callable[[str], RawDevice]) -> RawDevice:
    return make_raw(DEVICE)


def _request(bundle_dir: Path, tensor: np.ndarray | bytes, version: int | None = None) -> bytes:
    """A plain request envelope, as the gateway forwards to the cloud (cut 2's encoding; bytes as is)."""
    manifest = load_bundle(bundle_dir).manifest
    header = wire.Header(
        wire.MessageType.INFER_REQUEST, DEVICE, manifest.version if version is None else version
    )
    if isinstance(tensor, np.ndarray):
        tensor = codec.encode_features(tensor, manifest.partition("gateway").encoding)
    return wire.envelope_to_bytes(wire.Envelope(header, tensor))


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
    cut1 = _cut1(tiny_bundle)
    good = raw.sealed(tiny_bundle, cut1)
    future_schema = bytearray(good)
    future_schema[2] = wire.SCHEMA_VERSION + 1

    # not readable at all: plain error replies (there is no verified sender to encrypt to)
    assert _error(raw.ask(b"\x00garbage")) is wire.ErrorCode.MALFORMED
    assert _error(raw.ask(good[:-3])) is wire.ErrorCode.MALFORMED
    assert _error(raw.ask(bytes(future_schema))) is wire.ErrorCode.UNSUPPORTED_SCHEMA
    assert not raw.last_encrypted
    # an envelope claiming to come from another device than its topic says
    other = raw.envelope(tiny_bundle, cut1, device="someone-else")
    assert _error(raw.ask(wire.envelope_to_bytes(other))) is wire.ErrorCode.MALFORMED
    # a well-formed request in the clear is refused
    assert (
        _error(raw.ask(wire.envelope_to_bytes(raw.envelope(tiny_bundle, cut1))))
        is wire.ErrorCode.UNAUTHORIZED
    )

    # decrypted, but wrong inside: the error replies are encrypted to the device
    assert load_bundle(tiny_bundle).manifest.partition("device").encoding == "1bit"
    assert _error(raw.ask(raw.sealed(tiny_bundle, np.zeros((3, 3), np.float32)))) is wire.ErrorCode.BAD_TENSOR
    assert raw.last_encrypted
    float16 = wire.encode_tensor(cut1.astype(np.float16))  # not this cut's encoding
    assert _error(raw.ask(raw.sealed(tiny_bundle, float16))) is wire.ErrorCode.BAD_TENSOR
    nan = cut1.copy()
    nan.flat[0] = np.nan
    assert _error(raw.ask(raw.sealed(tiny_bundle, wire.encode_tensor(nan)))) is wire.ErrorCode.BAD_TENSOR
    short_bits = codec.encode_features(cut1, "1bit")[:-1]
    assert _error(raw.ask(raw.sealed(tiny_bundle, short_bits))) is wire.ErrorCode.MALFORMED
    assert _error(raw.ask(raw.sealed(tiny_bundle, cut1, version=999))) is wire.ErrorCode.UNKNOWN_MODEL_VERSION
    assert raw.last_encrypted

    reply = raw.ask(good)  # sealed first, sent last: still inside the replay window
    assert raw.last_encrypted and reply.header.msg_type is wire.MessageType.RESULT
    assert wire.decode_result(reply.body).tier in (wire.Tier.GATEWAY, wire.Tier.CLOUD)

    def delta(key: str) -> int:
        return counters[key] - before.get(key, 0)

    assert delta("rejected_malformed") == 4
    assert delta("rejected_not_encrypted") == 1
    assert delta("rejected_bad_tensor") == 3
    assert delta("rejected_unsupported_schema") == 1
    assert delta("rejected_unknown_model_version") == 1


def test_device_turns_error_replies_into_degraded_answers(
    gateway: GatewayDaemon, broker: Mosquitto, tiny_bundle: Path, fmnist
) -> None:
    bundle = load_bundle(tiny_bundle)
    stale = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, version=999))

    crypto = device_crypto(broker.pki, "stale-device")  # issues the device's files first
    transport = MqttTransport(broker.mqtt_config("stale-device"), "stale-device")
    client = DeviceClient(stale, "stale-device", transport, policy=NeverExit(), crypto=crypto)
    try:
        prediction = client.predict(fmnist.x_test[0])
    finally:
        client.close()
    assert prediction.degraded and prediction.tier == "device"
    assert "409" in (prediction.error or "")


def test_cloud_http_errors_are_json(cloud: CloudServer, tiny_bundle: Path) -> None:
    url = cloud.url + wire.ROUTE_INFER
    spec = load_bundle(tiny_bundle).manifest.partition("cloud").input
    good = _request(tiny_bundle, np.zeros(spec.shape, np.float32))
    auth = {"Authorization": f"Bearer {cloud.gateway_token}"}
    head = 2 + 4 * len(spec.shape)  # tensor body: dtype, rank, dimensions, then scale + zero point
    int8 = codec.encode_features(np.ones(spec.shape, np.float32), "int8")
    no_scale = int8[:head] + int8[head + 5 :]
    nan_scale = int8[:head] + struct.pack("<f", np.nan) + int8[head + 4 :]

    ok = requests.post(url, data=good, headers=auth, timeout=5, verify=cloud.ca)
    assert ok.status_code == 200
    assert wire.decode_result(wire.envelope_from_bytes(ok.content).body).tier is wire.Tier.CLOUD

    cases = {
        400: b"not an envelope",
        422: _request(tiny_bundle, np.zeros((2, 2), np.float32)),
        409: _request(tiny_bundle, np.zeros(spec.shape, np.float32), version=999),
        413: b"\0" * (65 * 1024),
    }
    for status, body in cases.items():
        response = requests.post(url, data=body, headers=auth, timeout=5, verify=cloud.ca)
        assert response.status_code == status, (status, response.text)
        assert response.json()["message"]
    for status, tensor in ((400, no_scale), (422, nan_scale)):  # int8 without its scale; NaN scale
        response = requests.post(
            url, data=_request(tiny_bundle, tensor), headers=auth, timeout=5, verify=cloud.ca
        )
        assert response.status_code == status, (status, response.text)
    assert requests.get(cloud.url + "/v1/nowhere", timeout=5, verify=cloud.ca).json()["error"] == "not_found"
    health = requests.get(cloud.url + wire.ROUTE_HEALTH, timeout=5, verify=cloud.ca).json()
    assert health["status"] == "ok" and health["version"] == load_bundle(tiny_bundle).manifest.version
    assert (
        requests.post(url, data=good, headers=auth, timeout=5, verify=cloud.ca).status_code == 200
    )  # still serving


def test_a_bad_request_in_a_burst_costs_no_other_device_its_answers(
    gateway: GatewayDaemon, make_raw: Callable[[str], RawDevice], tiny_bundle: Path
) -> None:
    counters = gateway.service.counters
    before = counters["rejected_bad_tensor"]
    bystander, rogue = make_raw("bystander"), make_raw("rogue-shape")
    cut1 = _cut1(tiny_bundle)
    # (65536,) * 4 holds 2**64 elements, an int64 count of 0: once a ValueError that lost the whole batch
    wrapped = struct.pack(">BB4I", int(wire.DType.BITS), 4, *(65536,) * 4)
    good = [bystander.sealed(tiny_bundle, np.sign(cut1 + i - 2.5)) for i in range(6)]
    bad = rogue.sealed(tiny_bundle, wrapped)

    asked = [bystander.send(p) for p in good[:3]]  # one burst: the gateway batches what is queued
    bad_id = rogue.send(bad)
    asked += [bystander.send(p) for p in good[3:]]

    answered = {}
    for _ in asked:
        payload, correlation = bystander.replies.get(timeout=10)
        answered[correlation] = bystander.crypto.open(payload)
    assert set(answered) == set(asked)
    assert all(r.header.msg_type is wire.MessageType.RESULT for r in answered.values())
    payload, correlation = rogue.replies.get(timeout=10)
    assert correlation == bad_id
    assert _error(rogue.crypto.open(payload)) is wire.ErrorCode.BAD_TENSOR
    assert counters["rejected_bad_tensor"] == before + 1


def test_the_cloud_refuses_a_wrapped_around_shape_and_an_oversized_chunked_body(
    cloud: CloudServer, tiny_bundle: Path
) -> None:
    auth = {"Authorization": f"Bearer {cloud.gateway_token}"}
    spec = load_bundle(tiny_bundle).manifest.partition("gateway")
    wrapped = struct.pack(">BB4I", int(codec.Encoding(spec.encoding).code), 4, *(65536,) * 4) + b"\0" * 5
    response = requests.post(
        cloud.url + wire.ROUTE_INFER,
        data=_request(tiny_bundle, wrapped),
        headers=auth,
        timeout=5,
        verify=cloud.ca,
    )
    assert response.status_code == 422 and "65536" in response.json()["message"]

    before = dict(cloud.inference.counters)
    body = _request(
        tiny_bundle, np.zeros(load_bundle(tiny_bundle).manifest.partition("cloud").input.shape, np.float32)
    )
    body += b"\0" * (64 * 1024 + 1 - len(body))  # one byte over the cloud's max_body_bytes
    context = ssl.create_default_context(cafile=str(cloud.ca))
    host, port = cloud.url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
        connection.request("POST", wire.ROUTE_INFER, body=chunks, headers=auth, encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["error"] == "request_entity_too_large"
    finally:
        connection.close()
    assert cloud.inference.counters["requests"] == before.get("requests", 0)  # never reached the model
