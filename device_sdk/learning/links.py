"""Upload links of a device: through the gateway relay (MQTT), straight to the cloud (HTTPS), in memory.

:class:`RelayUploadLink` sends a ``HARD_EXAMPLES`` envelope on the device's own upload topic
(``ec/v1/dev/<id>/hx``), encrypted end to end like a request, and waits for the gateway's
``HARD_EXAMPLES_ACK``, which the gateway sends only once the records are durable in its own
outbox. :class:`HttpUploadLink` posts ``{"examples": [...]}`` to the cloud's
``POST /v1/hard-examples`` with the device's bearer token through
:class:`~edgecascade.device_sdk.transport.http.CloudHttp` (standard library only, so a device
needs no HTTP client package). :class:`InMemoryUploadLink` calls a handler in-process, for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError, OutOfWindowError, TransportTimeout
from edgecascade.device_sdk.learning.batch import Receipt, encode_batch
from edgecascade.device_sdk.learning.uploader import UploadLink
from edgecascade.device_sdk.transport import Transport
from edgecascade.device_sdk.transport.http import CloudHttp
from edgecascade.device_sdk.transport.offload import open_reply
from edgecascade.device_sdk.wire.crypto import DeviceCrypto
from edgecascade.device_sdk.wire.sequence import SequenceCounter

MAX_RECEIPT_BYTES = 1024 * 1024


class RelayUploadLink(UploadLink):
    """Upload through whichever gateway serves this device, over the device's MQTT transport.

    ``sequence`` must be the device client's own counter (``client.next_seq``) when the
    client shares the payload keys: the gateways keep one replay window per device, and two
    independent counters would push each other's messages out of it. A batch whose sequence
    number a gateway refused is sent once more after the counter resynchronised (when it is
    a :class:`~.wire.sequence.SequenceCounter`, as ``client.next_seq`` is).
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
        self._sequence = sequence or SequenceCounter()  # from the clock, thread-safe

    @property
    def available(self) -> bool:
        return self.transport.connected

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        try:
            return self._upload(records)
        except OutOfWindowError as exc:
            if not isinstance(self._sequence, SequenceCounter):
                raise
            self._sequence.resync(exc.next_seq, exc.limit, exc.refused)
            return self._upload(records)

    def _upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
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


class HttpUploadLink(UploadLink):
    """``POST /v1/hard-examples`` to the cloud with a bearer token (standard library only).

    ``ca_file`` pins the CA for an ``https://`` URL (default: the system's trust store).
    """

    def __init__(
        self, base_url: str, token: str, *, timeout: float = 10.0, ca_file: str | Path | None = None
    ) -> None:
        if not token:
            raise ConfigError("an upload token is required")
        self._http = CloudHttp(
            base_url,
            token,
            timeout=timeout,
            ca_file=ca_file,
            user_agent="edgecascade-uploader",
            max_bytes=MAX_RECEIPT_BYTES,
        )
        self.url = self._http.url(wire.ROUTE_HARD_EXAMPLES)
        self.timeout = timeout

    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        body = self._http.post(wire.ROUTE_HARD_EXAMPLES, encode_batch(records), "application/json")
        return Receipt.from_bytes(body)

    def close(self) -> None:
        self._http.close()


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
