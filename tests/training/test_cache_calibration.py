from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from device_sdk.bundle import load_bundle
from device_sdk.cache import load_embedder
from device_sdk.errors import BundleError
from training.augment import near_duplicates
from training.cache_calibration import (
    CurvePoint,
    TierView,
    accuracy_curve,
    calibrate_cache,
    choose_tau,
    keep_bound,
)


def test_choose_tau_takes_the_largest_accurate_enough_tau() -> None:
    repeats = [
        CurvePoint(0.0, 0, 0.0, 1.0, 1.0),
        CurvePoint(0.01, 50, 0.1, 0.90, 0.90),
        CurvePoint(0.02, 80, 0.2, 0.89, 0.90),  # ratio 0.989: below 0.99
        CurvePoint(0.03, 10, 0.3, 1.0, 0.5),  # too few hits to trust
        CurvePoint(0.04, 90, 0.3, 0.95, 0.90),  # repeats fine, but unrelated inputs suffer
    ]
    distinct = [CurvePoint(p.tau, 0, 0.0, 1.0, 1.0) for p in repeats[:4]] + [
        CurvePoint(0.04, 30, 0.1, 0.5, 0.7)
    ]
    assert choose_tau(repeats, distinct, 0.99)[0].tau == 0.01
    assert choose_tau(repeats, distinct, 1.5)[0].tau == 0.0  # nothing qualifies: the smallest tau


def test_accuracy_curve_counts_hits_and_compares_answers() -> None:
    ref = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0.01, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    curve = accuracy_curve(
        ref,
        np.array([0, 1, 2]),
        queries,
        np.array([0, 2, 1]),
        np.array([0, 1, 1]),
        k=1,
        min_votes=1,
        taus=(0.01,),
    )
    (point,) = curve
    assert point.hits == 2  # the third query is far from every stored entry
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
        assert spec is not None and 0.0 <= spec.tau <= 0.2 and spec.k == 3
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
