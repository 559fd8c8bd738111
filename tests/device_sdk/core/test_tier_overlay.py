"""Site overlays in the tier core and the device client, on the real tiny partitions."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core import tier
from edgecascade.device_sdk.core.tier import TierModel, TierModels
from edgecascade.device_sdk.device_config import load_device_config
from edgecascade.device_sdk.errors import BundleError
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle, sign_bundle, write_manifest
from edgecascade.device_sdk.model.overlay import SiteOverlay, write_overlay
from edgecascade.device_sdk.model.signing import generate_signing_key

ALL, NONE = 0.0, 1.01  # device thresholds: every input exits, none does


@pytest.fixture
def signed(tmp_path: Path, tiny_bundle: Path) -> tuple[Bundle, Path, Path]:
    """A signed copy of the tiny bundle, the signing key and the verify key."""
    private, public = generate_signing_key(tmp_path / "keys")
    root = tmp_path / "v1"
    shutil.copytree(tiny_bundle, root)
    sign_bundle(root, private)
    return load_bundle(root, public_key=public), private, public


def site(bundle: Bundle, threshold: float, version: int | None = None) -> SiteOverlay:
    manifest = bundle.manifest
    device = dataclasses.replace(manifest.partition("device").exit, threshold=threshold)
    return SiteOverlay(
        manifest.name, manifest.version if version is None else version, "site-a", {"device": device}
    )


def exits(model: TierModel, images: np.ndarray) -> int:
    decisions = tier.decide(model, model.manifest.input.prepare(images))
    return sum(d.answer is not None for d in decisions)


def test_the_tier_core_answers_at_the_overlays_thresholds(
    signed: tuple[Bundle, Path, Path], fmnist: Any
) -> None:
    bundle, _, _ = signed
    x = fmnist.x_test[:64]
    plain = TierModel.load(bundle, "device")
    assert 0 < exits(plain, x) < 64  # the tiny bundle's own thresholds send some inputs up
    everything = TierModel.load(bundle, "device", overlay=site(bundle, ALL))
    assert everything.spec.exit.threshold == ALL and exits(everything, x) == 64
    assert everything.bundle.manifest == bundle.manifest  # the bundle's manifest is not changed
    nothing = plain.with_overlay(site(bundle, NONE))
    assert exits(nothing, x) == 0 and nothing.runner is plain.runner  # same interpreter
    assert exits(nothing.with_overlay(None), x) == exits(plain, x)


def test_an_overlay_for_another_version_is_left_out_and_a_swap_drops_the_old_one(
    signed: tuple[Bundle, Path, Path], tmp_path: Path, fmnist: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bundle, private, public = signed
    assert TierModel.load(bundle, "device", overlay=site(bundle, ALL, version=9)).overlay is None
    with pytest.raises(BundleError, match="v9"):
        TierModel.load(bundle, "device").with_overlay(site(bundle, ALL, version=9))
    models = TierModels("device", bundle, overlay=site(bundle, ALL))
    assert exits(models.current, fmnist.x_test[:32]) == 32
    v2 = tmp_path / "v2"
    shutil.copytree(bundle.path, v2)
    write_manifest(v2, dataclasses.replace(bundle.manifest, version=2))
    sign_bundle(v2, private)
    with caplog.at_level(logging.INFO, logger="edgecascade.device_sdk.core.tier"):
        models.swap(load_bundle(v2, public_key=public), site(bundle, ALL))  # still the v1 overlay
    assert models.current.version == 2 and models.current.overlay is None
    assert "dropped site site-a's overlay made for v1" in caplog.text
    assert exits(models.current, fmnist.x_test[:32]) < 32  # v2's manifest thresholds again
    assert models.get(1) is not None and models.get(1).overlay is not None  # v1 in grace keeps its own


def test_a_device_started_with_model_overlay_applies_it_and_keeps_working_when_it_is_refused(
    signed: tuple[Bundle, Path, Path], tmp_path: Path, fmnist: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bundle, private, public = signed
    path = tmp_path / "site" / "overlay.json"
    write_overlay(path, site(bundle, ALL), private)
    config = load_device_config(env={"EC_MODEL__OVERLAY": str(path)})
    assert config.model.overlay == path
    client = DeviceClient.from_bundle(bundle.path, "cam-01", verify_key=public, overlay=config.model.overlay)
    predictions = client.predict_batch(fmnist.x_test[:32])
    assert [(p.tier, p.degraded) for p in predictions] == [("device", False)] * 32  # all exit on the device
    assert (
        client.counters["overlay_applied"] == 1
        and client.policy.should_exit(np.full((1, 10), 0.1, dtype=np.float32)).all()
    )

    forger, _ = generate_signing_key(tmp_path / "forger")
    write_overlay(path, site(bundle, ALL), forger)
    with caplog.at_level(logging.WARNING, logger="edgecascade.device_sdk.model.overlay"):
        refused = DeviceClient.from_bundle(bundle.path, "cam-01", verify_key=public, overlay=path)
    assert refused.counters["overlay_refused"] == 1 and "refused" in caplog.text
    assert refused.models.current.overlay is None
    answers = refused.predict_batch(fmnist.x_test[:32])  # the manifest's thresholds: some would go up
    assert len(answers) == 32 and 0 < sum(p.error == "offline" for p in answers) < 32
