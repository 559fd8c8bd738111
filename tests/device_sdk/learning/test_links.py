"""A device's direct upload link to the cloud (:class:`HttpUploadLink`) against a real server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError, RemoteError, WireError
from edgecascade.device_sdk.learning.batch import Receipt, parse_batch
from edgecascade.device_sdk.learning.links import MAX_RECEIPT_BYTES, HttpUploadLink
from tests.device_sdk.transport.loopback_http import LoopbackHttp, Reply, Seen
from tests.hard_example_fakes import example

TOKEN = "ec_cam01.upload-token"


def _intake(seen: Seen) -> Reply:
    examples, rejected = parse_batch(seen.body)
    receipt = Receipt(tuple(e.example_id for e in examples), (), tuple(rejected))
    return Reply(200, receipt.to_bytes(), {"Content-Type": "application/json"})


@pytest.fixture
def cloud() -> Iterator[LoopbackHttp]:
    server = LoopbackHttp()
    server.routes[wire.ROUTE_HARD_EXAMPLES] = _intake
    server.start()
    yield server
    server.stop()


def test_upload_posts_the_batch_with_the_token_and_reads_the_receipt(cloud: LoopbackHttp) -> None:
    records = [example(i).to_json() for i in range(3)]
    link = HttpUploadLink(cloud.url, TOKEN, timeout=2.0)
    try:
        receipt = link.upload(records)
        assert link.upload(records[:1]).accepted == (records[0]["id"],)
    finally:
        link.close()
    assert receipt.accepted == tuple(r["id"] for r in records)
    first = cloud.requests_to(wire.ROUTE_HARD_EXAMPLES)[0]
    assert first.method == "POST" and first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert first.headers["Content-Type"] == "application/json"
    assert [r["id"] for r in json.loads(first.body)["examples"]] == list(receipt.accepted)
    assert link.url == cloud.url + wire.ROUTE_HARD_EXAMPLES
    assert len(cloud.peers) == 1  # the second batch reused the connection


def test_a_refusal_is_a_remote_error_with_the_clouds_message(cloud: LoopbackHttp) -> None:
    cloud.routes[wire.ROUTE_HARD_EXAMPLES] = lambda seen: Reply(
        401, b'{"error": "unauthorized", "message": "token revoked"}'
    )
    with pytest.raises(RemoteError) as info:
        HttpUploadLink(cloud.url, TOKEN).upload([example(0).to_json()])
    assert (info.value.code, info.value.message) == (401, "token revoked")


def test_a_receipt_too_large_is_a_wire_error(cloud: LoopbackHttp) -> None:
    cloud.routes[wire.ROUTE_HARD_EXAMPLES] = lambda seen: Reply(200, b" " * (MAX_RECEIPT_BYTES + 1))
    with pytest.raises(WireError):
        HttpUploadLink(cloud.url, TOKEN).upload([])


@pytest.mark.parametrize(("url", "token"), [("https://cloud.example", ""), ("https://cloud.example", "a b")])
def test_a_token_is_required_and_checked(url: str, token: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        HttpUploadLink(url, token)


def test_the_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="http"):
        HttpUploadLink("mqtt://broker", TOKEN)
