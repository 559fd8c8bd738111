"""End to end through the real broker, gateway daemon and Flask cloud app."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto, free_port

from .conftest import CloudServer, gateway_config

pytestmark = pytest.mark.integration


def local_exit_probs(bundle_dir: Path, images: np.ndarray) -> list[np.ndarray]:
    """Exit probabilities of the three partitions chained in-process: the reference answers."""
    return run_partitions(load_bundle(bundle_dir), images).probs


def assert_each_tier_answered_as_its_exit(bundle_dir: Path, images: np.ndarray, predictions: list) -> None:
    """No answer degraded, every tier answered some, each input by the tier the manifest's
    thresholds pick, with that exit's probabilities (the partitions chained in-process)."""
    p1, p2, p3 = local_exit_probs(bundle_dir, images)
    manifest = load_bundle(bundle_dir).manifest
    t1, t2 = manifest.partition("device").exit.threshold, manifest.partition("gateway").exit.threshold
    assert not any(p.degraded for p in predictions)
    assert {p.tier for p in predictions} == {"device", "gateway", "cloud"}
    for i, p in enumerate(predictions):
        expected_tier = "device" if p1[i].max() >= t1 else "gateway" if p2[i].max() >= t2 else "cloud"
        assert p.tier == expected_tier, i
        reference = {"device": p1, "gateway": p2, "cloud": p3}[p.tier][i]
        np.testing.assert_allclose(p.probabilities, reference, atol=1e-5)
        assert p.label == int(reference.argmax())


def test_every_tier_answers_what_the_model_says(
    tiny_bundle: Path,
    fmnist,
    gateway: GatewayDaemon,
    cloud: CloudServer,
    make_client: Callable[..., DeviceClient],
) -> None:
    images, labels = fmnist.x_test[:200], fmnist.y_test[:200]
    client = make_client("cascade-test")
    predictions = [client.predict(image) for image in images]
    assert_each_tier_answered_as_its_exit(tiny_bundle, images, predictions)
    for p in predictions:
        assert (p.bytes_sent > 0) == (p.tier != "device")
        assert (p.bytes_upstream > 0) == (p.tier == "cloud")
    accuracy = np.mean([p.label for p in predictions] == labels)
    assert accuracy > 0.5  # a trained model, not noise


def test_forced_offload_reaches_gateway_and_cloud(
    gateway: GatewayDaemon, cloud: CloudServer, fmnist, make_client: Callable[..., DeviceClient]
) -> None:
    before = cloud.inference.counters["answered_cloud"]
    client = make_client("offload-test", policy=NeverExit())
    predictions = client.predict_batch(fmnist.x_test[:300], max_in_flight=32)
    tiers = {p.tier for p in predictions}
    assert tiers <= {"gateway", "cloud"} and "cloud" in tiers
    assert not any(p.degraded for p in predictions)
    cloud_answers = sum(p.tier == "cloud" for p in predictions)
    assert cloud.inference.counters["answered_cloud"] - before == cloud_answers
    # request envelope: 38-byte header + device id + tensor body of cut-1 features
    sizes = {p.bytes_sent for p in predictions}
    assert len(sizes) == 1 and sizes.pop() > 38


def test_concurrent_devices_get_their_own_answers(
    gateway: GatewayDaemon, fmnist, make_client: Callable[..., DeviceClient]
) -> None:
    clients = [make_client(f"parallel-{i}", policy=NeverExit()) for i in range(3)]
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        results[i] = [p.label for p in clients[i].predict_batch(fmnist.x_test[i * 50 : (i + 1) * 50])]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    solo = make_client("parallel-solo", policy=NeverExit())
    for i in range(3):
        assert results[i] == [p.label for p in solo.predict_batch(fmnist.x_test[i * 50 : (i + 1) * 50])]


def test_device_degrades_without_a_gateway(
    tiny_bundle: Path, fmnist, make_client: Callable[..., DeviceClient]
) -> None:
    # A broker port where nothing listens: the device answers alone, flagged, without raising.
    offline = make_client("offline-device", port=free_port(), connect_timeout=0.5, policy=NeverExit())
    prediction = offline.predict(fmnist.x_test[0])
    assert prediction.degraded and prediction.tier == "device" and prediction.error


def test_device_degrades_on_timeout(
    tmp_path: Path, fmnist, broker: Mosquitto, make_client: Callable[..., DeviceClient]
) -> None:
    # Connected to a broker, but no gateway serves it: the reply never comes.
    with Mosquitto(tmp_path / "broker", broker.pki) as lonely:
        client = make_client("lonely-device", via=lonely, policy=NeverExit(), timeout=0.3)
        prediction = client.predict(fmnist.x_test[0])
    assert prediction.degraded and prediction.tier == "device"
    assert "no reply" in (prediction.error or "")
    assert client.counters["offload_failed_TransportError"] == 1


def test_gateway_degrades_when_the_cloud_is_down(
    tiny_bundle: Path, tmp_path: Path, fmnist, broker: Mosquitto, make_client: Callable[..., DeviceClient]
) -> None:
    dead_cloud = f"http://127.0.0.1:{free_port()}"
    with Mosquitto(tmp_path / "broker", broker.pki) as own_broker:
        daemon = GatewayDaemon(gateway_config(tiny_bundle, own_broker, dead_cloud, gateway_id="gw-nocloud"))
        daemon.start()
        try:
            client = make_client("nocloud-device", via=own_broker, policy=NeverExit())
            predictions = client.predict_batch(fmnist.x_test[:100])
        finally:
            daemon.stop()
    counters = daemon.service.counters
    assert counters["forwarded"] > 0
    assert counters["answered_gateway_degraded"] == counters["forwarded"]
    assert sum(p.degraded for p in predictions) == counters["forwarded"]
    assert all(p.tier == "gateway" for p in predictions)
