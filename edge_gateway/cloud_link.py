"""The gateway's link to the cloud: post an envelope, get an envelope back; upload hard examples.

:class:`HttpCloudLink` is the real one (``POST /v1/infer`` and, as an
:class:`~edgecascade.device_sdk.learning.uploader.UploadLink`, ``POST /v1/hard-examples``),
speaking through :class:`~edgecascade.device_sdk.transport.http.CloudHttp`: one keep-alive
connection per forwarding thread, the gateway's bearer token, TLS to the site CA.
:class:`InMemoryCloudLink` calls a handler in-process for unit tests. Failures surface as
:class:`~edgecascade.device_sdk.errors.TransportError` (unreachable, timeout) or
:class:`~edgecascade.device_sdk.errors.RemoteError` (the cloud answered with an error).

Every link counts the bytes it sends and receives (``bytes_out``, ``bytes_in`` in its
:attr:`CloudLink.counters`) and remembers whether its last call reached the cloud
(:attr:`CloudLink.reachability`), which the gateway's metrics and health check report: an
error answer still means the cloud is reachable, a refused connection or a timeout not.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import RemoteError, TransportError
from edgecascade.device_sdk.learning.batch import Receipt, encode_batch
from edgecascade.device_sdk.learning.links import MAX_RECEIPT_BYTES
from edgecascade.device_sdk.learning.uploader import UploadLink
from edgecascade.device_sdk.transport.http import CloudHttp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reachability:
    """Whether the last call reached the cloud: None before the first one."""

    reachable: bool | None = None
    at: float | None = None  # time.time() of that call
    error: str | None = None  # why it did not reach the cloud, or what the cloud answered


class CloudLink(abc.ABC):
    def __init__(self) -> None:
        self.counters = Counters()
        self._reachability = Reachability()
        self._lock = threading.Lock()

    @abc.abstractmethod
    def infer(self, envelope: bytes) -> bytes:
        """Send an INFER_REQUEST envelope; return the cloud's RESULT envelope."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @property
    def reachability(self) -> Reachability:
        """What the last call found (a link that never called the cloud: unknown)."""
        with self._lock:
            return self._reachability

    def _call(self, send: Callable[[bytes], bytes], body: bytes) -> bytes:
        """``send(body)``, counting bytes both ways and noting whether the cloud was reached."""
        self.counters.add("bytes_out", len(body))
        try:
            reply = send(body)
        except RemoteError as exc:  # it answered: reachable, but not well
            self._note(True, str(exc))
            raise
        except TransportError as exc:
            self.counters.add("unreachable")
            self._note(False, str(exc))
            raise
        self.counters.add("bytes_in", len(reply))
        self._note(True, None)
        return reply

    def _note(self, reachable: bool, error: str | None) -> None:
        with self._lock:
            self._reachability = Reachability(reachable, time.time(), error)


class InMemoryCloudLink(CloudLink):
    def __init__(self, handler: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self._handler = handler

    def infer(self, envelope: bytes) -> bytes:
        return self._call(self._handler, envelope)


class HttpCloudLink(CloudLink, UploadLink):
    """HTTP(S) client of the cloud service; one keep-alive connection per forwarding thread.

    ``token`` is the gateway's bearer token (``gateway`` scope); the cloud answers 401 to
    requests without one, which surface as :class:`RemoteError` and degraded answers.
    """

    def __init__(
        self, base_url: str, timeout: float = 5.0, token: str = "", ca_file: str | Path | None = None
    ) -> None:
        super().__init__()
        self._http = CloudHttp(
            base_url, token, timeout=timeout, ca_file=ca_file, user_agent="edgecascade-gateway"
        )
        self.url = self._http.url(wire.ROUTE_INFER)
        self.upload_url = self._http.url(wire.ROUTE_HARD_EXAMPLES)
        self.timeout = timeout
        if not token:
            logger.warning("no cloud token configured (gateway.cloud_token): the cloud will refuse requests")

    def infer(self, envelope: bytes) -> bytes:
        return self._call(lambda body: self._http.post(wire.ROUTE_INFER, body, wire.CONTENT_TYPE), envelope)

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        """``POST /v1/hard-examples`` with the gateway's token; the cloud's receipt."""
        body = self._call(
            lambda batch: self._http.post(
                wire.ROUTE_HARD_EXAMPLES, batch, "application/json", MAX_RECEIPT_BYTES
            ),
            encode_batch(records),
        )
        return Receipt.from_bytes(body)

    def close(self) -> None:
        self._http.close()
