"""The gateway's metrics, health endpoint and rate-limited refusal logs in one process, scraped over HTTP.

The daemon with a real broker and cloud is in tests/integration/test_observability.py;
here the gateway service answers an in-memory device, and its collector is served by the
real :class:`OperationsServer` on a loopback port and scraped over HTTP.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecascade.cloud_service.inference import CloudInference
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import InMemoryTransport
from edgecascade.edge_gateway.cloud_link import InMemoryCloudLink
from edgecascade.edge_gateway.health import HealthReport, OperationsServer
from edgecascade.edge_gateway.messages import Message
from edgecascade.edge_gateway.metrics import GatewayCollector, gateway_registry
from edgecascade.edge_gateway.relay import HardExampleRelay
from edgecascade.edge_gateway.service import GatewayService

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def healthy(service: GatewayService, **changes: object) -> HealthReport:
    report = HealthReport(
        gateway="gw-test",
        connected=True,
        serving=True,
        model=service.manifest.name,
        version=service.version,
        versions=service.versions(),
        cloud_reachable=True,
        cloud_error=None,
        queue_depth=0,
        queue_capacity=1024,
        outbox_pending=None,
        outbox_capacity=None,
    )
    return replace(report, **changes)  # type: ignore[arg-type]


@pytest.fixture
def service(tiny_bundle: Path) -> GatewayService:
    bundle = load_bundle(tiny_bundle)
    return GatewayService(bundle, InMemoryCloudLink(CloudInference(bundle).handle))


@pytest.fixture
def serve(service: GatewayService) -> Iterator[Callable[[Callable[[], HealthReport]], str]]:
    """Serves the service's metrics with a given health reading; returns the base URL."""
    servers: list[OperationsServer] = []

    def start(health: Callable[[], HealthReport]) -> str:
        registry = gateway_registry(GatewayCollector("gw-test", service, health))
        server = OperationsServer("127.0.0.1", 0, registry, health)
        server.start()
        servers.append(server)
        host, port = server.address
        return f"http://{host}:{port}"

    yield start
    for server in servers:
        server.stop()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + wire.ROUTE_PROMETHEUS, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def get_health(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url + wire.ROUTE_HEALTH, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_scrape_shows_what_the_gateway_did(service: GatewayService, serve, tiny_bundle: Path, fmnist) -> None:
    url = serve(lambda: healthy(service))
    before = scrape(url)
    assert "edgecascade_gateway_requests_total" not in before  # nothing counted yet

    client = DeviceClient(
        load_bundle(tiny_bundle), "dev-m", InMemoryTransport(service.handle), policy=NeverExit()
    )
    predictions = client.predict_batch(fmnist.x_test[:40])
    after = scrape(url)

    counts = service.counters.snapshot()
    assert after["edgecascade_gateway_requests_total"] == {(): 40}
    answers = after["edgecascade_gateway_answers_total"]
    for tier in ("gateway", "cloud"):
        expected = sum(p.tier == tier for p in predictions)
        assert answers.get((("degraded", "false"), ("tier", tier)), 0) == expected
    assert after["edgecascade_gateway_forwarded_total"] == {(): counts["forwarded"]}
    links = after["edgecascade_gateway_link_bytes_total"]
    assert links[(("direction", "in"), ("link", "device"))] == counts["bytes_in"]
    assert links[(("direction", "out"), ("link", "cloud"))] == counts["bytes_to_cloud"] > 0
    assert links[(("direction", "in"), ("link", "cloud"))] > 0  # the cloud's replies
    stages = after["edgecascade_gateway_stage_seconds_count"]
    assert stages[(("stage", "decode"),)] == 40
    assert stages[(("stage", "inference"),)] == 40  # every request waited for its batch's call
    assert after["edgecascade_gateway_stage_seconds_sum"][(("stage", "inference"),)] > 0
    version = str(service.version)
    info = after["edgecascade_gateway_model_info"]
    assert info == {(("gateway", "gw-test"), ("model", service.manifest.name), ("version", version)): 1}
    assert after["edgecascade_gateway_up"] == {(): 1}


def test_rejections_are_labelled_by_reason(service: GatewayService, serve) -> None:
    url = serve(lambda: healthy(service))
    service.decide([Message(b"not an envelope", "dev-x") for _ in range(3)])
    rejections = scrape(url)["edgecascade_gateway_rejections_total"]
    assert sum(rejections.values()) == 3
    ((labels, value),) = rejections.items()
    assert dict(labels)["kind"] == "request" and value == 3


def test_healthz_is_200_while_serving_and_503_when_not(service: GatewayService, serve) -> None:
    reading = {"report": healthy(service)}
    url = serve(lambda: reading["report"])
    status, body = get_health(url)
    assert status == 200
    assert body["status"] == "ok" and body["connected"] is True and body["version"] == service.version

    reading["report"] = healthy(service, cloud_reachable=False, cloud_error="timed out")
    status, body = get_health(url)
    assert (status, body["status"], body["cloud_error"]) == (200, "degraded", "timed out")  # still answering

    reading["report"] = healthy(service, outbox_pending=95, outbox_capacity=100)
    assert get_health(url)[1]["status"] == "degraded"

    reading["report"] = healthy(service, connected=False)
    status, body = get_health(url)
    assert (status, body["status"]) == (503, "unhealthy")
    assert scrape(url)["edgecascade_gateway_up"] == {(): 0}


def test_unknown_paths_are_404_and_a_broken_reading_is_500(service: GatewayService, serve) -> None:
    def broken() -> HealthReport:
        raise RuntimeError("no reading")

    url = serve(broken)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url + "/nothing", timeout=5)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(url + wire.ROUTE_HEALTH, timeout=5)
    assert failed.value.code == 500


