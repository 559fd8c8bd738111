from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.device_sdk.config import MqttConfig, load_config
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.edge_gateway.config import GatewayConfig, load_gateway_config


def test_toml_then_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\ncloud_url = "http://cloud:9000"\nmax_batch = 8\n[mqtt]\nport = 1884\n')
    config = load_gateway_config(
        path, env={"EC_MQTT__PORT": "1999", "EC_GATEWAY__SHARED_SUBSCRIPTION": "false"}
    )
    assert config.gateway.cloud_url == "http://cloud:9000"
    assert config.gateway.max_batch == 8
    assert config.mqtt.port == 1999
    assert config.gateway.shared_subscription is False
    assert isinstance(config.gateway.bundle, Path)


def test_defaults_without_a_file() -> None:
    config = load_config(GatewayConfig, env={})
    assert config.mqtt == MqttConfig()


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nmax_batch = "many"\ncolour = "red"\n[mqtt]\nport = 1.5\n[extra]\nx = 1\n')
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, env={})
    text = str(info.value)
    for fragment in ("gateway.max_batch", "gateway.colour", "mqtt.port", "[extra]"):
        assert fragment in text


def test_range_checks_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_gateway_config(env={"EC_MQTT__PORT": "70000"})
    with pytest.raises(ConfigError, match="cloud_url"):
        load_gateway_config(env={"EC_GATEWAY__CLOUD_URL": "ftp://x"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_gateway_config(bad, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_gateway_config(tmp_path / "missing.toml", env={})
