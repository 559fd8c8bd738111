"""The gateway's heartbeat to the cloud: what it serves, how it answers, whom it hears from.

:class:`GatewayStatus` is fed by the daemon: :meth:`~GatewayStatus.arrived` when a request
comes off the broker (the device it came from, and when), :meth:`~GatewayStatus.replied`
once its reply is published (the latency at the gateway: queueing, partition 2 and, for
forwarded requests, the cloud's round trip). :class:`HeartbeatSender` is a thread that
POSTs a :class:`~edgecascade.device_sdk.wire.heartbeat.Heartbeat` to the cloud every
``gateway.heartbeat_interval`` seconds through the gateway's HTTPS client and token.

A heartbeat that cannot be delivered is counted (``heartbeats_failed``) and logged (a
warning for the first failure in a row, then quietly until one gets through); it never
holds up requests, and the next one carries the cumulative counters anyway.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np

from edgecascade.device_sdk.errors import EdgeCascadeError
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.transport.http import CloudHttp
from edgecascade.device_sdk.wire.envelope import ROUTE_HEARTBEAT
from edgecascade.device_sdk.wire.heartbeat import MAX_DEVICES, Heartbeat, Latency, SeenDevice
from edgecascade.edge_gateway.cloud_link import HttpCloudLink
from edgecascade.edge_gateway.config import GatewayConfig
from edgecascade.edge_gateway.messages import Message
from edgecascade.edge_gateway.service import GatewayService

logger = logging.getLogger(__name__)

DEVICE_WINDOW = 300.0  # a device is listed while it was heard from within this many seconds
MAX_TRACKED_DEVICES = 10_000  # the least recently heard are forgotten first
MAX_LATENCIES = 10_000  # latencies kept between two heartbeats (the most recent)
_ANSWERED = "answered_"


class GatewayStatus:
    """Devices heard from recently and request latencies since the last heartbeat; thread-safe."""

    def __init__(
        self,
        window: float = DEVICE_WINDOW,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # device id -> [last seen (unix time), requests since it became active]
        self._devices: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        # a request's arrival, until its reply; an entry goes with its message if no reply comes
        self._arrivals: weakref.WeakKeyDictionary[Message, float] = weakref.WeakKeyDictionary()
        self._latencies: collections.deque[float] = collections.deque(maxlen=MAX_LATENCIES)

    def arrived(self, message: Message) -> None:
        """A request came in (called on the network thread: only dictionary updates)."""
        now = self._clock()
        with self._lock:
            self._arrivals[message] = self._monotonic()
            if message.device_id is None:
                return
            entry = self._devices.pop(message.device_id, None)
            if entry is None or now - entry[0] > self.window:
                entry = [now, 0.0]
            entry[0] = now
            entry[1] += 1
            self._devices[message.device_id] = entry  # most recent last
            while len(self._devices) > MAX_TRACKED_DEVICES:
                self._devices.popitem(last=False)

    def replied(self, message: Message) -> float | None:
        """The reply to ``message`` was published: its latency counts in the next heartbeat.

        Returns that latency in seconds (None for a message that was not a request).
        """
        with self._lock:
            started = self._arrivals.pop(message, None)
            if started is None:
                return None
            waited = self._monotonic() - started
            self._latencies.append(waited * 1000.0)
            return waited

    def take_latency(self) -> Latency:
        """Percentiles of the latencies since the previous call (which it forgets)."""
        with self._lock:
            values = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
            self._latencies.clear()
        if values.size == 0:
            return Latency()
        p50, p90, p99 = (round(float(v), 3) for v in np.percentile(values, (50, 90, 99)))
        return Latency(int(values.size), p50, p90, p99)

    def devices(self) -> tuple[tuple[SeenDevice, ...], int]:
        """The devices heard from within the window, most recent first (at most ``MAX_DEVICES``), and
        how many there are in all."""
        cutoff = self._clock() - self.window
        with self._lock:
            while self._devices:
                oldest = next(iter(self._devices.values()))
                if oldest[0] >= cutoff:
                    break
                self._devices.popitem(last=False)
            recent = list(reversed(self._devices.items()))
        listed = tuple(SeenDevice(d, round(seen, 3), int(n)) for d, (seen, n) in recent[:MAX_DEVICES])
        return listed, len(recent)


class HeartbeatSender:
    """Posts the gateway's heartbeat to the cloud every ``interval`` seconds, from its own thread."""

    def __init__(
        self,
        gateway_id: str,
        interval: float,
        service: GatewayService,
        status: GatewayStatus,
        http: CloudHttp,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway_id = gateway_id
        self.interval = interval
        self.service = service
        self.status = status
        self.http = http
        self.outbox = outbox
        self._clock = clock
        self.started_at = clock()
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-heartbeat", daemon=True)

    def heartbeat(self) -> Heartbeat:
        """The heartbeat to send now (it takes the latencies gathered since the last one)."""
        counters = self.service.counters.snapshot()
        manifest = self.service.bundle.manifest
        devices, seen = self.status.devices()
        outbox = None
        if self.outbox is not None:
            try:
                outbox = self.outbox.counts()
            except EdgeCascadeError as exc:
                logger.debug("outbox counts unavailable for the heartbeat: %s", exc)
        return Heartbeat(
            gateway_id=self.gateway_id,
            model_name=manifest.name,
            model_version=manifest.version,
            sent_at=round(self._clock(), 3),
            started_at=round(self.started_at, 3),
            interval=self.interval,
            requests=counters.get("requests", 0),
            answers={k.removeprefix(_ANSWERED): n for k, n in counters.items() if k.startswith(_ANSWERED)},
            latency=self.status.take_latency(),
            devices=devices,
            devices_seen=seen,
            outbox=outbox,
        )

    def send(self) -> bool:
        """Send one heartbeat now; whether the cloud took it."""
        try:
            self.http.call_json("POST", ROUTE_HEARTBEAT, self.heartbeat().to_json(), max_bytes=4096)
        except EdgeCascadeError as exc:
            self.service.counters.add("heartbeats_failed")
            level = logging.DEBUG if self._failing else logging.WARNING
            logger.log(level, "heartbeat to %s failed: %s", self.http.base_url, exc)
            self._failing = True
            return False
        self.service.counters.add("heartbeats_sent")
        if self._failing:
            logger.info("heartbeats reach %s again", self.http.base_url)
            self._failing = False
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.http.close()

    def _run(self) -> None:
        self._beat()  # at once: the cloud lists the gateway as soon as it serves
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self.send()
        except Exception:  # keep beating whatever one heartbeat did
            self.service.counters.add("heartbeats_failed")
            logger.exception("building or sending a heartbeat failed")


def heartbeat_sender(
    config: GatewayConfig, service: GatewayService, status: GatewayStatus, outbox: Outbox | None = None
) -> HeartbeatSender | None:
    """The sender the settings ask for: None when ``heartbeat_interval`` is 0 or the gateway's
    cloud link is not HTTP (an in-process cloud has no heartbeat route)."""
    settings = config.gateway
    if settings.heartbeat_interval <= 0 or not isinstance(service.cloud, HttpCloudLink):
        return None
    http = CloudHttp(
        settings.cloud_url,
        settings.cloud_token,
        timeout=settings.cloud_timeout,
        ca_file=settings.cloud_ca,
        user_agent="edgecascade-gateway",
    )
    return HeartbeatSender(settings.gateway_id, settings.heartbeat_interval, service, status, http, outbox)
