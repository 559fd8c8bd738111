"""Real services on loopback: Mosquitto, the Flask cloud app over HTTP, the gateway daemon.

The session has one site PKI (``edgecascade.tools.certs``, made in ~30 ms): the broker listens only on
TLS with client certificates and ACLs, the gateway requires encrypted payloads, and a
device's certificate and payload keys are issued the first time a test uses its id (the
gateways rescan the device-key directory on every miss, so they serve it at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from edgecascade.cloud_service.__main__ import tls_context
from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.cloud_service.inference import CloudInference
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.transport.mqtt import MqttLink
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto, initial_sequence
from edgecascade.device_sdk.wire.keys import load_device_crypto
from edgecascade.edge_gateway.config import (
    CacheSettings,
    CryptoSettings,
    GatewayConfig,
    GatewaySettings,
    MetricsSettings,
)
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto
from edgecascade.tools.certs import Pki, init_pki, issue_device

#: a read-only identity on ``#`` (certificate issued like a device's), for eavesdropping tests
OBSERVER = "auditor"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session's CA, broker and gateway certificates and site keys."""
    pki = init_pki(tmp_path_factory.mktemp("pki"))
    issue_device(pki.root, OBSERVER)
    return pki


def device_crypto(pki: Pki, device_id: str) -> DeviceCrypto:
    """A device's payload keys, issuing its certificate and keys on first use."""
    if not pki.device_dir(device_id).exists():
        issue_device(pki.root, device_id)
    return load_device_crypto(pki.device_dir(device_id), device_id)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker"), pki, observers=(OBSERVER,)) as mosquitto:
        yield mosquitto


@dataclass
class CloudServer:
    url: str
    inference: CloudInference
    server: BaseWSGIServer
    gateway_token: str = ""  # bearer tokens from the cloud's token store (auth is always on)
    admin_token: str = ""
    tokens: TokenStore | None = None
    ca: str | bool = True  # what verifies the cloud's HTTPS certificate (requests' ``verify``)


#: cloud URL -> its gateway token, so gateway_config() gives a gateway of that cloud its token
_GATEWAY_TOKENS: dict[str, str] = {}


