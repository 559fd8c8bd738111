"""Transports carry a request envelope to the next tier and bring back its reply.

:class:`Transport` is the one interface the device client talks to. :class:`MqttTransport`
is the real one (MQTT v5 request/response: response topic + correlation data, QoS 1), which also carries
hard-example uploads to the gateway relay (:meth:`Transport.submit_upload`);
:class:`InMemoryTransport` calls a handler in-process, so whole flows run in one process in
unit tests. Timeouts and failures surface as :class:`~edgecascade.device_sdk.errors.TransportError`.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.errors import TransportError, TransportTimeout

logger = logging.getLogger(__name__)


class Transport(abc.ABC):
    """Request/response link from one tier to the next."""

    @abc.abstractmethod
    def submit(self, request: bytes, request_id: bytes) -> Future[bytes]:
        """Send a request envelope; the future resolves to the reply envelope bytes."""

    def submit_upload(self, request: bytes, request_id: bytes) -> Future[bytes]:
        """Send a HARD_EXAMPLES envelope for a gateway to relay; the future resolves to its receipt."""
        raise TransportError(f"{type(self).__name__} cannot carry hard-example uploads")

    @property
    def connected(self) -> bool:
        """Whether the link is up right now (an uploader waits while it is not)."""
        return True

    def forget(self, request_id: bytes) -> None:  # noqa: B027 - optional hook
        """Drop a pending request (after a timeout); late replies are then ignored."""

    def request(self, request: bytes, request_id: bytes, timeout: float) -> bytes:
        """Send and wait for the reply; TransportTimeout if none arrives in ``timeout`` s."""
        future = self.submit(request, request_id)
        try:
            return future.result(timeout)
        except FutureTimeout:
            self.forget(request_id)
            raise TransportTimeout(f"no reply within {timeout:.3g} s") from None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InMemoryTransport(Transport):
    """Calls ``handler(request) -> reply`` synchronously: the in-process twin for tests.

    ``upload_handler`` answers hard-example uploads the same way (the gateway relay's twin).
    """

    def __init__(
        self, handler: Callable[[bytes], bytes], upload_handler: Callable[[bytes], bytes] | None = None
    ) -> None:
        self._handler = handler
        self._upload_handler = upload_handler
        self.sent_bytes = 0

    def submit(self, request: bytes, request_id: bytes) -> Future[bytes]:
        return self._call(self._handler, request)

    def submit_upload(self, request: bytes, request_id: bytes) -> Future[bytes]:
        if self._upload_handler is None:
            return super().submit_upload(request, request_id)
        return self._call(self._upload_handler, request)

    def _call(self, handler: Callable[[bytes], bytes], request: bytes) -> Future[bytes]:
        future: Future[bytes] = Future()
        self.sent_bytes += len(request)
        try:
            future.set_result(handler(request))
        except Exception as exc:
            future.set_exception(exc)
        return future


class MqttTransport(Transport):
    """Device-side MQTT v5 request/response to whichever gateway serves its requests."""

    def __init__(self, config: MqttConfig, device_id: str, *, connect_timeout: float = 5.0) -> None:
        from edgecascade.device_sdk.transport.mqtt import MqttLink  # paho is only needed when MQTT is used

        self.device_id = device_id
        self._request_topic = wire.request_topic(device_id)
        self._response_topic = wire.response_topic(device_id)
        self._upload_topic = wire.upload_topic(device_id)
        self._pending: dict[bytes, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._link = MqttLink(config, config.client_id or f"device-{device_id}")
        self._link.subscribe(self._response_topic, self._on_reply)
        self._link.connect(connect_timeout, required=False)
        if not self._link.connected:
            logger.warning("MQTT broker not reachable yet; answering locally until it is")

    @property
    def connected(self) -> bool:
        return self._link.connected

    def subscribe(self, topic: str, handler: Callable[[str, bytes, str | None, bytes | None], None]) -> None:
        """Receive another topic on this connection, e.g. the model announcements (see ACLs)."""
        self._link.subscribe(topic, handler)

    def submit(self, request: bytes, request_id: bytes) -> Future[bytes]:
        return self._submit(self._request_topic, request, request_id)

    def submit_upload(self, request: bytes, request_id: bytes) -> Future[bytes]:
        """Publish an upload on the device's ``hx`` topic; the receipt comes back like a reply."""
        return self._submit(self._upload_topic, request, request_id)

    def _submit(self, topic: str, request: bytes, request_id: bytes) -> Future[bytes]:
        if not self._link.connected:
            raise TransportError("not connected to the MQTT broker")
        future: Future[bytes] = Future()
        with self._lock:
            self._pending[request_id] = future
        try:
            self._link.publish(
                topic, request, response_topic=self._response_topic, correlation_data=request_id
            )
        except TransportError:
            self.forget(request_id)
            raise
        return future

    def forget(self, request_id: bytes) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        self._link.close()
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(TransportError("transport closed"))

    def _on_reply(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        with self._lock:
            future = self._pending.pop(correlation, None) if correlation else None
        if future is None:
            logger.debug("ignoring reply with unknown or late correlation data")
            return
        future.set_result(payload)
