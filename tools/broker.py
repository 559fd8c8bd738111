"""Start a throw-away Mosquitto broker on a free loopback port with a generated config.

Used by ``edgecascade demo`` and by the integration tests; a production site runs its own
broker with the configuration this module writes as a starting point.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from device_sdk.errors import DependencyError, TransportError

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


def mosquitto_conf(port: int, host: str = "127.0.0.1") -> str:
    """A minimal broker config for loopback use: low latency, no persistence."""
    return "\n".join(
        [
            f"listener {port} {host}",
            "allow_anonymous true",
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
    """A Mosquitto process in ``workdir``; use as a context manager."""

    def __init__(self, workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.port, self.host))
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
