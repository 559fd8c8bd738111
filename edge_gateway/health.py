"""The gateway's health, and its operations endpoint: ``/metrics`` and ``/healthz`` over HTTP.

:class:`HealthReport` is one reading of what an operator asks a gateway: is it connected
to the broker and serving, which model version, can it reach the cloud, how deep are its
request queue and hard-example outbox. ``/healthz`` answers it as JSON with status 200
when the gateway can serve (``ok``, or ``degraded`` when the cloud is unreachable or the
outbox is nearly full: devices still get answers, flagged degraded, so restarting or
unrouting the gateway would not help) and 503 when it cannot (``unhealthy``: not
connected to the broker, or stopped).

:class:`OperationsServer` serves both on a small threaded HTTP server (loopback by
default, ``[metrics] host/port``), ``/metrics`` in the Prometheus text format from the
daemon's own :class:`prometheus_client.CollectorRegistry`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgecascade.device_sdk import wire

logger = logging.getLogger(__name__)

#: an outbox this full (pending records / capacity) makes the gateway ``degraded``
OUTBOX_HIGH_WATER = 0.9


@dataclass(frozen=True)
class HealthReport:
    """What the gateway is doing right now, as ``/healthz`` reports it."""

    gateway: str
    connected: bool  # to the broker
    serving: bool  # started, not stopped, its worker alive
    model: str
    version: int
    versions: tuple[int, ...]  # every version answered now: the current first, then those in grace
    cloud_reachable: bool | None  # None: not asked yet
    cloud_error: str | None
    queue_depth: int
    queue_capacity: int
    outbox_pending: int | None  # None: no outbox
    outbox_capacity: int | None

    @property
    def state(self) -> str:
        """``ok``, ``degraded`` (serving, with answers of its own or a filling outbox) or ``unhealthy``."""
        if not (self.connected and self.serving):
            return "unhealthy"
        full = (
            self.outbox_pending is not None
            and self.outbox_capacity
            and self.outbox_pending >= OUTBOX_HIGH_WATER * self.outbox_capacity
        )
        return "degraded" if self.cloud_reachable is False or full else "ok"

    @property
    def healthy(self) -> bool:
        """Whether the gateway can answer requests (``/healthz`` 200)."""
        return self.state != "unhealthy"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.state} | asdict(self) | {"versions": list(self.versions)}


class OperationsServer:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (JSON) on a daemon thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: Callable[[], HealthReport]
    ) -> None:
        """Bind now (OSError if the address is taken); :meth:`start` serves."""
        handler = type("Handler", (_Handler,), {"registry": registry, "health": staticmethod(health)})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gateway-operations", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics and health on http://%s:%d%s", *self.address, wire.ROUTE_PROMETHEUS)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    health: Callable[[], HealthReport]
    server_version = "edgecascade-gateway"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == wire.ROUTE_PROMETHEUS:
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
            elif path == wire.ROUTE_HEALTH:
                report = self.health()
                body = json.dumps(report.to_json()).encode()
                self._send(200 if report.healthy else 503, "application/json", body)
            else:
                self._send(404, "application/json", b'{"error": "not_found"}')
        except Exception:  # a broken reading is the gateway's bug, not the scraper's: answer 500
            logger.exception("answering %s failed", path)
            self._send(500, "application/json", b'{"error": "internal"}')

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)
