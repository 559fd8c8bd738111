"""``edgecascade sign`` and ``edgecascade tokens``: bundle signatures and API tokens.

``sign BUNDLE --key cloud-signing.key`` writes ``manifest.sig`` after checking every file
against the manifest. ``tokens create|list|revoke`` manage the cloud's token store (the
``--store`` file, else ``cloud.token_store`` from ``--config`` / ``EC_CLOUD__TOKEN_STORE``);
``create`` prints the new token on stdout exactly once, so ``TOKEN=$(edgecascade tokens
create …)`` captures it, and the store only ever holds its hash.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: a gateway-only install has no Flask
    from edgecascade.cloud_service.tokens import TokenStore

SCOPES = (
    "device",
    "gateway",
    "admin",
    "enroll",
)  # edgecascade.cloud_service.tokens.SCOPES; a test keeps them equal


def _sign(args: argparse.Namespace) -> int:
    from edgecascade.device_sdk.model.bundle import sign_bundle

    path = sign_bundle(Path(args.bundle), Path(args.key))
    print(f"signed {args.bundle}: {path}")
    return 0


def _store(args: argparse.Namespace) -> TokenStore:
    from edgecascade.cloud_service.tokens import TokenStore

    if args.store:
        return TokenStore(Path(args.store))
    from edgecascade.cloud_service.config import load_cloud_config

    return TokenStore(load_cloud_config(args.config).cloud.token_store)


def _create(args: argparse.Namespace) -> int:
    store = _store(args)
    token, info = store.create(args.scope, args.name, ttl=args.ttl)
    expires = "never" if info.expires is None else _when(info.expires)
    print(
        f"created {info.scope} token {info.token_id} for {info.name!r} in {store.path} (expires: {expires}); "
        "it is shown only now",
        file=sys.stderr,
    )
    print(token)
    return 0


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _list(args: argparse.Namespace) -> int:
    now = time.time()
    print(f"{'id':<16}  {'scope':<7}  {'state':<7}  {'expires':<19}  name")
    for info in _store(args).list():
        expires = "-" if info.expires is None else _when(info.expires)
        print(f"{info.token_id:<16}  {info.scope:<7}  {info.state(now):<7}  {expires:<19}  {info.name}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if _store(args).revoke(args.token_id):
        print(f"revoked {args.token_id}")
        return 0
    print(f"edgecascade: no live token {args.token_id!r}", file=sys.stderr)
    return 1


def register(sub: Any) -> None:
    """Add the ``sign`` and ``tokens`` subcommands to the ``edgecascade`` parser."""
    p = sub.add_parser("sign", help="sign a model bundle (writes manifest.sig)")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--key", required=True, help="the cloud's Ed25519 key (cloud-signing.key, PEM PKCS#8)")
    p.set_defaults(func=_sign)

    p = sub.add_parser("tokens", help="create, list and revoke the cloud API's bearer tokens")
    tokens = p.add_subparsers(dest="tokens", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", help="token store file (default: cloud.token_store of --config)")
    where.add_argument("--config", help="cloud.toml naming the token store")

    p = tokens.add_parser("create", parents=[where], help="create a token and print it once")
    p.add_argument("--scope", required=True, choices=SCOPES)
    p.add_argument("--name", required=True, help="gateway or device id, or an operator's name")
    p.add_argument("--ttl", type=float, help="lifetime in seconds (enroll: 86400 by default; others: none)")
    p.set_defaults(func=_create)

    p = tokens.add_parser("list", parents=[where], help="list tokens (never their secrets)")
    p.set_defaults(func=_list)

    p = tokens.add_parser("revoke", parents=[where], help="revoke a token by its id")
    p.add_argument("token_id")
    p.set_defaults(func=_revoke)
