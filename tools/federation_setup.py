"""The files a federation's setup keeps: the Flower home in the state directory, the trusted site keys.

``edgecascade federated link`` writes ``<state>/flower-home`` (:func:`flower_home`): the
``flwr`` command reaches the SuperLink through it when ``register``, ``start`` and
``schedule`` run. ``register`` copies a site's public key into the directory the ServerApp
checks updates with (:func:`trusted_key_target` says where, or refuses).
"""

from __future__ import annotations

from pathlib import Path

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.federation import deploy

HOME = "flower-home"  # in the state directory
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def flower_home(state: Path, *, superlink: str | None = None, ca: Path | None = None) -> Path:
    """The Flower home in ``state`` through which ``flwr`` reaches the SuperLink: the one ``link``
    wrote, with ``superlink`` and ``ca`` where given (ConfigError when neither says one)."""
    home = Path(state) / HOME
    known = deploy.read_flower_home(home)
    address = superlink or (known[0] if known else None)
    root = ca or (known[1] if known else None)
    if address is None or root is None:
        wanted = "--superlink HOST:PORT" if address is None else "--ca PEM"
        raise ConfigError(
            f"no Flower home in {home}: start `edgecascade federated link` with --state {state}, "
            f"or give {wanted}"
        )
    if not Path(root).is_file():
        raise ConfigError(f"no CA certificate {root} to verify the SuperLink with")
    return deploy.write_flower_home(home, address, Path(root))


def reachable(host: str, port: int) -> str:
    """Where a client on this machine reaches a daemon listening on ``host``:``port``."""
    host = WILDCARDS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def trusted_key_target(directory: Path, site: str, public_key: Path) -> Path | None:
    """Where ``public_key`` goes to be trusted for ``site``: ``directory/<site>.pub``; None when
    that very key is there already. ConfigError when it is not an OpenSSH EC P-256 public key, or
    another key is trusted for the site: replacing it would disown the site's past signatures
    silently, so that is for the operator to do by hand."""
    key = _public_key(public_key)
    target = Path(directory) / f"{site}.pub"
    if not target.exists():
        return target
    if _public_key(target) == key:
        return None
    raise ConfigError(
        f"{target} already holds another key for site {site}; remove it first if the site's key was replaced"
    )


def _public_key(path: Path) -> bytes:
    """The OpenSSH form of the EC P-256 public key in ``path`` (comment dropped); else ConfigError."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path} is not an EC P-256 key")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
