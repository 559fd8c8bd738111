"""``edgecascade federated keys|register|node``: a site's key pair, letting a site in, running a site.

A site makes its own key pair (``keys``): the private half stays with its SuperNode, the
public half goes to the cloud's operator, who ``register``s it: the SuperLink then lets the
site's SuperNode connect, and the ServerApp trusts updates signed with it (a copy in the
directory of site keys, :func:`~edgecascade.tools.federation_setup.trusted_key_target`).
``node`` runs the site's SuperNode in the foreground.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgecascade.tools.federation_setup import flower_home, trusted_key_target

DEFAULT_STATE = Path("state/federation")
NODE_PORT = 9094


def state_option(p: argparse.ArgumentParser) -> None:
    """``--state DIR``: where the cloud's side of the federation keeps its files."""
    p.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        metavar="DIR",
        help="the SuperLink's state: its database, the Flower home, the submitted app (default %(default)s)",
    )


def port_number(text: str) -> int:
    number = int(text)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {number}")
    return number


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _site(text: str) -> str:
    from edgecascade.federation.site_keys import SITE_NAME

    if not SITE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_', '-', at most 64")
    return text


# ------------------------------------------------------------------------------ keys
def add_keys(sub: Any) -> None:
    p = sub.add_parser(
        "keys",
        help="a site's key pair: its SuperNode authenticates and signs its updates with it",
        description="Write OUT/SITE.key (the private key, 0600: it stays at the site) and OUT/SITE.pub "
        "(for the cloud's operator: `edgecascade federated register`). Never replaces a key.",
    )
    p.add_argument(
        "site", type=_site, metavar="SITE", help="the site's name (letters, digits, '.', '_', '-')"
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write the two files")
    p.set_defaults(func=_keys)


def _keys(args: argparse.Namespace) -> int:
    from edgecascade.federation.site_keys import new_site_key

    key, public = new_site_key(args.out, args.site)
    print(f"site {args.site}: the private key {key} stays at the site (the SuperNode's --key)")
    print(
        f"hand {public} to the cloud's operator: edgecascade federated register {args.site} --public-key ..."
    )
    return 0


# ------------------------------------------------------------------------------ register
def add_register(sub: Any) -> None:
    p = sub.add_parser(
        "register",
        help="let a site in: register its public key with the SuperLink and trust it for updates",
        description="Register SITE's public key with the SuperLink (its SuperNode may then connect) "
        "and copy it to the directory of site keys the ServerApp checks updates with, as SITE.pub: "
        "[federated] site_keys of --cloud-config, else DIR/federation/sites. Refuses to replace "
        "another key already trusted for SITE.",
    )
    p.add_argument("site", type=_site, metavar="SITE", help="the site's name (its key file's stem)")
    p.add_argument("--public-key", required=True, type=Path, metavar="PATH", help="the site's SITE.pub")
    p.add_argument("--pki", required=True, metavar="DIR", help="the site CA's directory: ca.pem")
    p.add_argument("--cloud-config", metavar="cloud.toml", help="the cloud's settings: [federated] site_keys")
    p.add_argument(
        "--superlink", metavar="HOST:PORT", help="the SuperLink (default: the one link wrote into --state)"
    )
    state_option(p)
    p.set_defaults(func=_register)


def _register(args: argparse.Namespace) -> int:
    from edgecascade.device_sdk.files import atomic_write
    from edgecascade.federation import deploy
    from edgecascade.tools.certs import Pki

    pki = Pki(Path(args.pki))
    if args.cloud_config:
        from edgecascade.cloud_service.config import load_cloud_config

        trusted = Path(load_cloud_config(args.cloud_config).federated.site_keys)
    else:
        trusted = pki.site_keys
    target = trusted_key_target(trusted, args.site, args.public_key)  # refuse before registering
    home = flower_home(args.state, superlink=args.superlink, ca=pki.ca_cert)
    node = deploy.register_site(home, args.public_key, args.site)
    print(f"site {args.site}: " + (f"registered as node {node}" if node else "its key was registered before"))
    if target is None:
        print(f"the ServerApp already trusts its key ({trusted / (args.site + '.pub')})")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, args.public_key.read_bytes(), mode=0o644)
        print(f"the ServerApp trusts its updates now: {target}")
    return 0


# ------------------------------------------------------------------------------ node
def add_node(sub: Any) -> None:
    p = sub.add_parser(
        "node",
        help="run a site's SuperNode, in the foreground",
        description="Run Flower's SuperNode for SITE: it connects to the SuperLink over TLS (verified "
        "with --ca), authenticates with --key, and its ClientApp fine-tunes --checkpoint on --data, "
        "which never leaves the site. Runs until SIGINT or SIGTERM (passed on to it); exits with its status.",
    )
    p.add_argument("--site", required=True, type=_site, help="the site's name, as registered")
    p.add_argument(
        "--data", required=True, type=Path, metavar="PATH", help="labelled examples: .npz or a folder"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        metavar="DIR",
        help="a Keras checkpoint of the served model (each round brings the weights)",
    )
    p.add_argument(
        "--key", required=True, type=Path, metavar="PATH", help="the site's private key (SITE.key)"
    )
    p.add_argument(
        "--ca", required=True, type=Path, metavar="PEM", help="the site CA that verifies the SuperLink"
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="where the SuperLink listens")
    p.add_argument(
        "--holdout-fraction",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="share of the data kept out of training, to measure the model on (default %(default)s)",
    )
    p.add_argument(
        "--labelled-examples",
        type=Path,
        metavar="NPZ",
        help="the examples the cloud's people labelled for the site ('edgecascade site examples' "
        "writes it; read again each round, so refresh it any time): added to the training part",
    )
    p.add_argument(
        "--port", type=port_number, default=NODE_PORT, help="its local API on 127.0.0.1 (default %(default)s)"
    )
    p.set_defaults(func=_node)


def _node(args: argparse.Namespace) -> int:
    from edgecascade.federation import deploy
    from edgecascade.tools.foreground import run_foreground

    node = deploy.NodeSettings(
        site=args.site,
        superlink=args.superlink,
        ca=args.ca,
        key=args.key,
        data=args.data,
        checkpoint=args.checkpoint,
        port=args.port,
        holdout_fraction=args.holdout_fraction,
        labelled_examples=args.labelled_examples,
    )
    command = deploy.node_command(node)
    print(f"site {args.site}: SuperNode connecting to {args.superlink}", flush=True)
    return run_foreground(command, deploy.flower_env())
