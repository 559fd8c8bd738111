"""Mosquitto for a site: its configuration and ACL, and a throw-away broker for demos and tests.

:func:`write_broker_config` (``edgecascade broker config``) writes a production broker's
``mosquitto.conf`` and ``acl`` beside copies of the TLS files it reads; :class:`Mosquitto`
starts a throw-away broker on a free loopback port for ``edgecascade demo`` and the
integration tests. There is only a TLS listener: TLS 1.2 or later, a client certificate
from the site CA required, its CN taken as the MQTT username, no anonymous clients.

The ACL gives each client exactly the topics it uses. A device publishes its own requests
(``ec/v1/dev/<its CN>/req``) and hard-example uploads (``…/hx``) and reads its own replies
(``…/res``); the gateways (by name) read every device's requests and uploads and write
every device's replies; every client reads the model announcements (``ec/v1/models/#``)
and only the announcers (the cloud's identity) write them. Mosquitto 2.0 grants every
subscription and applies the ACL when it delivers a message, so a device subscribed to
``#`` or another device's topics receives nothing; the gateways' shared subscription is
kept from devices by its group name (:mod:`edgecascade.edge_gateway.share`). A production
broker also makes every client's id its certificate's CN (``use_username_as_clientid``):
otherwise a device connecting with a gateway's client id disconnects that gateway.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.errors import ConfigError, DependencyError, TransportError
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
    """Mosquitto ACL: each device its own three topics; gateways serve all; observers only read.

    ``pattern`` lines apply to every authenticated client with ``%u`` = its certificate CN,
    which is why a device id may never equal a gateway or announcer name (``edgecascade.tools.certs``
    refuses it). Model announcements are readable by all and writable by announcers only.
    """
    models = wire.MODELS_TOPIC.rsplit("/", 1)[0] + "/#"
    lines = [
        "# devices: each client publishes its own requests and uploads and reads its own replies",
        f"pattern write {wire.request_topic('%u')}",
        f"pattern write {wire.upload_topic('%u')}",
        f"pattern read {wire.response_topic('%u')}",
        "",
        "# model announcements: every client reads them",
        f"pattern read {models}",
        "",
    ]
    for name in announcers:  # the cloud: writes the retained announcement, nothing else
        lines += [f"user {name}", f"topic write {models}", ""]
    for name in gateways:  # read every request and upload (as a share group), answer every device
        lines += [f"user {name}"]
        lines += [f"topic read {topic}" for topic in wire.gateway_subscriptions(shared=False)]
        lines.append(f"topic write {wire.response_topic('+')}")
        lines.append(f"topic write {wire.GATEWAY_STATUS_ROOT}/+/status")  # retained status and last will
        lines.append("")
    for name in observers:  # monitoring identities: read everything, write nothing
        lines += [f"user {name}", "topic read #", ""]
    return "\n".join(lines)


#: The largest MQTT packet the broker accepts: the cloud's default ``max_upload_bytes``, so a
#: device cannot make the gateways buffer more than one upload batch the cloud would take.
MAX_PACKET_BYTES = 8 * 1024 * 1024


def mosquitto_conf(
    pki: Pki,
    port: int,
    acl_file: Path,
    host: str | None = "127.0.0.1",
    *,
    user: str | None = None,
    unique_client_ids: bool = False,
    persistence: Path | None = None,
) -> str:
    """Broker config: one TLS listener with client certificates, ACLs and low latency.

    ``host`` None listens on every interface. ``user`` is who Mosquitto runs as when started
    as root (its files must be readable by that user; unset: the ``mosquitto`` user).
    ``unique_client_ids`` makes a client's id its certificate CN (one connection per
    identity, and no client can take over another's session). ``persistence`` is the
    directory for retained messages and sessions; unset, nothing outlives the process.
    """
    lines = ["per_listener_settings false"]
    if user is not None:
        lines.append(f"user {user}")
    lines += [
        f"listener {port} {host}" if host else f"listener {port}",
        f"cafile {pki.ca_cert}",
        f"certfile {pki.broker_cert}",
        f"keyfile {pki.broker_key}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if unique_client_ids:
        lines.append("use_username_as_clientid true")
    lines += [
        "allow_anonymous false",
        f"acl_file {acl_file}",
        "set_tcp_nodelay true",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "max_inflight_messages 0",
        "max_queued_messages 100000",
    ]
    if persistence is None:
        lines.append("persistence false")
    else:
        lines += ["persistence true", f"persistence_location {persistence}/"]
    lines += ["log_dest stderr", "log_type error", "log_type warning", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class BrokerFiles:
    """What :func:`write_broker_config` wrote: the config, the ACL and the broker's TLS files."""

    conf: Path
    acl: Path
    pki: Pki  # a Pki rooted at the output directory: ca.pem, broker.pem, broker.key
    data: Path  # persistence: retained messages (the model announcement) and sessions


