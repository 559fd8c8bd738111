"""The gateway's link to the cloud: post an envelope, get an envelope back; upload hard examples.

:class:`HttpCloudLink` is the real one (a keep-alive HTTP session to ``POST /v1/infer``, and
an :class:`~edgecascade.device_sdk.learning.uploader.UploadLink` to ``POST /v1/hard-examples``);
:class:`InMemoryCloudLink` calls a handler in-process for unit tests. Failures surface as
:class:`~edgecascade.device_sdk.errors.TransportError` (unreachable, timeout) or
:class:`~edgecascade.device_sdk.errors.RemoteError` (the cloud answered with an error).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import DependencyError, RemoteError, TransportError, TransportTimeout
from edgecascade.device_sdk.learning.batch import Receipt, encode_batch
from edgecascade.device_sdk.learning.uploader import UploadLink

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


class HttpCloudLink(CloudLink, UploadLink):
    """HTTP(S) client for the cloud service; one keep-alive session per forwarding thread.

    ``token`` is the gateway's bearer token (``gateway`` scope); the cloud answers 401 to
    requests without one, which surface as :class:`RemoteError` and degraded answers.
    """

    def __init__(
        self, base_url: str, timeout: float = 5.0, token: str = "", ca_file: str | Path | None = None
    ) -> None:
        try:
            import requests
        except ImportError as exc:
            raise DependencyError("requests", "gateway") from exc
        self._requests = requests
        self.url = base_url.rstrip("/") + wire.ROUTE_INFER
        self.upload_url = base_url.rstrip("/") + wire.ROUTE_HARD_EXAMPLES
        self.timeout = timeout
        self._headers = {"Content-Type": wire.CONTENT_TYPE}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            logger.warning("no cloud token configured (gateway.cloud_token): the cloud will refuse requests")
        self._verify: str | bool = str(ca_file) if ca_file is not None else True  # HTTPS: check the cloud
        self._local = threading.local()

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
            session.headers.update(self._headers)
        return session

    def infer(self, envelope: bytes) -> bytes:
        response = self._post(self.url, envelope, {})
        if response.status_code != 200:
            raise RemoteError(response.status_code, _message(response))
        return bytes(response.content)

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        """``POST /v1/hard-examples`` with the gateway's token; the cloud's receipt."""
        response = self._post(self.upload_url, encode_batch(records), {"Content-Type": "application/json"})
        if not 200 <= response.status_code < 300:
            raise RemoteError(response.status_code, _message(response))
        return Receipt.from_bytes(response.content)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Any:
        try:
            # verify per request: a session-wide setting loses to REQUESTS_CA_BUNDLE in the environment
            return self._session().post(
                url, data=body, headers=headers, timeout=self.timeout, verify=self._verify
            )
        except self._requests.Timeout as exc:
            raise TransportTimeout(f"cloud did not answer within {self.timeout:.3g} s") from exc
        except self._requests.RequestException as exc:
            raise TransportError(f"cloud unreachable: {exc}") from exc


def _message(response: Any) -> str:
    """The ``message`` of a JSON error body, else the start of the text."""
    try:
        return str(response.json().get("message", response.text))[:200]
    except (ValueError, AttributeError):
        return str(response.text[:200])
