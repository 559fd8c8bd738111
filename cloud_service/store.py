"""Metadata of the learning loop in SQL (SQLAlchemy 2 Core): hard examples, model versions, jobs.

One database, given by a SQLAlchemy URL: an SQLite file by default (the embedded choice),
PostgreSQL when several cloud hosts share it. Only portable SQL is used (Core expressions,
no dialect-specific statements); the SQLite-specific part is connection set-up (WAL and a
busy timeout, so the web workers and a job process can write concurrently). Tensors are
not in the database but in a :class:`~edgecascade.cloud_service.blobs.BlobStore`.

Tables: ``hard_examples`` (one row per example id, with its teacher and human labels),
``model_versions`` (every version the cloud has served, with its cuts; see
:mod:`edgecascade.cloud_service.intake`) and ``retrain_jobs`` (see :mod:`edgecascade.cloud_service.jobs`).
They are created and changed by migrations (:mod:`edgecascade.cloud_service.schema`), which
:func:`open_engine` applies: a table changed here needs a new revision.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from edgecascade.cloud_service import schema
from edgecascade.cloud_service.blobs import BlobStore
from edgecascade.cloud_service.intake import Checked, VersionSpec
from edgecascade.device_sdk.errors import ConfigError

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

hard_examples = sa.Table(
    "hard_examples",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # content id (sha256 hex)
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("model_version", sa.Integer, nullable=False, index=True),
    sa.Column("cut", sa.String(8), nullable=False),
    sa.Column("encoding", sa.String(16), nullable=False),
    sa.Column("reasons", sa.String(200), nullable=False),  # comma-separated REASONS
    sa.Column("predicted", sa.Integer, nullable=False),
    sa.Column("confidence", sa.Double, nullable=False),
    sa.Column("tier", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),  # on the selecting node
    sa.Column("received_at", sa.Double, nullable=False),  # by the cloud
    sa.Column("teacher_label", sa.Integer, nullable=True),
    sa.Column("human_label", sa.Integer, nullable=True),
    sa.Column("labelled_at", sa.Double, nullable=True),
    sa.Column("features_path", sa.String(100), nullable=False),  # relative to the blob directory
    sa.Column("raw_path", sa.String(100), nullable=True),
    sa.Column("site", sa.String(64), nullable=True, index=True),  # the uploading token's name
    sa.Index("ix_hard_examples_received", "received_at", "id"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("num_classes", sa.Integer, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # VersionSpec.to_json()
    sa.Column("first_served_at", sa.Double, nullable=False),
)


def database_exists(url: str) -> bool:
    """False only for an SQLite file not created yet (a server database always exists): what a
    metrics scrape checks so that it never creates the database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(str(parsed.database)).exists()


def open_engine(url: str) -> Engine:
    """An engine for ``url`` with its schema migrated to the newest revision (see :func:`connect`)."""
    engine = connect(url)
    try:
        schema.upgrade(engine)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise ConfigError(f"cannot migrate the database {_redacted(url)}: {exc}") from None
    except ConfigError:
        engine.dispose()
        raise
    return engine


