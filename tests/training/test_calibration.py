"""Exit calibration rules: softmax, threshold choice, cascade simulation (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecascade.training.calibration import (
    DEFAULT_GRID,
    NEVER_EXIT,
    cascade_predictions,
    choose_threshold,
    choose_thresholds,
    exit_share,
    fit_temperature,
    nll,
    softmax,
)
from tests.imports import heavy_imports


def test_softmax_is_a_stable_distribution() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = softmax(logits)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert p[0, 0] == pytest.approx(1.0)
    assert p.dtype == np.float32


def test_softmax_temperature_flattens() -> None:
    logits = np.array([[2.0, 0.5, -1.0]])
    assert softmax(logits, 2.0).max() < softmax(logits).max() < softmax(logits, 0.5).max()
    with pytest.raises(ValueError):
        softmax(logits, 0.0)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An exit whose accuracy rises with its confidence, and a final exit right 90% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    conf = rng.uniform(0.1, 1.0, n)
    right = rng.uniform(size=n) < conf
    pred = np.where(right, labels, (labels + rng.integers(1, 10, n)) % 10)
    probs = np.full((n, 10), 0.0)
    probs[np.arange(n), pred] = conf
    rest = (1.0 - conf) / 9.0
    probs += np.where(probs == 0.0, rest[:, None], 0.0)
    final_correct = rng.uniform(size=n) < 0.9
    return probs, labels, final_correct


def _criterion(
    probs: np.ndarray, labels: np.ndarray, final_correct: np.ndarray, t: float, max_loss: float
) -> bool:
    answered = probs.max(1) >= t
    if not answered.any():
        return False
    exit_acc = (probs.argmax(1) == labels)[answered].mean()
    return bool(exit_acc >= final_correct[answered].mean() - max_loss)


@pytest.mark.parametrize("max_loss", [0.0, 0.02, 0.1])
def test_threshold_meets_its_criterion_and_is_smallest(max_loss: float) -> None:
    probs, labels, final_correct = _synthetic(5000, seed=7)
    t = choose_threshold(probs, labels, final_correct, max_loss)
    assert 0.0 < t <= 1.0
    assert _criterion(probs, labels, final_correct, t, max_loss)
    smaller = [g for g in DEFAULT_GRID if g < t]
    assert not any(_criterion(probs, labels, final_correct, g, max_loss) for g in smaller)
    assert 0.0 < exit_share(probs, t) < 1.0


def test_larger_loss_budget_never_raises_the_threshold() -> None:
    probs, labels, final_correct = _synthetic(3000, seed=11)
    thresholds = [choose_threshold(probs, labels, final_correct, m) for m in (0.0, 0.01, 0.05, 0.2, 1.0)]
    assert thresholds == sorted(thresholds, reverse=True)
    assert thresholds[-1] == min(DEFAULT_GRID)  # a 100% loss budget accepts everything


def test_perfect_exit_answers_everything() -> None:
    labels = np.arange(20) % 4
    probs = np.eye(4)[labels] * 0.5 + 0.125
    assert choose_threshold(probs, labels, np.ones(20, dtype=bool)) == min(DEFAULT_GRID)


def test_hopeless_exit_never_answers() -> None:
    labels = np.zeros(50, dtype=np.int64)
    probs = np.tile([0.01, 0.99], (50, 1))  # confidently wrong
    assert choose_threshold(probs, labels, np.ones(50, dtype=bool)) == NEVER_EXIT
    assert NEVER_EXIT > 1.0
    assert exit_share(probs, NEVER_EXIT) == 0.0


def test_no_samples_means_never() -> None:
    empty = np.zeros((0, 10))
    assert choose_threshold(empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)) == NEVER_EXIT


def test_unsure_wrong_answers_push_the_threshold_up() -> None:
    labels = np.array([0, 0, 0, 0])
    probs = np.array([[0.45, 0.55], [0.45, 0.55], [0.95, 0.05], [0.95, 0.05]])  # unsure ones are wrong
    final_correct = np.ones(4, dtype=bool)
    assert choose_threshold(probs, labels, final_correct, grid=(0.5, 0.6, 0.9, 1.0)) == 0.6
    # with a 50% loss budget the unsure half may exit too
    assert choose_threshold(probs, labels, final_correct, max_loss=0.5, grid=(0.5, 0.6, 0.9, 1.0)) == 0.5


def test_ties_at_the_threshold_exit() -> None:
    labels = np.array([0, 1])
    probs = np.array([[0.7, 0.3], [0.3, 0.7]])
    assert choose_threshold(probs, labels, np.array([True, True]), grid=(0.7, 0.8)) == 0.7


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        choose_threshold(np.zeros((3, 2)), np.zeros(2), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError):
        choose_threshold(np.zeros((3, 2)), np.zeros(3), np.zeros(3, dtype=bool), max_loss=-0.1)


def test_cascade_takes_first_confident_exit() -> None:
    p1 = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    p2 = np.array([[0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    p3 = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    pred, taken = cascade_predictions([p1, p2, p3], (0.8, 0.85, 0.0))
    assert taken.tolist() == [0, 1, 2]
    assert pred.tolist() == [0, 1, 1]


def test_calibration_does_not_import_tensorflow() -> None:
    assert heavy_imports("edgecascade.training.calibration", "edgecascade.training.data") == []


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 70 %-accurate classifier that is far too sure of itself (logits x 6)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    guess = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 10, n))
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), guess] += 2.0
    return logits * 6.0, labels


def test_temperature_fitted_on_validation_reduces_held_out_nll() -> None:
    val_logits, val_labels = _overconfident(4000, seed=1)
    test_logits, test_labels = _overconfident(4000, seed=2)
    t = fit_temperature(val_logits, val_labels)
    assert t > 2.0  # overconfident logits get softened
    assert nll(test_logits, test_labels, t) < 0.8 * nll(test_logits, test_labels)
    assert (softmax(test_logits, t).argmax(1) == softmax(test_logits).argmax(1)).all()  # accuracy unchanged
    assert nll(val_logits, val_labels, t) <= min(nll(val_logits, val_labels, t * f) for f in (0.9, 1.1))


def test_fit_temperature_without_samples_is_one() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) == 1.0


@pytest.mark.parametrize("score", ["max_prob", "margin", "entropy"])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_absolute_target_is_met_on_the_samples_that_exit(score: str, target: float) -> None:
    logits, labels = _overconfident(5000, seed=3)
    probs = softmax(logits, fit_temperature(logits, labels))
    t = choose_threshold(probs, labels, np.ones(len(labels), bool), score=score, target=target)
    assert t <= 1.0
    from edgecascade.device_sdk.core.policy import SCORES

    answered = SCORES[score](probs) >= t
    assert (probs[answered].argmax(1) == labels[answered]).mean() >= target
    assert exit_share(probs, t, score) == pytest.approx(answered.mean())
    assert 0.0 < answered.mean() < 1.0  # 70 % accurate overall: a real threshold, not all or nothing


def test_choose_thresholds_uses_only_what_exit1_left_for_exit2() -> None:
    y = np.array([0, 0, 1, 1])
    # exit 1: sure and right on the first two, unsure and wrong on the last two
    p1 = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    # exit 2: wrong where exit 1 answers, right on what exit 1 leaves
    p2 = np.array([[0.1, 0.9], [0.1, 0.9], [0.3, 0.7], [0.3, 0.7]])
    p3 = np.eye(2)[y]
    t1, t2, t3 = choose_thresholds([p1, p2, p3], y, max_loss=0.0)
    assert t1 == pytest.approx(0.56, abs=0.006) and t3 == 0.0
    assert t2 == 0.0  # judged only on the two samples exit 1 left, where exit 2 is right (else: NEVER_EXIT)
