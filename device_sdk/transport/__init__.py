"""Links to the tier above: request/response transports, MQTT, model downloads, the device's offload.

:class:`Transport` (:mod:`.base`) is the one interface the device client talks to;
:class:`MqttTransport` is the real one and :class:`InMemoryTransport` its in-process twin.
:mod:`.mqtt` wraps paho-mqtt, :mod:`.http` is the one HTTP(S) client of every call to the
cloud, :mod:`.fetch` downloads files from it and :mod:`.offload` sends a batch of cut
features and collects the replies.
"""

from edgecascade.device_sdk.transport.base import InMemoryTransport, MqttTransport, Transport

__all__ = ["InMemoryTransport", "MqttTransport", "Transport"]
