"""Start a throw-away Mosquitto broker on a free loopback port with a generated config.

Used by ``edgecascade demo`` and by the integration tests; a production site runs its own
broker with the configuration this module writes as a starting point
(:func:`mosquitto_conf` and :func:`acl_text`). There is only a TLS listener: TLS 1.2 or
later, a client certificate from the site CA required, its CN taken as the MQTT username,
no anonymous clients. The ACL confines each device to ``ec/v1/dev/<its CN>/#`` and lets the
gateways (by name) read and write every device's topics, including the shared subscriptions
to requests (``req``) and hard-example uploads (``hx``). Every client may read the model
announcements (``ec/v1/models/#``); only the announcers (the cloud's identity) may write them.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.errors import DependencyError, TransportError
from edgecascade.tools.certs import Pki

logger = logging.getLogger(__name__)

_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``host:port`` accepts TCP connections (or the process died, or time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TransportError(f"process exited with code {process.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TransportError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def mosquitto_binary() -> str:
    """Path of the ``mosquitto`` executable, or a DependencyError telling how to install it."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=":".join(_SEARCH))
    if not found:
        raise DependencyError("mosquitto (Debian package 'mosquitto': apt-get install mosquitto)", "device")
    return found


def acl_text(
    gateways: Sequence[str] = ("gateway",),
    observers: Sequence[str] = (),
    announcers: Sequence[str] = ("cloud",),
) -> str:
    """Mosquitto ACL: devices own their subtree; gateways serve all; observers may only read.

    ``pattern`` lines apply to every authenticated client with ``%u`` = its certificate CN,
    which is why a device id may never equal a gateway or announcer name (``edgecascade.tools.certs``
    refuses it). Model announcements are readable by all and writable by announcers only.
    """
    root = wire.TOPIC_ROOT
    models = wire.MODELS_TOPIC.rsplit("/", 1)[0] + "/#"
    lines = ["# devices: each client may only use its own subtree", f"pattern readwrite {root}/%u/#", ""]
    lines += ["# model announcements: every client reads them", f"pattern read {models}", ""]
    for name in announcers:  # the cloud: writes the retained announcement, nothing else
        lines += [f"user {name}", f"topic write {models}", ""]
    for name in gateways:
        lines += [f"user {name}", f"topic readwrite {root}/#"]
        lines += [f"topic read {topic}" for topic in wire.gateway_subscriptions(shared=True)]
        lines.append("")
    for name in observers:  # monitoring identities: read everything, write nothing
        lines += [f"user {name}", "topic read #", ""]
    return "\n".join(lines)


def mosquitto_conf(pki: Pki, port: int, acl_file: Path, host: str = "127.0.0.1") -> str:
    """Broker config: one TLS listener with client certificates, ACLs, low latency, no persistence."""
    return "\n".join(
        [
            # stay the user that made the files (as root, mosquitto would switch to its own user,
            # which cannot read keys that are 0600 in a 0700 directory)
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "per_listener_settings false",
            f"listener {port} {host}",
            f"cafile {pki.ca_cert}",
            f"certfile {pki.broker_cert}",
            f"keyfile {pki.broker_key}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {acl_file}",
            "set_tcp_nodelay true",
            "persistence false",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]
    )


class Mosquitto:
    """A TLS Mosquitto process in ``workdir`` using ``pki``'s files; use as a context manager.

    ``observers`` are extra read-only identities (certificates issued like a device's).
    """

    def __init__(
        self,
        workdir: Path,
        pki: Pki,
        port: int | None = None,
        host: str = "127.0.0.1",
        observers: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.pki = pki
        self.host = host
        self.port = port or free_port(host)
        self.observers = tuple(observers)
        self.process: subprocess.Popen[bytes] | None = None

    def mqtt_config(self, identity: str) -> MqttConfig:
        """TLS settings to connect to this broker as ``identity`` (device id or gateway name)."""
        return self.pki.mqtt_config(identity, self.host, self.port)

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        acl = self.workdir / "acl"
        acl.write_text(
            acl_text(self.pki.gateway_names() or ("gateway",), self.observers, self.pki.announcer_names())
        )
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.pki, self.port, acl, self.host))
        log = open(self.workdir / "mosquitto.log", "wb")  # noqa: SIM115 - closed by the child
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout, self.process)
        except TransportError:
            self.stop()
            raise TransportError(f"mosquitto did not start; see {self.workdir / 'mosquitto.log'}") from None
        logger.info("mosquitto listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
