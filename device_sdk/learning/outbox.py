"""The durable outbox of hard examples: SQLite in WAL mode, fsync on every commit, keyed by content id.

A node (device or gateway) stores each hard example here *before* it acts as if the example
were kept: :meth:`Outbox.add_many` returns only after SQLite's commit has been fsynced
(``journal_mode=WAL`` with ``synchronous=FULL``), so a power cut after it returns loses
nothing. Records are keyed by their content id (:mod:`edgecascade.device_sdk.learning.records`), so
storing the same example twice is a no-op, and so is re-uploading it.

States: ``pending`` (to upload) → ``sent`` (a receiver acknowledged the id; the body is
dropped, the id kept to recognise the example if it is selected again) or ``failed`` (a
receiver rejected it for good; the body and reason are kept for inspection,
:meth:`Outbox.requeue_failed` sends them again).

Bounded size: at most ``capacity`` rows. When full, room is made by deleting the oldest
``sent`` row, then the oldest ``failed`` one; pending rows are never deleted. When every row
is pending the new example is refused (:attr:`AddStatus.FULL`), counted in
``counters["dropped_full"]`` and logged: the loss is visible, never silent. Thread-safe:
one connection behind a lock. SQLite errors surface as :class:`~edgecascade.device_sdk.errors.StorageError`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import StorageError
from edgecascade.device_sdk.learning.records import HardExample

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_CAPACITY = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hard_examples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: oldest first
    id TEXT NOT NULL UNIQUE,                -- content id (sha256 hex)
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    record TEXT,                            -- HardExample JSON; NULL once sent
    reason TEXT,                            -- why a receiver rejected it
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS hard_examples_by_state ON hard_examples (state, seq);
"""


@contextlib.contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``) on ``db``: committed on success, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class AddStatus(enum.StrEnum):
    """What :meth:`Outbox.add_many` did with one example."""

    STORED = "stored"  # new, durable, pending
    DUPLICATE = "duplicate"  # this id was already here (in any state): nothing changed
    FULL = "full"  # refused: every row is pending and the outbox is at capacity


