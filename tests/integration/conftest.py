"""Real services on loopback: Mosquitto, the Flask cloud app over HTTP, the gateway daemon."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from cloud_service.app import create_app
from cloud_service.config import CloudConfig, CloudSettings
from cloud_service.inference import CloudInference
from device_sdk.bundle import load_bundle
from device_sdk.client import DeviceClient
from device_sdk.config import MqttConfig
from device_sdk.transport import MqttTransport
from edge_gateway.config import CacheSettings, GatewayConfig, GatewaySettings
from edge_gateway.daemon import GatewayDaemon
from tools.broker import Mosquitto

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as mosquitto:
        yield mosquitto


@pytest.fixture(scope="session")
def mqtt_config(broker: Mosquitto) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port)


@dataclass
class CloudServer:
    url: str
    inference: CloudInference
    server: BaseWSGIServer


@pytest.fixture(scope="session")
def cloud(tiny_bundle: Path) -> Iterator[CloudServer]:
    config = CloudConfig(CloudSettings(bundle=tiny_bundle, port=0, max_body_bytes=64 * 1024))
    app = create_app(config)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield CloudServer(f"http://127.0.0.1:{server.server_port}", app.extensions["edgecascade"], server)
    server.shutdown()


def gateway_config(
    bundle: Path, mqtt: MqttConfig, cloud_url: str, cache: CacheSettings | None = None, **settings: object
) -> GatewayConfig:
    """A gateway config for tests; its neural cache is off unless ``cache`` says otherwise."""
    return GatewayConfig(
        GatewaySettings(bundle=bundle, cloud_url=cloud_url, cloud_timeout=2.0, **settings),  # type: ignore[arg-type]
        mqtt,
        cache or CacheSettings(enabled=False),
    )


@pytest.fixture(scope="session")
def gateway(tiny_bundle: Path, mqtt_config: MqttConfig, cloud: CloudServer) -> Iterator[GatewayDaemon]:
    daemon = GatewayDaemon(gateway_config(tiny_bundle, mqtt_config, cloud.url))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def make_client(tiny_bundle: Path, mqtt_config: MqttConfig) -> Iterator[Callable[..., DeviceClient]]:
    clients: list[DeviceClient] = []
    bundle = load_bundle(tiny_bundle)

    def make(
        device_id: str = "test-device",
        mqtt: MqttConfig | None = None,
        connect_timeout: float = 5.0,
        **kwargs: object,
    ) -> DeviceClient:
        transport = MqttTransport(mqtt or mqtt_config, device_id, connect_timeout=connect_timeout)
        client = DeviceClient(bundle, device_id, transport, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
