"""Unknown-input scores, their calibration, the manifest's rule, and what the tier core does with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.core.novelty import (
    FAMILIARITY,
    KEY_SCORE,
    ClassStatistics,
    calibrate_unknown,
    energy,
    is_unknown,
    max_logit,
)
from edgecascade.device_sdk.errors import BundleError, ConfigError
from edgecascade.device_sdk.learning.selection import Answers, HardExampleSelector, UnknownInput
from edgecascade.device_sdk.model.bundle import FAMILIARITY_SCORES, MANIFEST, UnknownSpec, load_bundle
from tests.fake_bundle import make_bundle


def test_the_scores_the_manifest_may_name_are_the_ones_implemented() -> None:
    assert (*FAMILIARITY, KEY_SCORE) == FAMILIARITY_SCORES


def test_energy_is_a_stable_logsumexp_and_orders_inputs_by_the_scale_of_their_logits() -> None:
    logits = np.array([[1000.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.1, 0.0, 0.0]])
    expected = [1000.0, np.log(np.exp(2) + np.exp(1) + 1), np.log(np.exp(0.1) + 2)]
    np.testing.assert_allclose(energy(logits), expected, rtol=1e-6)  # no overflow at 1000
    np.testing.assert_allclose(energy(logits, 2.0), 2 * np.log(np.exp(logits / 2).sum(1)), rtol=1e-5)
    assert list(np.argsort(energy(logits))) == list(np.argsort(max_logit(logits))) == [2, 1, 0]


@pytest.mark.parametrize("score", FAMILIARITY)
def test_the_calibrated_threshold_flags_the_requested_share_of_known_inputs(score: str) -> None:
    rng = np.random.default_rng(0)
    known = rng.normal(size=(20000, 10)) * 3
    rule = calibrate_unknown(known, score, known_fpr=0.05)
    assert rule.score == score and rule.known_fpr == 0.05
    assert is_unknown(known, rule).mean() == pytest.approx(0.05, abs=0.002)
    flat = np.zeros((100, 10))  # logits that say nothing: the least familiar input there is
    assert is_unknown(flat, rule).all()


def test_calibration_needs_data_and_a_share_in_range() -> None:
    with pytest.raises(ValueError, match="validation inputs"):
        calibrate_unknown(np.zeros((0, 10)))
    with pytest.raises(ValueError, match="known_fpr"):
        calibrate_unknown(np.zeros((10, 10)), known_fpr=0.0)
    with pytest.raises(ConfigError, match="familiarity score 'entropy'"):
        calibrate_unknown(np.zeros((10, 10)), "entropy")


def test_class_statistics_score_keys_by_their_distance_to_the_nearest_class() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0]])
    labels = rng.integers(0, 3, 3000)
    keys = centres[labels] + rng.normal(scale=[0.3, 1.0], size=(3000, 2))  # one shared, elongated covariance
    stats = ClassStatistics.fit(keys, labels)
    np.testing.assert_allclose(stats.means, centres, atol=0.1)
    inside, between = stats.familiarity(centres), stats.familiarity(np.array([[2.0, 2.0], [0.0, -4.0]]))
    assert inside.min() > -0.1 and between.max() < -10
    # along the wide axis a point is more familiar than as far along the narrow one
    along, across = stats.familiarity(np.array([[4.0, 1.5], [5.5, 0.0]]))
    assert along > across
    again = ClassStatistics.from_bytes(stats.to_bytes())
    np.testing.assert_array_equal(again.familiarity(keys[:50]), stats.familiarity(keys[:50]))


def test_a_statistics_file_that_is_not_one_is_a_clear_error() -> None:
    import io

    pickled = io.BytesIO()
    np.save(pickled, np.array([{"means": 1}], dtype=object), allow_pickle=True)
    for bad in (b"", b"not a zip", pickled.getvalue()):
        with pytest.raises(ValueError, match="statistics"):
            ClassStatistics.from_bytes(bad)
    with pytest.raises(ValueError, match="finite"):
        ClassStatistics(np.full((2, 3), np.nan, np.float32), np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="precision"):
        ClassStatistics(np.zeros((2, 3), np.float32), np.eye(2, dtype=np.float32))


def test_the_rule_round_trips_through_the_manifest_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    data = json.loads((bundle / MANIFEST).read_text())
    data["partitions"][0]["unknown"] = {
        "score": "energy",
        "threshold": 2.5,
        "temperature": 1.0,
        "known_fpr": 0.05,
    }
    (bundle / MANIFEST).write_text(json.dumps(data))
    manifest = load_bundle(bundle).manifest
    assert manifest.partitions[0].unknown == UnknownSpec("energy", 2.5)
    assert (
        manifest.partitions[1].unknown is None
        and "unknown" not in json.loads(manifest.to_json())["partitions"][1]
    )
    for bad in (
        {"score": "entropy", "threshold": 1.0},
        {"score": "energy", "threshold": float("nan")},
        {"score": "mahalanobis", "threshold": -3.0},  # a rule over keys needs its statistics file
        {"score": "energy", "threshold": 1.0, "statistics": "device.unknown.npz"},
    ):
        data["partitions"][0]["unknown"] = bad
        (bundle / MANIFEST).write_text(json.dumps(data))
        with pytest.raises(BundleError):
            load_bundle(bundle)


def test_an_unknown_flag_selects_the_input_for_the_reason_unknown() -> None:
    probs = np.full((3, 3), 1 / 3, np.float32)
    answers = Answers(probs, probs, ["device"] * 3, np.zeros(3, bool), unknown=np.array([False, True, False]))
    assert list(UnknownInput().select(answers)) == [False, True, False]
    assert "unknown" in HardExampleSelector.default().reasons(answers)[1]
    without = Answers(probs, probs, ["device"] * 3, np.zeros(3, bool))  # a manifest without a rule
    assert not UnknownInput().select(without).any()