class State(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class PendingRecord:
    """A record waiting to be uploaded, as JSON ready for a batch."""

    id: str
    record: dict[str, Any]
    size: int  # bytes of its JSON text


def open_durable_sqlite(path: Path, what: str, schema: str, version: int) -> sqlite3.Connection:
    """An SQLite file at ``schema`` ``version``, made if missing: WAL, and every commit fsynced.

    ``what`` names the store in errors. A file of a newer schema, or on a file system without
    WAL, is refused with a :class:`StorageError`, as is anything SQLite cannot open or read.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open {what} {path}: {exc}") from None
    try:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > version:
            raise StorageError(f"{what} {path} has schema {found}; this code reads {version}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"{what} {path}: the file system does not support WAL ({mode})")
        db.execute("PRAGMA synchronous=FULL")  # every commit fsyncs the WAL
        db.executescript(schema)
        db.execute(f"PRAGMA user_version={version}")
    except sqlite3.Error as exc:
        db.close()
        raise StorageError(f"{what} {path} is not usable: {exc}") from None
    except StorageError:
        db.close()
        raise
    return db


class Outbox:
    """A bounded, durable, idempotent store of hard examples; see the module docstring."""

    def __init__(self, path: str | Path, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise StorageError(f"outbox capacity must be >= 1, got {capacity}")
        self.path = Path(path)
        self.capacity = capacity
        self.counters = Counters()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = open_durable_sqlite(
            self.path, "outbox", _SCHEMA, SCHEMA_VERSION
        )

    # ------------------------------------------------------------------------------ writing
    def add(self, example: HardExample) -> AddStatus:
        """Store one example durably (see :meth:`add_many`)."""
        return self.add_many([example])[0]

    def keep(self, examples: Sequence[HardExample], counters: Counters) -> list[bool]:
        """Store examples selected on a request path; per example, whether it is kept (now or before).

        A storage failure is logged and counted in ``counters`` (``hard_examples_not_stored``),
        never raised: the answer still goes out.
        """
        try:
            statuses = self.add_many(examples)
        except StorageError as exc:
            counters.add("hard_examples_not_stored", len(examples))
            logger.error("cannot store %d hard example(s): %s", len(examples), exc)
            return [False] * len(examples)
        kept = [status is not AddStatus.FULL for status in statuses]
        if any(kept):
            counters.add("hard_examples_kept", sum(kept))
        if not all(kept):
            counters.add("hard_examples_not_stored", len(kept) - sum(kept))
        return kept

    def add_many(self, examples: Iterable[HardExample]) -> list[AddStatus]:
        """Store examples in one transaction (one fsync); per example: stored, duplicate or full."""
        rows = [(e.example_id, json.dumps(e.to_json(), separators=(",", ":"))) for e in examples]
        if not rows:
            return []
        statuses: list[AddStatus] = []
        now = time.time()
        with self._transaction() as db:
            total = db.execute("SELECT count(*) FROM hard_examples").fetchone()[0]
            for example_id, text in rows:
                if db.execute("SELECT 1 FROM hard_examples WHERE id = ?", (example_id,)).fetchone():
                    statuses.append(AddStatus.DUPLICATE)
                    continue
                if total >= self.capacity and not self._evict_one(db):
                    statuses.append(AddStatus.FULL)
                    continue
                db.execute(
                    "INSERT INTO hard_examples (id, state, record, created_at, updated_at) "
                    "VALUES (?, 'pending', ?, ?, ?)",
                    (example_id, text, now, now),
                )
                total += 1
                statuses.append(AddStatus.STORED)
        for status in statuses:
            self.counters.add(status.value if status is not AddStatus.FULL else "dropped_full")
        dropped = statuses.count(AddStatus.FULL)
        if dropped:
            logger.warning(
                "outbox %s is full of pending examples (%d): %d new example(s) not stored",
                self.path,
                self.capacity,
                dropped,
            )
        return statuses

    def _evict_one(self, db: sqlite3.Connection) -> bool:
        """Delete the oldest sent row, else the oldest failed one; False if every row is pending."""
        row = db.execute(
            "SELECT seq, state FROM hard_examples WHERE state != 'pending' "
            "ORDER BY state = 'failed', seq LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        db.execute("DELETE FROM hard_examples WHERE seq = ?", (row[0],))
        self.counters.add(f"evicted_{row[1]}")
        return True

    def mark_sent(self, ids: Iterable[str]) -> int:
        """Pending ids a receiver acknowledged: sent (body dropped). Returns how many changed."""
        now = time.time()
        params = [(now, i) for i in ids]
        if not params:
            return 0
        with self._transaction() as db:
            changed = db.executemany(
                "UPDATE hard_examples SET state = 'sent', record = NULL, updated_at = ? "
                "WHERE id = ? AND state = 'pending'",
                params,
            ).rowcount
        self.counters.add("marked_sent", changed)
        return changed

    def mark_failed(self, reasons: Mapping[str, str]) -> int:
        """Pending ids a receiver rejected for good, with its reason. Returns how many changed."""
        now = time.time()
        params = [(reason, now, i) for i, reason in reasons.items()]
        if not params:
            return 0
        with self._transaction() as db:
            changed = db.executemany(
                "UPDATE hard_examples SET state = 'failed', reason = ?, updated_at = ? "
                "WHERE id = ? AND state = 'pending'",
                params,
            ).rowcount
        self.counters.add("marked_failed", changed)
        if changed:
            logger.warning("%d hard example(s) rejected by the receiver: %s", changed, dict(reasons))
        return changed

    def requeue_failed(self) -> int:
        """Make every failed record pending again (e.g. after the receiver was fixed)."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE hard_examples SET state = 'pending', reason = NULL, updated_at = ? "
                "WHERE state = 'failed'",
                (time.time(),),
            ).rowcount
        return int(changed)

    # ------------------------------------------------------------------------------ reading
    def pending(self, limit: int) -> list[PendingRecord]:
        """Up to ``limit`` pending records, oldest first."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT id, record FROM hard_examples WHERE state = 'pending' ORDER BY seq LIMIT ?",
                (max(0, limit),),
            ).fetchall()
        return [PendingRecord(i, json.loads(text), len(text)) for i, text in rows]

    def counts(self) -> dict[str, int]:
        """Rows per state (every state present, zero when empty)."""
        with self._locked() as db:
            rows = db.execute("SELECT state, count(*) FROM hard_examples GROUP BY state").fetchall()
        counts = {state.value: 0 for state in State}
        counts.update({state: n for state, n in rows})
        return counts

    def state(self, example_id: str) -> State | None:
        """The state of one id, or None if the outbox does not hold it."""
        with self._locked() as db:
            row = db.execute("SELECT state FROM hard_examples WHERE id = ?", (example_id,)).fetchone()
        return State(row[0]) if row else None

    def failed(self) -> dict[str, str]:
        """Failed ids and the receiver's reasons."""
        with self._locked() as db:
            rows = db.execute("SELECT id, reason FROM hard_examples WHERE state = 'failed'").fetchall()
        return {i: reason or "" for i, reason in rows}

    def pragma(self, name: str) -> Any:
        """One PRAGMA's value (``journal_mode``, ``synchronous``), to check durability settings."""
        if not name.isidentifier():
            raise StorageError(f"not a pragma name: {name!r}")
        with self._locked() as db:
            return db.execute(f"PRAGMA {name}").fetchone()[0]

    def __len__(self) -> int:
        with self._locked() as db:
            return int(db.execute("SELECT count(*) FROM hard_examples").fetchone()[0])

    # -------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Checkpoint the WAL and close; later calls raise StorageError."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise StorageError(f"outbox {self.path} is closed")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StorageError(f"outbox {self.path}: {exc}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._locked() as db, immediate_transaction(db):
            yield db
