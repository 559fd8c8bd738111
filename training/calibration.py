"""Exit calibration: each exit's temperature and confidence threshold.

Temperature scaling (Guo et al., 2017) divides an exit's logits by the ``T`` that minimises
the negative log-likelihood on validation data: accuracy is unchanged, but probabilities
then mean what they say, so one threshold rule serves every exit. Pure numpy (no
TensorFlow), so the rules can be unit-tested in milliseconds and reused by tools that only
hold logits.

The threshold rule protects accuracy: an early exit may answer a sample only where, on
validation data, it is as accurate as the final exit would have been on the same samples.
Because the cascade's accuracy is ``acc_exit`` on the samples that exit plus ``acc_final``
on the rest, meeting the rule with ``max_loss=0`` means the cascade is at least as accurate
as the full model on that validation set.

:func:`calibrate` applies both to a trained model's three exits on validation data (exit 2's
threshold is chosen on what exit 1 leaves, :func:`choose_thresholds`). It calls the model,
so it runs Keras, but this module never imports TensorFlow itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from edgecascade.device_sdk.core.novelty import calibrate_unknown
from edgecascade.device_sdk.core.policy import confidence_score, softmax

if TYPE_CHECKING:
    from edgecascade.training.train import TrainedModel

__all__ = [
    "NEVER_EXIT",
    "accuracy_metrics",
    "calibrate",
    "cascade_metrics",
    "cascade_predictions",
    "choose_threshold",
    "choose_thresholds",
    "exit_share",
    "fit_temperature",
    "nll",
    "softmax",
]

logger = logging.getLogger(__name__)

NEVER_EXIT = 1.01
"""A threshold no max-probability can reach (max-prob ≤ 1): the exit never answers."""

DEFAULT_GRID: tuple[float, ...] = (
    *(round(float(t), 3) for t in np.linspace(0.0, 0.99, 199)),
    0.995,
    0.998,
    0.999,
    0.9995,
    0.9999,
    1.0,
)
"""Candidate thresholds: steps of 0.005 up to 0.99, then finer steps up to 1.0."""


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(z)), np.asarray(labels)]).mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature in ``bounds`` minimising :func:`nll` on (validation) ``logits``.

    NLL is unimodal in ``log T`` in practice; a golden-section search on ``log T`` finds
    the minimum to ~1e-4 in 40 evaluations. With no samples the temperature stays 1.
    """
    if len(logits) == 0:
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def choose_threshold(
    exit_probs: np.ndarray,
    labels: np.ndarray,
    final_correct: np.ndarray,
    max_loss: float = 0.0,
    grid: tuple[float, ...] | np.ndarray = DEFAULT_GRID,
    *,
    score: str = "max_prob",
    target: float | None = None,
) -> float:
    """The smallest threshold on ``score`` at which the exit meets its accuracy target.

    For a threshold ``t`` the exit answers the samples whose confidence ``score`` (see
    :data:`edgecascade.device_sdk.core.policy.SCORES`) is ``>= t``. By default ``t`` qualifies when, on
    those samples, the exit's accuracy is ≥ the final exit's accuracy on the same samples
    minus ``max_loss``; with ``target`` set, when it is ≥ ``target`` instead. Returns the
    smallest qualifying ``t`` of ``grid``.

    Edge cases: a threshold at which no sample exits does not qualify (there is no
    evidence for it), so with no samples, or when no threshold qualifies, the result is
    :data:`NEVER_EXIT` (> 1.0, the exit never answers). Ties at the threshold exit (``>=``).
    A larger ``max_loss`` never gives a larger threshold. The criterion is evaluated per
    threshold, so it need not hold at every larger threshold; it always holds at the one
    returned.

    ``exit_probs``: ``(N, classes)`` probabilities of the early exit; ``labels``: ``(N,)``
    true classes; ``final_correct``: ``(N,)`` bool, whether the final exit was right.
    """
    probs = np.asarray(exit_probs)
    labels = np.asarray(labels)
    final_correct = np.asarray(final_correct, dtype=bool)
    if probs.ndim != 2 or labels.shape != (len(probs),) or final_correct.shape != (len(probs),):
        raise ValueError(
            f"expected probs (N, C), labels (N,), final_correct (N,); "
            f"got {probs.shape}, {labels.shape}, {final_correct.shape}"
        )
    if max_loss < 0:
        raise ValueError(f"max_loss must be >= 0, got {max_loss}")
    if len(probs) == 0:
        return NEVER_EXIT
    confidence = confidence_score(score)(probs)
    exit_correct = probs.argmax(axis=1) == labels
    for t in sorted(float(g) for g in grid):
        answered = confidence >= t
        n = int(answered.sum())
        if n == 0:
            break  # larger thresholds answer nothing either
        exit_acc = exit_correct[answered].mean()
        final_acc = final_correct[answered].mean()
        wanted = final_acc - max_loss if target is None else target
        if exit_acc >= wanted - 1e-12:
            logger.debug(
                "threshold %.4f: %d/%d exit, acc %.4f vs final %.4f", t, n, len(probs), exit_acc, final_acc
            )
            return t
    return NEVER_EXIT


