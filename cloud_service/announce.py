"""Publishing the model announcement: retained on the broker, signed by the cloud.

:class:`MqttAnnouncer` opens a short-lived TLS connection as the cloud's broker identity
(the ACL lets only announcers write ``ec/v1/models/#``), publishes the announcement
retained, waits for the broker's acknowledgement and disconnects: promotions are rare, and
a server process with no standing connection has nothing to keep alive or reconnect.
:class:`InMemoryAnnouncer` keeps what it was given, for tests.
"""

from __future__ import annotations

import abc
import logging
import uuid

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.model.announcement import Announcement

logger = logging.getLogger(__name__)


class Announcer(abc.ABC):
    """Tells every node which release to run."""

    @abc.abstractmethod
    def publish(self, announcement: Announcement) -> None:
        """Publish ``announcement``; raise TransportError when it did not reach the broker."""


class InMemoryAnnouncer(Announcer):
    def __init__(self) -> None:
        self.published: list[Announcement] = []

    def publish(self, announcement: Announcement) -> None:
        self.published.append(announcement)


class MqttAnnouncer(Announcer):
    """Retained QoS 1 publish on the models topic (:data:`~.wire.MODELS_TOPIC`), acknowledged or an error."""

    def __init__(self, config: MqttConfig, timeout: float = 10.0) -> None:
        self.config = config
        self.timeout = timeout

    def publish(self, announcement: Announcement) -> None:
        from edgecascade.device_sdk.transport.mqtt import MqttLink  # paho only when announcing

        client_id = self.config.client_id or f"cloud-announcer-{uuid.uuid4().hex[:8]}"
        link = MqttLink(self.config, client_id)
        link.connect(self.timeout)
        try:
            link.publish(wire.MODELS_TOPIC, announcement.to_bytes(), retain=True, wait=self.timeout)
        finally:
            link.close()
        logger.info("announced %s %s on %s", announcement.name, announcement.release, wire.MODELS_TOPIC)
