"""The one HTTP client to the cloud, against a real server on loopback (plain and TLS).

Token header, TLS with a CA made here, no redirects, bounded answers, error JSON mapped,
timeouts, keep-alive reuse, the retry on a connection the server closed, threads.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import (
    ConfigError,
    RemoteError,
    TransportError,
    TransportTimeout,
    WireError,
)
from edgecascade.device_sdk.transport.http import MAX_MESSAGE, CloudHttp, tls_client_context
from edgecascade.tools.certs import Pki, init_pki
from tests.device_sdk.transport.loopback_http import LoopbackHttp, Reply, Seen

TOKEN = "ec_test.s3cret-token"


def _echo(seen: Seen) -> Reply:
    return Reply(200, seen.body, {"Content-Type": "application/octet-stream"})


@pytest.fixture
def server() -> Iterator[LoopbackHttp]:
    server = LoopbackHttp()
    server.routes["/echo"] = _echo
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(server: LoopbackHttp) -> Iterator[CloudHttp]:
    http = CloudHttp(server.url, TOKEN, timeout=2.0)
    yield http
    http.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("http-tls") / "pki")


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[LoopbackHttp]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.broker_cert, pki.broker_key)  # names 127.0.0.1
    server = LoopbackHttp(tls=context)
    server.routes["/echo"] = _echo
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------ requests
def test_post_sends_the_token_and_content_type_and_returns_the_body(
    server: LoopbackHttp, client: CloudHttp
) -> None:
    assert client.post("/echo", b"\x00envelope", "application/x-test") == b"\x00envelope"
    (seen,) = server.requests_to("/echo")
    assert seen.method == "POST"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Content-Type"] == "application/x-test"
    assert seen.headers["Content-Length"] == "9"
    assert seen.headers["User-Agent"] == "edgecascade"


def test_no_token_sends_no_authorization_header(server: LoopbackHttp) -> None:
    with CloudHttp(server.url) as anonymous:
        anonymous.get("/echo")
    assert "Authorization" not in server.requests_to("/echo")[0].headers


def test_a_base_url_path_prefixes_every_route(server: LoopbackHttp) -> None:
    server.routes["/api/echo"] = _echo
    with CloudHttp(server.url + "/api/", TOKEN) as prefixed:
        assert prefixed.post("/echo", b"x", "text/plain") == b"x"
        assert prefixed.url("/echo") == server.url + "/api/echo"
    assert [s.path for s in server.seen] == ["/api/echo"]


def test_call_json_sends_and_reads_json(server: LoopbackHttp, client: CloudHttp) -> None:
    server.routes["/empty"] = lambda seen: Reply(204)
    server.routes["/text"] = lambda seen: Reply(200, b"not json")
    assert client.call_json("PUT", "/echo", {"label": 3}) == {"label": 3}
    assert server.requests_to("/echo")[0].headers["Content-Type"] == "application/json"
    assert client.call_json("GET", "/empty") is None
    with pytest.raises(WireError, match="not JSON"):
        client.call_json("GET", "/text")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://cloud.example", "http"),
        ("cloud.example:8080", "http"),
        ("https://", "http"),
        ("http://cloud.example:99999", "port"),
        ("https://cloud.example/?x=1", "query"),
    ],
)
def test_a_bad_base_url_is_a_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        CloudHttp(url, TOKEN)


@pytest.mark.parametrize("token", ["two words", "tab\there", "line\r\nX-Injected: 1", "naïve"])
def test_a_token_that_cannot_be_a_header_value_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        CloudHttp("https://cloud.example", token)


# ------------------------------------------------------------------------------ errors
def test_an_error_answer_carries_the_clouds_json_message(server: LoopbackHttp, client: CloudHttp) -> None:
    server.routes["/conflict"] = lambda seen: Reply(
        409, json.dumps({"error": "conflict", "message": "version 3 is already registered"}).encode()
    )
    server.routes["/plain"] = lambda seen: Reply(400, b"bad things happened")
    server.routes["/long"] = lambda seen: Reply(422, json.dumps({"message": "x" * 1000}).encode())
    with pytest.raises(RemoteError) as info:
        client.post("/conflict", b"{}", "application/json")
    assert (info.value.code, info.value.message) == (409, "version 3 is already registered")
    with pytest.raises(RemoteError) as info:
        client.get("/plain")
    assert (info.value.code, info.value.message) == (400, "bad things happened")
    with pytest.raises(RemoteError) as info:
        client.get("/nowhere")
    assert (info.value.code, info.value.message) == (404, "no route")
    with pytest.raises(RemoteError) as info:
        client.get("/long")
    assert len(info.value.message) == MAX_MESSAGE
    assert client.get("/echo") == b""
    assert len(set(server.peers)) == 1  # a 4xx answer leaves the connection usable


def test_a_5xx_answer_drops_the_connection(server: LoopbackHttp, client: CloudHttp) -> None:
    server.routes["/down"] = lambda seen: Reply(503, b'{"message": "draining"}')
    with pytest.raises(RemoteError, match="draining"):
        client.get("/down")
    client.get("/echo")
    assert len(server.peers) == 2  # the next request reconnected (perhaps to a healthy server)


def test_a_redirect_is_refused_and_never_followed(server: LoopbackHttp, client: CloudHttp) -> None:
    server.routes["/moved"] = lambda seen: Reply(307, headers={"Location": f"{server.url}/echo"})
    with pytest.raises(RemoteError) as info:
        client.post("/moved", b"secret", "text/plain")
    assert info.value.code == 307 and "refused" in info.value.message
    assert server.requests_to("/echo") == []  # the token went nowhere else


def test_an_answer_over_the_limit_is_refused(server: LoopbackHttp) -> None:
    big = b"x" * 5000
    server.routes["/big"] = lambda seen: Reply(200, big)
    server.routes["/big-chunked"] = lambda seen: Reply(200, big, chunked=True)
    with CloudHttp(server.url, TOKEN, max_bytes=4096) as http:
        with pytest.raises(WireError, match="larger than 4096"):
            http.get("/big")
        with pytest.raises(WireError, match="more than 4096"):
            http.get("/big-chunked")
        assert http.get("/big", max_bytes=5000) == big
        assert http.get("/big-chunked", max_bytes=5000) == big
        assert http.post("/echo", b"ok", "text/plain") == b"ok"  # still usable after a refusal


def test_an_answer_cut_short_is_a_transport_error(
    server: LoopbackHttp, client: CloudHttp, tmp_path: Path
) -> None:
    server.routes["/cut"] = lambda seen: Reply(200, b"z" * 1000, cut=True)
    with pytest.raises(TransportError, match="cut short"):
        client.get("/cut")
    with pytest.raises(TransportError, match="cut short"):
        client.download("/cut", tmp_path / "cut")
    assert not (tmp_path / "cut").exists()
    assert client.get("/echo") == b""  # and the next request gets a fresh connection


def test_a_silent_cloud_is_a_timeout(server: LoopbackHttp) -> None:
    server.routes["/slow"] = lambda seen: Reply(200, b"late", delay=1.0)
    with CloudHttp(server.url, TOKEN, timeout=0.2) as http, pytest.raises(TransportTimeout):
        http.get("/slow")


def test_an_unreachable_cloud_is_a_transport_error(server: LoopbackHttp) -> None:
    url = server.url
    server.stop()
    with CloudHttp(url, TOKEN, timeout=1.0) as http, pytest.raises(TransportError, match="unreachable"):
        http.get("/echo")


def test_a_connection_that_vanishes_on_a_fresh_connection_is_not_retried(server: LoopbackHttp) -> None:
    server.routes["/vanish"] = lambda seen: Reply(vanish=True)
    with CloudHttp(server.url, TOKEN) as http, pytest.raises(TransportError) as info:
        http.post("/vanish", b"once", "text/plain")
    assert not isinstance(info.value, TransportTimeout)
    assert len(server.requests_to("/vanish")) == 1


# ------------------------------------------------------------------------------ keep-alive
def test_one_thread_reuses_one_connection(server: LoopbackHttp, client: CloudHttp) -> None:
    for i in range(5):
        assert client.post("/echo", b"%d" % i, "text/plain") == b"%d" % i
    assert len(server.peers) == 1
    assert {s.peer for s in server.seen} == set(server.peers)


def test_a_connection_the_server_closed_is_retried_once_on_a_fresh_one(
    server: LoopbackHttp, client: CloudHttp
) -> None:
    server.routes["/bye"] = lambda seen: Reply(200, b"bye", drop=True)  # idle keep-alive timeout
    assert client.get("/bye") == b"bye"
    assert client.post("/echo", b"after", "text/plain") == b"after"
    assert len(server.peers) == 2
    assert len(server.requests_to("/echo")) == 1  # the closed connection never delivered it


def test_a_request_lost_on_a_reused_connection_is_sent_again(server: LoopbackHttp, client: CloudHttp) -> None:
    calls: list[bytes] = []

    def flaky(seen: Seen) -> Reply:
        calls.append(seen.body)
        return Reply(vanish=True) if len(calls) == 1 else _echo(seen)

    server.routes["/flaky"] = flaky
    client.get("/echo")  # the connection is now a reused one
    assert client.post("/flaky", b"payload", "text/plain") == b"payload"
    assert calls == [b"payload", b"payload"]
    assert len(server.peers) == 2


def test_only_one_retry_when_the_fresh_connection_fails_too(server: LoopbackHttp, client: CloudHttp) -> None:
    server.routes["/vanish"] = lambda seen: Reply(vanish=True)
    client.get("/echo")
    with pytest.raises(TransportError):
        client.post("/vanish", b"x", "text/plain")
    assert len(server.requests_to("/vanish")) == 2


def test_close_releases_connections_and_the_client_reconnects(
    server: LoopbackHttp, client: CloudHttp
) -> None:
    client.get("/echo")
    client.close()
    assert client.get("/echo") == b""
    assert len(server.peers) == 2


def test_threads_each_keep_their_own_connection(server: LoopbackHttp, client: CloudHttp) -> None:
    threads, per_thread = 8, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                body = f"thread {n} request {i}".encode()
                assert client.post("/echo", body, "text/plain") == body
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert errors == []
    assert len(server.seen) == threads * per_thread
    assert len(set(server.peers)) == threads  # one connection per thread, reused throughout


# ------------------------------------------------------------------------------ download
def test_download_streams_to_a_new_file(server: LoopbackHttp, client: CloudHttp, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    server.routes["/file"] = lambda seen: Reply(200, data, chunked=True)
    assert client.download("/file", tmp_path / "file") == len(data)
    assert (tmp_path / "file").read_bytes() == data
    with pytest.raises(FileExistsError):
        client.download("/file", tmp_path / "file")


def test_a_failed_download_leaves_no_file(server: LoopbackHttp, client: CloudHttp, tmp_path: Path) -> None:
    server.routes["/file"] = lambda seen: Reply(200, b"y" * 10_000)
    server.routes["/file-chunked"] = lambda seen: Reply(200, b"y" * 10_000, chunked=True)
    with pytest.raises(WireError):
        client.download("/file", tmp_path / "a", max_bytes=9_999)
    with pytest.raises(WireError):
        client.download("/file-chunked", tmp_path / "b", max_bytes=9_999)
    with pytest.raises(RemoteError) as info:
        client.download("/missing", tmp_path / "c")
    assert info.value.code == 404
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ TLS
def test_https_with_the_site_ca(tls_server: LoopbackHttp, pki: Pki) -> None:
    with CloudHttp(tls_server.url, TOKEN, ca_file=pki.ca_cert) as http:
        assert http.tls
        assert http.post("/echo", b"over tls", "text/plain") == b"over tls"
        assert http.post("/echo", b"again", "text/plain") == b"again"
    assert len(tls_server.peers) == 1
    assert tls_server.tls_versions[0] in ("TLSv1.2", "TLSv1.3")
    assert tls_server.requests_to("/echo")[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_https_refuses_a_cloud_the_trust_store_does_not_vouch_for(tls_server: LoopbackHttp) -> None:
    untrusting = CloudHttp(tls_server.url, TOKEN)  # system CAs only
    with untrusting, pytest.raises(TransportError, match=r"unreachable.*not trusted"):
        untrusting.get("/echo")
    assert tls_server.seen == []  # the token was never sent


def test_https_checks_the_host_name(tls_server: LoopbackHttp, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other", hosts=("cloud.example",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(other.broker_cert, other.broker_key)
    wrong_name = LoopbackHttp(tls=context).start()
    try:
        http = CloudHttp(wrong_name.url, TOKEN, ca_file=other.ca_cert)
        with http, pytest.raises(TransportError, match="unreachable"):
            http.get("/echo")
    finally:
        wrong_name.stop()


def test_a_stale_tls_connection_is_retried(tls_server: LoopbackHttp, pki: Pki) -> None:
    tls_server.routes["/bye"] = lambda seen: Reply(200, b"bye", drop=True)
    with CloudHttp(tls_server.url, TOKEN, ca_file=pki.ca_cert) as http:
        assert http.get("/bye") == b"bye"
        assert http.post("/echo", b"fresh", "text/plain") == b"fresh"
    assert len(tls_server.peers) == 2


def test_the_tls_context_is_tls12_or_later_and_verifies(pki: Pki, tmp_path: Path) -> None:
    context = tls_client_context(pki.ca_cert)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="CA file"):
        tls_client_context(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="CA file"):
        CloudHttp("https://127.0.0.1:1", TOKEN, ca_file=tmp_path / "missing.pem")
