"""Drift events: the devices' drift alarms, as they arrive with their hard examples.

A device that detects drift (:mod:`edgecascade.device_sdk.core.drift`) keeps the input that
raised the alarm as a hard example for the reason ``drift``; it travels the durable upload
path (device outbox, gateway relay, cloud intake). Each such example that the intake stores
becomes one row of ``drift_events``: the site (the name of the token that uploaded it: a
gateway's speaks for its site, a device uploading directly is its own site), the device,
the model version, when the device detected it (the record's ``created_at``), when the cloud
received it and the example's id. An example uploaded twice is stored once, and so is its event.

Routes and scopes::

    GET /v1/drift-events   admin   ?site=&since=&limit=   newest first

``edgecascade_drift_events_total{site}`` (:mod:`edgecascade.cloud_service.metrics`) counts
them from this table.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import sqlalchemy as sa
from flask import Blueprint, Flask, current_app, jsonify, request
from sqlalchemy.engine import Engine
from werkzeug.exceptions import BadRequest

from edgecascade.cloud_service import validation
from edgecascade.cloud_service.auth import require_scope
from edgecascade.cloud_service.intake import Checked
from edgecascade.cloud_service.store import metadata

logger = logging.getLogger(__name__)

ROUTE_DRIFT_EVENTS = "/v1/drift-events"
MAX_LIST = 1000
DEFAULT_LIMIT = 100
SITE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a token name

drift_events = sa.Table(
    "drift_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(64), nullable=False, index=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("detected_at", sa.Double, nullable=False),  # the record's created_at, on the device
    sa.Column("received_at", sa.Double, nullable=False, index=True),
    sa.Column("example_id", sa.String(64), nullable=False, unique=True),
)


@dataclass(frozen=True)
class DriftEvent:
    """One device's drift alarm, as the cloud recorded it."""

    id: int
    site: str
    device_id: str
    model_version: int
    detected_at: float
    received_at: float
    example_id: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record(engine: Engine, site: str, items: Sequence[Checked], accepted: Sequence[str]) -> int:
    """Add an event for each newly stored (``accepted``) example whose reasons include ``drift``."""
    new = set(accepted)
    now = time.time()
    rows = [
        {
            "site": site,
            "device_id": item.example.device_id,
            "model_version": item.example.model_version,
            "detected_at": item.example.created_at,
            "received_at": now,
            "example_id": item.example.example_id,
        }
        for item in items
        if "drift" in item.example.reasons and item.example.example_id in new
    ]
    if not rows:
        return 0
    with engine.begin() as db:
        db.execute(drift_events.insert(), rows)
    for row in rows:
        logger.warning(
            "drift reported by device %s (site %s, model v%d)", row["device_id"], site, row["model_version"]
        )
    return len(rows)


def events(
    engine: Engine, site: str | None = None, since: float | None = None, limit: int = DEFAULT_LIMIT
) -> list[DriftEvent]:
    """Events newest first (by when the cloud received them), optionally of one site and received since."""
    query = sa.select(drift_events).order_by(drift_events.c.received_at.desc(), drift_events.c.id.desc())
    if site is not None:
        query = query.where(drift_events.c.site == site)
    if since is not None:
        query = query.where(drift_events.c.received_at >= since)
    with engine.connect() as db:
        return [DriftEvent(**row._mapping) for row in db.execute(query.limit(limit))]


def counts_by_site(engine: Engine) -> dict[str, int]:
    """How many events each site has reported."""
    query = sa.select(drift_events.c.site, sa.func.count()).group_by(drift_events.c.site)
    with engine.connect() as db:
        return {str(site): int(n) for site, n in db.execute(query)}


drift_api = Blueprint("drift_events", __name__)
_EXTENSION = "edgecascade.drift_events"


def init_app(app: Flask, engine: Callable[[], Engine]) -> None:
    """Register ``GET /v1/drift-events``; ``engine()`` is the learning loop's database (opened when used)."""
    app.extensions[_EXTENSION] = engine
    app.register_blueprint(drift_api)


def _site(text: str) -> str:
    if not SITE.fullmatch(text):
        raise ValueError("a site is 1-64 of [A-Za-z0-9_.-]")
    return text


@drift_api.get(ROUTE_DRIFT_EVENTS)
@require_scope("admin")
def list_events() -> Any:
    args = request.args
    problems: list[str] = []
    site = validation.query_arg(args, "site", _site, problems)
    since = validation.query_arg(args, "since", validation.finite_float, problems)
    limit = validation.query_arg(args, "limit", validation.bounded_int(1, MAX_LIST), problems)
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    engine = cast(Engine, current_app.extensions[_EXTENSION]())
    found = events(engine, site, since, limit or DEFAULT_LIMIT)
    return jsonify(events=[e.to_json() for e in found])
