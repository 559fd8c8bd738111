"""The gateway's ``[offload]`` settings: read from file and environment, resolved per model version."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from edgecascade.cloud_service.inference import CloudInference
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.offload import CloudOnly, OffloadSettings, RandomFilter, ThresholdFilter
from edgecascade.device_sdk.core.policy import ExitPolicy
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import Bundle, ExitSpec, load_bundle, write_manifest
from edgecascade.device_sdk.transport import InMemoryTransport
from edgecascade.edge_gateway.cloud_link import InMemoryCloudLink
from edgecascade.edge_gateway.config import load_gateway_config
from edgecascade.edge_gateway.service import GatewayService


def test_the_gateway_policy_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert load_gateway_config(env={}).offload == OffloadSettings()
    settings = tmp_path / "gateway.toml"
    settings.write_text('[offload]\npolicy = "random"\nshare = 0.5\n')
    assert isinstance(load_gateway_config(settings, env={}).offload.build_policy(), RandomFilter)
    config = load_gateway_config(settings, env={"EC_OFFLOAD__POLICY": "cloud_only"})
    assert isinstance(config.offload.build_policy(), CloudOnly)


def _version(tiny_bundle: Path, root: Path, version: int, gateway_threshold: float) -> Bundle:
    """A copy of the tiny bundle as model ``version`` whose gateway exit has ``gateway_threshold``."""
    bundle = load_bundle(tiny_bundle)
    parts = tuple(
        dataclasses.replace(p, exit=dataclasses.replace(p.exit, threshold=gateway_threshold))
        if p.tier == "gateway"
        else p
        for p in bundle.manifest.partitions
    )
    shutil.copytree(tiny_bundle, root / f"v{version}")
    write_manifest(
        root / f"v{version}", dataclasses.replace(bundle.manifest, version=version, partitions=parts)
    )
    return load_bundle(root / f"v{version}")


def test_a_threshold_left_to_the_manifest_follows_the_gateways_model_swaps(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    bundle = load_bundle(tiny_bundle)
    gateway = GatewayService(
        bundle, InMemoryCloudLink(CloudInference(bundle).handle), policy=OffloadSettings().build_policy()
    )
    client = DeviceClient(bundle, "swap-device", InMemoryTransport(gateway.handle), policy=CloudOnly())
    images = fmnist.x_test[:64]
    before = Counter(p.tier for p in client.predict_batch(images))
    assert before["gateway"] > 0 and before["cloud"] > 0  # the tiny bundle's own thresholds
    v2 = _version(tiny_bundle, tmp_path, 2, gateway_threshold=0.0)
    gateway.swap(v2)
    client.swap_bundle(v2)
    after = Counter(p.tier for p in client.predict_batch(images))
    assert after == {"gateway": len(images)}  # v2's threshold, not v1's remembered


class BrokenResolve(ExitPolicy):
    """A policy that cannot judge any model version."""

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        return np.ones(len(probs), dtype=bool)

    def resolve(self, spec: ExitSpec) -> ExitPolicy:
        raise ConfigError("no threshold for this version")


def test_a_policy_that_cannot_resolve_fails_the_requests_not_the_gateway(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    gateway = GatewayService(bundle, None, policy=BrokenResolve())
    client = DeviceClient(bundle, "broken-device", InMemoryTransport(gateway.handle), policy=CloudOnly())
    predictions = client.predict_batch(fmnist.x_test[:4])
    assert all(p.degraded and p.error is not None for p in predictions)
    assert sum(n for key, n in gateway.counters.items() if key.startswith("rejected_")) == 4
    gateway.policy = ThresholdFilter(0.0)
    assert all(p.tier == "gateway" and not p.degraded for p in client.predict_batch(fmnist.x_test[:4]))
