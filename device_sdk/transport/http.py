"""The one HTTP(S) client of every call to the cloud, on the standard library only.

:class:`CloudHttp` is what the device's model downloads and hard-example uploads, the
gateway's ``POST /v1/infer`` forwarding and the command-line tools all speak through, so
the bearer token, TLS, limits and error mapping live in one place:

* ``https://`` uses TLS 1.2 or later, verified against ``ca_file`` when one is given (the
  site CA), else the system trust store;
* the token goes as ``Authorization: Bearer <token>``; redirects are never followed (one
  would hand the token to another address): a 3xx is a :class:`RemoteError` like any
  other non-2xx answer, whose message is the ``message`` of the cloud's JSON error body;
* every answer is bounded (``max_bytes``); a larger one is a :class:`WireError`;
* each thread keeps one keep-alive connection (the gateway forwards from a thread pool);
  a request that finds its reused connection closed by the server is sent once more on a
  fresh one. A 5xx answer drops the connection, so the next request reconnects.

Failures: no answer in time is :class:`TransportTimeout`, an unreachable cloud or a broken
connection :class:`TransportError`; no ``http.client``, ``ssl`` or socket error escapes.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.errors import (
    ConfigError,
    RemoteError,
    TransportError,
    TransportTimeout,
    WireError,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""Largest answer read into memory unless a call says otherwise."""

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error answer read for its message; a longer one is not read (the connection is dropped)."""

MAX_MESSAGE = 200
"""Characters of the remote message kept in a :class:`RemoteError`."""

_CHUNK = 1 << 16

# A reused keep-alive connection the server has closed fails with one of these; only then is
# the request sent again (on a fresh connection: a failure there is the cloud's answer).
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
)


class _Stale(Exception):
    """A reused connection turned out closed by the server: send the request again."""


class _Local(threading.local):
    connection: http.client.HTTPConnection | None = None


class CloudHttp:
    """HTTP(S) client of one cloud (``base_url``), safe to share between threads.

    ``token`` may be empty (no ``Authorization`` header is sent); ``timeout`` bounds the
    connection and every read; ``ca_file`` pins the CA of an ``https://`` cloud.
    """

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout: float = 10.0,
        ca_file: str | Path | None = None,
        user_agent: str = "edgecascade",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"cloud URL has an invalid port: {base_url!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"cloud URL must be http(s)://host[:port][/prefix], got {base_url!r}")
        if parts.query or parts.fragment:
            raise ConfigError(f"cloud URL must not have a query or fragment, got {base_url!r}")
        if token and not _valid_token(token):
            raise ConfigError("a bearer token must be printable ASCII without whitespace")
        if timeout <= 0 or max_bytes <= 0:
            raise ConfigError("timeout and max_bytes must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")
        self._context = tls_client_context(ca_file) if parts.scheme == "https" else None
        self._headers = {"User-Agent": user_agent, "Accept": "*/*"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = _Local()
        self._open: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._open_lock = threading.Lock()

    @property
    def tls(self) -> bool:
        """Whether this client speaks HTTPS."""
        return self._context is not None

    def url(self, path: str) -> str:
        """The full URL of ``path`` (a route such as ``/v1/infer``)."""
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> bytes:
        """Send one request; the body of the 2xx answer (at most ``max_bytes``)."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        connection, response = self._exchange(method, path, body, content_type)
        try:
            data = _read_bounded(response, limit, self.url(path))
        except BaseException:
            connection.close()
            raise
        response.close()  # read to the end: the connection is free for the next request
        return data

    def get(self, path: str, max_bytes: int | None = None) -> bytes:
        """``GET path``: the answer's body."""
        return self.request("GET", path, max_bytes=max_bytes)

    def post(self, path: str, body: bytes, content_type: str, max_bytes: int | None = None) -> bytes:
        """``POST path`` with ``body`` of ``content_type``: the answer's body."""
        return self.request("POST", path, body, content_type, max_bytes)

    def call_json(self, method: str, path: str, payload: Any = None, max_bytes: int | None = None) -> Any:
        """Send ``payload`` as JSON (none if None); the JSON answer (None for an empty body)."""
        body = None if payload is None else json.dumps(payload).encode()
        content_type = None if payload is None else "application/json"
        answer = self.request(method, path, body, content_type, max_bytes)
        if not answer:
            return None
        try:
            return json.loads(answer)
        except ValueError:
            raise WireError(f"the answer of {method} {self.url(path)} is not JSON") from None

    def download(self, path: str, target: Path, max_bytes: int | None = None) -> int:
        """Stream ``GET path`` into ``target`` (which must not exist yet); the bytes written.

        Nothing is left at ``target`` when the download fails; errors of the local file
        (it exists, the disk is full) are raised as they are.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        url = self.url(path)
        connection, response = self._exchange("GET", path, None, None)
        size, created = 0, False
        try:
            _check_length(response, limit, url)
            with open(target, "xb") as f:
                created = True
                for chunk in _chunks(response, limit, url):
                    f.write(chunk)
                    size += len(chunk)
        except BaseException:
            connection.close()
            if created:
                target.unlink(missing_ok=True)
            raise
        return size

    def close(self) -> None:
        """Close every thread's connection; the client stays usable (the next call reconnects)."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            connection.close()

    def __enter__(self) -> CloudHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exchange(
        self, method: str, path: str, body: bytes | None, content_type: str | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request and read the answer's head; a 2xx answer is returned unread."""
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            connection, response = self._send(method, path, body, headers)
        except _Stale:
            logger.debug("keep-alive connection to %s closed by the server; reconnecting", self.base_url)
            connection, response = self._send(method, path, body, headers)
        if 200 <= response.status < 300:
            return connection, response
        message = _error_message(connection, response)
        if response.status >= 500:
            connection.close()  # a server in trouble: reconnect next time (maybe to another one)
        raise RemoteError(response.status, message)

    def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = self._connection()
        reused = connection.sock is not None
        if not reused:
            try:
                connection.connect()
            except TimeoutError:
                connection.close()
                raise TransportTimeout(
                    f"cloud {self.base_url} did not accept a connection within {self.timeout:.3g} s"
                ) from None
            except OSError as exc:  # refused, no route, name resolution, TLS verification
                connection.close()
                raise TransportError(f"cloud {self.base_url} unreachable: {_reason(exc)}") from None
        try:
            connection.request(method, self._prefix + path, body, headers)
            return connection, connection.getresponse()
        except TimeoutError:
            connection.close()
            raise TransportTimeout(f"cloud did not answer within {self.timeout:.3g} s") from None
        except _STALE as exc:
            connection.close()
            if reused:
                raise _Stale from exc
            raise TransportError(f"cloud connection failed: {_reason(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransportError(f"cloud connection failed: {_reason(exc)}") from None
        except BaseException:
            connection.close()
            raise

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's connection, made on first use."""
        connection = self._local.connection
        if connection is None:
            if self._context is not None:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout, context=self._context
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
            with self._open_lock:
                self._open.add(connection)
        return connection


def tls_client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or later, hostname checked, ``ca_file`` or the system CAs."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use CA file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _valid_token(token: str) -> bool:
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


def _reason(exc: BaseException) -> str:
    """What went wrong, readable: the OS or TLS reason rather than the exception's repr."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    return str(text) or exc.__class__.__name__


def _check_length(response: http.client.HTTPResponse, limit: int, url: str) -> None:
    """Refuse before reading when the declared length is already over ``limit``."""
    if response.length is not None and response.length > limit:
        raise WireError(f"{url} is larger than {limit} bytes ({response.length})")


def _read_bounded(response: http.client.HTTPResponse, limit: int, url: str) -> bytes:
    """The whole body, or a :class:`WireError` when it is longer than ``limit``."""
    _check_length(response, limit, url)
    data = _read(response, limit + 1, url)  # to the end: reads stop only at ``limit + 1`` or the end
    if len(data) > limit:
        raise WireError(f"{url} answered more than {limit} bytes")
    _check_complete(response, url)
    return data


def _chunks(response: http.client.HTTPResponse, limit: int, url: str) -> Iterator[bytes]:
    """The body in pieces; a :class:`WireError` once it passes ``limit`` bytes."""
    size = 0
    while data := _read(response, _CHUNK, url):
        size += len(data)
        if size > limit:
            raise WireError(f"{url} answered more than {limit} bytes")
        yield data
    _check_complete(response, url)


def _check_complete(response: http.client.HTTPResponse, url: str) -> None:
    """A body that ended before its ``Content-Length`` is a broken connection, not an answer."""
    if response.length:  # bytes still due when the server closed the connection
        raise TransportError(f"the answer of {url} was cut short ({response.length} bytes missing)")


def _read(response: http.client.HTTPResponse, amount: int, url: str) -> bytes:
    """Up to ``amount`` bytes of the body, socket and protocol errors mapped."""
    try:
        return response.read(amount)
    except TimeoutError:
        raise TransportTimeout(f"{url}: the answer stalled") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TransportError(f"reading the answer of {url} failed: {_reason(exc)}") from None


def _error_message(connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> str:
    """The ``message`` of the cloud's JSON error body, else the start of the body or the reason.

    The body is read (up to :data:`MAX_ERROR_BODY`) so that the connection can be reused; a
    longer or unreadable one drops the connection instead.
    """
    if 300 <= response.status < 400:
        connection.close()
        return f"redirect to {response.getheader('Location', '?')} refused"
    body = b""
    try:
        if response.length is not None and response.length > MAX_ERROR_BODY:
            connection.close()
        else:
            body = response.read(MAX_ERROR_BODY + 1)
            if len(body) > MAX_ERROR_BODY:
                connection.close()
    except (OSError, http.client.HTTPException):
        connection.close()
    message: Any = None
    try:
        data = json.loads(body)
        message = data.get("message") if isinstance(data, dict) else None
    except ValueError:
        message = body.decode("utf-8", "replace").strip() or None
    return str(message or response.reason or f"HTTP {response.status}")[:MAX_MESSAGE]
