"""A partition's drift reference in the manifest: round trip, checked, absent from old manifests' bytes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgecascade.device_sdk.device_config import load_device_config
from edgecascade.device_sdk.errors import BundleError, ConfigError
from edgecascade.device_sdk.model.bundle import MANIFEST, DriftSpec, Manifest, load_bundle

SPEC = DriftSpec(
    confidence_mean=0.92, confidence_std=0.14, device_share=0.85, unknown_share=0.05, samples=6000
)


def with_drift(manifest: Manifest, spec: DriftSpec | None) -> Manifest:
    device = dataclasses.replace(manifest.partition("device"), drift=spec)
    return dataclasses.replace(manifest, partitions=(device, *manifest.partitions[1:]))


def test_the_reference_round_trips_and_old_manifests_keep_their_bytes(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    old = with_drift(manifest, None).to_json()
    assert '"drift"' not in old and Manifest.from_dict(json.loads(old)).to_json() == old
    text = with_drift(manifest, SPEC).to_json()
    parsed = Manifest.from_dict(json.loads(text))
    assert parsed.partition("device").drift == SPEC and parsed.to_json() == text
    assert (tiny_bundle / MANIFEST).read_text() == manifest.to_json()  # what is on disk stays canonical


@pytest.mark.parametrize("bad", [{"confidence_mean": 1.5}, {"device_share": float("nan")}, {"samples": -1}])
def test_a_bad_reference_is_a_bundle_error(tiny_bundle: Path, bad: dict) -> None:
    data = json.loads(with_drift(load_bundle(tiny_bundle).manifest, SPEC).to_json())
    data["partitions"][0]["drift"] |= bad
    with pytest.raises(BundleError, match="drift"):
        Manifest.from_dict(data)


def test_the_drift_section_reads_env_overrides_and_lists_every_problem() -> None:
    config = load_device_config(env={"EC_DRIFT__THRESHOLD": "30", "EC_DRIFT__STATISTICS": "unknown_share"})
    assert config.drift.threshold == 30.0 and config.drift.statistics == ("unknown_share",)
    with pytest.raises(ConfigError) as err:
        load_device_config(env={"EC_DRIFT__AUDIT_RATE": "1.5", "EC_DRIFT__COOLDOWN": "-1"})
    assert {p.split(" ")[0] for p in err.value.problems} == {"drift.audit_rate", "drift.cooldown"}
