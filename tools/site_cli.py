"""``edgecascade site config``, ``site thresholds`` and ``site examples``: one site's settings files,
exit thresholds and labelled examples.

``site thresholds`` asks the cloud to fit the site's exit thresholds on its audited examples
(``POST /v1/sites/<site>/thresholds``, an admin token) and writes the signed overlay it
answers into ``--out`` as ``overlay.json`` and ``overlay.json.sig``, byte for byte: point the
nodes' ``[model] overlay`` at that file.

``site examples`` downloads the examples the cloud's people labelled for the site
(``GET /v1/sites/<site>/examples.npz``, an admin token or the site's own) into one ``.npz``
(replaced atomically, readable by its owner only): point the site's SuperNode at it
(``edgecascade federated node --labelled-examples``) and its local training adds them.

``site config``: the cloud's, the gateway's and every device's settings for one site.

From a site's key directory (``edgecascade certs init``) and a model bundle it writes
``cloud.toml`` and ``gateway.toml`` in ``--out``, and a ``device.toml`` in each device's
key directory, so every file a node reads agrees with every other: the cloud's enrolment
writes device keys into the directory the gateways read, both trust the same signing key,
the gateway trusts the cloud's HTTPS certificate. Paths are written relative to the file
that names them (the loader reads them so), so a device's directory can be copied onto
the device as it is. Nothing is overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgecascade.device_sdk.errors import ConfigError, EdgeCascadeError
from edgecascade.device_sdk.model.overlay import SITE_NAME, signature_path
from edgecascade.tools.certs import Pki

HEADER = "# written by 'edgecascade site config'; relative paths are relative to this file's directory"
OVERLAY_FILE = "overlay.json"  # what ``site thresholds`` writes in --out (its signature: overlay.json.sig)
MAX_EXAMPLES_BYTES = 512 * 1024 * 1024  # the largest answer ``site examples`` reads (100,000 images fit)


@dataclass(frozen=True)
class Site:
    """Where the site's pieces are and how the nodes reach each other."""

    pki: Pki
    bundle: Path
    out: Path
    host: str = "127.0.0.1"  # the broker, as the nodes reach it (a name in its certificate)
    port: int = 8883
    cloud_url: str = "https://127.0.0.1:8080"
    gateway: str = ""  # the gateway certificate the gateway uses (default: the first issued)


def cloud_toml(site: Site) -> str:
    url = urlsplit(site.cloud_url)
    path = _relative(site.out)
    return _toml(
        {
            "cloud": {
                "bundle": path(site.bundle),
                "host": url.hostname or "127.0.0.1",
                "port": url.port or (443 if url.scheme == "https" else 80),
                "verify_key": path(site.pki.cloud_signing_pub),
                "tls_cert": path(site.pki.broker_cert),
                "tls_key": path(site.pki.broker_key),
                "token_store": "state/cloud/tokens.db",
                "database_url": "sqlite:///state/cloud/cloud.db",
                "blob_dir": "state/cloud/blobs",
                "device_keyring": path(site.pki.device_keys),
                "gateway_public_key": path(site.pki.gateway_x25519_pub),
            }
        },
        {
            "verify_key": "the bundle must be signed: edgecascade sign BUNDLE --key cloud-signing.key",
            "tls_cert": "HTTPS, with a certificate of the site CA that names the cloud's host",
            "device_keyring": "enrolment writes device keys where the gateways read them",
        },
    )


def gateway_toml(site: Site) -> str:
    path = _relative(site.out)
    gateway = site.gateway or _first_gateway(site.pki)
    cert = site.pki.gateway_dir(gateway)
    return _toml(
        {
            "gateway": {
                "bundle": path(site.bundle),
                "gateway_id": gateway,
                "cloud_url": site.cloud_url,
                "cloud_ca": path(site.pki.ca_cert),
                "verify_key": path(site.pki.cloud_signing_pub),
            },
            "mqtt": _mqtt(site, path(site.pki.ca_cert), path(cert / "cert.pem"), path(cert / "key.pem")),
            "crypto": {
                "private_key": path(site.pki.gateway_x25519_key),
                "device_keys": path(site.pki.device_keys),
            },
            "outbox": {"path": "state/gateway/outbox.db"},
        },
        {
            "[gateway]": "its cloud token comes from EC_GATEWAY__CLOUD_TOKEN (edgecascade tokens create)",
            "device_keys": "the directory certs device and the cloud's enrolment write",
        },
    )


def device_toml(site: Site) -> str:
    """A device's ``[mqtt]``, for its own key directory (paths beside the file)."""
    return _toml({"mqtt": _mqtt(site, "ca.pem", "cert.pem", "key.pem")}, {})


