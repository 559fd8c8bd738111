"""The tier core on the real tiny partitions: exit, keep, look up, learn, fall back, swap."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import CacheConfig, NeuralCache, load_embedder, open_cache
from edgecascade.device_sdk.core import tier
from edgecascade.device_sdk.core.policy import AlwaysExit, ExitPolicy, NeverExit
from edgecascade.device_sdk.core.tier import Decision, TierModel, TierModels
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle, write_manifest
from edgecascade.device_sdk.wire import codec


class FirstRowExits(ExitPolicy):
    """Only the first input of a batch may exit."""

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        return np.arange(len(probs)) == 0


def _inputs(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    return bundle.manifest.input.prepare(images)


def _cache(bundle: Bundle, **config: object) -> NeuralCache:
    """A device cache that keeps every own exit and answers on one close neighbour."""
    embedder = load_embedder(bundle, "device")
    settings = CacheConfig(**{"k": 1, "min_votes": 1, "tau": 0.02, **config})  # type: ignore[arg-type]
    return NeuralCache(
        embedder.dim, settings, bundle.manifest.version, embedder=embedder, keep_exits_below=1.01
    )


def test_every_input_gets_one_decision_and_only_undecided_ones_ask_above(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    model = TierModel.load(bundle, "device")
    decisions = tier.decide(model, _inputs(bundle, fmnist.x_test[:64]))
    exits = model.policy.should_exit(np.stack([d.probs for d in decisions]))
    assert len(decisions) == 64 and 0 < exits.sum() < 64  # the tiny bundle's thresholds mix tiers
    for decision, leaves in zip(decisions, exits, strict=True):
        assert decision.features is not None and decision.features.shape == model.spec.features.shape
        if leaves:
            assert decision.answer is not None and decision.answer.tier is wire.Tier.DEVICE
            assert decision.answer.label == int(decision.probs.argmax()) and not decision.answer.degraded
        else:
            assert decision.answer is None and decision.embedding is None  # no cache: nothing to learn
    assert all(d.answer is None for d in tier.decide(model, _inputs(bundle, fmnist.x_test[:8]), NeverExit()))
    assert all(
        d.answer is not None for d in tier.decide(model, _inputs(bundle, fmnist.x_test[:8]), AlwaysExit())
    )


def test_fallback_is_the_own_exit_flagged_degraded(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    (decision,) = tier.decide(TierModel.load(bundle, "gateway"), _gateway_input(bundle, fmnist), NeverExit())
    fallback = decision.fallback()
    assert fallback.degraded and fallback.tier is wire.Tier.GATEWAY
    assert (
        fallback.label == int(decision.probs.argmax())
        and tier.answered(fallback) == "answered_gateway_degraded"
    )


def _gateway_input(bundle: Bundle, fmnist) -> np.ndarray:
    """The gateway's input for one test image, as the device's cut encoding delivers it."""
    features = TierModel.load(bundle, "device").runner.run(_inputs(bundle, fmnist.x_test[:1])).features
    assert features is not None
    return codec.through_wire(features, bundle.manifest.partition("device").encoding)


def test_the_last_tier_answers_everything(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    device = TierModel.load(bundle, "device")
    gateway = TierModel.load(bundle, "gateway")
    cut2 = gateway.runner.run(_gateway_input(bundle, fmnist)).features
    assert cut2 is not None
    x = codec.through_wire(cut2, bundle.manifest.partition("gateway").encoding)
    (decision,) = tier.decide(TierModel.load(bundle, "cloud"), x, NeverExit())  # a policy cannot stop it
    assert decision.answer is not None and decision.answer.tier is wire.Tier.CLOUD
    assert decision.features is None and tier.answered(decision.answer) == "answered_cloud"
    with pytest.raises(ValueError, match="raw inputs"):
        _ = device.cut_encoding


def test_own_exits_are_kept_before_the_batch_is_looked_up(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    model = TierModel.load(bundle, "device", cache=_cache(bundle))
    image = fmnist.x_test[:1]
    first, duplicate = tier.decide(model, _inputs(bundle, np.concatenate([image, image])), FirstRowExits())
    assert first.answer is not None and first.answer.tier is wire.Tier.DEVICE
    # the duplicate did not exit, but the batch's own exit was kept first: the cache answers it
    assert duplicate.answer is not None and duplicate.answer.tier is wire.Tier.DEVICE_CACHE
    assert duplicate.answer.label == first.answer.label
    assert model.cache is not None and model.cache.metrics()["hits"] == 1


def test_learn_keeps_answers_from_above_but_not_degraded_ones(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    model = TierModel.load(bundle, "device", cache=_cache(bundle, tau=0.0001))
    x = _inputs(bundle, fmnist.x_test[:2])
    first, second = tier.decide(model, x, NeverExit())
    assert first.answer is None and first.embedding is not None  # a miss: asked above, key kept
    cloud = wire.Result(7, np.eye(10, dtype=np.float32)[7], wire.Tier.CLOUD)
    assert not tier.learn(model, second, dataclasses.replace(cloud, degraded=True))
    assert tier.learn(model, first, cloud)
    assert not tier.learn(TierModel.load(bundle, "device"), first, cloud)  # no cache, nothing kept
    again, _ = tier.decide(model, x, NeverExit())
    assert again.answer is not None and again.answer.tier is wire.Tier.DEVICE_CACHE
    assert again.answer.label == 7


def test_a_decision_without_a_cache_key_learns_nothing(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    model = TierModel.load(bundle, "device", cache=_cache(bundle))
    decision = Decision(wire.Tier.DEVICE, np.full(10, 0.1, np.float32), None)
    assert not tier.learn(model, decision, wire.Result(1, np.eye(10, dtype=np.float32)[1], wire.Tier.CLOUD))


def test_swaps_build_the_new_version_and_keep_the_old_one_for_its_grace(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    v1 = load_bundle(tiny_bundle)
    shutil.copytree(tiny_bundle, tmp_path / "v2")
    write_manifest(tmp_path / "v2", dataclasses.replace(v1.manifest, version=2))
    made: list[int] = []

    def cache_factory(bundle: Bundle) -> NeuralCache:
        made.append(bundle.manifest.version)
        return open_cache(bundle, "gateway")

    models = TierModels("gateway", v1, grace=60, cache_factory=cache_factory)
    assert models.current.version == 1 and models.current.cache is None and models.versions() == (1,)
    old = models.swap(load_bundle(tmp_path / "v2"))
    assert old.version == 1 and models.current.version == 2 and made == [2]
    assert models.current.cache is not None and models.current.cache.model_version == 2
    assert models.get(1) is old and models.previous() is old and models.versions() == (2, 1)
    assert models.get(3) is None
