"""Replay windows shared by a share group of gateways: every device's window, whole, in one database.

The broker hands each request of a shared subscription to one gateway of the group, so a
captured request that gateway A accepted may be played again to gateway B. Here every
gateway judges a number against the one window the group keeps per device: a row
``(device id, size, highest, bits)`` read, judged by the pure :func:`~.replay.judge` and
written back in one transaction that holds the row (``SELECT ... FOR UPDATE`` on
PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite, which takes the database's write lock). No
number is accepted twice by the group, and the window survives any gateway's restart
exactly, with no floor and no resync.

One transaction judges a whole micro-batch (:meth:`SharedReplayStore.accept_many`): rows
are locked in device-id order, so two gateways never wait for each other in a circle, and
each number is judged on its own. A transaction that fails (the database unreachable, a
lock not granted) is tried again up to ``attempts`` times; then every number of the batch
is refused with a :class:`~edgecascade.device_sdk.errors.StorageError` (``503``), never
accepted unjudged.

SQLite (gateways on one host) runs in WAL mode with ``synchronous=NORMAL``: a commit
survives a gateway's crash, not necessarily a power loss of the host (see the security
docs). PostgreSQL (gateways on several hosts) commits durably. A window's ``size`` is the
smallest any gateway used for it: a gateway with a larger ``crypto.window`` reads a
narrower row as it is, never as numbers it has not seen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from edgecascade.device_sdk.errors import ConfigError, StorageError
from edgecascade.device_sdk.logs import LogLimiter
from edgecascade.edge_gateway.replay import WINDOW, ReplayWindow, ReplayWindows, Verdict, judge

logger = logging.getLogger(__name__)

BACKENDS = ("sqlite", "postgresql")
ATTEMPTS = 3  # transactions tried per micro-batch before its numbers are refused

metadata = sa.MetaData()
replay_windows = sa.Table(
    "replay_windows",
    metadata,
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),  # bits of the bitmap
    sa.Column("highest", sa.BigInteger, nullable=True),  # NULL: nothing accepted yet
    sa.Column("bits", sa.LargeBinary, nullable=False),  # bit i: highest - i accepted (big-endian)
)

_table = replay_windows.c
_UPDATE = (
    replay_windows.update()
    .where(_table.device_id == sa.bindparam("w_device"))
    .values(size=sa.bindparam("w_size"), highest=sa.bindparam("w_highest"), bits=sa.bindparam("w_bits"))
)


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable URL>"


class SharedReplayStore(ReplayWindows):
    """Every device's window in an SQLite file or a PostgreSQL database, shared by a share group."""

    def __init__(self, url: str, window: int = WINDOW, *, attempts: int = ATTEMPTS) -> None:
        if not 1 <= window <= 1024:
            raise ConfigError(f"replay window must be in 1..1024, got {window}")
        self.url = redacted(url)
        self.window = window
        self.attempts = max(1, attempts)
        self.transactions = 0  # committed since opening: one per micro-batch judged
        self._engine = _engine(url)
        self._insert = (postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert)(
            replay_windows
        ).on_conflict_do_nothing(index_elements=["device_id"])
        self._closed = False
        self._count_lock = threading.Lock()
        self._log = LogLimiter(logger)
        self._create_schema()

    def accept_many(self, numbers: Sequence[tuple[str, int]], now: int, ahead: int) -> list[Verdict]:
        """Judge the numbers of one micro-batch in one transaction; a failed store refuses them all."""
        if not numbers:
            return []
        if self._closed:
            return [StorageError(f"shared replay store {self.url} is closed")] * len(numbers)
        devices = sorted({device_id for device_id, _ in numbers})
        problem: Exception | None = None
        for _ in range(self.attempts):
            try:
                with self._engine.begin() as db:
                    windows = self._lock(db, devices)
                    before = {device_id: w.state for device_id, w in windows.items()}
                    verdicts: list[Verdict] = [judge(windows[d], seq, now, ahead) for d, seq in numbers]
                    changed = [
                        {
                            "w_device": device_id,
                            "w_size": w.size,
                            "w_highest": w.highest,
                            "w_bits": _bits_to_bytes(w.state[1], w.size),
                        }
                        for device_id, w in windows.items()
                        if w.state != before[device_id]
                    ]
                    if changed:
                        db.execute(_UPDATE, changed)
                with self._count_lock:
                    self.transactions += 1
                return verdicts
            except sa.exc.OperationalError as exc:  # locked, deadlock, connection lost: try again
                problem = exc
            except sa.exc.SQLAlchemyError as exc:
                problem = exc
                break
        self._log.log(  # at most a few lines while the database is away, however busy the gateway
            logging.ERROR,
            ("unavailable",),
            "shared replay store %s cannot judge %d numbers: %s",
            self.url,
            len(numbers),
            problem,
        )
        error = StorageError(f"shared replay store {self.url} is unavailable: {type(problem).__name__}")
        return [error] * len(numbers)

    def window_of(self, device_id: str) -> ReplayWindow | None:
        """The device's window as the group keeps it (None: never seen); for inspection and tests."""
        with self._engine.connect() as db:
            row = db.execute(sa.select(replay_windows).where(_table.device_id == device_id)).first()
        return None if row is None else self._restore(row)

    def close(self) -> None:
        """Close the connections; later batches are refused with StorageError."""
        self._closed = True
        self._engine.dispose()

    # ------------------------------------------------------------------------ internals
    def _lock(self, db: Connection, devices: list[str]) -> dict[str, ReplayWindow]:
        """The devices' windows, their rows held until the transaction ends (made when missing)."""
        rows = {row.device_id: row for row in db.execute(_select(devices))}
        missing = [device_id for device_id in devices if device_id not in rows]
        if missing:
            db.execute(
                self._insert,
                [{"device_id": d, "size": self.window, "highest": None, "bits": b""} for d in missing],
            )
            rows.update({row.device_id: row for row in db.execute(_select(missing))})
        return {device_id: self._restore(row) for device_id, row in rows.items()}

    def _restore(self, row: Any) -> ReplayWindow:
        size = min(self.window, int(row.size))
        return ReplayWindow.restore(size, row.highest, int.from_bytes(row.bits, "big"))

    def _create_schema(self) -> None:
        """The table, if missing; two gateways starting at once may both try (one wins)."""
        for attempt in range(2):
            try:
                with self._engine.begin() as db:
                    db.execute(sa.schema.CreateTable(replay_windows, if_not_exists=True))
                return
            except sa.exc.IntegrityError:  # PostgreSQL: the other gateway's CREATE won the race
                if attempt:
                    raise StorageError(f"cannot make the replay table in {self.url}") from None
            except sa.exc.SQLAlchemyError as exc:
                self._engine.dispose()
                raise StorageError(f"shared replay store {self.url} is not usable: {exc}") from None


