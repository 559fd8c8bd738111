"""A gateway started with ``[model] overlay`` serves the site's thresholds, re-reads them on a swap,
and keeps the manifest's when the overlay is refused."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle, write_manifest
from edgecascade.device_sdk.model.overlay import SiteOverlay, write_overlay
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.edge_gateway.config import load_gateway_config
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.certs import init_pki


def overlay(bundle: Path, threshold: float, version: int = 1) -> SiteOverlay:
    manifest = load_bundle(bundle, tiers=()).manifest
    gateway = dataclasses.replace(manifest.partition("gateway").exit, threshold=threshold)
    return SiteOverlay(manifest.name, version, "site-a", {"gateway": gateway}, examples=200)


@pytest.fixture
def site(tmp_path: Path, tiny_bundle: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """A signed tiny bundle, the signing key, where the overlay goes, and the gateway's environment."""
    pki = init_pki(tmp_path / "pki")
    private, public = pki.cloud_signing_key, pki.cloud_signing_pub
    mqtt = pki.mqtt_config(pki.gateway_names()[0])
    bundle = tmp_path / "v1"
    shutil.copytree(tiny_bundle, bundle)
    sign_bundle(bundle, private)
    path = tmp_path / "site" / "overlay.json"
    env = {
        "EC_GATEWAY__BUNDLE": str(bundle),
        "EC_GATEWAY__VERIFY_KEY": str(public),
        "EC_CRYPTO__REQUIRED": "false",
        "EC_CRYPTO__REPLAY_STORE": "",
        "EC_METRICS__PORT": "0",
        "EC_MODEL__OVERLAY": str(path),
        "EC_MQTT__CA_FILE": str(mqtt.ca_file),
        "EC_MQTT__CERT_FILE": str(mqtt.cert_file),
        "EC_MQTT__KEY_FILE": str(mqtt.key_file),
    }
    return bundle, private, path, env


def test_a_gateway_started_with_an_overlay_applies_it_and_rereads_it_on_a_swap(
    site: tuple[Path, Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    bundle, private, path, env = site
    write_overlay(path, overlay(bundle, 0.123), private)
    daemon = GatewayDaemon(load_gateway_config(env=env))
    service = daemon.service
    assert service.models.current.overlay == overlay(bundle, 0.123)
    assert service.models.current.spec.exit.threshold == 0.123
    assert service.counters["overlay_applied"] == 1

    v2 = tmp_path / "v2"
    shutil.copytree(bundle, v2)
    write_manifest(v2, dataclasses.replace(load_bundle(bundle, tiers=()).manifest, version=2))
    sign_bundle(v2, private)
    manifest_threshold = load_bundle(v2, tiers=()).manifest.partition("gateway").exit.threshold
    service.swap(load_bundle(v2, tiers=("gateway",)))  # the file still holds v1's overlay: dropped
    assert service.version == 2 and service.models.current.overlay is None
    assert service.models.current.spec.exit.threshold == manifest_threshold
    assert service.counters["overlay_refused"] == 1
    write_overlay(path, overlay(bundle, 0.321, version=2), private)  # the cloud fitted one for v2
    service.swap(load_bundle(v2, tiers=("gateway",)))
    assert service.models.current.spec.exit.threshold == 0.321


def test_a_gateway_with_a_forged_overlay_starts_on_the_manifests_thresholds(
    site: tuple[Path, Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    bundle, _, path, env = site
    forger, _ = generate_signing_key(tmp_path / "forger")
    write_overlay(path, overlay(bundle, 0.0), forger)
    daemon = GatewayDaemon(load_gateway_config(env=env))
    current = daemon.service.models.current
    assert current.overlay is None and current.spec == current.bundle.manifest.partition("gateway")
    assert daemon.service.counters["overlay_refused"] == 1


def test_an_overlay_needs_the_gateways_verify_key(site: tuple[Path, Path, Path, dict[str, str]]) -> None:
    _, _, _, env = site
    with pytest.raises(ConfigError, match=r"model\.overlay needs gateway\.verify_key"):
        load_gateway_config(env={k: v for k, v in env.items() if k != "EC_GATEWAY__VERIFY_KEY"})
