"""``edgecascade certs``: the keys and certificates of one site, made with ``cryptography``.

``certs init DIR`` makes a private CA and everything the broker, the gateways and the cloud
need; ``certs device DIR ID`` adds one device; ``certs gateway DIR NAME`` adds another gateway
client certificate (scale-out); ``certs announcer DIR`` the cloud's broker identity, for a
site made before it existed. The layout of ``DIR``::

    DIR/                           0700; every private key file is 0600
      ca.pem  ca.key               the site CA (EC P-256); ca.key never leaves this machine
      broker.pem  broker.key       the broker's server certificate, SAN = the --host values
      gateway-x25519.key  .pub     the gateways' payload key pair (X25519), shared by every
                                   gateway of one share group: any of them may serve a device
      cloud-signing.key  .pub      the cloud's Ed25519 bundle-signing key (PKCS8 / SPKI PEM)
      gateways/<name>/cert.pem  key.pem     gateway client certificate, CN = name
      announcers/cloud/cert.pem  key.pem    the cloud's client certificate: it may only publish
                                            the model announcements (ec/v1/models/#)
      devices/<id>/cert.pem  key.pem        device client certificate, CN = device id
      devices/<id>/x25519-k<n>.key  .pub    the device's payload key pair, generation n
      devices/<id>/ca.pem  gateway-x25519.pub   copies, so the directory is all a device needs
      device-keys/<id>.k<n>.pub    the device public keys the gateways load (their keyring)
      federation/link.pem  link.key         the SuperLink's server certificate (collaborative
                                            training), SAN = the --host values
      federation/sites/<site>.key  .pub     a site's EC P-256 identity (OpenSSH): its SuperNode
                                            authenticates with it and signs its updates

The broker maps a client certificate's CN to its MQTT username, so a device's id *is* its
identity on the broker, and the ACL confines it to its own topics (:mod:`edgecascade.tools.broker`).
Nothing is overwritten unless ``force`` is given; ``rotate`` adds a device's next payload
key generation and keeps the older ones, so a gateway accepts both until the old public key
file is removed from ``device-keys/``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.wire.crypto import DEVICE_KEY_RE, device_key_file, device_public_key_file

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_GATEWAY = "gateway"
DEFAULT_ANNOUNCER = "cloud"
CA_DAYS = 3650
LEAF_DAYS = 825

_PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Pki:
    """Paths of a site's key material under ``root`` (see the module docstring)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def broker_cert(self) -> Path:
        return self.root / "broker.pem"

    @property
    def broker_key(self) -> Path:
        return self.root / "broker.key"

    @property
    def gateway_x25519_key(self) -> Path:
        return self.root / "gateway-x25519.key"

    @property
    def gateway_x25519_pub(self) -> Path:
        return self.root / "gateway-x25519.pub"

    @property
    def cloud_signing_key(self) -> Path:
        return self.root / "cloud-signing.key"

    @property
    def cloud_signing_pub(self) -> Path:
        return self.root / "cloud-signing.pub"

    @property
    def device_keys(self) -> Path:
        """The directory of device public keys a gateway loads."""
        return self.root / "device-keys"

    @property
    def link_cert(self) -> Path:
        return self.root / "federation" / "link.pem"

    @property
    def link_key(self) -> Path:
        return self.root / "federation" / "link.key"

    @property
    def site_keys(self) -> Path:
        """The sites' identity keys: ``<site>.key`` and ``<site>.pub``."""
        return self.root / "federation" / "sites"

    def gateway_dir(self, name: str = DEFAULT_GATEWAY) -> Path:
        return self.root / "gateways" / name

    def device_dir(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def announcer_dir(self, name: str = DEFAULT_ANNOUNCER) -> Path:
        return self.root / "announcers" / name

    def client_files(self, identity: str) -> tuple[Path, Path]:
        """Certificate and key of a gateway or announcer (if one by that name exists) or of a device."""
        for base in (self.gateway_dir(identity), self.announcer_dir(identity), self.device_dir(identity)):
            if (base / "cert.pem").exists():
                break
        return base / "cert.pem", base / "key.pem"

    def gateway_names(self) -> list[str]:
        """Names of the gateway client certificates issued so far."""
        return sorted(p.parent.name for p in (self.root / "gateways").glob("*/cert.pem"))

    def announcer_names(self) -> list[str]:
        """Names of the announcer (cloud) client certificates issued so far."""
        return sorted(p.parent.name for p in (self.root / "announcers").glob("*/cert.pem"))

    def mqtt_config(self, identity: str, host: str = "127.0.0.1", port: int = 8883) -> MqttConfig:
        """An MQTT config that connects as ``identity`` (a device id or a gateway name) over TLS."""
        cert, key = self.client_files(identity)
        return MqttConfig(host=host, port=port, ca_file=self.ca_cert, cert_file=cert, key_file=key)


# ------------------------------------------------------------------------------ commands
def init_pki(
    root: str | Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    gateway: str = DEFAULT_GATEWAY,
    force: bool = False,
) -> Pki:
    """Create the CA, the broker's server certificate, one gateway certificate and the site keys."""
    pki = Pki(Path(root))
    if not hosts:
        raise ConfigError("certs init needs at least one --host for the broker certificate")
    _check_name(gateway, "gateway name")
    targets = [pki.ca_cert, pki.ca_key, pki.broker_cert, pki.broker_key, pki.gateway_x25519_key]
    targets += [pki.gateway_x25519_pub, pki.cloud_signing_key, pki.cloud_signing_pub]
    _refuse_overwrite(targets, force)
    _make_dir(pki.root)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EdgeCascade site CA")])
    ca_cert = (
        _builder(name, name, ca_key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = _leaf(ca_cert, ca_key, "broker", broker_key, ExtendedKeyUsageOID.SERVER_AUTH, _san(hosts))
    _write_key(pki.broker_key, broker_key)
    _write_cert(pki.broker_cert, broker)
    gateway_x = x25519.X25519PrivateKey.generate()
    _write_key(pki.gateway_x25519_key, gateway_x)
    _write_public(pki.gateway_x25519_pub, gateway_x)
    signing = ed25519.Ed25519PrivateKey.generate()
    _write_key(pki.cloud_signing_key, signing)
    _write_public(pki.cloud_signing_pub, signing)
    _make_dir(pki.device_keys)
    issue_gateway(pki.root, gateway, force=force)
    issue_announcer(pki.root, force=force)
    return pki


def issue_announcer(root: str | Path, name: str = DEFAULT_ANNOUNCER, *, force: bool = False) -> Path:
    """The cloud's client certificate (CN ``name``) for publishing model announcements."""
    pki = _existing(root)
    _check_name(name, "announcer name")
    if pki.device_dir(name).exists() or name in pki.gateway_names():
        raise ConfigError(f"{name!r} is already a device id or gateway name; an announcer needs its own")
    directory = pki.announcer_dir(name)
    _refuse_overwrite([directory / "cert.pem", directory / "key.pem"], force)
    _issue_client(pki, directory, name)
    return directory


def issue_link(root: str | Path, hosts: Sequence[str] = DEFAULT_HOSTS, *, force: bool = False) -> Path:
    """The SuperLink's server certificate (SAN = ``hosts``), signed by the site CA; returns it."""
    pki = _existing(root)
    if not hosts:
        raise ConfigError("the SuperLink certificate needs at least one --host")
    _refuse_overwrite([pki.link_cert, pki.link_key], force)
    _make_dir(pki.link_cert.parent)
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki.link_key, key)
    _write_cert(
        pki.link_cert, _leaf(ca_cert, ca_key, "superlink", key, ExtendedKeyUsageOID.SERVER_AUTH, _san(hosts))
    )
    return pki.link_cert


def issue_site(root: str | Path, site: str) -> tuple[Path, Path]:
    """A site's identity key pair for collaborative training: ``(<site>.key, <site>.pub)``."""
    from edgecascade.federation.site_keys import new_site_key

    pki = _existing(root)
    _make_dir(pki.site_keys.parent)
    _make_dir(pki.site_keys)
    return new_site_key(pki.site_keys, site)


def issue_gateway(root: str | Path, name: str = DEFAULT_GATEWAY, *, force: bool = False) -> Path:
    """A gateway client certificate with CN ``name``; returns its directory."""
    pki = _existing(root)
    _check_name(name, "gateway name")
    if pki.device_dir(name).exists() or name in pki.announcer_names():
        raise ConfigError(f"{name!r} is already a device id or announcer; a gateway needs a name of its own")
    directory = pki.gateway_dir(name)
    _refuse_overwrite([directory / "cert.pem", directory / "key.pem"], force)
    _issue_client(pki, directory, name)
    return directory


def issue_device(root: str | Path, device_id: str, *, force: bool = False, rotate: bool = False) -> Path:
    """A device's client certificate (CN = id) and payload key pair; returns its directory.

    With ``rotate`` only a new payload key generation is added to an existing device.
    """
    pki = _existing(root)
    _check_name(device_id, "device id")
    wire.Header(wire.MessageType.INFER_REQUEST, device_id, 0)  # the wire's own id rule
    if device_id in (*pki.gateway_names(), *pki.announcer_names()):
        raise ConfigError(
            f"{device_id!r} is a gateway's name (or an announcer's); a device id must differ from it"
        )
    directory = pki.device_dir(device_id)
    generations = device_generations(directory)
    if rotate:
        if not generations:
            raise ConfigError(f"device {device_id!r} has no keys in {pki.root} to rotate")
        _write_device_x25519(pki, directory, device_id, max(generations) + 1)
        return directory
    _refuse_overwrite([directory / "cert.pem", directory / "key.pem"], force)
    if force:
        for old in generations:
            device_key_file(directory, old).unlink(missing_ok=True)
            device_key_file(directory, old).with_suffix(".pub").unlink(missing_ok=True)
            device_public_key_file(pki.device_keys, device_id, old).unlink(missing_ok=True)
    _issue_client(pki, directory, device_id)
    _write_device_x25519(pki, directory, device_id, 1)
    for src in (pki.ca_cert, pki.gateway_x25519_pub):
        shutil.copyfile(src, directory / src.name)
    return directory


def device_generations(directory: Path) -> list[int]:
    """Payload key generations present in a device directory."""
    found = []
    for path in directory.glob("x25519-k*.key"):
        match = DEVICE_KEY_RE.fullmatch(path.name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


# ------------------------------------------------------------------------------- helpers
def _existing(root: str | Path) -> Pki:
    pki = Pki(Path(root))
    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        raise ConfigError(f"{pki.root} holds no CA (ca.pem, ca.key); run 'edgecascade certs init' first")
    return pki


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(f"{what} {name!r} must be 1-64 letters, digits, '-', '_' or '.'")


def _refuse_overwrite(paths: Iterable[Path], force: bool) -> None:
    if force:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists; pass --force to overwrite")


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pki.ca_key} is not an EC private key")
    return cert, key


def _issue_client(pki: Pki, directory: Path, common_name: str) -> None:
    ca_cert, ca_key = _load_ca(pki)
    _make_dir(directory.parent)
    _make_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_cert, ca_key, common_name, key, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(directory / "key.pem", key)
    _write_cert(directory / "cert.pem", cert)


def _write_device_x25519(pki: Pki, directory: Path, device_id: str, generation: int) -> None:
    key = x25519.X25519PrivateKey.generate()
    private = device_key_file(directory, generation)
    _write_key(private, key)
    _write_public(private.with_suffix(".pub"), key)
    _make_dir(pki.device_keys)
    _write_public(device_public_key_file(pki.device_keys, device_id, generation), key)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file created 0600 from the start (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_key(path: Path, key: _PrivateKey) -> None:
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def _write_public(path: Path, key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> None:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
