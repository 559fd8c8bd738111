"""A small MQTT v5 connection on paho-mqtt 2, shared by the device transport and the gateway.

It connects only over TLS 1.2 or later, checking the broker's certificate and host name
against the configured CA and presenting the node's client certificate; it connects with a
timeout, re-subscribes after reconnects, turns off Nagle's algorithm on every socket it
opens (request/response over MQTT is ~200x slower with it on), and maps paho's return codes
to :class:`~edgecascade.device_sdk.errors.TransportError`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.errors import ConfigError, DependencyError, TransportError

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise DependencyError("paho-mqtt", "device") from exc

logger = logging.getLogger(__name__)

#: ``handler(topic, payload, response_topic, correlation_data)``, called on paho's network thread.
MessageHandler = Callable[[str, bytes, str | None, bytes | None], None]


class MqttLink:
    """One MQTT v5 client connection with subscriptions that survive reconnects."""

    def __init__(self, config: MqttConfig, client_id: str) -> None:
        self.config = config
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self._client.tls_set_context(tls_context(config))
        if config.username:
            self._client.username_pw_set(config.username)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._subscriptions: dict[str, MessageHandler] = {}
        self._connected = threading.Event()
        # set once the broker acknowledged every subscription made on connecting: before
        # that, messages on those topics are not delivered to this client
        self._subscribed = threading.Event()
        self._unacknowledged: set[int] = set()  # message ids of those subscriptions
        self._refused: str | None = None
        self._lock = threading.Lock()
        self._refused_acks: dict[int, str] = {}  # message id -> why the broker refused it (bounded)

    @property
    def client(self) -> Any:
        """The underlying paho client, for TLS settings made before :meth:`connect`."""
        return self._client

    def connect(self, timeout: float = 10.0, *, required: bool = True) -> None:
        """Start connecting in the background and wait up to ``timeout`` seconds.

        With ``required`` a link not up in time is closed and TransportError raised; without
        it the link keeps retrying in the background (a device may start offline).
        """
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        up = self._connected.wait(timeout) and self._subscribed.wait(max(0.0, deadline - time.monotonic()))
        if not up and required:
            self.close()
            if self._connected.is_set():
                reason = "the broker did not acknowledge the subscriptions"
            else:
                reason = self._refused or "no answer"
            raise TransportError(f"MQTT connection to {self.config.host}:{self.config.port} failed: {reason}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic] = handler
        if self.connected:
            self._client.subscribe(topic, qos=self.config.qos)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        retain: bool = False,
        wait: float | None = None,
    ) -> None:
        """Queue a message; paho delivers it at the configured QoS, also across reconnects.

        With ``wait`` (seconds) return only once the broker acknowledged it (QoS >= 1), and
        raise TransportError if it did not in time or refused it (e.g. not authorised).
        """
        props = None
        if response_topic is not None or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=self.config.qos, retain=retain, properties=props)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish on {topic} failed: {paho.error_string(info.rc)}")
        if wait is not None:
            try:
                info.wait_for_publish(wait)
            except (ValueError, RuntimeError) as exc:
                raise TransportError(f"publish on {topic} failed: {exc}") from None
            if not info.is_published():
                raise TransportError(
                    f"the broker did not acknowledge a publish on {topic} within {wait:.3g} s"
                )
            with self._lock:
                refused = self._refused_acks.pop(info.mid, None)
            if refused is not None:
                raise TransportError(f"the broker refused a publish on {topic}: {refused}")

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # paho callbacks (network thread) ------------------------------------------------------
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (unix, websockets)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._refused = "TCP connection or TLS handshake failed"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            logger.warning("MQTT broker refused connection: %s", reason)
            return
        with self._lock:
            topics = list(self._subscriptions)
            self._subscribed.clear()
            self._unacknowledged = {client.subscribe(topic, qos=self.config.qos)[1] for topic in topics}
            if not self._unacknowledged:
                self._subscribed.set()
        self._connected.set()
        logger.debug("connected to MQTT broker %s:%s", self.config.host, self.config.port)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            with self._lock:
                if len(self._refused_acks) >= 256:
                    self._refused_acks.pop(next(iter(self._refused_acks)))
                self._refused_acks[mid] = str(reason)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        for reason in reasons:
            if getattr(reason, "is_failure", False):
                logger.warning("the MQTT broker refused a subscription: %s", reason)
        with self._lock:
            self._unacknowledged.discard(mid)
            if not self._unacknowledged:
                self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()
        if reason.is_failure:
            logger.warning("MQTT connection lost: %s", reason)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        handler = self._match(msg.topic)
        if handler is None:
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        try:
            handler(msg.topic, bytes(msg.payload), response_topic, correlation)
        except Exception:  # a handler bug must not kill paho's network thread
            logger.exception("handler for %s failed", msg.topic)

    def _match(self, topic: str) -> MessageHandler | None:
        with self._lock:
            for pattern, handler in self._subscriptions.items():
                if paho.topic_matches_sub(_strip_share(pattern), topic):
                    return handler
        return None


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Client TLS context: TLS >= 1.2, broker certificate and host name checked, client cert."""
    if config.ca_file is None:
        raise ConfigError(
            "mqtt.ca_file is not set: EdgeCascade talks to brokers over TLS only "
            "(make the files with 'edgecascade certs')"
        )
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        if config.cert_file is not None and config.key_file is not None:
            context.load_cert_chain(str(config.cert_file), str(config.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt TLS files unusable ({config.ca_file}, {config.cert_file}): {exc}") from None
    return context


def _strip_share(pattern: str) -> str:
    """``$share/group/a/b`` matches like ``a/b``."""
    if pattern.startswith("$share/"):
        return pattern.split("/", 2)[2]
    return pattern
