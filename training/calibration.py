"""Exit calibration: probabilities from logits and the confidence threshold of each exit.

Pure numpy (no TensorFlow), so the same rules can be unit-tested in milliseconds and
reused by tools that only hold logits.

The threshold rule protects accuracy: an early exit may answer a sample only where, on
validation data, it is as accurate as the final exit would have been on the same samples.
Because the cascade's accuracy is ``acc_exit`` on the samples that exit plus ``acc_final``
on the rest, meeting the rule with ``max_loss=0`` means the cascade is at least as accurate
as the full model on that validation set.
"""

from __future__ import annotations

import logging

import numpy as np

from device_sdk.policy import softmax

__all__ = ["NEVER_EXIT", "cascade_predictions", "choose_threshold", "exit_share", "softmax"]

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


def choose_threshold(
    exit_probs: np.ndarray,
    labels: np.ndarray,
    final_correct: np.ndarray,
    max_loss: float = 0.0,
    grid: tuple[float, ...] | np.ndarray = DEFAULT_GRID,
) -> float:
    """The smallest max-probability threshold at which the exit loses at most ``max_loss`` accuracy.

    For a threshold ``t`` the exit answers the samples with ``max(exit_probs) >= t``. ``t``
    qualifies when, on those samples, the exit's accuracy is ≥ the final exit's accuracy
    on the same samples minus ``max_loss``. Returns the smallest qualifying ``t`` of
    ``grid``.

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
    confidence = probs.max(axis=1)
    exit_correct = probs.argmax(axis=1) == labels
    for t in sorted(float(g) for g in grid):
        answered = confidence >= t
        n = int(answered.sum())
        if n == 0:
            break  # larger thresholds answer nothing either
        exit_acc = exit_correct[answered].mean()
        final_acc = final_correct[answered].mean()
        if exit_acc >= final_acc - max_loss - 1e-12:
            logger.debug(
                "threshold %.4f: %d/%d exit, acc %.4f vs final %.4f", t, n, len(probs), exit_acc, final_acc
            )
            return t
    return NEVER_EXIT


def exit_share(exit_probs: np.ndarray, threshold: float) -> float:
    """Fraction of samples whose max probability reaches ``threshold``."""
    probs = np.asarray(exit_probs)
    if len(probs) == 0:
        return 0.0
    return float((probs.max(axis=1) >= threshold).mean())


def cascade_predictions(
    probs: list[np.ndarray] | tuple[np.ndarray, ...], thresholds: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the cascade: each sample takes the first exit whose max-prob reaches its threshold.

    Returns ``(predicted class, exit index 0-based)`` per sample; the last exit answers
    everything that is left, whatever its threshold.
    """
    if len(probs) != len(thresholds) or not probs:
        raise ValueError("need one threshold per exit and at least one exit")
    n = len(probs[0])
    taken = np.full(n, len(probs) - 1, dtype=np.int64)
    pending = np.ones(n, dtype=bool)
    for i, (p, t) in enumerate(zip(probs[:-1], thresholds[:-1], strict=True)):
        fire = pending & (np.asarray(p).max(axis=1) >= t)
        taken[fire] = i
        pending &= ~fire
    stacked = np.stack([np.asarray(p).argmax(axis=1) for p in probs])  # (exits, n)
    return stacked[taken, np.arange(n)], taken
