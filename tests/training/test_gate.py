"""The evaluation gate's rule and the stable held-out split (numpy only)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edgecascade.training.gate import GateRule, Scores, decide, in_holdout, pooled_accuracy

RULE = GateRule(min_gain=0.5, tolerance=0.5, min_holdout=20)
CURRENT = Scores(original=(0.80, 0.85, 0.90), new=0.60, n_original=1000, n_new=50)


def candidate(original: tuple[float, ...] = (0.80, 0.85, 0.90), new: float = 0.60, n_new: int = 50) -> Scores:
    return Scores(original, new, 1000, n_new)


@pytest.mark.parametrize(
    "scores, promote, words",
    [
        (candidate(new=0.62), True, "gain +2.00"),
        (
            candidate(original=(0.797, 0.85, 0.90), new=0.62),
            True,
            "worst original drop 0.30",
        ),  # within tolerance
        (candidate(original=(0.80, 0.84, 0.91), new=0.70), False, "exit 2 drops 1.00"),
        (candidate(new=0.603), False, "gain +0.30"),  # below min_gain
        (candidate(new=0.60), False, "gain +0.00"),
        (candidate(new=0.55), False, "gain -5.00"),
        (candidate(new=0.90, n_new=19), False, "only 19 held-out"),
    ],
)
def test_the_gate_promotes_only_a_real_gain_without_forgetting(
    scores: Scores, promote: bool, words: str
) -> None:
    decision = decide(CURRENT, scores, RULE)
    assert decision.promote is promote
    assert words in decision.reason
    numbers = decision.to_json()
    assert numbers["gain_points"] == pytest.approx(100 * (scores.new - CURRENT.new), abs=1e-3)
    assert len(numbers["original_drop_points"]) == 3 and numbers["current"]["n_new"] == 50


def test_a_zero_min_gain_still_needs_some_gain() -> None:
    rule = GateRule(min_gain=0.0, tolerance=0.5, min_holdout=1)
    assert not decide(CURRENT, candidate(new=0.60), rule).promote
    assert decide(CURRENT, candidate(new=0.61), rule).promote


def test_held_out_examples_are_a_stable_share_chosen_by_id() -> None:
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    held = [i for i in ids if in_holdout(i, 0.2)]
    assert 0.18 < len(held) / len(ids) < 0.22
    assert held == [i for i in ids if in_holdout(i, 0.2)]  # the same ids every time
    assert set(held) <= {i for i in ids if in_holdout(i, 0.5)}  # a larger share keeps the old slice


def test_pooled_accuracy_counts_every_exit_evaluation() -> None:
    assert pooled_accuracy([np.array([True, False]), np.array([True, True, True])]) == pytest.approx(0.8)
    assert pooled_accuracy([]) == 0.0


def test_the_cascade_as_deployed_may_not_give_away_what_the_exits_gained() -> None:
    current = Scores((0.80, 0.85, 0.90), 0.60, 1000, 50, cascade_original=0.90, cascade_new=0.55)

    def with_cascade(original: float, new: float) -> Scores:
        return Scores((0.80, 0.85, 0.90), 0.70, 1000, 50, cascade_original=original, cascade_new=new)

    passed = decide(current, with_cascade(0.897, 0.70), RULE)
    assert passed.promote and "cascade original -0.30, new +15.00" in passed.reason
    assert passed.to_json()["cascade_drop_points"] == {
        "original": pytest.approx(0.3),
        "new": pytest.approx(-15.0),
    }
    on_original = decide(current, with_cascade(0.89, 0.70), RULE)  # exits fine, thresholds too low
    assert not on_original.promote and "cascade drops 1.00 points on the original test" in on_original.reason
    on_new = decide(current, with_cascade(0.90, 0.54), RULE)
    assert not on_new.promote and "cascade drops 1.00 points on the held-out new" in on_new.reason
    unmeasured = decide(CURRENT, candidate(new=0.62), RULE)  # scores without cascade numbers: exits only
    assert unmeasured.promote and unmeasured.cascade_drops == {}


@pytest.mark.parametrize(
    "original, added, n_added, promote, words",
    [
        ((0.80, 0.85, 0.898), 0.70, 30, True, "added classes 70.00% right; gain +0.00"),
        (
            (0.80, 0.85, 0.898),
            0.20,
            30,
            False,
            "added classes 20.00% right on held-out examples; needs >= 25",
        ),
        ((0.80, 0.85, 0.85), 0.90, 30, False, "exit 3 drops 5.00 points on the original test data"),
        ((0.80, 0.85, 0.90), 0.90, 19, False, "only 19 held-out"),  # 0 of the old classes + 19
    ],
)
def test_added_classes_are_measured_on_the_candidate_alone_and_old_ones_compared_as_always(
    original: tuple[float, ...], added: float, n_added: int, promote: bool, words: str
) -> None:
    """No gain is needed on old classes when classes were added; the current model's certain
    miss on the added ones is neither its loss nor the candidate's gain."""
    current = Scores(original=(0.80, 0.85, 0.90), new=0.0, n_original=1000, n_new=0, n_new_classes=n_added)
    grown = Scores(
        original, 0.0, 1000, 0, n_new_classes=n_added, new_classes=added, cascade_new_classes=added
    )
    decision = decide(current, grown, RULE)
    assert decision.promote is promote and words in decision.reason, decision.reason
    numbers = decision.to_json()
    assert numbers["gain_points"] == 0.0  # the added classes are not in the compared slice
    assert numbers["candidate"]["new_classes"] == added and numbers["current"]["new_classes"] is None
    worst = max(100 * (c - n) for c, n in zip(current.original, original, strict=True))
    assert numbers["old_classes_change_points"] == pytest.approx(-worst, abs=1e-3)
