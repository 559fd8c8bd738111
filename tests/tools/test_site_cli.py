"""``edgecascade site config``: settings files that load, agree with each other, and travel."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecascade.cloud_service.config import load_cloud_config
from edgecascade.device_sdk.device_config import load_device_config
from edgecascade.edge_gateway.config import load_gateway_config
from edgecascade.tools.certs import init_pki, issue_device
from edgecascade.tools.cli import main
from tests.fake_bundle import make_bundle


def test_the_files_load_and_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    pki = init_pki(site / "pki")
    issue_device(pki.root, "cam-01")
    make_bundle(site / "model")
    argv = ["site", "config", "--pki", str(pki.root), "--model", str(site / "model"), "--out", str(site)]
    assert main([*argv, "--port", "18883", "--cloud-url", "https://127.0.0.1:18080"]) == 0
    monkeypatch.chdir(tmp_path)  # the files' own directories count, not this one

    cloud = load_cloud_config(site / "cloud.toml", env={}).cloud
    gateway = load_gateway_config(site / "gateway.toml", env={})
    device = load_device_config(pki.device_dir("cam-01") / "device.toml", env={})
    root = site.resolve()
    assert cloud.device_keyring == gateway.crypto.device_keys == root / "pki" / "device-keys"
    assert cloud.bundle == gateway.gateway.bundle == root / "model"
    assert cloud.verify_key == gateway.gateway.verify_key == root / "pki" / "cloud-signing.pub"
    assert (cloud.host, cloud.port) == ("127.0.0.1", 18080)
    assert gateway.gateway.cloud_url == "https://127.0.0.1:18080"
    assert cloud.tls_cert == root / "pki" / "broker.pem"  # HTTPS with the broker's certificate...
    assert gateway.gateway.cloud_ca == root / "pki" / "ca.pem"  # ...which the gateway trusts
    assert cloud.database_url == f"sqlite:///{root / 'state' / 'cloud' / 'cloud.db'}"
    assert gateway.mqtt.port == device.mqtt.port == 18883
    assert gateway.mqtt.cert_file == root / "pki" / "gateways" / "gateway" / "cert.pem"
    assert gateway.gateway.cloud_token == ""  # a secret: from the environment, never the file

    moved = shutil.copytree(pki.device_dir("cam-01"), tmp_path / "on-the-device")  # the directory travels
    assert load_device_config(moved / "device.toml", env={}).mqtt.cert_file == moved.resolve() / "cert.pem"


def test_nothing_is_overwritten_and_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = init_pki(tmp_path / "pki")
    model = make_bundle(tmp_path / "model")
    argv = ["site", "config", "--pki", str(pki.root), "--model", str(model), "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cloud.toml" in err and "gateway.toml" in err and "--force" in err and err.count("\n") == 1
    assert main([*argv, "--force"]) == 0
    assert main([*argv[:5], str(tmp_path / "nothing"), *argv[6:], "--force"]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert main([*argv, "--force", "--cloud-url", "ftp://cloud"]) == 2
    assert main(["site", "config", "--pki", str(tmp_path / "none"), "--model", str(model), "--out", "x"]) == 2