def _select(devices: list[str]) -> sa.Select[Any]:
    return (
        sa.select(replay_windows)
        .where(_table.device_id.in_(devices))
        .order_by(_table.device_id)  # locked in one order by every gateway: no deadlock
        .with_for_update()  # PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the database
    )


def _bits_to_bytes(bits: int, size: int) -> bytes:
    return bits.to_bytes((size + 7) // 8, "big")


def _engine(url: str) -> Engine:
    """An engine for a shared store URL: SQLite (a file) or PostgreSQL; ConfigError otherwise."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"crypto.replay_shared is not a database URL: {exc}") from None
    if parsed.drivername == "postgresql":  # psycopg 3 (the extras' driver), not SQLAlchemy's default
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(f"crypto.replay_shared must be sqlite:/// or postgresql://, got {backend}://")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("crypto.replay_shared: an SQLite store must be a file the gateways share")
        try:
            Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot make the directory of {redacted(url)}: {exc}") from None
    try:
        if backend == "sqlite":
            engine = sa.create_engine(parsed, connect_args={"timeout": 10.0, "check_same_thread": False})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        hint = " (pip install 'edgecascade[gateway]')" if isinstance(exc, ImportError) else ""
        raise ConfigError(f"cannot open the shared replay store {redacted(url)}: {exc}{hint}") from None
    return engine


def _sqlite_connect(connection: Any, record: Any) -> None:
    connection.isolation_level = None  # the driver begins nothing; _sqlite_begin does
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # a commit survives a crash of the gateway, not of the host
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: no read-then-upgrade deadlock
