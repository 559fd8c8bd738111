"""Offload policies: their decisions on crafted probabilities, their settings, and per-version thresholds."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.offload import (
    POLICIES,
    CloudOnly,
    CrossEntropyFilter,
    EdgeOnly,
    OffloadSettings,
    RandomFilter,
    ThresholdFilter,
)
from edgecascade.device_sdk.core.policy import (
    AlwaysExit,
    ExitPolicy,
    NeverExit,
    ThresholdExit,
    entropy_confidence,
)
from edgecascade.device_sdk.device_config import load_device_config
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import Bundle, ExitSpec, load_bundle, write_manifest


def offloaded(policy: ExitPolicy, probs: np.ndarray) -> list[bool]:
    """Which rows leave the tier: the inverse of the exit mask."""
    return (~policy.should_exit(probs)).tolist()


def test_threshold_filter_offloads_below_its_top_probability() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    assert offloaded(ThresholdFilter(0.6), probs) == [False, False, True]
    assert offloaded(ThresholdFilter(0.95), probs) == [True, True, True]
    np.testing.assert_allclose(ThresholdFilter(0.6).confidence(probs), [0.9, 0.6, 0.55])
    with pytest.raises(ConfigError):
        ThresholdFilter(float("nan"))
    with pytest.raises(ConfigError, match="from a model's manifest"):
        ThresholdFilter().should_exit(probs)  # nothing to decide with until a manifest completes it


def test_cross_entropy_filter_sees_what_the_top_probability_does_not() -> None:
    # the same top probability: torn between two classes (entropy confidence 0.5) or spread
    # over four (about 0.12)
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.5, 0.2, 0.2, 0.1], [0.97, 0.01, 0.01, 0.01]])
    np.testing.assert_allclose(CrossEntropyFilter(0.4).confidence(probs), entropy_confidence(probs))
    assert offloaded(CrossEntropyFilter(0.4), probs) == [False, True, False]
    assert offloaded(ThresholdFilter(0.5), probs) == [False, False, False]
    assert offloaded(CrossEntropyFilter(0.9), probs) == [True, True, True]


def test_edge_only_and_cloud_only_are_the_old_always_and_never_exit() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.1, 0.9]])
    assert offloaded(EdgeOnly(), probs) == [False, False, False]
    assert offloaded(CloudOnly(), probs) == [True, True, True]
    assert isinstance(EdgeOnly(), AlwaysExit) and isinstance(CloudOnly(), NeverExit)
    assert offloaded(AlwaysExit(), probs) == [False] * 3 and offloaded(NeverExit(), probs) == [True] * 3


def test_random_filter_offloads_its_share_reproducibly_by_seed() -> None:
    probs = np.full((10_000, 10), 0.1)
    first = offloaded(RandomFilter(0.3, seed=7), probs)
    assert abs(sum(first) / len(first) - 0.3) < 0.02  # 4 standard deviations
    assert offloaded(RandomFilter(0.3, seed=7), probs) == first
    assert offloaded(RandomFilter(0.3, seed=8), probs) != first
    policy = RandomFilter(0.3, seed=7)  # draws continue across batches: 100 batches of 100 are the same draws
    assert [x for i in range(100) for x in offloaded(policy, probs[i * 100 : (i + 1) * 100])] == first
    assert not any(offloaded(RandomFilter(0.0), probs)) and all(offloaded(RandomFilter(1.0), probs))
    for share in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="share"):
            RandomFilter(share)


def test_a_filter_without_threshold_takes_each_manifests_own() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.7, 0.3, 0.0], [0.45, 0.45, 0.1]])
    policy = ThresholdFilter()
    v1, v2 = policy.resolve(ExitSpec(threshold=0.8)), policy.resolve(ExitSpec(threshold=0.6))
    assert offloaded(v1, probs) == [False, True, True] and offloaded(v2, probs) == [False, False, True]
    assert policy.resolve(ExitSpec(threshold=0.8)) is v1  # completed once per version
    # a manifest calibrated on another score keeps its own rule (the default behaviour of a node)
    margin = policy.resolve(ExitSpec(threshold=0.3, score="margin"))
    assert isinstance(margin, ThresholdExit) and margin.score == "margin"
    assert offloaded(margin, probs) == [False, False, True]
    explicit = ThresholdFilter(0.5)
    assert explicit.resolve(ExitSpec(threshold=0.99)) is explicit
    random = RandomFilter(0.5)
    assert random.resolve(ExitSpec(threshold=0.8)) is random  # one generator across versions


def test_cross_entropy_without_threshold_warns_when_the_manifest_calibrated_another_score(caplog) -> None:
    policy = CrossEntropyFilter()
    with caplog.at_level(logging.WARNING, logger="edgecascade.device_sdk.core.offload"):
        entropy = policy.resolve(ExitSpec(threshold=0.4, score="entropy"))
        assert not caplog.records
        borrowed = policy.resolve(ExitSpec(threshold=0.8))
    assert isinstance(entropy, CrossEntropyFilter) and entropy.threshold == 0.4
    assert isinstance(borrowed, CrossEntropyFilter) and borrowed.threshold == 0.8
    assert len(caplog.records) == 1 and "calibrated for max_prob" in caplog.records[0].getMessage()


def test_settings_build_the_policy_they_name() -> None:
    built = {name: OffloadSettings(policy=name, threshold=0.7, share=0.2).build_policy() for name in POLICIES}
    assert isinstance(built["threshold"], ThresholdFilter) and built["threshold"].threshold == 0.7
    assert isinstance(built["cross_entropy"], CrossEntropyFilter)
    assert isinstance(built["random"], RandomFilter) and built["random"].share == 0.2
    assert isinstance(built["edge_only"], EdgeOnly) and isinstance(built["cloud_only"], CloudOnly)
    default = OffloadSettings().build_policy()
    assert type(default) is ThresholdFilter and default.threshold is None
    spec = ExitSpec(threshold=0.65)
    resolved = OffloadSettings().build_policy().resolve(spec)
    assert isinstance(resolved, ThresholdFilter) and resolved.threshold == 0.65


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"policy": "cloud-only"},
            "offload.policy must be one of threshold, cross_entropy, random, edge_only, cloud_only, "
            "got 'cloud-only'",
        ),
        ({"share": 1.5}, "offload.share must be in [0, 1], got 1.5"),
        ({"share": -0.1}, "offload.share must be in [0, 1], got -0.1"),
        ({"threshold": float("nan")}, "offload.threshold must be in [0, 1] (unset: the manifest's), got nan"),
        ({"threshold": -0.2}, "offload.threshold must be in [0, 1] (unset: the manifest's), got -0.2"),
        ({"threshold": 90.0}, "offload.threshold must be in [0, 1]"),  # a percentage by mistake
        ({"seed": -1}, "offload.seed must be >= 0, got -1"),
    ],
)
def test_bad_settings_name_the_value_and_what_is_allowed(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        OffloadSettings(**settings)  # type: ignore[arg-type]
    assert any(problem.startswith(message) for problem in info.value.problems), info.value.problems


def test_device_settings_file_and_environment_choose_the_policy(tmp_path: Path) -> None:
    assert load_device_config(env={}).offload == OffloadSettings()
    settings = tmp_path / "device.toml"
    settings.write_text('[offload]\npolicy = "random"\nshare = 0.25\nseed = 3\n')
    config = load_device_config(settings, env={})
    assert config.offload == OffloadSettings(policy="random", share=0.25, seed=3)
    overridden = load_device_config(settings, env={"EC_OFFLOAD__POLICY": "cloud_only"})
    assert isinstance(overridden.offload.build_policy(), CloudOnly)
    threshold = load_device_config(
        env={"EC_OFFLOAD__POLICY": "cross_entropy", "EC_OFFLOAD__THRESHOLD": "0.4"}
    )
    assert threshold.offload == OffloadSettings(policy="cross_entropy", threshold=0.4)
    with pytest.raises(ConfigError, match=r"offload\.policy must be one of"):
        load_device_config(env={"EC_OFFLOAD__POLICY": "sometimes"})


def _version(tiny_bundle: Path, root: Path, version: int, device_threshold: float) -> Bundle:
    """A copy of the tiny bundle as model ``version`` whose device exit has ``device_threshold``."""
    bundle = load_bundle(tiny_bundle)
    parts = tuple(
        dataclasses.replace(p, exit=dataclasses.replace(p.exit, threshold=device_threshold))
        if p.tier == "device"
        else p
        for p in bundle.manifest.partitions
    )
    shutil.copytree(tiny_bundle, root / f"v{version}")
    write_manifest(
        root / f"v{version}", dataclasses.replace(bundle.manifest, version=version, partitions=parts)
    )
    return load_bundle(root / f"v{version}", tiers=("device",))


def test_a_client_resolves_the_manifests_threshold_again_after_a_swap(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    images = fmnist.x_test[:64]
    client = DeviceClient(
        load_bundle(tiny_bundle, tiers=("device",)),
        "offload-device",
        None,
        policy=OffloadSettings().build_policy(),
    )
    on_device = sum(not p.degraded for p in client.predict_batch(images))  # offline: the rest degraded
    assert 0 < on_device < len(images)  # the tiny bundle's own threshold mixes tiers
    client.swap_bundle(_version(tiny_bundle, tmp_path, 2, device_threshold=0.0))
    assert all(not p.degraded and p.model_version == 2 for p in client.predict_batch(images))
    client.swap_bundle(_version(tiny_bundle, tmp_path, 3, device_threshold=1.01))
    assert all(p.degraded and p.error == "offline" for p in client.predict_batch(images))