def connect(url: str) -> Engine:
    """An engine for ``url``, schema untouched; an SQLite file's directory is made 0700.

    Nothing connects yet: a wrong URL or an unknown driver is reported here, a database
    that cannot be reached on first use.
    """
    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30} if sqlite else {})
    except (sa.exc.SQLAlchemyError, OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot open the database {_redacted(url)}: {exc}") from None
    if sqlite:
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


WAL_ATTEMPTS = 40  # switching a new file to WAL: attempts, 25 ms apart and more (about 20 s in all)


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    """Busy timeout, then WAL (readers never wait for the writer).

    Switching a new database file to WAL takes an exclusive lock. When several processes
    open the same new file at once (web workers and a job), two may each hold a shared lock
    and want the exclusive one: SQLite then fails one at once with "database is locked",
    without waiting (waiting could not end). Once the other has switched the file, the
    switch is a no-op, so the failed one tries again.
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    for attempt in range(WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS - 1:
                raise
            logger.debug("switching to WAL: %s; trying again", exc)
            time.sleep(0.025 * (1 + attempt))
    cursor.close()


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable URL>"


@dataclass(frozen=True)
class ExampleRow:
    """A stored hard example without its tensors; ``label`` is the human label, else the teacher's."""

    id: str
    device_id: str
    model_version: int
    cut: str
    encoding: str
    reasons: tuple[str, ...]
    predicted: int
    confidence: float
    tier: str
    created_at: float
    received_at: float
    teacher_label: int | None
    human_label: int | None
    labelled_at: float | None
    features_path: str
    raw_path: str | None
    site: str | None = None  # the name of the token that uploaded it: its gateway's, or the device's own

    @property
    def label(self) -> int | None:
        return self.human_label if self.human_label is not None else self.teacher_label

    @property
    def label_source(self) -> str | None:
        if self.human_label is not None:
            return "human"
        return "teacher" if self.teacher_label is not None else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["has_raw"] = data.pop("raw_path") is not None
        del data["features_path"]
        data["label"], data["label_source"] = self.label, self.label_source
        return data

    @classmethod
    def from_row(cls, row: Any) -> ExampleRow:
        values = dict(row._mapping)
        values["reasons"] = tuple(values["reasons"].split(","))
        return cls(**values)


@dataclass(frozen=True)
class ExampleFilter:
    """Which examples a listing returns (every field optional)."""

    device_id: str | None = None
    model_version: int | None = None
    labelled: bool | None = None  # True: a human label is set; False: none is
    since: float | None = None  # received at or after this unix time


def encode_cursor(row: ExampleRow) -> str:
    """An opaque cursor that resumes a listing after ``row`` (keyset: received_at, id)."""
    return base64.urlsafe_b64encode(json.dumps([row.received_at, row.id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`; ValueError for anything it did not make."""
    try:
        received_at, example_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("cursor is not one this API returned") from None
    if not isinstance(received_at, int | float) or not isinstance(example_id, str):
        raise ValueError("cursor is not one this API returned")
    return float(received_at), example_id


class ExampleStore:
    """Hard examples: rows in the database, tensors in the blob directory."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs

    # ----------------------------------------------------------------------- versions
    def record_version(self, spec: VersionSpec) -> None:
        """Remember that the cloud serves ``spec.version`` (idempotent, safe between workers)."""
        with self.engine.begin() as db:
            if db.execute(
                sa.select(model_versions.c.version).where(model_versions.c.version == spec.version)
            ).first():
                return
        try:
            with self.engine.begin() as db:
                db.execute(
                    model_versions.insert().values(
                        version=spec.version,
                        name=spec.name,
                        num_classes=spec.num_classes,
                        spec=json.dumps(spec.to_json()),
                        first_served_at=time.time(),
                    )
                )
        except sa.exc.IntegrityError:
            pass  # another worker recorded it first

    def versions(self) -> dict[int, VersionSpec]:
        """Every version the cloud has served."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(model_versions)).all()
        return {
            r.version: VersionSpec.from_json(r.version, r.name, r.num_classes, json.loads(r.spec))
            for r in rows
        }

    # ----------------------------------------------------------------------- examples
    def existing_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        if not ids:
            return set()
        with self.engine.connect() as db:
            rows = db.execute(sa.select(hard_examples.c.id).where(hard_examples.c.id.in_(set(ids))))
            return {r.id for r in rows}

    def add(
        self, items: list[Checked], teacher_labels: list[int | None], site: str | None = None
    ) -> tuple[list[str], list[str]]:
        """Store new examples uploaded for ``site``; returns ``(accepted ids, duplicate ids)``.

        Tensors are written first (content-addressed, so a retry rewrites the same bytes),
        then all rows in one transaction. If another worker stored one of them meanwhile,
        the rows are inserted one by one and the ones that collide are duplicates.
        """
        now = time.time()
        rows: list[dict[str, Any]] = []
        for checked, teacher in zip(items, teacher_labels, strict=True):
            example = checked.example
            example_id = example.example_id
            rows.append(
                {
                    "id": example_id,
                    "device_id": example.device_id,
                    "model_version": example.model_version,
                    "cut": example.cut,
                    "encoding": example.encoding,
                    "reasons": ",".join(example.reasons),
                    "predicted": example.predicted,
                    "confidence": example.confidence,
                    "tier": example.tier,
                    "created_at": example.created_at,
                    "received_at": now,
                    "teacher_label": teacher,
                    "human_label": None,
                    "labelled_at": None,
                    "features_path": self.blobs.put(example_id, "features", example.features),
                    "raw_path": self.blobs.put(example_id, "raw", example.raw) if example.raw else None,
                    "site": site,
                }
            )
        if not rows:
            return [], []
        try:
            with self.engine.begin() as db:
                db.execute(hard_examples.insert(), rows)
            return [r["id"] for r in rows], []
        except sa.exc.IntegrityError:
            logger.info("a concurrent upload stored some of these examples; inserting one by one")
        accepted: list[str] = []
        duplicates: list[str] = []
        for row in rows:
            try:
                with self.engine.begin() as db:
                    db.execute(hard_examples.insert(), [row])
                accepted.append(row["id"])
            except sa.exc.IntegrityError:
                duplicates.append(row["id"])
        return accepted, duplicates

    def get(self, example_id: str) -> ExampleRow | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(hard_examples).where(hard_examples.c.id == example_id)).first()
        return None if row is None else ExampleRow.from_row(row)

    def set_human_label(self, example_id: str, label: int) -> ExampleRow | None:
        """Set (or replace) the human label; None when there is no such example."""
        with self.engine.begin() as db:
            result = db.execute(
                hard_examples.update()
                .where(hard_examples.c.id == example_id)
                .values(human_label=label, labelled_at=time.time())
            )
        return self.get(example_id) if result.rowcount else None

    def page(
        self, where: ExampleFilter, limit: int, after: tuple[float, str] | None = None
    ) -> tuple[list[ExampleRow], str | None]:
        """Up to ``limit`` examples oldest first (by arrival), and the cursor of the next page."""
        query = sa.select(hard_examples).where(*self._conditions(where))
        if after is not None:
            received_at, example_id = after
            query = query.where(
                sa.or_(
                    hard_examples.c.received_at > received_at,
                    sa.and_(hard_examples.c.received_at == received_at, hard_examples.c.id > example_id),
                )
            )
        query = query.order_by(hard_examples.c.received_at, hard_examples.c.id).limit(limit + 1)
        with self.engine.connect() as db:
            rows = [ExampleRow.from_row(r) for r in db.execute(query)]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]) if more else None

    @staticmethod
    def _conditions(where: ExampleFilter) -> list[Any]:
        c = hard_examples.c
        conditions: list[Any] = []
        if where.device_id is not None:
            conditions.append(c.device_id == where.device_id)
        if where.model_version is not None:
            conditions.append(c.model_version == where.model_version)
        if where.labelled is True:
            conditions.append(c.human_label.is_not(None))
        if where.labelled is False:
            conditions.append(c.human_label.is_(None))
        if where.since is not None:
            conditions.append(c.received_at >= where.since)
        return conditions

    def count_received_after(self, since: float) -> int:
        """How many examples arrived after ``since`` (the retraining count trigger)."""
        query = (
            sa.select(sa.func.count()).select_from(hard_examples).where(hard_examples.c.received_at > since)
        )
        with self.engine.connect() as db:
            return int(db.execute(query).scalar_one())

    def for_training(self, until: float, limit: int) -> Iterator[ExampleRow]:
        """The newest ``limit`` examples with a label that arrived up to ``until``."""
        c = hard_examples.c
        query = (
            sa.select(hard_examples)
            .where(c.received_at <= until, sa.or_(c.human_label.is_not(None), c.teacher_label.is_not(None)))
            .order_by(c.received_at.desc(), c.id)
            .limit(limit)
        )
        with self.engine.connect() as db:
            rows = db.execute(query).all()
        return (ExampleRow.from_row(r) for r in rows)

    def tensors(self, row: ExampleRow) -> tuple[bytes, bytes | None]:
        """The features and (if uploaded) raw tensor bodies of a stored example."""
        raw = self.blobs.get(row.raw_path) if row.raw_path is not None else None
        return self.blobs.get(row.features_path), raw


def open_example_store(database_url: str, blob_dir: str | Path) -> ExampleStore:
    """The example store of a database URL and blob directory (its schema migrated when behind)."""
    return ExampleStore(open_engine(database_url), BlobStore(blob_dir))