def write_site_config(site: Site, *, force: bool = False) -> list[Path]:
    """Write ``cloud.toml``, ``gateway.toml`` and every device's ``device.toml``; return the paths."""
    if not site.pki.ca_cert.is_file():
        raise ConfigError(f"{site.pki.root} holds no site CA; run 'edgecascade certs init' first")
    if not (site.bundle / "manifest.json").is_file():
        raise ConfigError(f"{site.bundle} is not a model bundle (no manifest.json)")
    if not 0 < site.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {site.port}")
    if urlsplit(site.cloud_url).scheme not in ("http", "https"):
        raise ConfigError(f"--cloud-url must be an http(s) URL, got {site.cloud_url!r}")
    devices = sorted(p.parent for p in (site.pki.root / "devices").glob("*/cert.pem"))
    files = {site.out / "cloud.toml": cloud_toml(site), site.out / "gateway.toml": gateway_toml(site)}
    files |= {directory / "device.toml": device_toml(site) for directory in devices}
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exist; pass --force to overwrite")
    site.out.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def _first_gateway(pki: Pki) -> str:
    names = pki.gateway_names()
    if not names:
        raise ConfigError(f"{pki.root} has no gateway certificate; run 'edgecascade certs gateway'")
    return names[0]


def _mqtt(site: Site, ca: str, cert: str, key: str) -> dict[str, object]:
    return {"host": site.host, "port": site.port, "ca_file": ca, "cert_file": cert, "key_file": key}


def _relative(base: Path) -> Any:
    base = base.resolve()

    def path(target: Path) -> str:
        return Path(os.path.relpath(Path(target).resolve(), base)).as_posix()

    return path


