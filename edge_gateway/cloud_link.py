"""The gateway's link to the cloud: post an envelope, get an envelope back.

:class:`HttpCloudLink` is the real one (a keep-alive HTTP session to ``POST /v1/infer``);
:class:`InMemoryCloudLink` calls a handler in-process for unit tests. Failures surface as
:class:`~device_sdk.errors.TransportError` (unreachable, timeout) or
:class:`~device_sdk.errors.RemoteError` (the cloud answered with an error).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable
from typing import Any

from device_sdk import wire
from device_sdk.errors import DependencyError, RemoteError, TransportError, TransportTimeout

logger = logging.getLogger(__name__)


class CloudLink(abc.ABC):
    @abc.abstractmethod
    def infer(self, envelope: bytes) -> bytes:
        """Send an INFER_REQUEST envelope; return the cloud's RESULT envelope."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class InMemoryCloudLink(CloudLink):
    def __init__(self, handler: Callable[[bytes], bytes]) -> None:
        self._handler = handler

    def infer(self, envelope: bytes) -> bytes:
        return self._handler(envelope)


class HttpCloudLink(CloudLink):
    """HTTP(S) client for the cloud service; one keep-alive session per forwarding thread.

    ``token`` is the gateway's bearer token (``gateway`` scope); the cloud answers 401 to
    requests without one, which surface as :class:`RemoteError` and degraded answers.
    """

    def __init__(self, base_url: str, timeout: float = 5.0, token: str = "") -> None:
        try:
            import requests
        except ImportError as exc:
            raise DependencyError("requests", "gateway") from exc
        self._requests = requests
        self.url = base_url.rstrip("/") + wire.ROUTE_INFER
        self.timeout = timeout
        self._headers = {"Content-Type": wire.CONTENT_TYPE}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            logger.warning("no cloud token configured (gateway.cloud_token): the cloud will refuse requests")
        self._local = threading.local()

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
            session.headers.update(self._headers)
        return session

    def infer(self, envelope: bytes) -> bytes:
        try:
            response = self._session().post(self.url, data=envelope, timeout=self.timeout)
        except self._requests.Timeout as exc:
            raise TransportTimeout(f"cloud did not answer within {self.timeout:.3g} s") from exc
        except self._requests.RequestException as exc:
            raise TransportError(f"cloud unreachable: {exc}") from exc
        if response.status_code != 200:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text[:200]
            raise RemoteError(response.status_code, message)
        return bytes(response.content)