def write_broker_config(
    pki: Pki,
    out: Path,
    *,
    port: int = 8883,
    host: str | None = None,
    gateways: Sequence[str] = (),
    observers: Sequence[str] = (),
    announcers: Sequence[str] = (),
    user: str = "mosquitto",
    force: bool = False,
) -> BrokerFiles:
    """A production broker's ``mosquitto.conf`` and ``acl`` in ``out``, with copies of its TLS files.

    ``gateways`` and ``announcers`` default to the names issued in ``pki``. The broker reads
    only ``out`` (absolute paths), so the site PKI can stay unreadable to it; as root, the
    files are given to ``user``, whom Mosquitto runs as, and ``out`` must be reachable by it.
    Nothing is overwritten without ``force``.
    """
    if not (pki.ca_cert.is_file() and pki.broker_cert.is_file() and pki.broker_key.is_file()):
        raise ConfigError(f"{pki.root} has no broker certificate; run 'edgecascade certs init' first")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    gateways = tuple(gateways) or tuple(pki.gateway_names())
    if not gateways:
        raise ConfigError(f"{pki.root} has no gateway certificate; name the gateways with --gateway")
    out = Path(out).resolve()
    files = BrokerFiles(out / "mosquitto.conf", out / "acl", Pki(out), out / "data")
    targets = [files.conf, files.acl, files.pki.ca_cert, files.pki.broker_cert, files.pki.broker_key]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exist; pass --force to overwrite")
    owner = _broker_owner(user, out)
    out.mkdir(parents=True, exist_ok=True)
    files.data.mkdir(exist_ok=True)
    for src, dst in ((pki.ca_cert, files.pki.ca_cert), (pki.broker_cert, files.pki.broker_cert)):
        shutil.copyfile(src, dst)
        dst.chmod(0o644)
    key = files.pki.broker_key
    key.unlink(missing_ok=True)
    key.touch(0o600)
    key.write_bytes(pki.broker_key.read_bytes())
    files.acl.write_text(acl_text(gateways, observers, tuple(announcers) or tuple(pki.announcer_names())))
    files.conf.write_text(
        "# written by 'edgecascade broker config': start with mosquitto -c "
        + str(files.conf)
        + "\n"
        + mosquitto_conf(
            files.pki, port, files.acl, host, user=user, unique_client_ids=True, persistence=files.data
        )
    )
    out.chmod(0o750)
    if owner is not None:
        for path in (out, files.data, *targets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return files


def _broker_owner(user: str, out: Path) -> pwd.struct_passwd | None:
    """The account to give the broker's files to (as root), after checking it can reach ``out``."""
    if os.geteuid() != 0:
        return None  # mosquitto only changes user when started as root; it runs as us
    try:
        owner = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"there is no user {user!r} here for the broker to run as; pass --user") from None
    if owner.pw_uid == 0:
        return None
    groups = {owner.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for parent in reversed(out.parents):
        if not parent.exists():
            break  # made below, with the usual modes
        mode = parent.stat()
        if mode.st_uid == owner.pw_uid:
            ok = bool(mode.st_mode & stat.S_IXUSR)
        elif mode.st_gid in groups:
            ok = bool(mode.st_mode & stat.S_IXGRP)
        else:
            ok = bool(mode.st_mode & stat.S_IXOTH)
        if not ok:
            raise ConfigError(
                f"the broker runs as {user!r}, who cannot enter {parent} "
                f"(mode {stat.filemode(mode.st_mode)}); choose another --out, or --user"
            )
    return owner


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
        # stay the user that made the files (as root, mosquitto would switch to its own user,
        # which cannot read keys that are 0600 in a 0700 directory)
        user = pwd.getpwuid(os.geteuid()).pw_name
        conf.write_text(mosquitto_conf(self.pki, self.port, acl, self.host, user=user))
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
