"""The key-space unknown-input rule (``mahalanobis``): calibrated into a bundle, the same in
Keras and LiteRT, applied by the tier core."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.cache.from_bundle import load_embedder
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.novelty import UnknownRule
from edgecascade.device_sdk.core.tier import TierModel, decide
from edgecascade.device_sdk.errors import BundleError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire.codec import through_wire
from edgecascade.training.cache_calibration import calibrate_cache
from edgecascade.training.unknown_calibration import calibrate_unknown_keys


@pytest.fixture(scope="module")
def keyed_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, fmnist: Any) -> Path:
    """The tiny bundle with cache key projections and a mahalanobis rule on each caching tier."""
    out = tmp_path_factory.mktemp("keyed") / "bundle"
    shutil.copytree(tiny_bundle, out)
    val = fmnist.x_train[-1500:]
    calibrate_cache(out, val, fmnist.y_train[-1500:], fit_images=fmnist.x_train[:3000], dim=8)
    calibrate_unknown_keys(out, fmnist.x_train[:3000], fmnist.y_train[:3000], val, known_fpr=0.05)
    return out


def test_each_caching_tier_gets_a_signed_mahalanobis_rule_flagging_the_calibrated_share(
    keyed_bundle: Path, fmnist: Any
) -> None:
    bundle = load_bundle(keyed_bundle)
    chain = run_partitions(bundle, fmnist.x_train[-1500:])
    keyed = 0
    for i, part in enumerate(bundle.manifest.partitions):
        rule = UnknownRule.from_bundle(bundle, part.tier)
        assert rule is not None
        if part.cache is None or part.cache.embedding is None:
            assert rule.spec.score == "energy"  # no keys: the rule over logits stays
            continue
        keyed += 1
        assert rule.spec.score == "mahalanobis" and rule.spec.statistics == f"{part.tier}.unknown.npz"
        flagged = rule.flags(chain.logits[i], chain.features[i]).mean()
        assert flagged == pytest.approx(0.05, abs=0.01)  # the validation inputs it was calibrated on
        noise = np.random.default_rng(0).integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
        odd = run_partitions(bundle, noise)
        assert rule.flags(odd.logits[i], odd.features[i]).mean() > 0.5  # nothing like a garment (known: 5 %)
    assert keyed >= 1
    # the statistics are signed with the bundle: a changed file is refused
    name = f"{bundle.manifest.partitions[0].tier}.unknown.npz"
    if (keyed_bundle / name).exists():
        tampered = keyed_bundle.parent / "tampered"
        shutil.copytree(keyed_bundle, tampered)
        (tampered / name).write_bytes((tampered / name).read_bytes()[:-1] + b"x")
        with pytest.raises(BundleError):
            load_bundle(tampered)


def test_litert_flags_what_keras_flags_on_the_cache_keys(
    keyed_bundle: Path, tiny_trained: Any, fmnist: Any
) -> None:
    bundle = load_bundle(keyed_bundle)
    rule = UnknownRule.from_bundle(bundle, "device")
    assert rule is not None and rule.spec.score == "mahalanobis"
    images = np.concatenate([fmnist.x_test[:500], 255 - fmnist.x_test[500:700]])  # known, and inverted
    lite = run_partitions(bundle, images)
    logits, features = tiny_trained.device.predict(tiny_trained.input_spec.normalise(images), verbose=0)
    keras_cut = through_wire(np.asarray(features), tiny_trained.config.model.cut1_encoding)
    lite_score = rule.familiarity(lite.logits[0], lite.features[0])
    keras_score = rule.familiarity(np.asarray(logits), keras_cut)
    assert np.corrcoef(lite_score, keras_score)[0, 1] > 0.99
    agreement = (
        rule.flags(lite.logits[0], lite.features[0]) == rule.flags(np.asarray(logits), keras_cut)
    ).mean()
    assert agreement >= 0.97


def test_the_tier_core_flags_with_the_rule_and_never_caches_a_flagged_input(
    keyed_bundle: Path, fmnist: Any
) -> None:
    from edgecascade.device_sdk.cache.from_bundle import open_cache

    bundle = load_bundle(keyed_bundle)
    model = TierModel.load(bundle, "device", cache=open_cache(bundle, "device", capacity=100))
    assert model.unknown is not None and model.unknown.statistics is not None
    images = np.concatenate([fmnist.x_test[:100], 255 - fmnist.x_test[:100]])
    decisions = decide(model, bundle.manifest.input.prepare(images))
    chain = run_partitions(bundle, images)
    expected = model.unknown.flags(chain.logits[0], chain.features[0])
    assert [d.unknown for d in decisions] == expected.tolist()
    assert sum(d.unknown for d in decisions[100:]) > sum(d.unknown for d in decisions[:100])
    assert all(d.answer is None or d.answer.tier.label != "device_cache" for d in decisions if d.unknown)
    assert load_embedder(bundle, "device").dim == model.unknown.statistics.means.shape[1]
