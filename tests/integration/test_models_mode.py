"""The models mode end to end: small device model, medium gateway model, large cloud model.

A models-mode bundle through its own real TLS broker, gateway daemon and HTTPS cloud app:
the same ``DeviceClient``, the raw input sealed end to end where the partitioned mode sends
cut features. Requests whose raw input has the wrong shape, dtype or size are refused with
a typed error and counted, and the device keeps its answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.wire import codec
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, RawDevice, device_crypto, gateway_config, serve_cloud
from .test_caches import caching_gateway, cloud_bound
from .test_cascade import assert_each_tier_answered_as_its_exit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    tiny_models_bundle: Path, tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto
) -> Iterator[tuple[Mosquitto, GatewayDaemon, CloudServer]]:
    """Its own broker (the session's gateways must not share its requests), gateway and cloud."""
    work = tmp_path_factory.mktemp("models-mode")
    with (
        Mosquitto(work / "broker", broker.pki) as own,
        serve_cloud(tiny_models_bundle, work / "cloud", broker.pki) as cloud,
    ):
        daemon = GatewayDaemon(gateway_config(tiny_models_bundle, own, cloud.url))
        daemon.start()
        try:
            yield own, daemon, cloud
        finally:
            daemon.stop()


def client(bundle: Path, broker: Mosquitto, device_id: str, **kwargs: object) -> DeviceClient:
    crypto = device_crypto(broker.pki, device_id)  # issues the device's certificate first
    transport = MqttTransport(broker.mqtt_config(device_id), device_id, connect_timeout=5)
    return DeviceClient(load_bundle(bundle), device_id, transport, crypto=crypto, **kwargs)  # type: ignore[arg-type]


def test_each_tier_answers_what_its_own_model_says(
    tiny_models_bundle: Path, fmnist, stack: tuple[Mosquitto, GatewayDaemon, CloudServer]
) -> None:
    broker, _, cloud = stack
    images, labels = fmnist.x_test[:200], fmnist.y_test[:200]
    device = client(tiny_models_bundle, broker, "models-device")
    try:
        predictions = device.predict_batch(images, max_in_flight=16)
    finally:
        device.close()
    assert load_bundle(tiny_models_bundle).manifest.mode == "models"
    assert_each_tier_answered_as_its_exit(tiny_models_bundle, images, predictions)
    raw_envelope = None
    for p in predictions:
        if p.tier != "device":  # the whole raw input went up, one byte per pixel plus the envelope
            raw_envelope = raw_envelope or p.bytes_sent
            assert p.bytes_sent == raw_envelope and p.bytes_sent > images[0].size
    assert np.mean([p.label for p in predictions] == labels) > 0.4  # trained models, not noise
    assert cloud.inference.counters["answered_cloud"] == sum(p.tier == "cloud" for p in predictions)


def test_the_cloud_runs_the_large_model_on_the_raw_input(
    tiny_models_bundle: Path, fmnist, stack: tuple[Mosquitto, GatewayDaemon, CloudServer]
) -> None:
    broker, _, _ = stack
    images = fmnist.x_test[200:260]
    device = client(tiny_models_bundle, broker, "models-offload", policy=NeverExit())
    try:
        predictions = device.predict_batch(images, max_in_flight=16)
    finally:
        device.close()
    _, _, large = run_partitions(load_bundle(tiny_models_bundle), images).probs
    cloud_answers = [(i, p) for i, p in enumerate(predictions) if p.tier == "cloud"]
    assert cloud_answers and all(p.tier in ("gateway", "cloud") for p in predictions)
    for i, p in cloud_answers:
        np.testing.assert_allclose(p.probabilities, large[i], atol=1e-5)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(codec.encode_features(np.zeros((27, 28, 1), np.float32), "int8"), id="wrong-shape"),
        pytest.param(codec.encode_features(np.zeros((28, 28, 1), np.float32), "float32"), id="wrong-dtype"),
        pytest.param(codec.encode_features(np.zeros((28, 28, 1), np.float32), "int8")[:-100], id="truncated"),
        pytest.param(codec.encode_features(np.zeros((28, 28), np.float32), "int8"), id="missing-channel"),
    ],
)
def test_a_bad_raw_input_is_refused_with_a_typed_error_and_counted(
    body: bytes, tiny_models_bundle: Path, fmnist, stack: tuple[Mosquitto, GatewayDaemon, CloudServer]
) -> None:
    broker, gateway, _ = stack
    device = RawDevice(broker, device_crypto(broker.pki, "models-raw"), "models-raw")
    try:
        counters = gateway.service.counters
        refused_before = counters["rejected_bad_tensor"] + counters["rejected_malformed"]
        reply = device.ask(device.sealed(tiny_models_bundle, body))
        assert reply.header.msg_type == wire.MessageType.ERROR
        code, message = wire.decode_error(reply.body)
        assert code in (wire.ErrorCode.BAD_TENSOR, wire.ErrorCode.MALFORMED), message
        assert counters["rejected_bad_tensor"] + counters["rejected_malformed"] == refused_before + 1
        image = load_bundle(tiny_models_bundle).manifest.input.prepare(fmnist.x_test[:1])[0]
        good = codec.encode_features(image, "int8")
        answer = device.ask(device.sealed(tiny_models_bundle, good))  # the device is not locked out
        assert answer.header.msg_type == wire.MessageType.RESULT
    finally:
        device.link.close()


def test_repeats_are_answered_by_the_device_and_the_gateway_cache(
    tiny_models_bundle: Path,
    fmnist,
    tmp_path: Path,
    stack: tuple[Mosquitto, GatewayDaemon, CloudServer],
) -> None:
    """The caches key on what goes up, here the raw input itself."""
    broker, _, cloud = stack
    bundle = load_bundle(tiny_models_bundle)
    images = cloud_bound(tiny_models_bundle, fmnist.x_test[:1000], 5)
    with (
        Mosquitto(tmp_path / "broker", broker.pki) as own,
        caching_gateway(tiny_models_bundle, own, cloud.url, tmp_path),
    ):
        first = client(tiny_models_bundle, own, "models-cache-a", cache=open_cache(bundle, "device", 100))
        other = client(tiny_models_bundle, own, "models-cache-b", cache=open_cache(bundle, "device", 100))
        try:
            cold = [first.predict(x) for x in images]
            again = [first.predict(x) for x in images]
            from_gateway = [other.predict(x) for x in images]
        finally:
            first.close()
            other.close()
    assert [p.tier for p in cold] == ["cloud"] * 5
    assert [p.tier for p in again] == ["device_cache"] * 5 and all(p.bytes_sent == 0 for p in again)
    assert [p.tier for p in from_gateway] == ["gateway_cache"] * 5
    assert [p.label for p in again] == [p.label for p in cold] == [p.label for p in from_gateway]
