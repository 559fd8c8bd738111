"""Federated training runs and their rounds in the cloud database, as the server side reports them.

The server side of collaborative training (a Flower ServerApp beside the cloud) opens a run
(:meth:`FederationStore.start_run`), says what it is doing (:meth:`~FederationStore.set_stage`),
records each round's tally when the round ends (:meth:`~FederationStore.record_round`) and
ends the run with the evaluation gate's verdict (:meth:`~FederationStore.finish_run`). The
cloud API (:mod:`edgecascade.cloud_service.federation_api`) and ``edgecascade federated
status`` read them back; the Prometheus families are counted from these tables at scrape time.

Tables (migration 0005), in the cloud database's one metadata:

* ``federated_runs``: one row per run, ``running`` → ``promoted`` (the gate passed and the
  candidate is served) | ``published`` (passed, waiting for promotion) | ``rejected`` (the
  gate kept the current version) | ``failed`` (the run crashed or lost its quorum);
* ``federated_rounds``: one row per ended round, ``completed`` (its quorum of updates
  arrived) or ``short`` (the round timed out below quorum), with the counts of sites
  sampled, accepted, late, refused and failed, and the whole tally as JSON.

The store takes plain values (the tally is ``RoundTally.to_json()``): the cloud never
imports the federation package, which sits on top of it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgecascade.cloud_service.store import metadata

RUN_STATES = ("running", "promoted", "published", "rejected", "failed")
ROUND_STATES = ("completed", "short")
TALLY_KEYS = (
    "server_round",
    "sampled",
    "accepted",
    "refused",
    "failed",
    "late",
    "bytes_in",
    "bytes_out",
    "seconds",
)
MAX_STAGE = 200
MAX_FLOWER_RUN = 32
MAX_STRATEGY = 64
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")

federated_runs = sa.Table(
    "federated_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flower_run", sa.String(MAX_FLOWER_RUN), nullable=True),  # Flower's run id (a uint64)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("stage", sa.String(MAX_STAGE), nullable=False),  # one progress line
    sa.Column("strategy", sa.String(MAX_STRATEGY), nullable=False),
    sa.Column("rounds_planned", sa.Integer, nullable=False),
    sa.Column("base_version", sa.Integer, nullable=True),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("gate", sa.Text, nullable=True),  # JSON: the evaluation gate's numbers
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started", sa.Double, nullable=False),
    sa.Column("finished", sa.Double, nullable=True),
)

federated_rounds = sa.Table(
    "federated_rounds",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("federated_runs.id"), primary_key=True),
    sa.Column("server_round", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("sampled", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("late", sa.Integer, nullable=False),
    sa.Column("refused", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("tally", sa.Text, nullable=False),  # JSON: the whole RoundTally
    sa.Column("seconds", sa.Double, nullable=False),
    sa.Column("finished", sa.Double, nullable=False),
)


class FederationStore:
    """The ``federated_runs`` and ``federated_rounds`` tables, on an engine from
    :func:`~edgecascade.cloud_service.store.open_engine` (its database is at the newest revision).

    Bad values (a state not in :data:`RUN_STATES` / :data:`ROUND_STATES`, a tally without its
    keys) raise ValueError; a round of a run that does not exist raises LookupError.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ writing
    def start_run(
        self, *, strategy: str, rounds: int, base_version: int | None, flower_run: str | int | None = None
    ) -> int:
        """A new ``running`` run; its id."""
        if not 0 < len(strategy) <= MAX_STRATEGY:
            raise ValueError(f"a strategy name is 1-{MAX_STRATEGY} characters, got {strategy!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        values = {
            "flower_run": None if flower_run is None else str(flower_run)[:MAX_FLOWER_RUN],
            "state": "running",
            "stage": "starting",
            "strategy": strategy,
            "rounds_planned": rounds,
            "base_version": base_version,
            "started": time.time(),
        }
        with self.engine.begin() as db:
            key = db.execute(federated_runs.insert().values(**values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def set_stage(self, run_id: int, stage: str) -> bool:
        """What a running run is doing now (one line, cut at 200 characters); False once it has ended."""
        return self._update(run_id, federated_runs.c.state == "running", stage=stage[:MAX_STAGE])

    def record_round(self, run_id: int, tally: Mapping[str, Any], *, state: str | None = None) -> None:
        """Store one ended round's tally (``RoundTally.to_json()``, which may hold more keys): its
        counts in columns, all of it as JSON with its ``state`` (``completed`` | ``short``: given
        here, or the tally's own). A round recorded again replaces the earlier record (a retried
        write does no harm)."""
        values = _round_values(tally, state)
        with self.engine.begin() as db:
            exists = sa.select(federated_runs.c.id).where(federated_runs.c.id == run_id)
            if db.execute(exists).first() is None:
                raise LookupError(f"no federated run {run_id}")
            db.execute(
                federated_rounds.delete().where(
                    federated_rounds.c.run_id == run_id,
                    federated_rounds.c.server_round == values["server_round"],
                )
            )
            db.execute(federated_rounds.insert().values(run_id=run_id, **values))

    def finish_run(
        self,
        run_id: int,
        *,
        state: str,
        candidate_version: int | None = None,
        gate: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """End a running run in a final state; False if it had already ended (or does not exist)."""
        if state not in RUN_STATES or state == "running":
            raise ValueError(f"not a final state of a federated run: {state!r}")
        values = {
            "state": state,
            "stage": state,
            "finished": time.time(),
            "candidate_version": candidate_version,
            "gate": None if gate is None else _json(dict(gate), "gate"),
            "error": error,
        }
        return self._update(run_id, federated_runs.c.state == "running", **values)

    def _update(self, run_id: int, *conditions: Any, **values: Any) -> bool:
        with self.engine.begin() as db:
            result = db.execute(
                federated_runs.update().where(federated_runs.c.id == run_id, *conditions).values(**values)
            )
        return bool(result.rowcount)

    # ------------------------------------------------------------------ reading
    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs first, each with ``rounds_done`` (rounds recorded so far)."""
        done = (
            sa.select(federated_rounds.c.run_id, sa.func.count().label("rounds_done"))
            .group_by(federated_rounds.c.run_id)
            .subquery()
        )
        query = (
            sa.select(federated_runs, sa.func.coalesce(done.c.rounds_done, 0).label("rounds_done"))
            .outerjoin(done, done.c.run_id == federated_runs.c.id)
            .order_by(federated_runs.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as db:
            return [_run(row) for row in db.execute(query)]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run with its rounds in order (each with its decoded tally), or None."""
        if not 0 <= run_id < 2**63:
            return None  # beyond what the database stores: no run, not an error
        with self.engine.connect() as db:
            row = db.execute(sa.select(federated_runs).where(federated_runs.c.id == run_id)).first()
            if row is None:
                return None
            rounds = db.execute(
                sa.select(federated_rounds)
                .where(federated_rounds.c.run_id == run_id)
                .order_by(federated_rounds.c.server_round)
            ).all()
        found = _run(row, rounds_done=len(rounds))
        found["rounds"] = [_round(r) for r in rounds]
        return found

    def totals(self) -> dict[str, Any]:
        """Counts for the metrics: runs by state, rounds by state, refused updates by reason, late results."""
        c = federated_rounds.c
        by_run_state = sa.select(federated_runs.c.state, sa.func.count()).group_by(federated_runs.c.state)
        by_round_state = sa.select(c.state, sa.func.count()).group_by(c.state)
        with self.engine.connect() as db:
            runs: dict[str, int] = {str(state): int(n) for state, n in db.execute(by_run_state)}
            rounds: dict[str, int] = {str(state): int(n) for state, n in db.execute(by_round_state)}
            late = db.execute(sa.select(sa.func.coalesce(sa.func.sum(c.late), 0))).scalar_one()
            refusing = db.execute(sa.select(c.tally).where(c.refused > 0)).scalars().all()
        refused: dict[str, int] = {}
        for text in refusing:
            for reason in _decoded(text).get("refused", {}).values():
                code = reason_code(reason)
                refused[code] = refused.get(code, 0) + 1
        return {
            "runs": {state: runs.get(state, 0) for state in RUN_STATES},
            "rounds": {state: rounds.get(state, 0) for state in ROUND_STATES},
            "refused": dict(sorted(refused.items())),
            "late": int(late),
        }


def reason_code(reason: Any) -> str:
    """A refusal's reason as a short label (``signature``, ``stale_version``): the text before any
    ``:`` or space, lower case; ``other`` when that is not a word. A metric label stays a small
    set however much a reason's text says."""
    head = re.split(r"[:\s]", str(reason).strip(), maxsplit=1)[0].lower().replace("-", "_")
    return head if _REASON.fullmatch(head) else "other"


def _round_values(tally: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    """The row of a tally; ValueError names what is missing or wrong."""
    if not isinstance(tally, Mapping):
        raise ValueError(f"a round's tally is a mapping, got {type(tally).__name__}")
    missing = [key for key in TALLY_KEYS if key not in tally]
    if missing:
        raise ValueError(f"a round's tally lacks {', '.join(missing)}")
    if state is None:
        state = tally.get("state")
    elif tally.get("state", state) != state:
        raise ValueError(f"the round's state is {state!r} but its tally says {tally['state']!r}")
    server_round, seconds = tally["server_round"], tally["seconds"]
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise ValueError(f"server_round must be a non-negative integer, got {server_round!r}")
    if state not in ROUND_STATES:
        raise ValueError(f"a round's state is one of {ROUND_STATES}, got {state!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number, got {seconds!r}")
    counts = {}
    for key in ("sampled", "accepted", "late", "refused", "failed"):
        if not isinstance(tally[key], list | tuple | dict):
            raise ValueError(f"a round's {key} is a list or a mapping, got {type(tally[key]).__name__}")
        counts[key] = len(tally[key])
    return {
        "server_round": server_round,
        "state": state,
        **counts,
        "tally": _json(dict(tally) | {"state": state}, "tally"),
        "seconds": float(seconds),
        "finished": time.time(),
    }


def _json(value: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:  # NaN, or a value JSON cannot hold
        raise ValueError(f"the {what} is not JSON: {exc}") from None


def _decoded(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _run(row: Any, rounds_done: int | None = None) -> dict[str, Any]:
    values = dict(row._mapping)
    values["gate"] = _decoded(values["gate"]) if values["gate"] is not None else None
    if rounds_done is not None:
        values["rounds_done"] = rounds_done
    return values


def _round(row: Any) -> dict[str, Any]:
    values = dict(row._mapping)
    del values["run_id"]
    values["tally"] = _decoded(values["tally"])
    return values
