"""Two gateway daemons of one share group keep one replay window per device.

Through the real broker (TLS, ACLs, the gateways' shared subscription, which hands each
request to one of them in turn) and a shared SQLite store: a request one gateway accepted,
played again, is refused by whichever gateway gets it, also when the other has stopped;
ordinary traffic of several devices is answered by both, none refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.wire.sequence import parse_resync
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, RawDevice, device_crypto, gateway_config

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path: Path, broker: Mosquitto) -> Iterator[Mosquitto]:
    """A broker of the site's PKI for this test alone: only its two gateways share its requests."""
    with Mosquitto(tmp_path / "broker", broker.pki) as own:
        yield own


@pytest.fixture
def group(
    tiny_bundle: Path, tmp_path: Path, cloud: CloudServer, own_broker: Mosquitto
) -> Iterator[list[GatewayDaemon]]:
    """Two gateways of one share group, their windows in one SQLite file."""
    shared = f"sqlite:///{tmp_path / 'state' / 'replay-shared.db'}"
    daemons = []
    for name in ("gw-share-a", "gw-share-b"):
        config = gateway_config(tiny_bundle, own_broker, cloud.url, gateway_id=name)
        config = dataclasses.replace(config, crypto=dataclasses.replace(config.crypto, replay_shared=shared))
        daemons.append(GatewayDaemon(config))
        daemons[-1].start()
    yield daemons
    for daemon in daemons:
        daemon.stop()


def _cut1(gateway: GatewayDaemon) -> np.ndarray:
    return np.zeros(gateway.service.bundle.manifest.partition("gateway").input.shape, np.float32)


def _total(group: list[GatewayDaemon], key: str) -> int:
    return sum(daemon.service.counters[key] for daemon in group)


def test_a_replayed_request_is_refused_by_whichever_gateway_gets_it(
    group: list[GatewayDaemon], own_broker: Mosquitto, tiny_bundle: Path
) -> None:
    raw = RawDevice(own_broker, device_crypto(own_broker.pki, "share-raw"), "share-raw")
    try:
        for _ in range(4):  # both gateways have met the device: each has its own idea of its window
            assert (
                raw.ask(raw.sealed(tiny_bundle, _cut1(group[0]))).header.msg_type is wire.MessageType.RESULT
            )
        assert all(daemon.service.counters["requests"] > 0 for daemon in group)
        captured = raw.sealed(tiny_bundle, _cut1(group[0]))
        assert raw.ask(captured).header.msg_type is wire.MessageType.RESULT
        seq = wire.envelope_from_bytes(captured).header.seq
        served = [daemon.service.counters["requests"] for daemon in group]
        for _ in range(6):  # handed to each gateway in turn; before: the other one answered it once
            replayed = raw.ask(captured)
            assert raw.last_encrypted and replayed.header.msg_type is wire.MessageType.ERROR
            code, text = wire.decode_error(replayed.body)
            assert code is wire.ErrorCode.UNAUTHORIZED and parse_resync(text) is not None
            assert parse_resync(text)[0] == seq + 1  # type: ignore[index]
        got = [
            daemon.service.counters["requests"] - before for daemon, before in zip(group, served, strict=True)
        ]
        assert min(got) > 0 and sum(got) == 6  # both gateways were asked
        assert _total(group, "rejected_replay") == 6

        group[0].stop()  # only the other gateway is left to ask
        assert raw.ask(captured).header.msg_type is wire.MessageType.ERROR
        assert _total(group, "rejected_replay") == 7
        assert raw.ask(raw.sealed(tiny_bundle, _cut1(group[1]))).header.msg_type is wire.MessageType.RESULT
    finally:
        raw.link.close()


def test_ordinary_traffic_is_served_by_both_with_none_refused(
    group: list[GatewayDaemon], own_broker: Mosquitto, tiny_bundle: Path, fmnist
) -> None:
    bundle = load_bundle(tiny_bundle)
    predictions = []
    clients = []
    try:
        for device_id in ("share-dev-1", "share-dev-2", "share-dev-3"):
            crypto = device_crypto(own_broker.pki, device_id)  # issues its certificate on first use
            transport = MqttTransport(own_broker.mqtt_config(device_id), device_id)
            clients.append(DeviceClient(bundle, device_id, transport, crypto=crypto, policy=NeverExit()))
        for start in range(0, 60, 20):  # the devices take turns, each with batches of requests
            for client in clients:
                predictions += client.predict_batch(fmnist.x_test[start : start + 20])
    finally:
        for client in clients:
            client.close()
    assert len(predictions) == 180 and [p for p in predictions if p.degraded] == []
    assert all(client.counters["sequence_resyncs"] == 0 for client in clients)
    assert all(daemon.service.counters["requests"] > 0 for daemon in group)
    assert _total(group, "requests") == 180
    refused = {k: v for d in group for k, v in d.service.counters.items() if k.startswith("rejected_")}
    assert refused == {}
