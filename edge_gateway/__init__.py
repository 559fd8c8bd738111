"""EdgeCascade edge gateway: serves devices over MQTT, runs the middle partition, forwards to the cloud.

It also relays devices' hard-example uploads into its own durable outbox and on to the cloud.
"""

from edgecascade.edge_gateway.cloud_link import CloudLink, HttpCloudLink, InMemoryCloudLink
from edgecascade.edge_gateway.config import (
    GatewayConfig,
    GatewaySettings,
    OutboxSettings,
    load_gateway_config,
)
from edgecascade.edge_gateway.relay import HardExampleRelay
from edgecascade.edge_gateway.service import GatewayService

__all__ = [
    "CloudLink",
    "GatewayConfig",
    "GatewayService",
    "GatewaySettings",
    "HardExampleRelay",
    "HttpCloudLink",
    "InMemoryCloudLink",
    "OutboxSettings",
    "load_gateway_config",
]
