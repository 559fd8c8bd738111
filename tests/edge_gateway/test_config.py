"""Security settings of the gateway and cloud: env overrides, secrets kept out of reprs, hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, load_cloud_config
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.errors import EXIT_MODEL, ConfigError, SignatureError, exit_code
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.edge_gateway.config import GatewaySettings, load_gateway_config
from edgecascade.edge_gateway.daemon import GatewayDaemon
from tests.fake_bundle import make_bundle


def test_gateway_token_and_verify_key_come_from_the_environment(tmp_path: Path) -> None:
    token = "ec_0123456789abcdef." + "s" * 43
    key = tmp_path / "k.pub"
    key.write_text("key")
    config = load_gateway_config(env={"EC_GATEWAY__CLOUD_TOKEN": token, "EC_GATEWAY__VERIFY_KEY": str(key)})
    assert config.gateway.cloud_token == token and config.gateway.verify_key == key
    assert "s" * 43 not in repr(config)  # a logged config does not leak the token
    with pytest.raises(ConfigError, match="cloud_token must not contain whitespace"):
        GatewaySettings(cloud_token="ec_x y")


def test_cloud_security_settings_from_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "k.pub"
    key.write_text("key")
    config = load_cloud_config(
        env={
            "EC_CLOUD__TOKEN_STORE": "s/t.db",
            "EC_CLOUD__VERIFY_KEY": str(key),
            "EC_CLOUD__GATEWAY_NAME": "gw",
        }
    )
    assert config.cloud.token_store == Path("s/t.db") and config.cloud.verify_key == key
    assert config.cloud.gateway_name == "gw" and config.cloud.gateway_public_key is None


def test_every_tier_refuses_an_unsigned_bundle_when_it_has_a_verify_key(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    _, public = generate_signing_key(tmp_path / "keys")
    with pytest.raises(SignatureError) as info:
        GatewayDaemon(
            load_gateway_config(
                env={"EC_GATEWAY__BUNDLE": str(bundle), "EC_GATEWAY__VERIFY_KEY": str(public)}
            )
        )
    assert exit_code(info.value) == EXIT_MODEL
    settings = CloudSettings(bundle=bundle, verify_key=public, token_store=tmp_path / "t.db")
    with pytest.raises(SignatureError):
        create_app(CloudConfig(settings))
    with pytest.raises(SignatureError):
        DeviceClient.from_bundle(bundle, "cam-01", verify_key=public)
