"""``MqttLink.connect`` returns once the broker acknowledged the link's subscriptions.

Before that the broker does not deliver on those topics: a gateway reported as started
could miss the first requests sent to it (seen as a request lost right after a restart).
"""

from __future__ import annotations

import queue
import uuid

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.transport.mqtt import MqttLink
from edgecascade.tools.broker import Mosquitto

from .conftest import device_crypto


def test_a_message_sent_the_moment_connect_returns_is_delivered(broker: Mosquitto) -> None:
    device_id = "suback-device"
    device_crypto(broker.pki, device_id)  # its certificate
    sender = MqttLink(broker.mqtt_config(device_id), f"{device_id}-{uuid.uuid4().hex[:6]}")
    sender.connect()
    try:
        for attempt in range(20):  # fresh subscribers: each one's first message counts
            received: queue.Queue[bytes] = queue.Queue()
            link = MqttLink(broker.mqtt_config("gateway"), f"suback-{uuid.uuid4().hex[:8]}")
            topic = wire.request_topic(device_id)
            link.subscribe(topic, lambda _topic, payload, *_, into=received: into.put(payload))
            link.connect()
            try:
                sender.publish(topic, b"%d" % attempt, wait=5)
                assert received.get(timeout=5) == b"%d" % attempt
            finally:
                link.close()
    finally:
        sender.close()
