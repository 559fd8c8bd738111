"""Flower's processes as EdgeCascade runs them: a SuperLink beside the cloud, a SuperNode per site.

Both speak TLS with certificates of the site CA (``edgecascade certs federation``): the
SuperLink serves ``link.pem``, SuperNodes and the ``flwr`` command verify it with
``ca.pem``. SuperNode authentication is always on: a SuperNode connects only with a private
key whose public half was registered (``edgecascade federated register``), and the same key
signs the site's updates. Runtime dependency installation is off: the apps are this package.

The ``flwr`` command line (registering keys, submitting runs) reads its SuperLink from a
Flower home directory (``FLWR_HOME``) that :func:`write_flower_home` prepares; the app it
submits is a two-file project (:func:`write_app`) whose components are
:mod:`edgecascade.federation.server_app` and :mod:`edgecascade.federation.client_app`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgecascade.device_sdk.errors import ConfigError, DependencyError, FlowerCommandError

CONNECTION = "edgecascade"
APP_NAME = "edgecascade-federated"
FLOWER_TIMEOUT = 120.0


def flower_bin() -> Path:
    """Where Flower's executables are: next to this Python's."""
    path = Path(sys.executable).parent
    if not (path / "flower-superlink").exists() and shutil.which("flower-superlink") is None:
        raise DependencyError("flwr", "federated")
    return path


def flower_env(home: Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Flower's processes run in: they start their helpers by name, so PATH has them."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{flower_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


@dataclass(frozen=True)
class LinkSettings:
    """A SuperLink: where it listens, its TLS files (site CA), and its state database."""

    host: str
    port: int
    cert: Path
    key: Path
    ca: Path
    database: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def link_command(link: LinkSettings) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and no runtime installs."""
    for path in (link.cert, link.key, link.ca):
        if not Path(path).is_file():
            raise ConfigError(f"the SuperLink needs {path}: make it with `edgecascade certs federation`")
    return [
        str(flower_bin() / "flower-superlink"),
        *(
            "--ssl-certfile",
            str(link.cert),
            "--ssl-keyfile",
            str(link.key),
            "--ssl-ca-certfile",
            str(link.ca),
        ),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        *("--host", link.host, "--port", str(link.port), "--database", str(link.database)),
    ]


@dataclass(frozen=True)
class NodeSettings:
    """A site's SuperNode: the SuperLink it connects to, its key, and what its ClientApp reads."""

    site: str
    superlink: str
    ca: Path
    key: Path
    data: Path
    checkpoint: Path
    port: int  # the SuperNode's own local API (its ClientApp processes talk to it)
    holdout_fraction: float = 0.2
    seed: int = 0
    labelled_examples: Path | None = None  # need not exist yet: ``edgecascade site examples`` writes it


def node_command(node: NodeSettings) -> list[str]:
    """``flower-supernode`` for one site, authenticated by the site's key, over TLS."""
    for path in (node.ca, node.key, node.data, node.checkpoint):
        if not Path(path).exists():
            raise ConfigError(f"site {node.site}: no such file or directory {path}")
    config = " ".join(
        [
            f'site="{node.site}"',
            f'data="{Path(node.data).resolve()}"',
            f'checkpoint="{Path(node.checkpoint).resolve()}"',
            f'key="{Path(node.key).resolve()}"',
            f"holdout-fraction={node.holdout_fraction}",
            f"seed={node.seed}",
        ]
        + (
            [f'labelled-examples="{Path(node.labelled_examples).resolve()}"']
            if node.labelled_examples
            else []
        )
    )
    return [
        str(flower_bin() / "flower-supernode"),
        *("--superlink", node.superlink, "--root-certificates", str(node.ca)),
        *("--auth-supernode-private-key", str(node.key)),
        *("--host", "127.0.0.1", "--port", str(node.port)),
        *("--node-config", config),
    ]


def write_flower_home(home: Path, superlink: str, ca: Path) -> Path:
    """A Flower home whose default SuperLink connection is ``superlink``, verified with ``ca``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{superlink}"\nroot-certificates = "{Path(ca).resolve()}"\n'
    )
    return home


def read_flower_home(home: Path) -> tuple[str, Path] | None:
    """The SuperLink address and CA a Flower home written by :func:`write_flower_home` names; None if none."""
    import tomllib

    try:
        with open(Path(home) / "config.toml", "rb") as f:
            connection = tomllib.load(f)["superlink"][CONNECTION]
        return str(connection["address"]), Path(connection["root-certificates"])
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{home}/config.toml is not a Flower home this tool wrote: {exc}") from None


def write_app(directory: Path) -> Path:
    """The Flower app project ``flwr run`` submits: this package's ServerApp and ClientApp."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "EdgeCascade collaborative training (the components are the installed package)"
dependencies = []

[tool.flwr.app]
publisher = "edgecascade"

[tool.flwr.app.components]
serverapp = "edgecascade.federation.server_app:app"
clientapp = "edgecascade.federation.client_app:app"

[tool.flwr.app.config]
cloud-config = "cloud.toml"
"""
    )
    return directory


def _flwr(home: Path, *args: str) -> dict[str, object]:
    """Run ``flwr ARGS --format json`` against the home's SuperLink; its JSON answer."""
    command = [str(flower_bin() / "flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(
            command, env=flower_env(home), capture_output=True, text=True, timeout=FLOWER_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise FlowerCommandError(f"flwr {args[0]} did not answer in {FLOWER_TIMEOUT:.0f} s") from None
    start = done.stdout.find("{")
    try:
        answer = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or answer.get("success") is False or not answer:
        message = str(answer.get("error-message") or done.stderr.strip() or done.stdout.strip())
        raise FlowerCommandError(f"flwr {args[0]}: {message.strip()}")
    return answer


def register_site(home: Path, public_key: Path, name: str) -> int:
    """Register a site's public key with the SuperLink; its node id. A key registered before is fine."""
    try:
        answer = _flwr(home, "supernode", "register", str(public_key), CONNECTION, "--name", name)
    except FlowerCommandError as exc:
        if "already in use" in str(exc):
            return 0
        raise
    return int(str(answer["node-id"]))


def submit_run(home: Path, app: Path, cloud_config: Path) -> str:
    """Submit a collaborative training run for the cloud configured by ``cloud_config``; its Flower run id."""
    overrides = f'cloud-config="{Path(cloud_config).resolve()}"'
    answer = _flwr(home, "run", str(app), CONNECTION, "--run-config", overrides)
    return str(answer["run-id"])


def flower_runs(home: Path) -> list[dict[str, object]]:
    """The SuperLink's runs as ``flwr ls`` lists them (status, times, traffic)."""
    runs = _flwr(home, "ls", CONNECTION).get("runs", [])
    return list(runs) if isinstance(runs, list) else []
