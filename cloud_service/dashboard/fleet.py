"""What the cloud knows of its fleet: gateways' heartbeats and the devices seen, in the database.

Heartbeats go to ``gateway_heartbeats`` (one row each, the checked JSON as sent): every
server process sees every gateway, whichever worker a heartbeat reached. Rows older than
:data:`HISTORY` seconds are pruned, except each gateway's latest, so a gateway that went
quiet stays listed (as stale) with what it last said.

Devices come from three places: the gateways' heartbeats (devices they heard from
recently), the cloud's own ``/v1/infer`` requests (the device id in each envelope), and
hard-example uploads (the ``hard_examples`` table). The inference path never writes to the
database: :class:`DeviceSightings` counts in memory, and each server process writes its
counts to ``fleet_devices`` when it next handles a heartbeat or a fleet request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgecascade.cloud_service.store import hard_examples, metadata
from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.wire.heartbeat import Heartbeat

logger = logging.getLogger(__name__)

HISTORY = 3600.0  # seconds of heartbeats kept for the charts
PRUNE_EVERY = 60.0  # seconds between two prunings by one process
MAX_SIGHTINGS = 10_000  # devices one process counts between two writes; more are dropped (and counted)
STALE_INTERVALS = 3.0  # a gateway silent for this many of its heartbeat intervals is stale

# The fleet's tables, in the cloud database's one metadata (migration 0002 made them).

gateway_heartbeats = sa.Table(
    "gateway_heartbeats",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("gateway_id", sa.String(64), nullable=False, index=True),
    sa.Column("token_name", sa.String(64), nullable=False),  # the credential that sent it
    sa.Column("received_at", sa.Double, nullable=False, index=True),  # the cloud's clock
    sa.Column("body", sa.Text, nullable=False),  # Heartbeat.to_json()
    sa.Column("summary", sa.Text, nullable=False),  # the same without the device list: what charts read
)

fleet_devices = sa.Table(
    "fleet_devices",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("first_seen", sa.Double, nullable=False),
    sa.Column("last_seen", sa.Double, nullable=False),
    sa.Column("via", sa.String(80), nullable=False),  # the token that last brought its requests
    sa.Column("requests", sa.Integer, nullable=False),  # /v1/infer requests the cloud answered for it
)


@dataclass(frozen=True)
class HeartbeatRow:
    """A stored heartbeat and when the cloud received it."""

    gateway_id: str
    token_name: str
    received_at: float
    heartbeat: Heartbeat


@dataclass
class Sighting:
    """A device's ``/v1/infer`` requests seen by this process since its counts were last written."""

    first_seen: float
    last_seen: float
    via: str
    requests: int = 0


class DeviceSightings:
    """In-memory counts of the devices in ``/v1/infer`` envelopes; thread-safe, bounded."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Sighting] = {}
        self.dropped = 0

    def saw(self, device_id: str, via: str) -> None:
        now = self._clock()
        with self._lock:
            sighting = self._pending.get(device_id)
            if sighting is None:
                if len(self._pending) >= MAX_SIGHTINGS:
                    self.dropped += 1
                    return
                sighting = self._pending[device_id] = Sighting(now, now, via)
            sighting.last_seen, sighting.via = now, via
            sighting.requests += 1

    def drain(self) -> dict[str, Sighting]:
        """What was seen since the last drain (forgotten here: the caller writes it)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def take_dropped(self) -> int:
        """Sightings of new devices dropped since the last call because too many were pending."""
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        return dropped


