"""The whole stack on this machine: Mosquitto, the cloud service and the gateway daemon.

Each runs as its own process, started exactly as an operator would start it (the cloud on
gunicorn, ``python -m edgecascade.edge_gateway``) with settings passed through ``EC_…``
environment variables, and stopped with SIGTERM so their shutdown paths run.
The stack makes its own site PKI (:mod:`edgecascade.tools.certs`) in ``workdir/pki``: the broker only
has a TLS listener with client certificates, the cloud API is HTTPS (with the broker's
server certificate, which names 127.0.0.1), the gateway requires encrypted payloads, and
:meth:`LocalStack.device` gives a device its TLS settings and payload keys (issuing them on
first use; the gateway picks new devices up at once).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.errors import TransportError
from edgecascade.device_sdk.wire.crypto import DeviceCrypto
from edgecascade.device_sdk.wire.keys import load_device_crypto
from edgecascade.tools.broker import Mosquitto, free_port, wait_for_port
from edgecascade.tools.certs import Pki, init_pki, issue_device

logger = logging.getLogger(__name__)

#: the cloud, served the way production serves it (docs: Running the cloud in production)
GUNICORN = [
    "-m",
    "gunicorn",
    "-c",
    "python:edgecascade.cloud_service.gunicorn_conf",
    "--graceful-timeout",  # in-flight requests get 5 s, well within the stack's 15 s stop
    "5",
    "edgecascade.cloud_service.wsgi:create_app()",
]


def terminate(process: subprocess.Popen[bytes], timeout: float = 15.0, name: str = "process") -> int:
    """SIGTERM ``process``, as a service manager stops a daemon, SIGKILL it after ``timeout``
    seconds; its exit code (at once if it had already ended)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %g s; killing it", name, timeout)
            process.kill()
    return process.wait()


def gateway_environment(
    pki: Pki, broker: Mosquitto, bundle: Path, cloud_url: str, cloud_token: str
) -> dict[str, str]:
    """The ``EC_…`` settings of a gateway daemon of this site: ``bundle``, TLS to ``broker``,
    the cloud at ``cloud_url`` with ``cloud_token``, the site's payload keys (so every such
    gateway is in one share group), new devices picked up at once."""
    return {
        "EC_GATEWAY__BUNDLE": str(bundle),
        "EC_GATEWAY__CLOUD_URL": cloud_url,
        "EC_GATEWAY__CLOUD_CA": str(pki.ca_cert),
        "EC_GATEWAY__CLOUD_TOKEN": cloud_token,
        "EC_UPDATE__CA_FILE": str(pki.ca_cert),  # model downloads come from the cloud too
        "EC_MQTT__HOST": broker.host,
        "EC_MQTT__PORT": str(broker.port),
        "EC_MQTT__CA_FILE": str(pki.ca_cert),
        "EC_MQTT__CERT_FILE": str(pki.gateway_dir() / "cert.pem"),
        "EC_MQTT__KEY_FILE": str(pki.gateway_dir() / "key.pem"),
        "EC_CRYPTO__PRIVATE_KEY": str(pki.gateway_x25519_key),
        "EC_CRYPTO__DEVICE_KEYS": str(pki.device_keys),
        "EC_CRYPTO__RESCAN_INTERVAL": "0",
    }


class LocalStack:
    """Broker + cloud + gateway for one bundle, logs in ``workdir``; a context manager."""

    def __init__(
        self,
        bundle: Path,
        workdir: Path,
        gateway_env: dict[str, str] | None = None,
        cloud_env: dict[str, str] | None = None,
    ) -> None:
        self.bundle = Path(bundle).resolve()
        self.workdir = Path(workdir).resolve()
        self.pki = init_pki(self.workdir / "pki")
        self.broker = Mosquitto(self.workdir / "broker", self.pki)
        self.cloud_port = free_port()
        self.cloud_url = f"https://127.0.0.1:{self.cloud_port}"  # the broker's certificate names 127.0.0.1
        self.metrics_url = f"http://127.0.0.1:{free_port()}"  # the gateway's /metrics and /healthz
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.exit_codes: dict[str, int] = {}
        self.gateway_env = gateway_env or {}
        self.cloud_env = cloud_env or {}  # e.g. the registry and retraining (edgecascade.tools.bench_drift)

    @property
    def tokens(self) -> TokenStore:
        """The cloud's token store (shared SQLite file): make device and admin tokens here."""
        return TokenStore(self.workdir / "cloud-state" / "tokens.db")

    def device(self, device_id: str) -> tuple[MqttConfig, DeviceCrypto]:
        """TLS settings and payload keys for ``device_id``, issued on first use."""
        if not self.pki.device_dir(device_id).exists():
            issue_device(self.pki.root, device_id)
        return self.broker.mqtt_config(device_id), load_device_crypto(
            self.pki.device_dir(device_id), device_id
        )

    def start(self, timeout: float = 60.0) -> LocalStack:
        self.broker.start()
        try:
            tokens = self.tokens  # the cloud's auth is always on
            gateway_token = tokens.create("gateway", "gateway")[0]
            cloud = self._spawn(
                "cloud",
                GUNICORN,  # as in production: the development server closes every connection
                {
                    "EC_CLOUD__BUNDLE": str(self.bundle),
                    "EC_CLOUD__PORT": str(self.cloud_port),
                    "EC_CLOUD__TOKEN_STORE": str(tokens.path),
                    "EC_CLOUD__DEVICE_KEYRING": str(self.pki.device_keys),  # enrolled keys reach the gateway
                    "EC_CLOUD__GATEWAY_PUBLIC_KEY": str(self.pki.gateway_x25519_pub),
                    "EC_CLOUD__TLS_CERT": str(self.pki.broker_cert),
                    "EC_CLOUD__TLS_KEY": str(self.pki.broker_key),
                    **self.cloud_env,
                },
            )
            wait_for_port("127.0.0.1", self.cloud_port, timeout, cloud)
            gateway = self._spawn(
                "gateway",
                ["-m", "edgecascade.edge_gateway"],
                {
                    **gateway_environment(self.pki, self.broker, self.bundle, self.cloud_url, gateway_token),
                    "EC_METRICS__PORT": self.metrics_url.rsplit(":", 1)[1],
                    **self.gateway_env,
                },
            )
            self._wait_for_log("gateway", "serving model", timeout, gateway)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> dict[str, int]:
        """SIGTERM the daemons (gateway first), then the broker; returns their exit codes."""
        for name in ("gateway", "cloud"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            self.exit_codes[name] = terminate(process, 15.0, name)
        self.broker.stop()
        return self.exit_codes

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a daemon in ``workdir/<name>``, where its default ``state/`` paths then land."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=home,
            )
        self.processes[name] = process
        return process

    def _wait_for_log(self, name: str, text: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            if process.poll() is not None:
                raise TransportError(
                    f"{name} exited with code {process.returncode}:\n{self.log(name)[-2000:]}"
                )
            time.sleep(0.05)
        raise TransportError(f"{name} not ready after {timeout:.0f} s:\n{self.log(name)[-2000:]}")
