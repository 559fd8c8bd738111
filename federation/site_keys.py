"""A site's identity key: the EC P-256 key its SuperNode authenticates with and signs updates with.

Flower's SuperNode authentication reads OpenSSH files (``--auth-supernode-private-key``,
``flwr supernode register <pub>``), so a site keeps one key for both: ``<site>.key``
(unencrypted OpenSSH private key, mode 0600) and ``<site>.pub`` (one OpenSSH public line).
The server trusts a directory of ``*.pub`` files, the file stem being the site's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.files import atomic_write

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a file stem and a counter label


def new_site_key(out_dir: Path, site: str) -> tuple[Path, Path]:
    """Write a new ``<site>.key`` (0600) and ``<site>.pub`` into ``out_dir``.

    Refuses to replace either file: the server would stop trusting the site's updates.
    """
    if not SITE_NAME.fullmatch(site):
        raise ConfigError(f"site name {site!r}: letters, digits, '.', '_', '-', at most 64")
    out = Path(out_dir)
    key_path, pub_path = out / f"{site}.key", out / f"{site}.pub"
    if key_path.exists() or pub_path.exists():
        raise ConfigError(f"{key_path} or {pub_path} already exists; refusing to replace a site key")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write(key_path, private, mode=0o600)
    atomic_write(pub_path, public + f" {site}\n".encode(), mode=0o644)
    return key_path, pub_path


def _read_p256(path: Path, private: bool) -> Any:
    """The EC P-256 key in an OpenSSH file (private: unencrypted); anything else is a ConfigError."""
    try:
        data = Path(path).read_bytes()
        if private:
            key: Any = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_ssh_public_key(data)
    except OSError as exc:
        raise ConfigError(f"cannot read site key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{path} is not an {'unencrypted OpenSSH private' if private else 'OpenSSH public'} key"
        ) from None
    if not isinstance(getattr(key, "curve", None), ec.SECP256R1):
        raise ConfigError(f"{path} is not an EC P-256 key")
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A site's EC P-256 private key from its unencrypted OpenSSH file; else a ConfigError."""
    return cast(ec.EllipticCurvePrivateKey, _read_p256(path, private=True))


def load_public_keys(directory: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """Every site's public key in ``directory``: site name = stem of each ``*.pub``.

    One unreadable or non-P-256 file refuses the whole set (one ConfigError lists every bad
    file): a server that silently skipped a site's key would refuse all its updates.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(f"site key directory {folder} does not exist")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    problems = []
    for path in sorted(folder.glob("*.pub")):
        if not SITE_NAME.fullmatch(path.stem):
            problems.append(f"{path}: {path.stem!r} is not a site name")
            continue
        try:
            keys[path.stem] = cast(ec.EllipticCurvePublicKey, _read_p256(path, private=False))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return keys
