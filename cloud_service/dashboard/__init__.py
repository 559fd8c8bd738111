"""The operator's dashboard, served by the cloud, and the fleet API behind it.

Routes and scopes::

    GET  /dashboard/                       none      the page (its JS and CSS under /dashboard/static/)
    POST /v1/heartbeats                    gateway   a gateway's status (device_sdk.wire.heartbeat)
    GET  /v1/fleet                         admin     gateways, devices, the model version of every node
    GET  /v1/fleet/traffic?minutes=15      admin     exit mix and latency over time, from heartbeats
    GET  /v1/hard-examples/<id>/raw.png    admin     a hard example's raw input as a PNG image

The page holds no secret and works offline (no CDN: plain JS drawing SVG): it asks for an
admin token once, keeps it in the tab's ``sessionStorage`` and sends it as a bearer token
on every call, to these routes and to those of the learning loop (hard examples, labels,
jobs) and the model registry (versions, promote, roll back). The fleet's storage is in
:mod:`.fleet`, the series the charts draw in :mod:`.traffic`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, NotFound, UnprocessableEntity

from edgecascade.cloud_service import validation
from edgecascade.cloud_service.auth import current_token, require_scope
from edgecascade.cloud_service.dashboard.fleet import (
    HISTORY,
    MAX_SIGHTINGS,
    DeviceSightings,
    FleetStore,
    gateway_json,
    merge_devices,
)
from edgecascade.cloud_service.dashboard.png import png_bytes
from edgecascade.cloud_service.dashboard.traffic import bucket_seconds, traffic_series
from edgecascade.cloud_service.learning import Learning
from edgecascade.cloud_service.tokens import TokenInfo
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.wire.envelope import ROUTE_HEARTBEAT
from edgecascade.device_sdk.wire.heartbeat import Heartbeat

__all__ = ["ROUTE_FLEET", "Fleet", "dashboard", "init_app", "saw_device"]

logger = logging.getLogger(__name__)
ROUTE_FLEET = "/v1/fleet"
PAGE = "/dashboard/"
_EXTENSION = "edgecascade.fleet"
# the page loads only its own files and talks only to this origin
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

dashboard = Blueprint("dashboard", __name__, static_folder="static", static_url_path="/dashboard/static")


class Fleet:
    """The app's fleet state: the store (opened on first use, in the learning loop's database)
    and this process's counts of devices seen in ``/v1/infer`` requests."""

    def __init__(self, learning: Learning, inference: Any) -> None:
        self.learning = learning
        self.inference = inference  # the served model (name, version, classes) and the app's counters
        self.sightings = DeviceSightings()
        self._store: FleetStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> FleetStore:
        engine = self.learning.store.engine
        with self._lock:
            if self._store is None:
                self._store = FleetStore(engine)
            return self._store

    def flush(self) -> None:
        """Write this process's device counts (on each heartbeat and fleet request it handles)."""
        self.store.record_sightings(self.sightings.drain())
        dropped = self.sightings.take_dropped()
        if dropped:
            self.count("fleet_devices_dropped", dropped)
            logger.warning(
                "%d device sightings dropped: more than %d new devices between writes", dropped, MAX_SIGHTINGS
            )

    def count(self, key: str, n: int = 1) -> None:
        self.inference.counters.add(key, n)


def init_app(app: Flask, learning: Learning, inference: Any) -> Fleet:
    """Register the page and the fleet routes."""
    fleet = Fleet(learning, inference)
    app.extensions[_EXTENSION] = fleet
    app.register_blueprint(dashboard)
    return fleet


def saw_device(device_id: str, token: TokenInfo) -> None:
    """Note a device whose request the cloud is answering (memory only: no I/O on this path)."""
    fleet = current_app.extensions.get(_EXTENSION)
    if fleet is not None:
        cast(Fleet, fleet).sightings.saw(device_id, f"{token.scope} {token.name}")


def _fleet() -> Fleet:
    return cast(Fleet, current_app.extensions[_EXTENSION])


@dashboard.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@dashboard.get(PAGE)
def page() -> Any:
    response = dashboard.send_static_file("index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@dashboard.post(ROUTE_HEARTBEAT)
@require_scope("gateway")
def heartbeat() -> Any:
    fleet = _fleet()
    data = validation.json_body({"type": "object"})
    try:
        beat = Heartbeat.from_json(data)
    except WireError as exc:
        fleet.count("heartbeats_rejected")
        logger.warning("refused a heartbeat from token %s: %s", current_token().name, exc)
        raise BadRequest(str(exc)) from None
    received = fleet.store.record_heartbeat(beat, current_token().name)
    fleet.flush()
    fleet.count("heartbeats")
    return jsonify(received_at=received)


@dashboard.get(ROUTE_FLEET)
@require_scope("admin")
def fleet_view() -> Any:
    fleet = _fleet()
    fleet.flush()
    store = fleet.store
    now = time.time()
    latest = store.latest_heartbeats()
    manifest = fleet.inference.bundle.manifest
    return jsonify(
        now=now,
        cloud={
            "model": {"name": manifest.name, "version": manifest.version},
            "classes": list(getattr(manifest, "classes", ())),
        },
        gateways=[gateway_json(row, now) for row in latest],
        devices=merge_devices(latest, store.infer_devices(), store.example_devices()),
    )


@dashboard.get(f"{ROUTE_FLEET}/traffic")
@require_scope("admin")
def traffic() -> Any:
    value = request.args.get("minutes", "15")
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not 0 < minutes <= HISTORY / 60:
        raise BadRequest(f"minutes must be a number in (0, {HISTORY / 60:g}], got {value!r}")
    until = time.time()
    since = until - minutes * 60
    rows = _fleet().store.heartbeats_since(since)
    return jsonify(traffic_series(rows, since, until, bucket_seconds(rows, minutes * 60)))


@dashboard.get(f"{wire.ROUTE_HARD_EXAMPLES}/<example_id>/raw.png")
@require_scope("admin")
def raw_image(example_id: str) -> Any:
    store = _fleet().learning.store
    row = store.get(example_id)
    if row is None:
        raise NotFound(f"no hard example {example_id}")
    if row.raw_path is None:
        raise NotFound(f"hard example {example_id} was uploaded without its raw input")
    try:
        _, raw = store.tensors(row)
        assert raw is not None  # raw_path is set
        image = png_bytes(wire.decode_tensor(raw))
    except FileNotFoundError:
        raise NotFound(f"the raw input of {example_id} is missing from the blob store") from None
    except (WireError, ValueError) as exc:
        raise UnprocessableEntity(f"the raw input of {example_id} is not an image: {exc}") from None
    response = Response(image, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=86400"  # content-addressed: never changes
    return response
