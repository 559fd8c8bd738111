"""Repeated inputs answered by the device cache and the gateway cache, through the real stack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.edge_gateway.config import CacheSettings
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, gateway_config
from .test_cascade import local_exit_probs

pytestmark = pytest.mark.integration


def _cloud_bound(bundle_dir: Path, images: np.ndarray, count: int) -> np.ndarray:
    """Images that neither the device exit nor the gateway exit answers: they reach the cloud."""
    manifest = load_bundle(bundle_dir).manifest
    p1, p2, _ = local_exit_probs(bundle_dir, images)
    t1, t2 = (manifest.partition(t).exit.threshold for t in ("device", "gateway"))
    chosen = np.flatnonzero((p1.max(1) < t1) & (p2.max(1) < t2))[:count]
    assert len(chosen) == count
    return images[chosen]


def test_repeats_are_answered_by_each_cache_tier(
    tiny_bundle: Path,
    tmp_path: Path,
    cloud: CloudServer,
    fmnist,
    broker: Mosquitto,
    make_client: Callable[..., DeviceClient],
) -> None:
    images = _cloud_bound(tiny_bundle, fmnist.x_test[:500], 5)
    bundle = load_bundle(tiny_bundle)
    cache_file = tmp_path / "gateway.cache"
    with Mosquitto(tmp_path / "broker", broker.pki) as own:
        settings = CacheSettings(enabled=True, path=cache_file)
        daemon = GatewayDaemon(gateway_config(tiny_bundle, own, cloud.url, cache=settings))
        daemon.start()
        try:
            first = make_client("cache-a", via=own, cache=open_cache(bundle, "device", 100))
            cold = [first.predict(x) for x in images]
            again = [first.predict(x) for x in images]
            other = make_client("cache-b", via=own, cache=open_cache(bundle, "device", 100))
            from_gateway = [other.predict(x) for x in images]
        finally:
            daemon.stop()
        assert [p.tier for p in cold] == ["cloud"] * 5
        assert [p.tier for p in again] == ["device_cache"] * 5
        assert [p.tier for p in from_gateway] == ["gateway_cache"] * 5
        assert [p.label for p in again] == [p.label for p in cold] == [p.label for p in from_gateway]
        assert all(p.bytes_sent == 0 for p in again)
        assert all(p.bytes_upstream == 0 and p.bytes_sent > 0 for p in from_gateway)

        # a restarted gateway keeps what it learned
        assert cache_file.exists()
        restarted = GatewayDaemon(gateway_config(tiny_bundle, own, cloud.url, cache=settings))
        restarted.start()
        try:
            third = make_client("cache-c", via=own)
            assert [third.predict(x).tier for x in images] == ["gateway_cache"] * 5
        finally:
            restarted.stop()
