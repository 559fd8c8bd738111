"""The gateway's heartbeat: what it gathers, and posting it to the real cloud app over loopback HTTP."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport.http import CloudHttp
from edgecascade.edge_gateway.cloud_link import HttpCloudLink, InMemoryCloudLink
from edgecascade.edge_gateway.config import GatewayConfig, GatewaySettings
from edgecascade.edge_gateway.heartbeat import GatewayStatus, HeartbeatSender, heartbeat_sender
from edgecascade.edge_gateway.messages import Message
from edgecascade.edge_gateway.service import GatewayService
from tests.cloud_service.conftest import EchoInference


@dataclass
class Cloud:
    url: str
    tokens: TokenStore

    def fleet(self) -> dict[str, object]:
        admin = self.tokens.create("admin", "tests")[0]
        fleet: dict[str, object] = CloudHttp(self.url, admin).call_json("GET", "/v1/fleet")
        return fleet


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """The cloud app (partition 3 stubbed: heartbeats need no model) on a loopback port."""
    settings = CloudSettings(
        bundle=tmp_path / "unused",
        token_store=tmp_path / "tokens.db",
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        blob_dir=tmp_path / "blobs",
    )
    app = create_app(CloudConfig(settings), inference=EchoInference())  # type: ignore[arg-type]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Cloud(f"http://127.0.0.1:{server.server_port}", app.extensions["edgecascade.tokens"])
    server.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_devices_are_listed_while_heard_from_within_the_window() -> None:
    clock = Clock()
    status = GatewayStatus(window=60.0, clock=clock, monotonic=clock)
    for device in ("cam-01", "cam-02", "cam-01"):
        status.arrived(Message(b"request " + device.encode() + str(clock.now).encode(), device))
        clock.now += 10
    devices, total = status.devices()
    assert total == 2
    assert [(d.device_id, d.requests, d.last_seen) for d in devices] == [
        ("cam-01", 2, 1020.0),
        ("cam-02", 1, 1010.0),
    ]
    clock.now += 45  # cam-02 last heard 65 s ago
    assert [d.device_id for d in status.devices()[0]] == ["cam-01"]
    clock.now += 100
    status.arrived(Message(b"again", "cam-01"))
    assert [(d.device_id, d.requests) for d in status.devices()[0]] == [("cam-01", 1)]  # counts anew


def test_latency_runs_from_arrival_to_reply_and_each_heartbeat_takes_its_own() -> None:
    clock = Clock()
    status = GatewayStatus(clock=clock, monotonic=clock)
    messages = [Message(f"r{i}".encode(), "cam-01") for i in range(100)]
    for message in messages:
        status.arrived(message)
    for i, message in enumerate(messages):
        clock.now += 0.001 if i < 99 else 0.5  # one slow reply
        status.replied(message)
    latency = status.take_latency()
    assert latency.count == 100
    assert latency.p50 is not None and latency.p99 is not None
    assert 40 < latency.p50 < 60 and latency.p99 > latency.p50
    assert status.take_latency().count == 0  # taken
    status.replied(Message(b"never arrived"))  # an upload receipt: no latency
    assert status.take_latency().count == 0


def test_a_request_never_answered_is_forgotten_with_its_message() -> None:
    status = GatewayStatus()
    status.arrived(Message(b"dropped", "cam-01"))
    gc.collect()
    assert len(status._arrivals) == 0


def _service(bundle: Path, url: str, token: str) -> GatewayService:
    return GatewayService(load_bundle(bundle, tiers=("gateway",)), HttpCloudLink(url, 2.0, token))


def test_a_heartbeat_reaches_the_cloud_with_what_the_gateway_saw(cloud: Cloud, tiny_bundle: Path) -> None:
    token = cloud.tokens.create("gateway", "site-a")[0]
    service = _service(tiny_bundle, cloud.url, token)
    service.counters.add("requests", 5)
    service.counters.add("answered_gateway", 3)
    service.counters.add("answered_cloud", 2)
    status = GatewayStatus()
    message = Message(b"request", "cam-01")
    status.arrived(message)
    status.replied(message)
    sender = HeartbeatSender("gw-7", 10.0, service, status, CloudHttp(cloud.url, token))
    assert sender.send()
    assert service.counters["heartbeats_sent"] == 1
    fleet = cloud.fleet()
    (gateway,) = fleet["gateways"]  # type: ignore[misc]
    version = load_bundle(tiny_bundle, tiers=()).manifest.version
    assert gateway["gateway_id"] == "gw-7" and gateway["token"] == "site-a"
    assert gateway["model"]["version"] == version
    assert gateway["requests"] == 5 and gateway["answers"] == {"gateway": 3, "cloud": 2}
    assert gateway["latency_ms"]["count"] == 1
    assert [d["device_id"] for d in fleet["devices"]] == ["cam-01"]  # type: ignore[index]


def test_an_unreachable_cloud_is_counted_and_logged_once(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = make_server("127.0.0.1", 0, lambda env, start: [])
    url = f"http://127.0.0.1:{closed.server_port}"
    closed.server_close()
    service = _service(tiny_bundle, url, "ec_0000000000000000.x")
    sender = HeartbeatSender("gw-1", 10.0, service, GatewayStatus(), CloudHttp(url, timeout=1.0))
    with caplog.at_level(logging.DEBUG, logger="edgecascade.edge_gateway.heartbeat"):
        assert not sender.send()
        assert not sender.send()
    assert service.counters["heartbeats_failed"] == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()


def test_the_sender_thread_beats_at_once_then_every_interval(cloud: Cloud, tiny_bundle: Path) -> None:
    token = cloud.tokens.create("gateway", "site-a")[0]
    config = GatewayConfig(
        GatewaySettings(gateway_id="gw-9", cloud_url=cloud.url, cloud_token=token, heartbeat_interval=0.1)
    )
    service = _service(tiny_bundle, cloud.url, token)
    sender = heartbeat_sender(config, service, GatewayStatus())
    assert sender is not None
    started = time.monotonic()
    sender.start()
    deadline = started + 10
    while service.counters["heartbeats_sent"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sender.stop()
    elapsed = time.monotonic() - started
    sent = service.counters["heartbeats_sent"]
    assert 3 <= sent <= 1 + elapsed / 0.1  # one at once, then one per interval at most
    time.sleep(0.3)
    assert service.counters["heartbeats_sent"] == sent  # stopped
    assert [g["gateway_id"] for g in cloud.fleet()["gateways"]] == ["gw-9"]  # type: ignore[attr-defined]


def test_no_sender_without_an_interval_or_an_http_cloud(tiny_bundle: Path) -> None:
    config = GatewayConfig(GatewaySettings(heartbeat_interval=0))
    assert heartbeat_sender(config, _service(tiny_bundle, "http://127.0.0.1:9", ""), GatewayStatus()) is None
    in_process = GatewayService(load_bundle(tiny_bundle, tiers=("gateway",)), InMemoryCloudLink(lambda b: b))
    on = dataclasses.replace(config, gateway=GatewaySettings(heartbeat_interval=5))
    assert heartbeat_sender(on, in_process, GatewayStatus()) is None