def test_each_registry_is_its_own(tiny_bundle: Path) -> None:
    """Two gateways in one process: their metrics never mix (no global registry)."""
    bundle = load_bundle(tiny_bundle)
    a, b = (GatewayService(bundle, None) for _ in range(2))
    a.decide([Message(b"junk", "dev-a")])
    ra = gateway_registry(GatewayCollector("a", a, lambda: healthy(a)))
    rb = gateway_registry(GatewayCollector("b", b, lambda: healthy(b)))
    assert ra.get_sample_value("edgecascade_gateway_requests_total") == 1
    assert rb.get_sample_value("edgecascade_gateway_requests_total") is None


def test_ten_thousand_bad_requests_log_a_few_lines_and_count_all(
    service: GatewayService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecascade.edge_gateway.service")
    bad = [Message(b"\x00" * 12, "dev-flood") for _ in range(100)]
    for _ in range(100):
        service.decide(bad)
    service.log_limiter.flush()
    lines = [r for r in caplog.records if r.name == "edgecascade.edge_gateway.service"]
    assert service.counters["requests"] == 10_000
    rejected = sum(v for k, v in service.counters.items() if k.startswith("rejected_"))
    assert rejected == 10_000
    assert len(lines) <= 6  # five of the kind, then one summary
    assert "suppressed 9995 similar log lines" in lines[-1].getMessage()


def test_the_gateway_cache_shows_its_own_statistics(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    service = GatewayService(
        bundle, InMemoryCloudLink(CloudInference(bundle).handle), cache=open_cache(bundle, "gateway")
    )
    client = DeviceClient(bundle, "dev-c", InMemoryTransport(service.handle), policy=NeverExit())
    client.predict_batch(np.concatenate([fmnist.x_test[:30]] * 2))  # the second pass repeats the first
    registry = gateway_registry(GatewayCollector("gw", service, lambda: healthy(service)))
    stats = service.cache.metrics() if service.cache is not None else {}
    assert stats["lookups"] > 0
    assert registry.get_sample_value("edgecascade_gateway_cache_lookups_total") == stats["lookups"]
    assert registry.get_sample_value("edgecascade_gateway_cache_hits_total") == stats["hits"]
    assert registry.get_sample_value("edgecascade_gateway_cache_entries") == len(service.cache or [])
    assert registry.get_sample_value("edgecascade_gateway_cache_lookup_seconds_total") > 0


def test_refused_uploads_are_counted_and_barely_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecascade.edge_gateway.relay")
    outbox = Outbox(tmp_path / "hx.db")
    try:
        relay = HardExampleRelay(outbox, None)
        for _ in range(1000):
            relay.handle(b"not an upload", "dev-up")
        relay.log_limiter.flush()
    finally:
        outbox.close()
    refused = sum(v for k, v in relay.counters.items() if k.startswith("hx_rejected_batch_"))
    assert refused == 1000
    lines = [r.getMessage() for r in caplog.records if r.name == "edgecascade.edge_gateway.relay"]
    assert len(lines) == 6 and lines[-1].startswith("suppressed 995 similar log lines")