@contextlib.contextmanager
def serve_cloud(bundle: Path, state: Path, pki: Pki) -> Iterator[CloudServer]:
    """The Flask cloud app serving ``bundle`` over HTTPS on a free port, with a gateway and an admin token."""
    settings = CloudSettings(
        bundle=bundle,
        port=0,
        max_body_bytes=64 * 1024,
        token_store=state / "tokens.db",
        database_url=f"sqlite:///{state / 'cloud.db'}",  # gateways' heartbeats land here
        blob_dir=state / "blobs",
        device_keyring=pki.device_keys,  # enrolment writes where the gateways read
        gateway_public_key=pki.gateway_x25519_pub,
    )
    config = CloudConfig(settings)
    app = create_app(config)
    tokens = TokenStore(config.cloud.token_store)
    tls = tls_context(pki.broker_cert, pki.broker_key)  # HTTPS, as in production
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_port}"
    _GATEWAY_TOKENS[url] = tokens.create("gateway", "gateway")[0]
    admin = tokens.create("admin", "tests")[0]
    try:
        yield CloudServer(
            url, app.extensions["edgecascade"], server, _GATEWAY_TOKENS[url], admin, tokens, str(pki.ca_cert)
        )
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def cloud(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[CloudServer]:
    with serve_cloud(tiny_bundle, tmp_path_factory.mktemp("cloud-state"), pki) as server:
        yield server


def gateway_config(
    bundle: Path, broker: Mosquitto, cloud_url: str, cache: CacheSettings | None = None, **settings: object
) -> GatewayConfig:
    """A gateway config for tests (TLS to ``broker``, payload keys of its PKI); cache off by default."""
    pki = broker.pki
    settings.setdefault("cloud_token", _GATEWAY_TOKENS.get(cloud_url, ""))
    if cloud_url.startswith("https://"):
        settings.setdefault("cloud_ca", pki.ca_cert)
    return GatewayConfig(
        GatewaySettings(bundle=bundle, cloud_url=cloud_url, cloud_timeout=2.0, **settings),  # type: ignore[arg-type]
        broker.mqtt_config("gateway"),
        cache or CacheSettings(enabled=False),
        CryptoSettings(
            private_key=pki.gateway_x25519_key,
            device_keys=pki.device_keys,
            rescan_interval=0,
            # one file per gateway name: a restarted gateway finds its marks, and gateways that
            # all receive a request (tests subscribe some unshared) do not refuse each other's numbers
            replay_store=broker.workdir / f"replay-{settings.get('gateway_id', 'gateway')}.db",
        ),
        metrics=MetricsSettings(port=0),  # several gateways run at once; the tests that scrape choose a port
    )


@pytest.fixture(scope="session")
def gateway(tiny_bundle: Path, broker: Mosquitto, cloud: CloudServer) -> Iterator[GatewayDaemon]:
    daemon = GatewayDaemon(gateway_config(tiny_bundle, broker, cloud.url))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def make_client(tiny_bundle: Path, broker: Mosquitto) -> Iterator[Callable[..., DeviceClient]]:
    """Devices over TLS with their own certificate and payload keys (``encrypted=False``: none)."""
    clients: list[DeviceClient] = []
    bundle = load_bundle(tiny_bundle)

    def make(
        device_id: str = "test-device",
        via: Mosquitto | None = None,
        port: int | None = None,
        connect_timeout: float = 5.0,
        encrypted: bool = True,
        **kwargs: object,
    ) -> DeviceClient:
        crypto = device_crypto(broker.pki, device_id)
        mqtt = (via or broker).mqtt_config(device_id)
        if port is not None:
            mqtt = dataclasses.replace(mqtt, port=port)
        transport = MqttTransport(mqtt, device_id, connect_timeout=connect_timeout)
        client = DeviceClient(
            bundle,
            device_id,
            transport,
            crypto=crypto if encrypted else None,
            **kwargs,  # type: ignore[arg-type]
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class RawDevice:
    """A device that sends whatever bytes it is given and collects (and decrypts) the replies."""

    def __init__(self, broker: Mosquitto, crypto: DeviceCrypto, device_id: str) -> None:
        self.device_id = device_id
        self.crypto = crypto
        self.seq = itertools.count(initial_sequence())
        self.last_encrypted = False
        self.replies: queue.Queue[tuple[bytes, bytes | None]] = queue.Queue()
        self.link = MqttLink(broker.mqtt_config(device_id), "raw-" + uuid.uuid4().hex[:8])
        self.link.subscribe(wire.response_topic(device_id), lambda t, p, r, c: self.replies.put((p, c)))
        self.link.connect(5)

    def envelope(
        self,
        bundle_dir: Path,
        tensor: np.ndarray | bytes,
        version: int | None = None,
        device: str | None = None,
    ) -> wire.Envelope:
        """A plain request with this device's next sequence number.

        An array is encoded as the bundle's cut 1 says; bytes are sent as the body unchanged.
        """
        manifest = load_bundle(bundle_dir).manifest
        header = wire.Header(
            wire.MessageType.INFER_REQUEST,
            device or self.device_id,
            manifest.version if version is None else version,
            next(self.seq),
        )
        if isinstance(tensor, bytes):
            return wire.Envelope(header, tensor)
        return wire.Envelope(header, codec.encode_features(tensor, manifest.partition("device").encoding))

    def sealed(self, bundle_dir: Path, tensor: np.ndarray | bytes, version: int | None = None) -> bytes:
        """An encrypted request, as a well-behaved device sends it."""
        return self.crypto.seal(self.envelope(bundle_dir, tensor, version))

    def send(self, payload: bytes, correlation: bytes | None = None) -> bytes:
        correlation = correlation or uuid.uuid4().bytes
        self.link.publish(
            wire.request_topic(self.device_id),
            payload,
            response_topic=wire.response_topic(self.device_id),
            correlation_data=correlation,
        )
        return correlation

    def ask(self, payload: bytes, correlation: bytes | None = None) -> wire.Envelope:
        correlation = self.send(payload, correlation)
        reply, got = self.replies.get(timeout=5)
        assert got == correlation
        envelope = wire.envelope_from_bytes(reply)
        self.last_encrypted = bool(envelope.header.flags & wire.FLAG_ENCRYPTED)
        return self.crypto.open(reply) if self.last_encrypted else envelope


@pytest.fixture
def make_raw(broker: Mosquitto) -> Iterator[Callable[[str], RawDevice]]:
    """Raw devices (own certificate and payload keys), disconnected after the test."""
    devices: list[RawDevice] = []

    def make(device_id: str) -> RawDevice:
        devices.append(RawDevice(broker, device_crypto(broker.pki, device_id), device_id))
        return devices[-1]

    yield make
    for device in devices:
        device.link.close()
