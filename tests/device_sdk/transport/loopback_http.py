"""TEST DOUBLE of the cloud's HTTP side: a real HTTP/1.1 keep-alive server on a loopback port.

Routes are functions of the request that return a :class:`Reply`; the reply can also stall,
vanish (close the connection without answering) or drop the connection silently after
answering, which is how a real server ends idle keep-alive connections. Every request and
every TCP connection is recorded, so tests can count reconnects.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]  # the client's address: one per TCP connection


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    vanish: bool = False  # close the connection without answering
    drop: bool = False  # answer, then close the connection without saying so
    chunked: bool = False  # no Content-Length: the body in chunked transfer encoding
    cut: bool = False  # declare the whole body's length, send half of it, close the connection


Route = Callable[[Seen], Reply]


class LoopbackHttp:
    """A threaded server on 127.0.0.1 (HTTPS with ``tls``); ``routes`` maps a path to its handler."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.peers: list[tuple[str, int]] = []  # every accepted connection, in order
        self.tls_versions: list[str] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.loopback = self
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def start(self) -> LoopbackHttp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, path: str) -> Callable[[Route], Route]:
        def register(handler: Route) -> Route:
            self.routes[path] = handler
            return handler

        return register

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _connected(self, peer: tuple[str, int], tls_version: str | None) -> None:
        with self._lock:
            self.peers.append(peer)
            if tls_version:
                self.tls_versions.append(tls_version)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    loopback: LoopbackHttp

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, oversize answers refused) are part of the tests."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        version = self.request.version() if isinstance(self.request, ssl.SSLSocket) else None
        self.server.loopback._connected(self.client_address, version)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        seen = Seen(self.command, self.path, dict(self.headers.items()), body, self.client_address)
        self.server.loopback._record(seen)
        route = self.server.loopback.routes.get(path)
        reply = route(seen) if route else Reply(404, b'{"error": "not_found", "message": "no route"}')
        if reply.delay:
            time.sleep(reply.delay)
        if reply.vanish:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(reply.body), 4096):
                piece = reply.body[start : start + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body[: len(reply.body) // 2] if reply.cut else reply.body)
        if reply.drop or reply.cut:
            self.close_connection = True
