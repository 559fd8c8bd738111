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


def test_relative_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "pki").mkdir(parents=True)
    (site / "pki" / "ca.pem").write_text("ca")
    path = site / "gateway.toml"
    path.write_text(
        '[gateway]\nbundle = "model"\n[mqtt]\nca_file = "pki/ca.pem"\n'
        '[cache]\npath = "/var/lib/cache.bin"\n[outbox]\npath = "state/outbox.db"\n'
    )
    monkeypatch.chdir(tmp_path)  # somewhere else: the file's directory counts, not this one
    config = load_gateway_config(path, env={"EC_UPDATE__DIR": "releases"})
    assert config.gateway.bundle == site.resolve() / "model"
    assert config.mqtt.ca_file == site.resolve() / "pki" / "ca.pem"
    assert config.cache.path == Path("/var/lib/cache.bin")  # absolute paths stay as written
    assert config.outbox.path == site.resolve() / "state" / "outbox.db"
    assert config.update.dir == Path("releases")  # from the environment: relative to the working directory
    assert load_gateway_config(env={"EC_GATEWAY__BUNDLE": "m"}).gateway.bundle == Path("m")


def test_every_missing_path_is_listed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nverify_key = "keys/cloud-signing.pub"\ncloud_ca = "keys/ca.pem"\n'
        '[mqtt]\nca_file = "keys/ca.pem"\ncert_file = "keys/cert.pem"\nkey_file = "keys/key.pem"\n'
        '[crypto]\nprivate_key = "keys/gateway-x25519.key"\ndevice_keys = "keys/device-keys"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, env={})
    missing = {p.split(":")[0] for p in info.value.problems}
    assert missing == {
        "gateway.verify_key",
        "gateway.cloud_ca",
        "mqtt.ca_file",
        "mqtt.cert_file",
        "mqtt.key_file",
        "crypto.private_key",
        "crypto.device_keys",
    }
    assert all(str(tmp_path / "keys") in p for p in info.value.problems)  # where each was looked for


def test_paths_that_must_exist_are_checked_only_when_set_and_only_by_the_loader(tmp_path: Path) -> None:
    from edgecascade.edge_gateway.config import GatewaySettings

    assert load_gateway_config(env={}).gateway.verify_key is None
    assert GatewaySettings(verify_key=tmp_path / "made-later.pub").verify_key == tmp_path / "made-later.pub"
    with pytest.raises(ConfigError, match=r"gateway\.verify_key: no such file"):
        load_gateway_config(env={"EC_GATEWAY__VERIFY_KEY": str(tmp_path / "nope.pub")})
