"""``edgecascade broker config``: write a production Mosquitto's configuration and ACL.

A thin argparse front end of :func:`edgecascade.tools.broker.write_broker_config`; what the
configuration says and why is in :mod:`edgecascade.tools.broker`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgecascade.tools import broker
from edgecascade.tools.certs import Pki


def _config(args: argparse.Namespace) -> int:
    files = broker.write_broker_config(
        Pki(Path(args.pki)),
        Path(args.out),
        port=args.port,
        host=args.host,
        gateways=args.gateway or (),
        observers=args.observer or (),
        announcers=args.announcer or (),
        user=args.user,
        force=args.force,
    )
    print(f"broker config in {files.conf.parent}; start it with: mosquitto -c {files.conf}")
    return 0


def register(sub: Any) -> None:
    """Add ``broker`` to the top-level subcommands."""
    p = sub.add_parser("broker", help="configure the site's Mosquitto broker")
    broker_sub = p.add_subparsers(dest="broker", required=True)
    p = broker_sub.add_parser(
        "config",
        help="write mosquitto.conf and acl (with copies of the broker's TLS files) for a site",
        description="Write a production Mosquitto config: a TLS listener with client certificates, "
        "ACLs that confine each device to its own topics, one connection per certificate, "
        "retained messages kept across restarts. Start the broker with mosquitto -c OUT/mosquitto.conf.",
    )
    p.add_argument("--pki", required=True, help="the site's directory made by 'edgecascade certs init'")
    p.add_argument("--out", required=True, help="directory for mosquitto.conf, acl and the TLS copies")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default %(default)s)")
    p.add_argument(
        "--host", help="address to listen on (default: every interface); it must be in the broker certificate"
    )
    p.add_argument(
        "--gateway",
        action="append",
        metavar="NAME",
        help="a gateway's certificate name (repeat; default: every gateway issued in --pki)",
    )
    p.add_argument(
        "--observer", action="append", metavar="NAME", help="a read-only monitoring identity (repeat)"
    )
    p.add_argument(
        "--announcer",
        action="append",
        metavar="NAME",
        help="an identity that publishes model announcements (repeat; default: those issued in --pki)",
    )
    p.add_argument(
        "--user",
        default="mosquitto",
        help="the account Mosquitto runs as when started as root; it is given the files (%(default)s)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_config)
