"""Retraining jobs: their rows in the database and the spec a job process runs from.

A job moves ``queued`` → ``running`` → ``succeeded`` | ``rejected`` | ``failed``:
``succeeded`` means a candidate version passed the evaluation gate and was published for
promotion, ``rejected`` that the gate (or a lack of data) kept the current version, and
``failed`` that the job crashed, timed out or was killed; in no case does a job touch the
version being served. The job process itself (``python -m edgecascade.cloud_service.retrain_job SPEC``)
updates its row: state, progress (0..1), the stage it is in, a heartbeat, and at the end
the gate's numbers or the error. Its log goes to a file beside the spec.

At most one job is queued or running at a time, across every worker and host sharing the
database: the row of an active job holds ``active = 1`` under a unique constraint, so a
second insert fails in the database instead of in a race between check and insert.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgecascade.cloud_service.config import RetrainSettings
from edgecascade.cloud_service.store import metadata

STATES = ("queued", "running", "succeeded", "rejected", "failed")
ACTIVE = ("queued", "running")
TRIGGERS = ("count", "schedule", "api", "cli")

retrain_jobs = sa.Table(
    "retrain_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.Column("heartbeat_at", sa.Double, nullable=True),
    sa.Column("progress", sa.Double, nullable=False, default=0.0),
    sa.Column("stage", sa.String(200), nullable=False, default=""),
    sa.Column("base_version", sa.Integer, nullable=True),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("examples_until", sa.Double, nullable=False),  # examples received up to here are in
    sa.Column("metrics", sa.Text, nullable=True),  # JSON: the gate's numbers
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("log_path", sa.String(500), nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("active", sa.Integer, nullable=True, unique=True),  # 1 while queued or running, else NULL
)


@dataclass(frozen=True)
class JobRow:
    """One retraining job as stored."""

    id: int
    state: str
    trigger: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    progress: float
    stage: str
    base_version: int | None
    candidate_version: int | None
    examples_until: float
    metrics: dict[str, Any] | None
    error: str | None
    log_path: str | None
    pid: int | None

    @classmethod
    def from_row(cls, row: Any) -> JobRow:
        values = dict(row._mapping)
        values.pop("active")
        values["metrics"] = json.loads(values["metrics"]) if values["metrics"] else None
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["log_path"], data["pid"]
        return data


class JobStore:
    """The ``retrain_jobs`` table, on an engine from :func:`~edgecascade.cloud_service.store.open_engine`.

    That engine's database is migrated to the newest schema revision, this table included.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, trigger: str, examples_until: float | None = None) -> JobRow | None:
        """A new queued job, or None when one is already queued or running."""
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
        now = time.time()
        values = {
            "state": "queued",
            "trigger": trigger,
            "created_at": now,
            "progress": 0.0,
            "stage": "queued",
            "examples_until": now if examples_until is None else examples_until,
            "active": 1,
        }
        try:
            with self.engine.begin() as db:
                key = db.execute(retrain_jobs.insert().values(**values)).inserted_primary_key
        except sa.exc.IntegrityError:
            return None
        assert key is not None
        return self.get(int(key[0]))

    def get(self, job_id: int) -> JobRow | None:
        """The job ``job_id``, or None; an id beyond what the database stores is no job (not an error)."""
        if not 0 <= job_id < 2**63:
            return None
        with self.engine.connect() as db:
            row = db.execute(sa.select(retrain_jobs).where(retrain_jobs.c.id == job_id)).first()
        return None if row is None else JobRow.from_row(row)

    def recent(self, limit: int = 50) -> list[JobRow]:
        """The newest jobs first."""
        query = sa.select(retrain_jobs).order_by(retrain_jobs.c.id.desc()).limit(limit)
        with self.engine.connect() as db:
            return [JobRow.from_row(r) for r in db.execute(query)]

    def active(self) -> JobRow | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(retrain_jobs).where(retrain_jobs.c.active == 1)).first()
        return None if row is None else JobRow.from_row(row)

    def latest(self) -> JobRow | None:
        jobs = self.recent(1)
        return jobs[0] if jobs else None

    def _update(self, job_id: int, *conditions: Any, **values: Any) -> bool:
        with self.engine.begin() as db:
            result = db.execute(
                retrain_jobs.update().where(retrain_jobs.c.id == job_id, *conditions).values(**values)
            )
        return bool(result.rowcount)

    def set_log_path(self, job_id: int, path: Path) -> None:
        self._update(job_id, log_path=str(path))

    def start(self, job_id: int, pid: int) -> bool:
        """Mark a queued job running in process ``pid``; False if it is not queued (any more)."""
        now = time.time()
        return self._update(
            job_id,
            retrain_jobs.c.state == "queued",
            state="running",
            pid=pid,
            started_at=now,
            heartbeat_at=now,
            stage="starting",
        )

    def report(self, job_id: int, progress: float, stage: str) -> None:
        """Progress of a running job (also a heartbeat)."""
        self._update(
            job_id,
            retrain_jobs.c.state == "running",
            progress=min(max(progress, 0.0), 1.0),
            stage=stage[:200],
            heartbeat_at=time.time(),
        )

    def heartbeat(self, job_id: int) -> None:
        self._update(job_id, retrain_jobs.c.state == "running", heartbeat_at=time.time())

    def finish(
        self,
        job_id: int,
        state: str,
        *,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        candidate_version: int | None = None,
        base_version: int | None = None,
    ) -> bool:
        """End an active job in a final state; False if it had already ended."""
        if state not in STATES or state in ACTIVE:
            raise ValueError(f"not a final state: {state!r}")
        values: dict[str, Any] = {
            "state": state,
            "finished_at": time.time(),
            "active": None,
            "stage": state,
            "metrics": json.dumps(metrics, sort_keys=True) if metrics is not None else None,
            "error": error,
            "candidate_version": candidate_version,
        }
        if state != "failed":
            values["progress"] = 1.0
        if base_version is not None:
            values["base_version"] = base_version
        return self._update(job_id, retrain_jobs.c.active == 1, **values)

    def reap_stale(self, stale_seconds: float, now: float | None = None) -> list[int]:
        """Fail active jobs whose process went quiet: no heartbeat (or no start) for ``stale_seconds``."""
        now = time.time() if now is None else now
        cutoff = now - stale_seconds
        c = retrain_jobs.c
        query = sa.select(c.id).where(
            c.active == 1,
            sa.or_(
                sa.and_(c.state == "running", c.heartbeat_at < cutoff),
                sa.and_(c.state == "queued", c.created_at < cutoff),
            ),
        )
        with self.engine.connect() as db:
            stale = [r.id for r in db.execute(query)]
        return [
            job_id
            for job_id in stale
            if self.finish(
                job_id, "failed", error=f"no sign of life for {stale_seconds:.0f} s; presumed dead"
            )
        ]

    def last_watermark(self) -> float:
        """``examples_until`` of the newest job (0 before the first): where the count trigger counts from."""
        with self.engine.connect() as db:
            value = db.execute(sa.select(sa.func.max(retrain_jobs.c.examples_until))).scalar()
        return float(value or 0.0)


