"""Bearer tokens against the real cloud over HTTP, the gateway's link sending its token, enrolment."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import RemoteError, TransportError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto, device_pair_keys
from edgecascade.edge_gateway.cloud_link import HttpCloudLink
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto
from edgecascade.tools.certs import issue_device
from edgecascade.training.data import Dataset

from .conftest import CloudServer

pytestmark = pytest.mark.integration


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cloud_request(bundle_dir: Path) -> bytes:
    manifest = load_bundle(bundle_dir).manifest
    tensor = np.zeros(manifest.partition("cloud").input.shape, np.float32)
    header = wire.Header(wire.MessageType.INFER_REQUEST, "auth-test", manifest.version)
    body = codec.encode_features(tensor, manifest.partition("gateway").encoding)
    return wire.envelope_to_bytes(wire.Envelope(header, body))


def test_the_api_needs_tokens_over_https(cloud: CloudServer, tiny_bundle: Path) -> None:
    assert requests.get(cloud.url + wire.ROUTE_HEALTH, timeout=5, verify=cloud.ca).status_code == 200
    refused = requests.post(
        cloud.url + wire.ROUTE_INFER, data=_cloud_request(tiny_bundle), timeout=5, verify=cloud.ca
    )
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    as_gateway = {"Authorization": f"Bearer {cloud.gateway_token}"}
    as_admin = {"Authorization": f"Bearer {cloud.admin_token}"}
    assert (
        requests.get(
            cloud.url + wire.ROUTE_METRICS, headers=as_gateway, timeout=5, verify=cloud.ca
        ).status_code
        == 403
    )
    metrics = requests.get(cloud.url + wire.ROUTE_METRICS, headers=as_admin, timeout=5, verify=cloud.ca)
    assert metrics.status_code == 200 and metrics.json()["http_401"] >= 1


def test_the_gateway_link_sends_its_token(cloud: CloudServer, tiny_bundle: Path) -> None:
    request = _cloud_request(tiny_bundle)
    link = HttpCloudLink(cloud.url, timeout=5, token=cloud.gateway_token, ca_file=cloud.ca)
    try:
        reply = wire.envelope_from_bytes(link.infer(request))
    finally:
        link.close()
    assert wire.decode_result(reply.body).tier is wire.Tier.CLOUD
    token_id = cloud.gateway_token.split(".")[0]
    for token in ("", f"{token_id}.{'A' * 43}"):
        with pytest.raises(RemoteError) as info:
            HttpCloudLink(cloud.url, timeout=5, token=token, ca_file=cloud.ca).infer(request)
        assert info.value.code == 401


def test_an_enrolled_device_is_served_end_to_end(
    cloud: CloudServer, gateway: GatewayDaemon, broker: Mosquitto, tiny_bundle: Path, fmnist: Dataset
) -> None:
    device_id = "enrolled-cam"
    issue_device(broker.pki.root, device_id)  # its TLS certificate (and a k1 key the enrolment replaces)
    assert cloud.tokens is not None
    token, _ = cloud.tokens.create("enroll", device_id)
    private = X25519PrivateKey.generate()
    body = {
        "device_id": device_id,
        "public_key": base64.b64encode(private.public_key().public_bytes_raw()).decode(),
    }
    response = requests.post(
        cloud.url + wire.ROUTE_ENROLL,
        json={**body, "key_id": 2},
        headers=_bearer(token),
        timeout=5,
        verify=cloud.ca,
    )
    assert response.status_code == 201, response.text
    reply = response.json()
    assert [p.name for p in broker.pki.device_keys.glob(f"{device_id}.k*.pub")] == [f"{device_id}.k2.pub"]

    gateway_key = X25519PublicKey.from_public_bytes(base64.b64decode(reply["gateway_public_key"]))
    keys = {2: device_pair_keys(private, gateway_key, device_id, 2, reply["gateway_name"])}
    transport = MqttTransport(broker.mqtt_config(device_id), device_id)
    bundle = load_bundle(tiny_bundle)
    with DeviceClient(
        bundle, device_id, transport, crypto=DeviceCrypto(device_id, keys), policy=NeverExit()
    ) as client:
        prediction = client.predict(fmnist.x_test[0])
    assert not prediction.degraded, prediction.error
    assert prediction.tier in ("gateway", "cloud")

    again = requests.post(
        cloud.url + wire.ROUTE_ENROLL, json=body, headers=_bearer(token), timeout=5, verify=cloud.ca
    )
    assert again.status_code == 401 and "used" in again.json()["message"]
    envelope = wire.Envelope(
        wire.Header(wire.MessageType.INFER_REQUEST, device_id, bundle.manifest.version), b""
    )
    as_device = requests.post(
        cloud.url + wire.ROUTE_INFER,
        data=wire.envelope_to_bytes(envelope),
        headers=_bearer(reply["token"]),
        timeout=5,
        verify=cloud.ca,
    )
    assert as_device.status_code == 400  # authenticated as the device; the empty body is what is wrong


def test_the_cloud_speaks_only_https_with_the_site_certificate(cloud: CloudServer, tiny_bundle: Path) -> None:
    assert cloud.url.startswith("https://")
    request = _cloud_request(tiny_bundle)
    untrusting = HttpCloudLink(cloud.url, timeout=5, token=cloud.gateway_token)  # system CAs only
    with pytest.raises(TransportError, match="unreachable"):
        untrusting.infer(request)
    plain = cloud.url.replace("https://", "http://")
    with pytest.raises(requests.RequestException):
        requests.get(plain + wire.ROUTE_HEALTH, timeout=5)
    trusting = HttpCloudLink(cloud.url, timeout=5, token=cloud.gateway_token, ca_file=cloud.ca)
    assert wire.envelope_from_bytes(trusting.infer(request)).header.msg_type is wire.MessageType.RESULT
