"""EdgeCascade edge gateway: serves devices over MQTT, runs the middle partition, forwards to the cloud."""

from edge_gateway.cloud_link import CloudLink, HttpCloudLink, InMemoryCloudLink
from edge_gateway.config import GatewayConfig, GatewaySettings, load_gateway_config
from edge_gateway.service import GatewayService

__all__ = [
    "CloudLink",
    "GatewayConfig",
    "GatewayService",
    "GatewaySettings",
    "HttpCloudLink",
    "InMemoryCloudLink",
    "load_gateway_config",
]