@dataclass(frozen=True)
class JobSpec:
    """Everything a job process needs, written by whoever starts it (0600: the URL may hold a password)."""

    job_id: int
    database_url: str
    blob_dir: Path
    bundle: Path  # the bundle the cloud serves: the version a candidate must beat
    verify_key: Path | None
    log_path: Path
    examples_until: float
    retrain: RetrainSettings

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return json.loads(json.dumps(data, default=str))  # Paths as strings

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        hints = typing.get_type_hints(RetrainSettings)
        retrain: dict[str, Any] = {
            k: Path(v) if v is not None and Path in (hints[k], *typing.get_args(hints[k])) else v
            for k, v in data["retrain"].items()
        }
        return cls(
            job_id=int(data["job_id"]),
            database_url=str(data["database_url"]),
            blob_dir=Path(data["blob_dir"]),
            bundle=Path(data["bundle"]),
            verify_key=Path(data["verify_key"]) if data.get("verify_key") else None,
            log_path=Path(data["log_path"]),
            examples_until=float(data["examples_until"]),
            retrain=RetrainSettings(**retrain),
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f, indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: str | Path) -> JobSpec:
        return cls.from_json(json.loads(Path(path).read_text()))


def job_dir(jobs_dir: Path, job_id: int) -> Path:
    """Where a job's ``spec.json`` and ``job.log`` live."""
    return jobs_dir / f"job-{job_id}"


def read_log_tail(path: str | Path | None, lines: int) -> list[str]:
    """The last ``lines`` lines of a job log (at most 1 MiB is read); empty when there is none."""
    if path is None or lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 20)))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]
