"""Repeated inputs answered by the device cache and the gateway cache, through the real stack."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.novelty import is_unknown
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.edge_gateway.config import CacheSettings
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, gateway_config

pytestmark = pytest.mark.integration


def cloud_bound(bundle_dir: Path, images: np.ndarray, count: int, unknown: bool = False) -> np.ndarray:
    """Images that neither the device exit nor the gateway exit answers: they reach the cloud.

    ``unknown``: images both exits' unknown-input rules flag (else: flagged by neither).
    """
    bundle = load_bundle(bundle_dir)
    chain = run_partitions(bundle, images)
    p1, p2, _ = chain.probs
    t1, t2 = (bundle.manifest.partition(t).exit.threshold for t in ("device", "gateway"))
    rules = [bundle.manifest.partition(t).unknown for t in ("device", "gateway")]
    flags = [is_unknown(z, rule) for z, rule in zip(chain.logits[:2], rules, strict=True)]
    familiar = (flags[0] & flags[1]) if unknown else ~(flags[0] | flags[1])
    chosen = np.flatnonzero((p1.max(1) < t1) & (p2.max(1) < t2) & familiar)[:count]
    assert len(chosen) == count
    return images[chosen]


@contextlib.contextmanager
def caching_gateway(
    bundle_dir: Path, broker: Mosquitto, cloud_url: str, work: Path
) -> Iterator[GatewayDaemon]:
    """A gateway daemon with its cache on (kept in ``work/gateway.cache``), stopped afterwards."""
    settings = CacheSettings(enabled=True, path=work / "gateway.cache")
    daemon = GatewayDaemon(gateway_config(bundle_dir, broker, cloud_url, cache=settings))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_repeats_are_answered_by_each_cache_tier(
    tiny_bundle: Path,
    tmp_path: Path,
    cloud: CloudServer,
    fmnist,
    broker: Mosquitto,
    make_client: Callable[..., DeviceClient],
) -> None:
    images = cloud_bound(tiny_bundle, fmnist.x_test[:500], 5)
    bundle = load_bundle(tiny_bundle)
    with Mosquitto(tmp_path / "broker", broker.pki) as own:
        with caching_gateway(tiny_bundle, own, cloud.url, tmp_path):
            first = make_client("cache-a", via=own, cache=open_cache(bundle, "device", 100))
            cold = [first.predict(x) for x in images]
            again = [first.predict(x) for x in images]
            other = make_client("cache-b", via=own, cache=open_cache(bundle, "device", 100))
            from_gateway = [other.predict(x) for x in images]
        assert [p.tier for p in cold] == ["cloud"] * 5
        assert [p.tier for p in again] == ["device_cache"] * 5
        assert [p.tier for p in from_gateway] == ["gateway_cache"] * 5
        assert [p.label for p in again] == [p.label for p in cold] == [p.label for p in from_gateway]
        assert all(p.bytes_sent == 0 for p in again)
        assert all(p.bytes_upstream == 0 and p.bytes_sent > 0 for p in from_gateway)

        # a restarted gateway keeps what it learned
        assert (tmp_path / "gateway.cache").exists()
        with caching_gateway(tiny_bundle, own, cloud.url, tmp_path):
            third = make_client("cache-c", via=own)
            assert [third.predict(x).tier for x in images] == ["gateway_cache"] * 5


def test_an_unknown_input_is_never_answered_by_a_cache(
    tiny_bundle: Path,
    tmp_path: Path,
    cloud: CloudServer,
    fmnist,
    broker: Mosquitto,
    make_client: Callable[..., DeviceClient],
) -> None:
    """Inputs unlike the training data are flagged on the device and go up every time."""
    images = cloud_bound(tiny_bundle, fmnist.x_test[:2000], 3, unknown=True)
    bundle = load_bundle(tiny_bundle)
    with (
        Mosquitto(tmp_path / "broker", broker.pki) as own,
        caching_gateway(tiny_bundle, own, cloud.url, tmp_path) as daemon,
    ):
        device = make_client("cache-unknown", via=own, cache=open_cache(bundle, "device", 100))
        rounds = [[device.predict(x) for x in images] for _ in range(3)]
    assert all(p.tier == "cloud" and p.unknown for predictions in rounds for p in predictions)
    assert device.counters["unknown_inputs"] == 9
    assert len(device.cache) == 0 and daemon.service.cache is not None and len(daemon.service.cache) == 0