class FleetStore:
    """The fleet's tables in the cloud's database (``engine``: migrated by ``store.open_engine``)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock
        self._next_prune = 0.0

    # --------------------------------------------------------------------- heartbeats
    def record_heartbeat(self, heartbeat: Heartbeat, token_name: str) -> float:
        """Store a checked heartbeat; returns when it was received."""
        now = self._clock()
        body = heartbeat.to_json()
        with self.engine.begin() as db:
            db.execute(
                gateway_heartbeats.insert().values(
                    gateway_id=heartbeat.gateway_id,
                    token_name=token_name[:64],
                    received_at=now,
                    body=json.dumps(body),
                    summary=json.dumps(body | {"devices": []}),
                )
            )
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.prune(now - HISTORY)
        return now

    def prune(self, before: float) -> int:
        """Delete heartbeats received before ``before``, but never a gateway's latest."""
        c = gateway_heartbeats.c
        latest = sa.select(sa.func.max(c.id)).group_by(c.gateway_id)
        with self.engine.begin() as db:
            result = db.execute(
                gateway_heartbeats.delete().where(c.received_at < before, c.id.not_in(latest))
            )
        return int(result.rowcount or 0)

    def latest_heartbeats(self) -> list[HeartbeatRow]:
        """Each gateway's latest heartbeat."""
        c = gateway_heartbeats.c
        latest = sa.select(sa.func.max(c.id)).group_by(c.gateway_id)
        columns = (c.id, c.gateway_id, c.token_name, c.received_at, c.body.label("json"))
        return self._rows(sa.select(*columns).where(c.id.in_(latest)).order_by(c.gateway_id))

    def heartbeats_since(self, since: float, limit: int = 50_000) -> list[HeartbeatRow]:
        """Heartbeats received at or after ``since``, oldest first, without their device lists."""
        c = gateway_heartbeats.c
        columns = (c.id, c.gateway_id, c.token_name, c.received_at, c.summary.label("json"))
        query = sa.select(*columns).where(c.received_at >= since).order_by(c.id).limit(limit)
        return self._rows(query)

    def _rows(self, query: Any) -> list[HeartbeatRow]:
        with self.engine.connect() as db:
            rows = db.execute(query).all()
        out = []
        for row in rows:
            try:
                heartbeat = Heartbeat.from_json(json.loads(row.json))
            except (ValueError, WireError) as exc:  # written by another release
                logger.warning("skipping stored heartbeat %d of %s: %s", row.id, row.gateway_id, exc)
                continue
            out.append(HeartbeatRow(row.gateway_id, row.token_name, row.received_at, heartbeat))
        return out

    # ------------------------------------------------------------------------ devices
    def record_sightings(self, sightings: dict[str, Sighting]) -> None:
        """Add one process's ``/v1/infer`` counts to ``fleet_devices`` (one transaction).

        Another process may insert the same new device meanwhile: then it is tried once more,
        when that device is an update.
        """
        if not sightings:
            return
        try:
            self._write_sightings(sightings)
        except sa.exc.IntegrityError:
            self._write_sightings(sightings)

    def _write_sightings(self, sightings: dict[str, Sighting]) -> None:
        c = fleet_devices.c
        with self.engine.begin() as db:
            known = {
                r.device_id
                for r in db.execute(sa.select(c.device_id).where(c.device_id.in_(list(sightings))))
            }
            for device_id, s in sightings.items():
                if device_id in known:
                    later = sa.case((c.last_seen < s.last_seen, s.last_seen), else_=c.last_seen)
                    db.execute(
                        fleet_devices.update()
                        .where(c.device_id == device_id)
                        .values(last_seen=later, via=s.via[:80], requests=c.requests + s.requests)
                    )
                else:
                    db.execute(
                        fleet_devices.insert().values(
                            device_id=device_id,
                            first_seen=s.first_seen,
                            last_seen=s.last_seen,
                            via=s.via[:80],
                            requests=s.requests,
                        )
                    )

    def infer_devices(self) -> list[dict[str, Any]]:
        """Devices whose ``/v1/infer`` requests the cloud answered."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(fleet_devices)).all()
        return [dict(r._mapping) for r in rows]

    def example_devices(self) -> list[dict[str, Any]]:
        """Devices with uploaded hard examples: how many, and when the last arrived."""
        c = hard_examples.c
        query = sa.select(
            c.device_id, sa.func.count().label("hard_examples"), sa.func.max(c.received_at).label("last")
        ).group_by(c.device_id)
        with self.engine.connect() as db:
            rows = db.execute(query).all()
        return [
            {"device_id": r.device_id, "hard_examples": int(r.hard_examples), "last": r.last} for r in rows
        ]


def is_stale(row: HeartbeatRow, now: float) -> bool:
    """Whether a gateway missed its heartbeats: silent for :data:`STALE_INTERVALS` intervals."""
    return now - row.received_at > STALE_INTERVALS * row.heartbeat.interval


def gateway_json(row: HeartbeatRow, now: float) -> dict[str, Any]:
    """One gateway's line of the fleet view."""
    beat = row.heartbeat
    return {
        "gateway_id": row.gateway_id,
        "token": row.token_name,
        "model": {"name": beat.model_name, "version": beat.model_version},
        "last_seen": row.received_at,
        "age": max(0.0, now - row.received_at),
        "stale": is_stale(row, now),
        "interval": beat.interval,
        "started_at": beat.started_at,
        "requests": beat.requests,
        "answers": dict(beat.answers),
        "latency_ms": {"count": beat.latency.count, "p50": beat.latency.p50, "p99": beat.latency.p99},
        "devices_seen": beat.devices_seen,
        "outbox": dict(beat.outbox) if beat.outbox is not None else None,
    }


def merge_devices(
    latest: list[HeartbeatRow], infer: list[dict[str, Any]], examples: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One line per device from the three sources, most recently seen first.

    ``last_seen`` is the latest of what the gateways (their clocks), the cloud's inference and
    the hard-example intake report; ``seen_by`` names the sources.
    """
    devices: dict[str, dict[str, Any]] = {}

    def line(device_id: str) -> dict[str, Any]:
        return devices.setdefault(
            device_id,
            {
                "device_id": device_id,
                "last_seen": 0.0,
                "seen_by": [],
                "gateways": [],
                "gateway_requests": 0,
                "cloud_requests": 0,
                "hard_examples": 0,
            },
        )

    for row in latest:
        for seen in row.heartbeat.devices:
            item = line(seen.device_id)
            item["gateways"].append(row.gateway_id)
            item["gateway_requests"] += seen.requests
            item["last_seen"] = max(item["last_seen"], seen.last_seen)
            _add(item, f"gateway {row.gateway_id}")
    for entry in infer:
        item = line(entry["device_id"])
        item["cloud_requests"] = entry["requests"]
        item["last_seen"] = max(item["last_seen"], entry["last_seen"])
        _add(item, "cloud inference")
    for entry in examples:
        item = line(entry["device_id"])
        item["hard_examples"] = entry["hard_examples"]
        item["last_seen"] = max(item["last_seen"], entry["last"])
        _add(item, "hard examples")
    return sorted(devices.values(), key=lambda d: (-d["last_seen"], d["device_id"]))


def _add(item: dict[str, Any], source: str) -> None:
    if source not in item["seen_by"]:
        item["seen_by"].append(source)
