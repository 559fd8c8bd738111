"""The gateway daemon seen from operations, on the real broker and cloud: metrics, health, status, logs.

Each test runs its own gateway with its own id (not the session's shared one), subscribed
without the share group so that it sees every request the test sends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.transport.mqtt import MqttLink
from edgecascade.edge_gateway.config import MetricsSettings
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto, free_port

from .conftest import OBSERVER, CloudServer, RawDevice, gateway_config

pytestmark = pytest.mark.integration


class StatusWatcher:
    """A monitoring client on one gateway's status topic (retained messages included)."""

    def __init__(self, broker: Mosquitto, gateway_id: str) -> None:
        self.seen: queue.Queue[dict[str, Any]] = queue.Queue()
        self.link = MqttLink(broker.mqtt_config(OBSERVER), "watch-" + uuid.uuid4().hex[:8])
        self.link.subscribe(
            wire.gateway_status_topic(gateway_id), lambda t, p, r, c: self.seen.put(json.loads(p))
        )
        self.link.connect(5)

    def next(self, status: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next status message saying ``status`` (earlier ones are skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.seen.get(timeout=left)
            except queue.Empty:
                break
            if message["status"] == status:
                return message
        raise AssertionError(f"no {status!r} status within {timeout} s")


@pytest.fixture
def make_gateway(
    tiny_bundle: Path, broker: Mosquitto, cloud: CloudServer
) -> Iterator[Callable[..., GatewayDaemon]]:
    daemons: list[GatewayDaemon] = []

    def make(metrics_port: int = 0) -> GatewayDaemon:
        gateway_id = "gw-" + uuid.uuid4().hex[:8]
        config = gateway_config(
            tiny_bundle, broker, cloud.url, gateway_id=gateway_id, shared_subscription=False
        )
        config = dataclasses.replace(config, metrics=MetricsSettings(port=metrics_port))
        daemon = GatewayDaemon(config)
        daemon.start()
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def watch(broker: Mosquitto) -> Iterator[Callable[[str], StatusWatcher]]:
    watchers: list[StatusWatcher] = []

    def make(gateway_id: str) -> StatusWatcher:
        watchers.append(StatusWatcher(broker, gateway_id))
        return watchers[-1]

    yield make
    for watcher in watchers:
        watcher.link.close()


def scrape(base: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(base + wire.ROUTE_PROMETHEUS, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_scraping_a_live_gateway_shows_its_requests_and_health(make_gateway, make_client, fmnist) -> None:
    daemon = make_gateway(metrics_port=free_port())
    daemon.service.policy = NeverExit()  # every request goes on to the cloud
    assert daemon.operations_address is not None
    base = "http://{}:{}".format(*daemon.operations_address)
    before = scrape(base)
    assert "edgecascade_gateway_requests_total" not in before

    client = make_client("obs-device", policy=NeverExit())
    predictions = client.predict_batch(fmnist.x_test[:12])
    assert all(not p.degraded for p in predictions)
    # The device takes the first reply; this gateway may still be answering (another gateway of
    # the session shares the requests), so wait until it counted its own twelve.
    cloud = (("degraded", "false"), ("tier", "cloud"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = scrape(base)
        totals = after.get("edgecascade_gateway_stage_seconds_count", {}).get((("stage", "total"),), 0)
        if totals >= 12 and after.get("edgecascade_gateway_answers_total", {}).get(cloud, 0) >= 12:
            break
        time.sleep(0.05)

    assert after["edgecascade_gateway_requests_total"][()] >= 12
    assert after["edgecascade_gateway_answers_total"][cloud] >= 12
    assert after["edgecascade_gateway_stage_seconds_count"][(("stage", "total"),)] >= 12
    assert after["edgecascade_gateway_stage_seconds_count"][(("stage", "forward"),)] >= 12
    links = after["edgecascade_gateway_link_bytes_total"]
    assert links[(("direction", "out"), ("link", "device"))] > 0
    assert links[(("direction", "in"), ("link", "cloud"))] > 0
    assert after["edgecascade_gateway_broker_connected"] == {(): 1}
    assert after["edgecascade_gateway_cloud_reachable"] == {(): 1}

    with urllib.request.urlopen(base + wire.ROUTE_HEALTH, timeout=5) as response:
        health = json.loads(response.read())
    assert response.status == 200
    assert health["status"] == "ok" and health["connected"] is True and health["cloud_reachable"] is True
    assert (
        health["version"] == daemon.service.version and health["gateway"] == daemon.config.gateway.gateway_id
    )


def test_a_dead_connection_leaves_offline_then_reconnecting_says_online(make_gateway, watch) -> None:
    daemon = make_gateway()
    gateway_id = daemon.config.gateway.gateway_id
    status = watch(gateway_id)
    online = status.next("online")
    assert online["version"] == daemon.service.version and online["gateway"] == gateway_id

    # the connection dies without a DISCONNECT (as with kill -9 or a cut cable): the broker
    # publishes the gateway's last will
    daemon._link.client.socket().shutdown(socket.SHUT_RDWR)
    offline = status.next("offline")
    assert offline == {"status": "offline", "gateway": gateway_id, "reason": "connection lost"}

    assert status.next("online", timeout=15)["gateway"] == gateway_id  # paho reconnects: online again
    daemon.stop()
    assert status.next("offline")["reason"] == "stopped"


def test_a_late_watcher_reads_the_retained_status(make_gateway, watch) -> None:
    daemon = make_gateway()
    gateway_id = daemon.config.gateway.gateway_id
    watch(gateway_id).next("online")  # wait until published
    daemon.stop()
    assert watch(gateway_id).next("offline")["reason"] == "stopped"  # retained: a new subscriber sees it


def test_a_flood_of_bad_requests_is_counted_but_barely_logged(
    make_gateway, make_raw: Callable[[str], RawDevice], caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_gateway()
    caplog.set_level(logging.INFO, logger="edgecascade.edge_gateway")
    device = make_raw("flood-device")
    for _ in range(2000):
        device.send(b"\x00" * 16)
    deadline = time.monotonic() + 60
    counters = daemon.service.counters
    while counters["requests"] < 2000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counters["requests"] == 2000
    assert sum(v for k, v in counters.snapshot().items() if k.startswith("rejected_")) == 2000
    daemon.service.log_limiter.flush()
    rejected = [r for r in caplog.records if "rejected request" in r.getMessage()]
    summaries = [r for r in caplog.records if "similar log lines" in r.getMessage()]
    assert 1 <= len(rejected) <= 10  # at most five per gateway serving the topic (the session's too)
    assert summaries
