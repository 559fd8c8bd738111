"""The gateway's retained status on the broker: ``online`` while connected, ``offline`` as its last will.

Monitoring subscribes to ``ec/v1/gw/+/status`` and sees every gateway's state without
polling it. On every (re)connect the gateway publishes, retained, a JSON object with
``"status": "online"``, its id, model and version (again after a model swap); at connect
it leaves the broker its MQTT last will, a retained ``"status": "offline"`` the broker
publishes when the connection dies without a clean disconnect (a crash, ``kill -9``, a
network cut noticed by the keepalive). A clean stop publishes ``offline`` itself, since
a clean disconnect discards the will.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError, TransportError
from edgecascade.device_sdk.transport.mqtt import MqttLink

logger = logging.getLogger(__name__)


class Presence:
    """Publishes one gateway's retained status and sets its last will on ``link`` (before it connects)."""

    def __init__(self, link: MqttLink, gateway_id: str, online: Callable[[], Mapping[str, Any]]) -> None:
        """``online()`` gives the fields of the online message (model, version, …) when it is sent."""
        try:
            self.topic = wire.gateway_status_topic(gateway_id)
        except ValueError as exc:
            raise ConfigError(f"gateway.gateway_id: {exc}") from None
        self.gateway_id = gateway_id
        self._link = link
        self._online = online
        client = link.client
        will = self._payload("offline", reason="connection lost")
        client.will_set(self.topic, will, qos=link.config.qos, retain=True)
        link_on_connect = client.on_connect  # the link's own handler: resubscribes, marks connected

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            link_on_connect(client, userdata, flags, reason, properties)
            if not reason.is_failure:
                self.announce()

        client.on_connect = on_connect

    def announce(self) -> None:
        """Publish (retained) that the gateway is online, with what it serves now."""
        try:
            self._link.publish(self.topic, self._payload("online", **self._online()), retain=True)
        except TransportError as exc:  # the next connect announces again
            logger.warning("cannot publish the gateway's status: %s", exc)

    def withdraw(self, timeout: float = 2.0) -> None:
        """Publish (retained) that the gateway stopped, waiting up to ``timeout`` s for the broker."""
        if not self._link.connected:
            return  # the broker publishes the will
        try:
            self._link.publish(
                self.topic, self._payload("offline", reason="stopped"), retain=True, wait=timeout
            )
        except TransportError as exc:
            logger.warning("cannot publish the gateway's offline status: %s", exc)

    def _payload(self, status: str, **fields: Any) -> bytes:
        body = {"status": status, "gateway": self.gateway_id, **fields}
        if status != "offline" or fields.get("reason") == "stopped":
            body["at"] = round(time.time(), 3)  # the will is written at connect: no time in it
        return json.dumps(body).encode()
