"""TLS settings of MQTT links and the gateway's crypto settings: checked when loaded."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edgecascade.device_sdk.config import MqttConfig, load_config
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.transport.mqtt import MqttLink, tls_context
from edgecascade.edge_gateway.config import CryptoSettings, GatewayConfig, load_gateway_config
from edgecascade.edge_gateway.daemon import gateway_crypto
from edgecascade.tools.certs import Pki, init_pki, issue_device


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = init_pki(tmp_path_factory.mktemp("tls") / "pki")
    issue_device(pki.root, "cam-01")
    return pki


def test_tls_files_are_checked_when_the_config_loads(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            GatewayConfig,
            env={"EC_MQTT__CERT_FILE": str(pki.ca_cert), "EC_MQTT__CA_FILE": str(tmp_path / "nope.pem")},
        )
    text = str(info.value)
    assert "mqtt.cert_file and mqtt.key_file must be set together" in text
    assert "mqtt.ca_file: no such file" in text
    with pytest.raises(ConfigError, match="ca_file is required"):
        MqttConfig(cert_file=pki.gateway_dir() / "cert.pem", key_file=pki.gateway_dir() / "key.pem")
    config = pki.mqtt_config("gateway", port=8883)
    assert config.tls and config.cert_file == pki.gateway_dir() / "cert.pem"


def test_client_context_is_tls12_or_later_with_hostname_checks(pki: Pki) -> None:
    context = tls_context(pki.mqtt_config("cam-01"))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_there_is_no_plaintext_mode_and_bad_files_are_config_errors(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="TLS only"):
        MqttLink(MqttConfig(), "plain-client")
    mismatched = MqttConfig(
        ca_file=pki.ca_cert, cert_file=pki.device_dir("cam-01") / "cert.pem", key_file=pki.broker_key
    )
    with pytest.raises(ConfigError, match="TLS files unusable"):
        tls_context(mismatched)


def test_crypto_settings(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="required"):
        gateway_crypto(CryptoSettings())  # encryption is required by default, and needs keys
    assert gateway_crypto(CryptoSettings(required=False)) is None
    crypto = gateway_crypto(
        CryptoSettings(
            private_key=pki.gateway_x25519_key,
            device_keys=pki.device_keys,
            replay_store=tmp_path / "windows.db",
        )
    )
    assert crypto is not None and crypto.required and len(crypto.keyring) == 1
    with pytest.raises(ConfigError) as info:
        load_gateway_config(
            env={"EC_CRYPTO__PRIVATE_KEY": str(tmp_path / "missing.key"), "EC_CRYPTO__WINDOW": "0"}
        )
    for fragment in ("crypto.private_key: no such file", "set together", "crypto.window"):
        assert fragment in str(info.value)
