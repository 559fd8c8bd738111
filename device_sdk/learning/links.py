"""Upload links of a device: through the gateway relay (MQTT), straight to the cloud (HTTPS), in memory.

:class:`RelayUploadLink` sends a ``HARD_EXAMPLES`` envelope on the device's own upload topic
(``ec/v1/dev/<id>/hx``), encrypted end to end like a request, and waits for the gateway's
``HARD_EXAMPLES_ACK``, which the gateway sends only once the records are durable in its own
outbox. :class:`HttpUploadLink` posts ``{"examples": [...]}`` to the cloud's
``POST /v1/hard-examples`` with the device's bearer token; it uses only the standard
library, so a device needs no HTTP client package. :class:`InMemoryUploadLink` calls a
handler in-process, for tests.
"""

from __future__ import annotations

import http.client
import itertools
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import (
    ConfigError,
    RemoteError,
    TransportError,
    TransportTimeout,
    WireError,
)
from edgecascade.device_sdk.learning.batch import Receipt, encode_batch
from edgecascade.device_sdk.learning.uploader import UploadLink
from edgecascade.device_sdk.transport import Transport
from edgecascade.device_sdk.transport.offload import open_reply
from edgecascade.device_sdk.wire.crypto import DeviceCrypto, initial_sequence

MAX_RECEIPT_BYTES = 1024 * 1024


class RelayUploadLink(UploadLink):
    """Upload through whichever gateway serves this device, over the device's MQTT transport.

    ``sequence`` must be the device client's own counter (``client.next_seq``) when the
    client shares the payload keys: the gateways keep one replay window per device, and two
    independent counters would push each other's messages out of it.
    """

    def __init__(
        self,
        transport: Transport,
        device_id: str,
        model_version: int,
        *,
        crypto: DeviceCrypto | None = None,
        sequence: Callable[[], int] | None = None,
        timeout: float = 10.0,
    ) -> None:
        wire.Header(wire.MessageType.HARD_EXAMPLES, device_id, model_version)  # validates the id
        if crypto is not None and crypto.device_id != device_id:
            raise ConfigError(f"payload keys are for device {crypto.device_id!r}, not {device_id!r}")
        self.transport = transport
        self.device_id = device_id
        self.model_version = model_version
        self.crypto = crypto
        self.timeout = timeout
        self._sequence = sequence or _own_sequence()

    @property
    def available(self) -> bool:
        return self.transport.connected

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        header = wire.Header(
            wire.MessageType.HARD_EXAMPLES, self.device_id, self.model_version, self._sequence()
        )
        envelope = wire.Envelope(header, encode_batch(records))
        request = self.crypto.seal(envelope) if self.crypto is not None else wire.envelope_to_bytes(envelope)
        future = self.transport.submit_upload(request, header.request_id)
        try:
            reply = future.result(self.timeout)
        except FutureTimeout:
            self.transport.forget(header.request_id)
            raise TransportTimeout(f"no receipt from a gateway within {self.timeout:.3g} s") from None
        answer = open_reply(self.crypto, header, reply, wire.MessageType.HARD_EXAMPLES_ACK)
        return Receipt.from_bytes(answer.body)


def _own_sequence() -> Callable[[], int]:
    """A thread-safe sequence counter starting at the clock (:func:`~.wire.crypto.initial_sequence`)."""
    counter, lock = itertools.count(initial_sequence()), threading.Lock()

    def next_seq() -> int:
        with lock:
            return next(counter)

    return next_seq


class HttpUploadLink(UploadLink):
    """``POST /v1/hard-examples`` to the cloud with a bearer token (standard library only).

    ``ca_file`` pins the CA for an ``https://`` URL (default: the system's trust store).
    """

    def __init__(
        self, base_url: str, token: str, *, timeout: float = 10.0, ca_file: str | Path | None = None
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"upload URL must be http(s), got {base_url!r}")
        if not token or any(c.isspace() for c in token):
            raise ConfigError("an upload token is required and must not contain whitespace")
        self.url = base_url.rstrip("/") + wire.ROUTE_HARD_EXAMPLES
        self.timeout = timeout
        self._token = token
        self._context: ssl.SSLContext | None = None
        if base_url.startswith("https://"):
            self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            self._context.minimum_version = ssl.TLSVersion.TLSv1_2

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        request = urllib.request.Request(
            self.url,
            data=encode_batch(records),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                body = response.read(MAX_RECEIPT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise RemoteError(exc.code, _error_message(exc)) from None
        except TimeoutError:
            raise TransportTimeout(f"cloud did not answer within {self.timeout:.3g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise TransportTimeout(f"cloud did not answer within {self.timeout:.3g} s") from None
            raise TransportError(f"cloud unreachable: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"cloud connection failed: {exc}") from None
        if len(body) > MAX_RECEIPT_BYTES:
            raise WireError("receipt too large")
        return Receipt.from_bytes(body)


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read(64 * 1024))
        return str(data.get("message", data))[:200]
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)[:200]


class InMemoryUploadLink(UploadLink):
    """Calls ``handler(records) -> Receipt`` in-process: the twin of a receiver, for tests."""

    def __init__(self, handler: Callable[[list[dict[str, Any]]], Receipt]) -> None:
        self._handler = handler
        self.connected = True  # tests switch the "link" off and on

    @property
    def available(self) -> bool:
        return self.connected

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        return self._handler([dict(r) for r in records])
