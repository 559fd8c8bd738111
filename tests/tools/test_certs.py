"""``edgecascade certs``: files, permissions, certificate contents, no silent overwrites."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.tools.certs import Pki, init_pki, issue_device, issue_gateway
from edgecascade.tools.cli import main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("site") / "pki"
    pki = init_pki(root, ["127.0.0.1", "broker.local"])
    issue_device(root, "cam-01")
    return pki


def test_init_writes_the_documented_layout(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    broker = _cert(pki.broker_cert)
    assert _signed_by(broker, ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["broker.local"]
    usage = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    gateway = _cert(pki.gateway_dir() / "cert.pem")
    assert _cn(gateway) == "gateway" and _signed_by(gateway, ca)
    assert list(gateway.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]

    signing = serialization.load_pem_private_key(pki.cloud_signing_key.read_bytes(), None)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert b"BEGIN PRIVATE KEY" in pki.cloud_signing_key.read_bytes()  # PKCS8, unencrypted
    public = serialization.load_pem_public_key(pki.cloud_signing_pub.read_bytes())
    assert public == signing.public_key()
    gateway_x = serialization.load_pem_private_key(pki.gateway_x25519_key.read_bytes(), None)
    assert isinstance(gateway_x, x25519.X25519PrivateKey)
    assert serialization.load_pem_public_key(pki.gateway_x25519_pub.read_bytes()) == gateway_x.public_key()
    assert pki.gateway_names() == ["gateway"]
    announcer = _cert(pki.announcer_dir() / "cert.pem")
    assert _cn(announcer) == "cloud" and _signed_by(announcer, ca)
    assert (
        pki.announcer_names() == ["cloud"]
        and pki.client_files("cloud")[0] == pki.announcer_dir() / "cert.pem"
    )


def test_device_files_and_permissions(pki: Pki) -> None:
    directory = pki.device_dir("cam-01")
    cert = _cert(directory / "cert.pem")
    assert _cn(cert) == "cam-01" and _signed_by(cert, _cert(pki.ca_cert))
    key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == cert.public_key()
    payload = serialization.load_pem_private_key((directory / "x25519-k1.key").read_bytes(), None)
    assert isinstance(payload, x25519.X25519PrivateKey)
    registered = serialization.load_pem_public_key((pki.device_keys / "cam-01.k1.pub").read_bytes())
    assert registered == payload.public_key()
    assert (directory / "ca.pem").read_bytes() == pki.ca_cert.read_bytes()
    assert (directory / "gateway-x25519.pub").read_bytes() == pki.gateway_x25519_pub.read_bytes()

    secrets = [pki.ca_key, pki.broker_key, pki.gateway_x25519_key, pki.cloud_signing_key]
    secrets += [pki.gateway_dir() / "key.pem", directory / "key.pem", directory / "x25519-k1.key"]
    assert {_mode(p) for p in secrets} == {0o600}
    directories = [pki.root, pki.device_keys, directory, directory.parent, pki.gateway_dir()]
    assert {_mode(d) for d in directories} == {0o700}


def test_nothing_is_overwritten_without_force(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pki = init_pki(root)
    ca = pki.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        init_pki(root)
    assert pki.ca_cert.read_bytes() == ca
    issue_device(root, "cam-01")
    first = (pki.device_dir("cam-01") / "key.pem").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        issue_device(root, "cam-01")
    issue_device(root, "cam-01", force=True)
    assert (pki.device_dir("cam-01") / "key.pem").read_bytes() != first
    init_pki(root, force=True)
    assert pki.ca_cert.read_bytes() != ca


def test_rotation_and_refusals(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pki = init_pki(root)
    with pytest.raises(ConfigError, match="no keys"):
        issue_device(root, "cam-01", rotate=True)
    issue_device(root, "cam-01")
    issue_device(root, "cam-01", rotate=True)
    assert sorted(p.name for p in pki.device_keys.iterdir()) == ["cam-01.k1.pub", "cam-01.k2.pub"]
    with pytest.raises(ConfigError, match="gateway's name"):
        issue_device(root, "gateway")  # would get the gateway's ACL rights
    with pytest.raises(ConfigError, match="announcer's"):
        issue_device(root, "cloud")  # would get the right to announce models
    with pytest.raises(ConfigError, match="already a device id"):
        issue_gateway(root, "cam-01")
    with pytest.raises(ConfigError, match="device id"):
        issue_device(root, "a/b")
    with pytest.raises(ConfigError, match="no CA"):
        issue_device(tmp_path / "empty", "cam-01")
    issue_gateway(root, "gateway-2")
    assert pki.gateway_names() == ["gateway", "gateway-2"]


def test_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "pki")
    assert main(["certs", "init", root, "--host", "10.0.0.5"]) == 0
    assert main(["certs", "device", root, "cam-07"]) == 0
    assert main(["certs", "gateway", root, "gw-2"]) == 0
    capsys.readouterr()
    assert main(["certs", "init", root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "Traceback" not in err
    san = _cert(Path(root) / "broker.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
