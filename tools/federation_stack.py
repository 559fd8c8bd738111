"""A whole federation on this machine: one SuperLink and a SuperNode per site, each its own process group.

What ``edgecascade bench federated`` and the tests run. Every process is started with
:mod:`edgecascade.federation.deploy`'s commands (TLS from the site CA, SuperNode
authentication on) and logs to ``<root>/logs/<name>.log``; a site can be killed with
SIGKILL as a whole (its SuperNode and the ClientApp it is running), as a crashed site would be.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from edgecascade.device_sdk.errors import TransportError
from edgecascade.federation import deploy
from edgecascade.tools.certs import Pki

READY_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = READY_SECONDS
) -> None:
    """Until something listens on loopback ``port``; TransportError if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise TransportError(
                f"exited with status {process.returncode} before listening on {port}:\n{tail}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TransportError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class LocalFederation:
    """The SuperLink and sites of one machine under ``root``, with the key material of ``pki``."""

    root: Path
    pki: Pki
    link_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "flower-home"

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.link_port}"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as out:
            process = subprocess.Popen(
                command,
                env=deploy.flower_env(self.home),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole
                cwd=self.root,
            )
        self.processes[name] = process
        return process

    def start_link(self) -> None:
        """Start the SuperLink and point the ``flwr`` command at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        deploy.write_flower_home(self.home, self.superlink, self.pki.ca_cert)
        link = deploy.LinkSettings(
            "127.0.0.1",
            self.link_port,
            self.pki.link_cert,
            self.pki.link_key,
            self.pki.ca_cert,
            self.root / "link.db",
        )
        process = self._start("superlink", deploy.link_command(link))
        wait_for_port(self.link_port, process, self.log("superlink"))

    def register(self, site: str) -> None:
        """Register the site's public key with the SuperLink (its SuperNode may then connect)."""
        deploy.register_site(self.home, self.pki.site_keys / f"{site}.pub", site)

    def start_site(
        self,
        site: str,
        data: Path,
        checkpoint: Path,
        *,
        key: Path | None = None,
        holdout_fraction: float = 0.2,
        labelled_examples: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start the site's SuperNode (authenticating with ``key``, default the site's own)."""
        port = free_port()
        node = deploy.NodeSettings(
            site=site,
            superlink=self.superlink,
            ca=self.pki.ca_cert,
            key=key or self.pki.site_keys / f"{site}.key",
            data=data,
            checkpoint=checkpoint,
            port=port,
            holdout_fraction=holdout_fraction,
            labelled_examples=labelled_examples,
        )
        process = self._start(site, deploy.node_command(node))
        wait_for_port(port, process, self.log(site))
        return process

    def kill(self, name: str) -> None:
        """SIGKILL the process group of ``name`` (a site: its SuperNode and its ClientApp)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def clientapps(self, site: str) -> list[int]:
        """The pids of the ClientApps the site runs now (it received a round's message)."""
        pgid, pids = self.processes[site].pid, []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if (
                    os.getpgid(int(proc.name)) == pgid
                    and b"flwr-clientapp" in (proc / "cmdline").read_bytes()
                ):
                    pids.append(int(proc.name))
            except (OSError, ProcessLookupError):
                continue
        return pids

    def running_clientapp(self, site: str) -> bool:
        return bool(self.clientapps(site))

    def pause(self, name: str) -> None:
        """SIGSTOP the process group of ``name``: a site that stops answering mid-round (a slow
        or hung machine) and may come back (:meth:`resume`). Stopping only its ClientApp would
        not do: the SuperNode would start another one for the same message."""
        os.killpg(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGCONT)

    def submit(self, cloud_config: Path) -> str:
        """Submit a run of the federated app for the cloud configured by ``cloud_config``."""
        return deploy.submit_run(self.home, deploy.write_app(self.root / "app"), cloud_config)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
