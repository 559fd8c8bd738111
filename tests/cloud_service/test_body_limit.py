"""Bodies over the limit are refused whole with 413, chunked or not, and never partly processed.

Werkzeug hands a view a body without ``Content-Length`` cut at the limit, so an oversized
chunked request once reached the views truncated (and was answered 400, as if the client
had sent a short body). Here the bodies travel the way a server delivers them: through the
test client with the environment a WSGI server sets for chunked input, and over a socket
to the app served like the integration tests serve it, the chunks written by hand.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from edgecascade.device_sdk import wire
from tests.cloud_service.conftest import Cloud, bearer, envelope
from tests.cloud_service.full_cloud import make_full_cloud

LIMIT = 8192  # cloud.max_body_bytes of the conftest's app
ENROLL_LIMIT = 4096  # an enrolment body's own limit


def _infer_body(size: int) -> bytes:
    """An INFER_REQUEST envelope of exactly ``size`` bytes: whole, it is valid."""
    head = len(envelope())
    header = wire.Header(wire.MessageType.INFER_REQUEST, "cam-01", 1)
    return wire.envelope_to_bytes(wire.Envelope(header, b"\x00" * (size - head + 16)))


def _enroll_body(size: int) -> bytes:
    """A valid enrolment request for ``cam-01``, padded with JSON whitespace to ``size`` bytes."""
    public = base64.b64encode(bytes(range(32))).decode()
    body = json.dumps({"device_id": "cam-01", "public_key": public}).encode()
    return body + b" " * (size - len(body))


def _chunked(cloud: Cloud, path: str, body: bytes, token: str, content_type: str) -> Any:
    """POST ``body`` as a server passes a chunked request on: no Content-Length, input terminated."""
    return cloud.client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={**bearer(token), "Transfer-Encoding": "chunked", "Content-Type": content_type},
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("chunked", [True, False])
def test_an_inference_body_over_the_limit_is_refused_and_never_served(cloud: Cloud, chunked: bool) -> None:
    token = cloud.token("gateway", "gw")
    for size, status in ((LIMIT + 1, 413), (LIMIT + 5000, 413), (LIMIT, 200)):
        body = _infer_body(size)
        assert len(body) == size
        if chunked:
            response = _chunked(cloud, wire.ROUTE_INFER, body, token, wire.CONTENT_TYPE)
        else:
            response = cloud.client.post(wire.ROUTE_INFER, data=body, headers=bearer(token))
        assert response.status_code == status, (size, response.get_data())
        if status == 413:
            assert response.get_json()["error"] == "request_entity_too_large"
            assert not cloud.inference.payloads  # nothing of it reached the model
    assert (
        len(cloud.inference.payloads) == 1
        and len(cloud.inference.payloads[0].body) == LIMIT - len(envelope()) + 16
    )
    assert cloud.inference.counters["http_413"] == 2


def test_a_json_body_over_its_route_limit_is_refused_even_when_its_prefix_is_valid(cloud: Cloud) -> None:
    over = _enroll_body(ENROLL_LIMIT + 1)  # its first 4096 bytes are a complete, valid request
    json.loads(over[:ENROLL_LIMIT])
    response = _chunked(cloud, wire.ROUTE_ENROLL, over, cloud.token("enroll", "cam-01"), "application/json")
    assert response.status_code == 413, response.get_data()
    assert not cloud.settings.device_keyring.exists()  # no key was enrolled
    exact = _enroll_body(ENROLL_LIMIT)
    response = _chunked(cloud, wire.ROUTE_ENROLL, exact, cloud.token("enroll", "cam-01"), "application/json")
    assert response.status_code == 201, response.get_data()


def test_an_upload_over_max_upload_bytes_is_refused_when_chunked(tiny_bundle: Path, tmp_path: Path) -> None:
    full = make_full_cloud(tmp_path, tiny_bundle)
    limit = 256 * 1024  # the full cloud's max_upload_bytes
    client = full.app.test_client()
    headers = {
        "Authorization": f"Bearer {full.token('gateway')}",
        "Transfer-Encoding": "chunked",
        "Content-Type": "application/json",
    }
    for size, status in ((limit + 1, 413), (limit, 200)):
        body = b'{"examples": []}'
        body += b" " * (size - len(body))
        response = client.post(
            wire.ROUTE_HARD_EXAMPLES,
            input_stream=io.BytesIO(body),
            headers=headers,
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert response.status_code == status, (size, response.get_data()[:200])


# ------------------------------------------------------------------ over a real socket
@pytest.fixture
def served(cloud: Cloud) -> Iterator[tuple[str, int]]:
    """The conftest's app behind Werkzeug's threaded server, as the integration tests serve the cloud."""
    server = make_server("127.0.0.1", 0, cloud.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_port
    server.shutdown()
    thread.join(5)


def _post_chunked(
    address: tuple[str, int], path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    """POST ``body`` in 1000-byte chunks written by hand; the answer's status and body."""
    head = f"POST {path} HTTP/1.1\r\nHost: {address[0]}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    chunks = b"".join(
        f"{len(body[i : i + 1000]):x}\r\n".encode() + body[i : i + 1000] + b"\r\n"
        for i in range(0, len(body), 1000)
    )
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()  # the answer comes while the server may still be draining the refused body
        return response.status, response.read()


def test_a_chunked_body_over_the_limit_gets_413_over_a_socket(cloud: Cloud, served: tuple[str, int]) -> None:
    headers = {"Authorization": f"Bearer {cloud.token('gateway', 'gw')}", "Content-Type": wire.CONTENT_TYPE}
    status, answer = _post_chunked(served, wire.ROUTE_INFER, _infer_body(LIMIT + 1), headers)
    assert status == 413 and json.loads(answer)["error"] == "request_entity_too_large"
    status, _ = _post_chunked(served, wire.ROUTE_INFER, _infer_body(3 * LIMIT), headers)
    assert status == 413
    assert not cloud.inference.payloads  # neither reached the model
    status, answer = _post_chunked(served, wire.ROUTE_INFER, _infer_body(LIMIT), headers)
    assert status == 200 and wire.envelope_from_bytes(answer).header.msg_type is wire.MessageType.RESULT
    assert len(cloud.inference.payloads) == 1
    assert cloud.inference.counters["http_413"] == 2
