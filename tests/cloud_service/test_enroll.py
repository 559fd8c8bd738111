"""Device enrolment: one-time expiring tokens, key checks, body validation and limits."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire.crypto import load_x25519_public

from .conftest import Cloud, bearer, envelope


def device_key() -> tuple[X25519PrivateKey, str]:
    private = X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, base64.b64encode(raw).decode()


def enrol(cloud: Cloud, token: str, **body: object) -> tuple[int, dict[str, object]]:
    response = cloud.client.post(wire.ROUTE_ENROLL, json=body, headers=bearer(token))
    return response.status_code, response.json


def test_enrolment_stores_the_key_and_returns_a_working_device_token(cloud: Cloud) -> None:
    private, public = device_key()
    status, body = enrol(cloud, cloud.token("enroll", "cam-01"), device_id="cam-01", public_key=public)
    assert status == 201, body
    assert body["device_id"] == "cam-01" and body["scope"] == "device" and body["key_id"] == 1
    stored = load_x25519_public(cloud.settings.device_keyring / "cam-01.k1.pub")  # the gateways' layout
    assert stored.public_bytes_raw() == private.public_key().public_bytes_raw()
    gateway = load_x25519_public(cloud.settings.gateway_public_key)  # type: ignore[arg-type]
    assert base64.b64decode(str(body["gateway_public_key"])) == gateway.public_bytes_raw()
    assert body["gateway_name"] == "gateway"
    token = str(body["token"])
    response = cloud.client.post(wire.ROUTE_INFER, data=envelope("cam-01"), headers=bearer(token))
    assert response.status_code == 200
    assert cloud.store.get(str(body["token_id"])).scope == "device"  # type: ignore[union-attr]


def test_an_enrolment_token_works_once(cloud: Cloud) -> None:
    token = cloud.token("enroll", "cam-01")
    assert enrol(cloud, token, device_id="cam-01", public_key=device_key()[1])[0] == 201
    status, body = enrol(cloud, token, device_id="cam-01", public_key=device_key()[1])
    assert status == 401 and "used" in str(body["message"])
    assert [p.name for p in cloud.settings.device_keyring.iterdir()] == ["cam-01.k1.pub"]


def test_an_expired_enrolment_token_is_refused(cloud: Cloud) -> None:
    token = cloud.token("enroll", "cam-01", ttl=0.05)
    time.sleep(0.1)
    status, body = enrol(cloud, token, device_id="cam-01", public_key=device_key()[1])
    assert status == 401 and "expired" in str(body["message"])
    assert not cloud.settings.device_keyring.exists()


def test_a_token_enrols_only_the_device_it_names_and_is_not_spent_by_a_refusal(cloud: Cloud) -> None:
    token = cloud.token("enroll", "cam-01")
    status, body = enrol(cloud, token, device_id="cam-99", public_key=device_key()[1])
    assert status == 403 and "cam-01" in str(body["message"])
    for bad_key, message in (
        ("A" * 43 + "!", "base64"),
        (base64.b64encode(b"\x01" * 31).decode(), "32 bytes"),
        (base64.b64encode(bytes(32)).decode(), "low-order"),
    ):
        status, body = enrol(cloud, token, device_id="cam-01", public_key=bad_key)
        assert status == 400 and message in str(body["message"]), (bad_key, body)
    assert enrol(cloud, token, device_id="cam-01", public_key=device_key()[1])[0] == 201


def test_re_enrolment_replaces_the_keys_and_revokes_the_old_token(cloud: Cloud) -> None:
    _, first = enrol(cloud, cloud.token("enroll", "cam-01"), device_id="cam-01", public_key=device_key()[1])
    _, second = enrol(
        cloud, cloud.token("enroll", "cam-01"), device_id="cam-01", public_key=device_key()[1], key_id=2
    )
    assert sorted(p.name for p in cloud.settings.device_keyring.iterdir()) == ["cam-01.k2.pub"]
    old = cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(str(first["token"])))
    assert old.status_code == 401 and "revoked" in old.json["message"]
    new = cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(str(second["token"])))
    assert new.status_code == 200


@pytest.mark.parametrize(
    "data, content_type, status, messages",
    [
        (b'{"device_id": "cam-01",', "application/json", 400, ["not valid JSON"]),
        (b"\xff\xfe", "application/json", 400, ["not UTF-8"]),
        (b"[" * 3000 + b"]" * 3000, "application/json", 413, ["exceeds"]),
        (b"[" * 1500 + b"]" * 1500, "application/json", 400, ["nested too deeply"]),
        (b"[[1]]", "application/json", 400, ["$: expected object, got array"]),
        (b"{}", "application/json", 400, ["$.device_id: required", "$.public_key: required"]),
        (
            json.dumps({"device_id": 7, "public_key": "x", "key_id": True, "admin": 1}).encode(),
            "application/json",
            400,
            [
                "$.device_id: expected string",
                "$.public_key: shorter",
                "$.key_id: expected integer",
                "$.admin",
            ],
        ),
        (
            json.dumps({"device_id": "../etc", "public_key": "A" * 44}).encode(),
            "application/json",
            400,
            ["match"],
        ),
        (b'{"device_id": "cam-01"}', "text/plain", 415, ["application/json"]),
        (b"{" + b" " * 5000 + b"}", "application/json", 413, [""]),
    ],
)
def test_bad_enrolment_bodies_get_a_clear_4xx_and_keep_the_token(
    cloud: Cloud, data: bytes, content_type: str, status: int, messages: list[str]
) -> None:
    token = cloud.token("enroll", "cam-01")
    response = cloud.client.post(
        wire.ROUTE_ENROLL, data=data, headers={**bearer(token), "Content-Type": content_type}
    )
    assert response.status_code == status, response.json
    for message in messages:
        assert message in response.json["message"]
    assert cloud.store.authenticate(token).state() == "active"  # a refused request does not spend it


def test_enrolment_needs_the_gateway_key_configured(make_cloud: Callable[..., Cloud]) -> None:
    cloud = make_cloud(gateway_public_key=None)
    status, body = enrol(
        cloud, cloud.token("enroll", "cam-01"), device_id="cam-01", public_key=device_key()[1]
    )
    assert status == 503 and "gateway_public_key" in str(body["message"])
