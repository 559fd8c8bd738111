"""Bearer tokens and scopes on the real Flask app: 401, 403, 413, and what the store keeps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgecascade.cloud_service.auth import require_scope
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import AuthError, ConfigError

from .conftest import Cloud, bearer, envelope


def test_health_is_open_and_the_api_is_not(cloud: Cloud) -> None:
    assert cloud.client.get(wire.ROUTE_HEALTH).status_code == 200
    for method, route in (
        ("post", wire.ROUTE_INFER),
        ("get", wire.ROUTE_METRICS),
        ("post", wire.ROUTE_ENROLL),
    ):
        response = getattr(cloud.client, method)(route)
        assert response.status_code == 401, route
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json["error"] == "unauthorized" and "Authorization" in response.json["message"]
    assert cloud.inference.payloads == []


@pytest.mark.parametrize(
    "header, message",
    [
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer not-a-token", "malformed token"),
        ("Bearer ec_0123456789abcdef." + "A" * 43, "invalid token"),  # unknown id
    ],
)
def test_malformed_or_unknown_tokens_get_401(cloud: Cloud, header: str, message: str) -> None:
    response = cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers={"Authorization": header})
    assert response.status_code == 401
    assert message in response.json["message"]
    assert cloud.inference.payloads == []


def test_wrong_secret_gets_401_even_after_the_right_one_was_accepted(cloud: Cloud) -> None:
    token = cloud.token("gateway", "gw1")
    assert cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(token)).status_code == 200
    token_id, secret = token.split(".")
    wrong = f"{token_id}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    response = cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(wrong))
    assert response.status_code == 401 and response.json["message"] == "invalid token"
    assert len(cloud.inference.payloads) == 1


def test_revoked_and_expired_tokens_get_401(cloud: Cloud) -> None:
    token = cloud.token("gateway", "gw1")
    assert cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(token)).status_code == 200
    assert cloud.store.revoke(token[3:19])  # revocation wins over the verified-secret cache
    response = cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(token))
    assert response.status_code == 401 and "revoked" in response.json["message"]
    short = cloud.token("gateway", "gw2", ttl=0.05)
    time.sleep(0.1)
    response = cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(short))
    assert response.status_code == 401 and "expired" in response.json["message"]


def test_scopes_of_each_route(cloud: Cloud) -> None:
    tokens = {scope: cloud.token(scope, "cam-01") for scope in ("device", "gateway", "admin", "enroll")}
    infer = {
        s: cloud.client.post(wire.ROUTE_INFER, data=envelope(), headers=bearer(t)) for s, t in tokens.items()
    }
    assert {s: r.status_code for s, r in infer.items()} == {
        "device": 200,
        "gateway": 200,
        "admin": 403,
        "enroll": 403,
    }
    assert (
        infer["admin"].json["error"] == "forbidden"
        and "needs gateway or device" in infer["admin"].json["message"]
    )
    metrics = {
        s: cloud.client.get(wire.ROUTE_METRICS, headers=bearer(t)).status_code for s, t in tokens.items()
    }
    assert metrics == {"device": 403, "gateway": 403, "admin": 200, "enroll": 403}
    body = cloud.client.get(wire.ROUTE_METRICS, headers=bearer(tokens["admin"])).json
    assert body["http_403"] >= 5 and body["requests"] == 2


def test_a_device_token_cannot_use_gateway_routes(cloud: Cloud) -> None:
    @cloud.app.post("/v1/test/gateway-only")
    @require_scope("gateway")
    def gateway_only() -> str:
        return "ok"

    device, gateway = cloud.token("device", "cam-01"), cloud.token("gateway", "gw1")
    assert cloud.client.post("/v1/test/gateway-only", headers=bearer(device)).status_code == 403
    assert cloud.client.post("/v1/test/gateway-only", headers=bearer(gateway)).status_code == 200


def test_a_device_token_speaks_only_for_its_own_device(cloud: Cloud) -> None:
    token = cloud.token("device", "cam-01")
    response = cloud.client.post(wire.ROUTE_INFER, data=envelope("cam-02"), headers=bearer(token))
    assert response.status_code == 403 and "cam-02" in response.json["message"]
    gateway = cloud.token("gateway", "gw1")  # a gateway forwards for every device
    assert (
        cloud.client.post(wire.ROUTE_INFER, data=envelope("cam-02"), headers=bearer(gateway)).status_code
        == 200
    )


def test_oversize_body_gets_413(cloud: Cloud) -> None:
    token = cloud.token("gateway", "gw1")
    response = cloud.client.post(wire.ROUTE_INFER, data=b"x" * 9000, headers=bearer(token))
    assert response.status_code == 413 and response.json["error"] == "request_entity_too_large"
    assert cloud.inference.payloads == []


def test_tokens_are_never_stored_in_clear(cloud: Cloud) -> None:
    tokens = [cloud.token(scope, "n1") for scope in ("device", "gateway", "admin", "enroll")]
    cloud.store.close()
    stored = b"".join(p.read_bytes() for p in cloud.settings.token_store.parent.iterdir() if p.is_file())
    assert cloud.settings.token_store.stat().st_mode & 0o077 == 0
    for token in tokens:
        token_id, secret = token.removeprefix("ec_").split(".")
        assert token_id.encode() in stored  # the row is there ...
        assert secret.encode() not in stored and token.encode() not in stored  # ... the secret is not


def test_store_rejects_bad_scopes_and_names(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.db")
    with pytest.raises(ConfigError) as info:
        store.create("root", "../x", ttl=-1)
    assert len(info.value.problems) == 3
    assert store.list() == []


def test_single_use_token_can_be_spent_once(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.db")
    token, info = store.create("enroll", "cam-01")
    assert (
        info.single_use and info.expires is not None and info.expires - info.created == pytest.approx(86400)
    )
    assert store.authenticate(token).token_id == info.token_id
    with store.transaction() as db:
        assert store.spend(info.token_id, db)
    with store.transaction() as db:
        assert not store.spend(info.token_id, db)
    with pytest.raises(AuthError, match="is used"):
        store.authenticate(token)
    # another process (a second worker) sees the same state through the file
    assert TokenStore(tmp_path / "tokens.db").get(info.token_id).state() == "used"  # type: ignore[union-attr]
