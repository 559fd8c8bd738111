"""A throw-away PostgreSQL cluster for tests: Debian's server binaries, a temp dir, a loopback port.

``initdb`` makes the cluster (trust authentication, one superuser ``ec``), the server runs
in the foreground as a child process with durability off (a test database is never
recovered), listening on 127.0.0.1 only (no Unix socket), and SIGINT (PostgreSQL's fast
shutdown) stops it. PostgreSQL refuses to run as root, so as root both run as the
``postgres`` user that Debian's package creates, in a directory it owns.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edgecascade.tools.broker import free_port

USER = "ec"
INSTALL = "apt-get install postgresql (tools/system-deps.sh does)"
INITDB_FLAGS = ("--locale=C", "--no-sync", "--no-instructions")
SERVER_FLAGS = ("-k", "", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def server_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with ``initdb`` (else one on PATH), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name),
        reverse=True,
    )
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """One cluster in a temp dir; :meth:`database` makes an empty database per caller."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="ec-postgres-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> PostgresCluster:
        data = self.root / "data"
        subprocess.run(
            [self.binaries / "initdb", "-D", data, "-U", USER, "-A", "trust", "-E", "UTF8", *INITDB_FLAGS],
            check=True,
            capture_output=True,
            **self._run_as,
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binaries / "postgres",
                    "-D",
                    data,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    *SERVER_FLAGS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._run_as,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        engine = sa.create_engine(self.url(), poolclass=sa.pool.NullPool)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"postgres exited with {self.process.returncode}:\n{self.log.read_text()}"
                    )
                try:
                    with engine.connect():
                        return
                except sa.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            engine.dispose()

    def database(self) -> str:
        """The URL of a new, empty database on this cluster."""
        name = f"test_{next(self._names)}"
        engine = sa.create_engine(self.url(), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as db:
                db.exec_driver_sql(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the cluster's directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
