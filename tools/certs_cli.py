"""``edgecascade certs init|device|gateway|announcer`` and ``edgecascade bench crypto``.

Thin argparse front ends of :mod:`edgecascade.tools.certs` and :mod:`edgecascade.tools.bench_crypto`; the file
layout they write is described in :mod:`edgecascade.tools.certs`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgecascade.tools import certs


def _init(args: argparse.Namespace) -> int:
    hosts = args.host or certs.DEFAULT_HOSTS
    pki = certs.init_pki(Path(args.dir), hosts, gateway=args.gateway, force=args.force)
    print(
        f"site CA, broker certificate for {', '.join(hosts)}, gateway "
        f"{args.gateway!r} and the site keys written to {pki.root}; keep ca.key offline"
    )
    return 0


def _device(args: argparse.Namespace) -> int:
    directory = certs.issue_device(Path(args.dir), args.id, force=args.force, rotate=args.rotate)
    generation = max(certs.device_generations(directory))
    what = f"payload key generation {generation}" if args.rotate else "certificate and payload key"
    print(f"device {args.id}: {what} in {directory}; the gateways read {Path(args.dir) / 'device-keys'}")
    return 0


def _gateway(args: argparse.Namespace) -> int:
    directory = certs.issue_gateway(Path(args.dir), args.name, force=args.force)
    print(f"gateway {args.name}: client certificate in {directory} (add it to the broker ACL)")
    return 0


def _announcer(args: argparse.Namespace) -> int:
    directory = certs.issue_announcer(Path(args.dir), args.name, force=args.force)
    print(f"announcer {args.name}: client certificate in {directory} (the cloud's [mqtt] identity)")
    return 0


def _federation(args: argparse.Namespace) -> int:
    cert = certs.issue_link(Path(args.dir), args.host or certs.DEFAULT_HOSTS, force=args.force)
    print(f"SuperLink certificate {cert} (SAN {', '.join(args.host or certs.DEFAULT_HOSTS)})")
    for site in args.site:
        key, pub = certs.issue_site(Path(args.dir), site)
        print(f"site {site}: {key} stays at the site; register {pub} with the SuperLink")
    return 0


def _bench_crypto(args: argparse.Namespace) -> int:
    from edgecascade.tools.bench_crypto import bench_crypto, format_crypto_report
    from edgecascade.tools.report import print_report

    report = bench_crypto(n=args.n)
    print(json.dumps(report, indent=2))
    print_report(format_crypto_report(report), report, args.report)
    return 0


def register(sub: Any, bench: Any) -> None:
    """Add ``certs`` to the top-level subcommands and ``crypto`` to ``bench``'s."""
    p = sub.add_parser("certs", help="make the site's CA, certificates and payload keys")
    certs_sub = p.add_subparsers(dest="certs", required=True)
    p = certs_sub.add_parser("init", help="CA, broker and gateway certificates, site keys")
    p.add_argument("dir", help="directory to create (0700)")
    p.add_argument(
        "--host",
        action="append",
        help="broker host name or IP for its certificate (repeat; default "
        f"{' and '.join(certs.DEFAULT_HOSTS)})",
    )
    p.add_argument("--gateway", default=certs.DEFAULT_GATEWAY, help="gateway client name (%(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_init)
    p = certs_sub.add_parser("device", help="a device's certificate (CN = id) and payload key pair")
    p.add_argument("dir")
    p.add_argument("id", help="device id (letters, digits, '-', '_', '.')")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help="replace the device's certificate and keys")
    group.add_argument("--rotate", action="store_true", help="add the next payload key generation")
    p.set_defaults(func=_device)
    p = certs_sub.add_parser("gateway", help="another gateway client certificate")
    p.add_argument("dir")
    p.add_argument("name", help="the gateway's name (its CN and MQTT username)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_gateway)
    p = certs_sub.add_parser("announcer", help="the cloud's certificate for model announcements")
    p.add_argument("dir")
    p.add_argument("name", nargs="?", default=certs.DEFAULT_ANNOUNCER, help="its CN (%(default)s)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_announcer)

    p = certs_sub.add_parser("federation", help="the SuperLink's certificate and sites' identity keys")
    p.add_argument("dir")
    p.add_argument("--host", action="append", help="a name or address of the SuperLink (repeat)")
    p.add_argument("--site", action="append", default=[], help="make this site's key pair too (repeat)")
    p.add_argument("--force", action="store_true", help="replace the SuperLink certificate")
    p.set_defaults(func=_federation)

    p = bench.add_parser("crypto", help="bytes and µs end-to-end encryption adds per message")
    p.add_argument("--n", type=int, default=5000, help="messages per measurement (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=_bench_crypto)
