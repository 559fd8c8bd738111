from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.cache import load_embedder
from edgecascade.device_sdk.errors import BundleError, ConfigError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.training.augment import near_duplicates
from edgecascade.training.cache_calibration import (
    CurvePoint,
    HitRule,
    Precision,
    TierView,
    accuracy_curve,
    calibrate_cache,
    choose_rule,
    keep_bound,
    nearest,
)


def test_precision_weighs_the_two_kinds_of_query_by_their_share() -> None:
    # near-duplicates: 100 asked, 90 hits, cache right on 60, the tiers on 50
    repeats = CurvePoint(0.05, queries=100, hits=90, cache_right=60, tier_right=50)
    # unrelated inputs: 100 asked, 10 hits, cache right on 4, the tiers on 5 (1 % of them made wrong)
    distinct = CurvePoint(0.05, queries=100, hits=10, cache_right=4, tier_right=5)
    precision = Precision(target_ratio=0.99, repeat_share=0.3, max_unrelated_loss=0.02)
    assert precision.pooled_ratio(repeats, distinct) == pytest.approx(
        (0.3 * 60 + 0.7 * 4) / (0.3 * 50 + 0.7 * 5)
    )
    assert precision.holds(repeats, distinct)
    # with almost no repeats expected, the unrelated inputs' worse answers dominate
    assert not Precision(repeat_share=0.01).holds(repeats, distinct)
    # costing 5 % of the unrelated inputs their right answer is too much, whatever the repeats gain
    worse = CurvePoint(0.05, queries=100, hits=10, cache_right=0, tier_right=5)
    assert not precision.holds(repeats, worse)
    assert not Precision(min_hits=91).holds(repeats, distinct)  # too few hits to trust
    with pytest.raises(ConfigError) as info:
        Precision(repeat_share=1.0, max_unrelated_loss=-0.1)
    assert len(info.value.problems) == 2


def _at(degrees: float) -> np.ndarray:
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], np.float32)


def _distance(d: float) -> float:
    """The angle (degrees) between unit vectors at cosine distance ``d``."""
    return float(np.degrees(np.arccos(1 - d)))


def test_choose_rule_takes_the_rule_answering_more_near_duplicates() -> None:
    # a repeat 0.04 from its original (label 0) and 0.045 from a cached input of label 1
    angle_r = _distance(0.04)
    ref = np.stack([_at(0), _at(angle_r + _distance(0.045))])
    repeats = (_at(angle_r)[None], np.array([1]), np.array([0]))
    distinct = (_at(120)[None], np.array([1]), np.array([1]))  # far from everything
    rules = (HitRule(3, 2), HitRule(1, 1))
    choice = choose_rule(ref, np.array([0, 1]), repeats, distinct, Precision(min_hits=1), rules, taus=(0.05,))
    # two close neighbours of different labels veto the vote rule; the 1-NN rule answers
    assert choice.rule == HitRule(1, 1) and choice.repeats.hits == 1 and choice.repeats.cache_right == 1


def test_choose_rule_falls_back_to_the_strictest_rule_when_nothing_is_precise() -> None:
    ref = _at(0)[None]
    repeats = (_at(_distance(0.01))[None], np.array([0]), np.array([0]))
    # an unrelated input 0.03 away, of another label: every rule answering it makes it wrong
    distinct = (_at(-_distance(0.03))[None], np.array([1]), np.array([1]))
    rules = (HitRule(3, 2), HitRule(1, 1))
    choice = choose_rule(ref, np.array([0]), repeats, distinct, Precision(min_hits=1), rules, taus=(0.05,))
    assert choice.rule == HitRule(3, 2) and choice.repeats.tau == 0.05 and choice.distinct.hits == 1


def test_accuracy_curve_counts_hits_and_compares_answers() -> None:
    ref = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0.01, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    curve = accuracy_curve(
        nearest(ref, queries, 1),
        np.array([0, 1, 2]),
        np.array([0, 2, 1]),
        np.array([0, 1, 1]),
        HitRule(1, 1),
        taus=(0.01,),
    )
    (point,) = curve
    assert point.hits == 2 and point.queries == 3  # the third query is far from every stored entry
    assert point.cache_accuracy == 0.5 and point.tier_accuracy == 0.5


def test_near_duplicates_stay_close_to_their_original() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28, 1), dtype=np.uint8)
    copies = near_duplicates(images, rng)
    assert copies.shape == images.shape and copies.dtype == np.uint8
    assert not np.array_equal(copies, images)
    assert (
        np.abs(copies.astype(int) - images.astype(int)).mean()
        < np.abs(images[::-1].astype(int) - images).mean()
    )


def test_calibration_writes_cache_settings_into_a_valid_manifest(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = calibrate_cache(
        out, fmnist.x_train[-1500:], fmnist.y_train[-1500:], fit_images=fmnist.x_train[:2000], dim=8
    )
    reloaded = load_bundle(out)
    assert reloaded.manifest == manifest
    calibrated = 0
    for tier in ("device", "gateway"):
        spec = reloaded.manifest.partition(tier).cache
        assert spec is not None and 0.0 <= spec.tau <= 0.2 and 1 <= spec.min_votes <= spec.k
        assert spec.accuracy_ratio >= 0.99 or spec.tau == 0.0
        assert 0.0 <= spec.keep_exits_below <= 1.0
        if spec.embedding is not None:  # a tier that enough inputs reach gets its own projection
            calibrated += 1
            assert load_embedder(reloaded, tier).dim == 8
    assert calibrated >= 1
    assert reloaded.manifest.partition("cloud").cache is None
    # the projection is signed with the bundle: a changed file is refused
    name = next(p.cache.embedding for p in manifest.partitions if p.cache and p.cache.embedding)
    (out / name).write_bytes((out / name).read_bytes()[:-1] + b"x")
    with pytest.raises(BundleError):
        load_bundle(out)


def test_keep_bound_covers_the_exits_whose_near_duplicates_do_not_exit() -> None:
    n = 200
    conf = np.linspace(0.5, 1.0, n, endpoint=False)
    exits = conf >= 0.6
    dup_exits = conf >= 0.75  # near-duplicates of inputs under 0.75 fall under the threshold

    def view(exits: np.ndarray, confidence: np.ndarray) -> TierView:
        zeros = np.zeros(n, int)
        return TierView(np.zeros((n, 1, 1, 1)), np.ones(n, bool), exits, zeros, confidence, zeros)

    bound = keep_bound(view(exits, conf), view(dup_exits, conf))
    needed = exits & ~dup_exits
    assert 0.74 <= bound <= 0.76 and (conf[needed] < bound).mean() >= 0.99
    assert keep_bound(view(exits, conf), view(exits, conf)) == 0.0  # no near-duplicate needs one
