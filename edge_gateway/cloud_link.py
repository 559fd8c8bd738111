"""The gateway's link to the cloud: post an envelope, get an envelope back; upload hard examples.

:class:`HttpCloudLink` is the real one (``POST /v1/infer`` and, as an
:class:`~edgecascade.device_sdk.learning.uploader.UploadLink`, ``POST /v1/hard-examples``),
speaking through :class:`~edgecascade.device_sdk.transport.http.CloudHttp`: one keep-alive
connection per forwarding thread, the gateway's bearer token, TLS to the site CA.
:class:`InMemoryCloudLink` calls a handler in-process for unit tests. Failures surface as
:class:`~edgecascade.device_sdk.errors.TransportError` (unreachable, timeout) or
:class:`~edgecascade.device_sdk.errors.RemoteError` (the cloud answered with an error).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.learning.batch import Receipt, encode_batch
from edgecascade.device_sdk.learning.links import MAX_RECEIPT_BYTES
from edgecascade.device_sdk.learning.uploader import UploadLink
from edgecascade.device_sdk.transport.http import CloudHttp

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
    """HTTP(S) client of the cloud service; one keep-alive connection per forwarding thread.

    ``token`` is the gateway's bearer token (``gateway`` scope); the cloud answers 401 to
    requests without one, which surface as :class:`RemoteError` and degraded answers.
    """

    def __init__(
        self, base_url: str, timeout: float = 5.0, token: str = "", ca_file: str | Path | None = None
    ) -> None:
        self._http = CloudHttp(
            base_url, token, timeout=timeout, ca_file=ca_file, user_agent="edgecascade-gateway"
        )
        self.url = self._http.url(wire.ROUTE_INFER)
        self.upload_url = self._http.url(wire.ROUTE_HARD_EXAMPLES)
        self.timeout = timeout
        if not token:
            logger.warning("no cloud token configured (gateway.cloud_token): the cloud will refuse requests")

    def infer(self, envelope: bytes) -> bytes:
        return self._http.post(wire.ROUTE_INFER, envelope, wire.CONTENT_TYPE)

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        """``POST /v1/hard-examples`` with the gateway's token; the cloud's receipt."""
        body = self._http.post(
            wire.ROUTE_HARD_EXAMPLES, encode_batch(records), "application/json", MAX_RECEIPT_BYTES
        )
        return Receipt.from_bytes(body)

    def close(self) -> None:
        self._http.close()