def exit_share(exit_probs: np.ndarray, threshold: float, score: str = "max_prob") -> float:
    """Fraction of samples whose confidence ``score`` reaches ``threshold``."""
    probs = np.asarray(exit_probs)
    if len(probs) == 0:
        return 0.0
    return float((confidence_score(score)(probs) >= threshold).mean())


def cascade_predictions(
    probs: list[np.ndarray] | tuple[np.ndarray, ...], thresholds: tuple[float, ...], score: str = "max_prob"
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the cascade: each sample takes the first exit whose ``score`` reaches its threshold.

    Returns ``(predicted class, exit index 0-based)`` per sample; the last exit answers
    everything that is left, whatever its threshold.
    """
    if len(probs) != len(thresholds) or not probs:
        raise ValueError("need one threshold per exit and at least one exit")
    n = len(probs[0])
    taken = np.full(n, len(probs) - 1, dtype=np.int64)
    pending = np.ones(n, dtype=bool)
    for i, (p, t) in enumerate(zip(probs[:-1], thresholds[:-1], strict=True)):
        fire = pending & (confidence_score(score)(np.asarray(p)) >= t)
        taken[fire] = i
        pending &= ~fire
    stacked = np.stack([np.asarray(p).argmax(axis=1) for p in probs])  # (exits, n)
    return stacked[taken, np.arange(n)], taken


def accuracy_metrics(prefix: str, probs: list[np.ndarray], y: np.ndarray) -> dict[str, float]:
    """``<prefix>_accuracy_exit<i>``: each exit's accuracy on its own."""
    return {f"{prefix}_accuracy_exit{i}": float((p.argmax(1) == y).mean()) for i, p in enumerate(probs, 1)}


def cascade_metrics(
    prefix: str, probs: list[np.ndarray], y: np.ndarray, thresholds: tuple[float, ...], score: str
) -> dict[str, float]:
    """``<prefix>_cascade_accuracy`` at ``thresholds``, and ``<prefix>_exit_share_exit<i>`` per exit."""
    pred, taken = cascade_predictions(probs, thresholds, score)
    metrics = {f"{prefix}_cascade_accuracy": float((pred == y).mean())}
    for i in range(len(probs)):
        metrics[f"{prefix}_exit_share_exit{i + 1}"] = float((taken == i).mean())
    return metrics


def choose_thresholds(
    probs: list[np.ndarray],
    y: np.ndarray,
    max_loss: float,
    score: str = "max_prob",
    target: float | None = None,
) -> tuple[float, float, float]:
    """Thresholds for exits 1 and 2 (exit 3 answers everything left, threshold 0).

    Exit 2 only ever sees what exit 1 did not answer, so its threshold is chosen on those
    samples; together the two choices keep the cascade's accuracy ≥ the final exit's
    (minus ``max_loss``) on this data, or each early exit at ``target`` accuracy.
    """
    final_correct = probs[2].argmax(1) == y
    t1 = choose_threshold(probs[0], y, final_correct, max_loss, score=score, target=target)
    rest = confidence_score(score)(probs[0]) < t1
    t2 = choose_threshold(probs[1][rest], y[rest], final_correct[rest], max_loss, score=score, target=target)
    return t1, t2, 0.0


def calibrate(trained: TrainedModel, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
    """Fit each exit's temperature, then choose the thresholds and each exit's unknown-input
    rule, on validation data; returns val metrics."""
    config = trained.config
    logits = trained.exit_logits(x_val)
    trained.temperatures = tuple(fit_temperature(z, y_val) for z in logits)  # type: ignore[assignment]
    metrics = {
        f"val_nll_exit{i}_{when}": nll(z, y_val, t)
        for i, (z, t0) in enumerate(zip(logits, trained.temperatures, strict=True), 1)
        for when, t in (("raw", 1.0), ("calibrated", t0))
    }
    if config.unknown_score != "none":  # each exit's unknown-input rule, on the same data
        score, fpr = config.unknown_score, config.unknown_fpr
        trained.unknown = tuple(calibrate_unknown(z, score, fpr) for z in logits)
    probs = trained.exit_probs(x_val)
    trained.thresholds = choose_thresholds(
        probs, y_val, config.max_loss, config.exit_score, config.exit_target
    )
    metrics |= accuracy_metrics("val", probs, y_val)
    metrics |= cascade_metrics("val", probs, y_val, trained.thresholds, config.exit_score)
    logger.info(
        "temperatures %s, thresholds %s on %s", trained.temperatures, trained.thresholds, config.exit_score
    )
    return metrics