def _toml(tables: dict[str, dict[str, object]], notes: dict[str, str]) -> str:
    lines = [HEADER]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + ([f"# {notes[f'[{name}]']}"] if f"[{name}]" in notes else [])
        for key, value in table.items():
            text = f'"{value}"' if isinstance(value, str) else str(value)
            note = notes.get(key)
            lines.append(f"{key} = {text}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def _config(args: argparse.Namespace) -> int:
    site = Site(
        Pki(Path(args.pki)),
        Path(args.model),
        Path(args.out),
        host=args.host,
        port=args.port,
        cloud_url=args.cloud_url,
        gateway=args.gateway or "",
    )
    for path in write_site_config(site, force=args.force):
        print(f"wrote {path}")
    return 0


def save_overlay_answer(answer: dict[str, Any], out: Path) -> Path:
    """Write the overlay file and signature of a cloud's answer into ``out``, exactly as signed."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / OVERLAY_FILE
    signature_path(target).write_text(answer["signature"], encoding="ascii")
    target.write_text(answer["file"], encoding="ascii")
    return target


def _thresholds(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.min_examples is not None:
        body["min_examples"] = args.min_examples
    if args.max_loss is not None:
        body["max_loss"] = args.max_loss
    http = _client(args)
    try:
        answer = http.call_json("POST", f"/v1/sites/{args.site}/thresholds", body)
    except EdgeCascadeError as exc:
        print(f"edgecascade: the cloud did not fit thresholds for site {args.site}: {exc}")
        return 1
    finally:
        http.close()
    target = save_overlay_answer(answer, Path(args.out))
    overlay = answer["overlay"]
    exits = ", ".join(f"{tier} {spec['threshold']:g}" for tier, spec in sorted(overlay["exits"].items()))
    print(
        f"site {overlay['site']}: model {overlay['model']} v{overlay['version']}, exits {exits} "
        f"(fitted on {overlay['examples']} audited examples)"
    )
    metrics = overlay.get("metrics", {})
    if "site_device_share" in metrics:
        print(
            f"  on those examples: device share {metrics['manifest_device_share']:.1%} -> "
            f"{metrics['site_device_share']:.1%}, accuracy {metrics['manifest_accuracy']:.1%} -> "
            f"{metrics['site_accuracy']:.1%}"
        )
    print(
        f'wrote {target} and {signature_path(target)}; set [model] overlay = "{target}" on the site\'s nodes'
    )
    return 0


def _examples(args: argparse.Namespace) -> int:
    import numpy as np

    from edgecascade.device_sdk.files import atomic_write

    http = _client(args)
    query = f"?limit={args.limit}" if args.limit else ""
    try:
        content = http.get(f"/v1/sites/{args.site}/examples.npz{query}", max_bytes=MAX_EXAMPLES_BYTES)
    except EdgeCascadeError as exc:
        print(f"edgecascade: the cloud did not hand out the examples of site {args.site}: {exc}")
        return 1
    finally:
        http.close()
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            y, classes = npz["y"], [str(c) for c in npz["classes"]]
    except (ValueError, KeyError, OSError) as exc:
        print(f"edgecascade: the cloud's answer is not an examples archive: {exc}")
        return 1
    out = Path(args.out)
    atomic_write(out, content, mode=0o600)
    counts = ", ".join(
        f"{classes[c] if c < len(classes) else c} {n}"
        for c, n in zip(*np.unique(y, return_counts=True), strict=True)
    )
    print(f"site {args.site}: {len(y)} labelled examples{f' ({counts})' if counts else ''}")
    print(
        f"wrote {out}; pass it to the site's SuperNode: edgecascade federated node --labelled-examples {out}"
    )
    return 0


def _client(args: argparse.Namespace) -> Any:
    """An HTTP client of ``--cloud`` with the token of ``--token-file``, for SITE (checked)."""
    from edgecascade.tools.unknown_cli import cloud_client

    if not SITE_NAME.fullmatch(args.site):
        raise ConfigError(f"SITE must be 1-64 of [A-Za-z0-9_.-], got {args.site!r}")
    return cloud_client(args)


def register(sub: Any) -> None:
    """Add ``site`` to the top-level subcommands."""
    p = sub.add_parser("site", help="write the settings files of a site's cloud, gateway and devices")
    site_sub = p.add_subparsers(dest="site", required=True)
    p = site_sub.add_parser(
        "config",
        help="cloud.toml and gateway.toml in --out, device.toml in each device's key directory",
        description="Write cloud.toml and gateway.toml (in --out) and a device.toml in every device "
        "directory of --pki, all agreeing on keys, certificates and directories.",
    )
    p.add_argument("--pki", required=True, help="the site's directory made by 'edgecascade certs init'")
    p.add_argument("--model", required=True, help="the bundle directory the cloud and gateway serve")
    p.add_argument("--out", required=True, help="directory for cloud.toml and gateway.toml")
    p.add_argument(
        "--host", default="127.0.0.1", help="the broker as the nodes reach it (default %(default)s)"
    )
    p.add_argument("--port", type=int, default=8883, help="the broker's TLS port (default %(default)s)")
    p.add_argument(
        "--cloud-url",
        default="https://127.0.0.1:8080",
        help="the cloud's URL; the cloud listens on its host and port (default %(default)s)",
    )
    p.add_argument("--gateway", metavar="NAME", help="the gateway certificate to use (default: the first)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_config)
    p = site_sub.add_parser(
        "thresholds",
        help="fit the site's exit thresholds in the cloud; download the signed overlay",
        description="Ask the cloud to fit SITE's exit thresholds on its labelled audited examples "
        f"(admin token) and write the signed overlay into --out ({OVERLAY_FILE} and its .sig).",
    )
    p.add_argument("site", metavar="SITE", help="the site: the name of the token its examples came with")
    p.add_argument("--cloud", required=True, metavar="URL", help="the cloud's URL")
    p.add_argument("--token-file", required=True, metavar="F", help="a file holding an admin token")
    p.add_argument("--out", required=True, metavar="DIR", help=f"directory for {OVERLAY_FILE} and its .sig")
    p.add_argument("--ca-file", metavar="PEM", help="the CA of the cloud's HTTPS certificate")
    p.add_argument(
        "--min-examples", type=int, metavar="N", help="examples the fit needs (cloud default: 100)"
    )
    p.add_argument(
        "--max-loss", type=float, metavar="X", help="accuracy an exit may lose, a fraction (default 0)"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default %(default)s)")
    p.set_defaults(func=_thresholds)
    p = site_sub.add_parser(
        "examples",
        help="download the examples the cloud's people labelled for the site, for its local training",
        description="Download the examples a person labelled for SITE in the cloud, with their raw "
        "inputs, into one .npz (x, y, ids, classes) that the site's SuperNode adds to its training "
        "data (edgecascade federated node --labelled-examples).",
    )
    p.add_argument("site", metavar="SITE", help="the site: the name of the token its examples came with")
    p.add_argument("--cloud", required=True, metavar="URL", help="the cloud's URL")
    p.add_argument(
        "--token-file", required=True, metavar="F", help="a file holding an admin token or the site's own"
    )
    p.add_argument("--out", required=True, metavar="NPZ", help="the file to write (replaced atomically)")
    p.add_argument("--ca-file", metavar="PEM", help="the CA of the cloud's HTTPS certificate")
    p.add_argument("--limit", type=int, metavar="N", help="at most the newest N (cloud default: 20000)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default %(default)s)")
    p.set_defaults(func=_examples)
