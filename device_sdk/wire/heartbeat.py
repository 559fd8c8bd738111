"""The gateway heartbeat: a gateway's status, sent to the cloud as JSON every few seconds.

A gateway POSTs one :class:`Heartbeat` to ``ROUTE_HEARTBEAT`` (``/v1/heartbeats``) with its
gateway token every ``gateway.heartbeat_interval`` seconds; the cloud keeps them for its
fleet view and dashboard. The counters (``requests``, ``answers``) are cumulative since
``started_at``, so a lost heartbeat loses no traffic: the cloud takes differences between
consecutive heartbeats, and a new ``started_at`` (a restarted gateway) starts from zero.
``latency_ms`` covers only the requests answered since the previous heartbeat.

:meth:`Heartbeat.from_json` checks everything it reads and raises :class:`WireError`
naming every problem; fields it does not know are ignored, so a newer gateway can add some.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgecascade.device_sdk.errors import WireError

HEARTBEAT_SCHEMA = 1
MAX_DEVICES = 256  # devices listed in one heartbeat (the most recent); ``devices_seen`` counts all
MAX_ANSWER_KINDS = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # gateway and device ids, as in the envelope
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_MAX_COUNT = 2**63 - 1


@dataclass(frozen=True)
class Latency:
    """Request latency at the gateway (arrival to reply) over one heartbeat interval, in ms."""

    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class SeenDevice:
    """A device the gateway heard from recently."""

    device_id: str
    last_seen: float  # unix time, the gateway's clock
    requests: int  # requests from it within the gateway's device window


@dataclass(frozen=True)
class Heartbeat:
    """One gateway's status; see the module docstring for what each counter covers."""

    gateway_id: str
    model_name: str
    model_version: int
    sent_at: float
    started_at: float
    interval: float
    requests: int = 0
    answers: Mapping[str, int] = field(default_factory=dict)  # answering tier (``cloud``, …) -> count
    latency: Latency = field(default_factory=Latency)
    devices: tuple[SeenDevice, ...] = ()
    devices_seen: int = 0
    outbox: Mapping[str, int] | None = None  # the relay outbox's rows per state; None without one

    def to_json(self) -> dict[str, Any]:
        """The JSON object sent on the wire."""
        return {
            "schema": HEARTBEAT_SCHEMA,
            "gateway_id": self.gateway_id,
            "sent_at": self.sent_at,
            "started_at": self.started_at,
            "interval": self.interval,
            "model": {"name": self.model_name, "version": self.model_version},
            "requests": self.requests,
            "answers": dict(self.answers),
            "latency_ms": {
                "count": self.latency.count,
                "p50": self.latency.p50,
                "p90": self.latency.p90,
                "p99": self.latency.p99,
            },
            "devices": [
                {"id": d.device_id, "last_seen": d.last_seen, "requests": d.requests} for d in self.devices
            ],
            "devices_seen": self.devices_seen,
            "outbox": dict(self.outbox) if self.outbox is not None else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat:
        """Parse and check a heartbeat object; :class:`WireError` lists every problem."""
        if not isinstance(data, dict):
            raise WireError("a heartbeat must be a JSON object")
        read = _Reader()
        if data.get("schema") != HEARTBEAT_SCHEMA:
            read.problems.append(f"schema must be {HEARTBEAT_SCHEMA}, got {data.get('schema')!r}")
        model = read.object(data, "model")
        latency = read.object(data, "latency_ms")
        heartbeat = cls(
            gateway_id=read.name(data, "gateway_id"),
            model_name=read.text(model, "name", "model.name", 200),
            model_version=read.count(model, "version", "model.version", lo=1, hi=2**32 - 1),
            sent_at=read.number(data, "sent_at"),
            started_at=read.number(data, "started_at"),
            interval=read.number(data, "interval", positive=True),
            requests=read.count(data, "requests"),
            answers=read.counts(data, "answers", MAX_ANSWER_KINDS),
            latency=Latency(
                read.count(latency, "count", "latency_ms.count"),
                read.optional_number(latency, "p50", "latency_ms.p50"),
                read.optional_number(latency, "p90", "latency_ms.p90"),
                read.optional_number(latency, "p99", "latency_ms.p99"),
            ),
            devices=read.devices(data),
            devices_seen=read.count(data, "devices_seen"),
            outbox=read.counts(data, "outbox", 16) if data.get("outbox") is not None else None,
        )
        if read.problems:
            raise WireError("invalid heartbeat: " + "; ".join(read.problems))
        return heartbeat


class _Reader:
    """Reads checked fields, collecting every problem instead of stopping at the first.

    Each reader takes the object, the key in it, and the path to name in a problem.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def _get(self, data: dict[str, Any], key: str, path: str | None) -> Any:
        if key not in data:
            self.problems.append(f"{path or key}: required")
            return None
        if data[key] is None:  # not a missing value to default: a count or name of null is refused
            self.problems.append(f"{path or key}: must not be null")
        return data[key]

    def object(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = self._get(data, key, None)
        if value is not None and not isinstance(value, dict):
            self.problems.append(f"{key}: expected an object")
        return value if isinstance(value, dict) else {}

    def text(self, data: dict[str, Any], key: str, path: str, limit: int) -> str:
        value = self._get(data, key, path)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= limit):
            self.problems.append(f"{path}: expected a string of 1..{limit} characters")
        return value if isinstance(value, str) else ""

    def name(self, data: dict[str, Any], key: str, path: str | None = None) -> str:
        value = self._get(data, key, path)
        if value is not None and not (isinstance(value, str) and _NAME_RE.match(value)):
            self.problems.append(f"{path or key}: expected 1-64 of A-Z a-z 0-9 _ . -")
        return value if isinstance(value, str) else ""

    def count(
        self, data: dict[str, Any], key: str, path: str | None = None, lo: int = 0, hi: int = _MAX_COUNT
    ) -> int:
        value = self._get(data, key, path)
        if value is None:
            return lo
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problems.append(f"{path or key}: expected an integer in {lo}..{hi}")
            return lo
        return value

    def number(
        self, data: dict[str, Any], key: str, path: str | None = None, positive: bool = False
    ) -> float:
        value = self._get(data, key, path)
        if value is None:
            return 0.0
        if not _finite(value) or (positive and value <= 0):
            self.problems.append(f"{path or key}: expected a finite {'positive ' if positive else ''}number")
            return 0.0
        return float(value)

    def optional_number(self, data: dict[str, Any], key: str, path: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if not _finite(value) or value < 0:
            self.problems.append(f"{path}: expected null or a finite number >= 0")
            return None
        return float(value)

    def counts(self, data: dict[str, Any], key: str, most: int) -> dict[str, int]:
        value = self.object(data, key)
        if len(value) > most:
            self.problems.append(f"{key}: at most {most} entries")
            return {}
        out: dict[str, int] = {}
        for kind in value:
            if not (isinstance(kind, str) and _KIND_RE.match(kind)):
                self.problems.append(f"{key}: {str(kind)[:40]!r} is not a counter name")
                continue
            out[kind] = self.count(value, kind, f"{key}.{kind}")
        return out

    def devices(self, data: dict[str, Any]) -> tuple[SeenDevice, ...]:
        value = self._get(data, "devices", None)
        if value is None:
            return ()
        if not isinstance(value, list) or len(value) > MAX_DEVICES:
            self.problems.append(f"devices: expected a list of at most {MAX_DEVICES} objects")
            return ()
        out = []
        for i, item in enumerate(value):
            path = f"devices[{i}]"
            if not isinstance(item, dict):
                self.problems.append(f"{path}: expected an object")
                continue
            out.append(
                SeenDevice(
                    self.name(item, "id", f"{path}.id"),
                    self.number(item, "last_seen", f"{path}.last_seen"),
                    self.count(item, "requests", f"{path}.requests"),
                )
            )
        return tuple(out)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
