"""The gateway's HTTP link to the cloud against a real server on loopback: forwarding and uploads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import RemoteError, TransportTimeout
from edgecascade.device_sdk.learning.batch import Receipt, parse_batch
from edgecascade.edge_gateway.cloud_link import HttpCloudLink
from tests.device_sdk.transport.loopback_http import LoopbackHttp, Reply, Seen
from tests.hard_example_fakes import example

TOKEN = "ec_gw.gateway-token"


def _infer(seen: Seen) -> Reply:
    return Reply(200, b"RESULT:" + seen.body, {"Content-Type": wire.CONTENT_TYPE})


def _intake(seen: Seen) -> Reply:
    examples, _ = parse_batch(seen.body)
    return Reply(200, Receipt(tuple(e.example_id for e in examples)).to_bytes())


@pytest.fixture
def cloud() -> Iterator[LoopbackHttp]:
    server = LoopbackHttp()
    server.routes[wire.ROUTE_INFER] = _infer
    server.routes[wire.ROUTE_HARD_EXAMPLES] = _intake
    server.start()
    yield server
    server.stop()


def test_infer_posts_the_envelope_with_the_gateway_token(cloud: LoopbackHttp) -> None:
    link = HttpCloudLink(cloud.url, timeout=2.0, token=TOKEN)
    try:
        assert link.infer(b"envelope") == b"RESULT:envelope"
    finally:
        link.close()
    (seen,) = cloud.requests_to(wire.ROUTE_INFER)
    assert seen.headers["Content-Type"] == wire.CONTENT_TYPE
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert link.url == cloud.url + wire.ROUTE_INFER


def test_upload_posts_json_and_returns_the_receipt(cloud: LoopbackHttp) -> None:
    records = [example(i, "cam-07").to_json() for i in range(2)]
    receipt = HttpCloudLink(cloud.url, token=TOKEN).upload(records)
    assert receipt.accepted == tuple(r["id"] for r in records)
    assert cloud.requests_to(wire.ROUTE_HARD_EXAMPLES)[0].headers["Content-Type"] == "application/json"


def test_without_a_token_it_warns_and_the_cloud_refuses(
    cloud: LoopbackHttp, caplog: pytest.LogCaptureFixture
) -> None:
    cloud.routes[wire.ROUTE_INFER] = lambda seen: Reply(
        401 if "Authorization" not in seen.headers else 200, b'{"message": "a bearer token is required"}'
    )
    with caplog.at_level(logging.WARNING, logger="edgecascade.edge_gateway.cloud_link"):
        link = HttpCloudLink(cloud.url)
    assert "no cloud token" in caplog.text
    with pytest.raises(RemoteError) as info:
        link.infer(b"envelope")
    assert (info.value.code, info.value.message) == (401, "a bearer token is required")


def test_a_slow_cloud_is_a_timeout(cloud: LoopbackHttp) -> None:
    cloud.routes[wire.ROUTE_INFER] = lambda seen: Reply(200, b"late", delay=1.0)
    with pytest.raises(TransportTimeout):
        HttpCloudLink(cloud.url, timeout=0.2, token=TOKEN).infer(b"envelope")


def test_a_forwarding_pool_keeps_one_connection_per_worker(cloud: LoopbackHttp) -> None:
    link = HttpCloudLink(cloud.url, token=TOKEN)
    bodies = [b"request %d" % i for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(link.infer, bodies))
    link.close()
    assert replies == [b"RESULT:" + b for b in bodies]
    assert 1 <= len(set(cloud.peers)) <= 4
