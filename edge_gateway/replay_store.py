"""Replay windows that survive a gateway restart: one high-water mark per device, in SQLite.

Writing every accepted sequence number would cost a durable write per request. Instead the
gateway *reserves ahead*: before it accepts a number above a device's stored mark, it
stores ``number + reserve`` (one fsynced commit), and accepts numbers up to that mark
without writing. A device's clock-based numbering moves past the mark about once per
device session, so a busy gateway writes rarely. After a restart each device's window
starts at its mark (:class:`~.replay.ReplayWindow` ``floor``): everything the gateway
accepted before is refused as too old, so a captured request cannot be played again, and
a device whose numbers were below the mark resynchronises above it once.

:class:`LocalWindows` keeps the windows in this process (marks in a store, if given). They
are this gateway's own: for windows shared by a share group see :mod:`.shared_replay`.
SQLite errors surface as :class:`~edgecascade.device_sdk.errors.StorageError`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from edgecascade.device_sdk.errors import ReplayError, StorageError
from edgecascade.device_sdk.learning.outbox import open_durable_sqlite
from edgecascade.edge_gateway.replay import WINDOW, ReplayWindow, ReplayWindows, Verdict, judge

SCHEMA_VERSION = 1
RESERVE = 4096  # numbers reserved past the one being accepted: one write per this many requests
MAX_MARK = 2**63 - 1  # SQLite's integers; clock-based numbers reach it in the year 294,000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay_marks (
    device_id TEXT PRIMARY KEY,
    mark INTEGER NOT NULL  -- no number above it was ever accepted from this device
);
"""

_MARK = "SELECT mark FROM replay_marks WHERE device_id = ?"
_RESERVE = """
INSERT INTO replay_marks (device_id, mark) VALUES (?, ?)
ON CONFLICT (device_id) DO UPDATE SET mark = max(mark, excluded.mark)
RETURNING mark
"""


class ReplayStore:
    """Each device's reserved high-water mark, durable before a number under it is accepted."""

    def __init__(self, path: str | Path, reserve: int = RESERVE) -> None:
        if reserve < 1:
            raise StorageError(f"replay reserve must be >= 1, got {reserve}")
        self.path = Path(path)
        self.reserve = reserve
        self.writes = 0  # commits since opening: what the reservation saves is measurable
        self._lock = threading.Lock()
        # every commit fsynced: a mark is on disk before numbers under it are accepted
        self._db: sqlite3.Connection | None = open_durable_sqlite(
            self.path, "replay store", _SCHEMA, SCHEMA_VERSION
        )

    def mark(self, device_id: str) -> int | None:
        """The device's stored mark (None: never seen)."""
        with self._lock:
            db = self._conn()
            try:
                rows = db.execute(_MARK, (device_id,)).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read replay store {self.path}: {exc}") from None
        return int(rows[0][0]) if rows else None

    def reserve_above(self, device_id: str, seq: int) -> int:
        """Store ``seq + reserve`` as the device's mark (never lowering it); returns the new mark."""
        if seq > MAX_MARK:
            raise StorageError(f"sequence number {seq} is beyond what the replay store can hold")
        wanted = min(seq + self.reserve, MAX_MARK)
        with self._lock:
            db = self._conn()
            try:  # fetchall: the statement completes, so autocommit commits (and fsyncs) here
                rows = db.execute(_RESERVE, (device_id, wanted)).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot write replay store {self.path}: {exc}") from None
            self.writes += 1
        return int(rows[0][0])

    def close(self) -> None:
        """Close the file; later calls raise StorageError."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"replay store {self.path} is closed")
        return self._db


class LocalWindows(ReplayWindows):
    """Windows in this process' memory; with a ``store``, each reserved in it before it moves up."""

    def __init__(self, window: int = WINDOW, store: ReplayStore | None = None) -> None:
        self.window = window
        self.store = store
        self._windows: dict[str, ReplayWindow] = {}
        self._marks: dict[str, int] = {}  # per device: numbers up to here are reserved in the store
        self._lock = threading.Lock()

    def accept_many(self, numbers: Sequence[tuple[str, int]], now: int, ahead: int) -> list[Verdict]:
        """Judge each number; a mark that cannot be stored refuses that number alone."""
        verdicts: list[Verdict] = []
        with self._lock:
            for device_id, seq in numbers:
                try:
                    verdicts.append(self._accept(device_id, seq, now, ahead))
                except StorageError as exc:
                    verdicts.append(exc)
        return verdicts

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _accept(self, device_id: str, seq: int, now: int, ahead: int) -> Verdict:
        window = self._window(device_id)
        try:
            window.check(seq, window.limit(now, ahead))
        except ReplayError:
            return judge(window, seq, now, ahead)  # refuses it too, and says where to go on
        if self.store is not None and seq > self._marks.get(device_id, -1):
            self._marks[device_id] = self.store.reserve_above(device_id, seq)  # durable before accepted
        return judge(window, seq, now, ahead)

    def _window(self, device_id: str) -> ReplayWindow:
        """The device's window; after a restart it starts at the store's mark."""
        window = self._windows.get(device_id)
        if window is None:
            floor = self.store.mark(device_id) if self.store is not None else None
            window = self._windows[device_id] = ReplayWindow(self.window, floor)
            if floor is not None:
                self._marks[device_id] = floor
        return window
