"""The exit-threshold rule: which confidence lets an early exit answer, chosen on labelled data.

An early exit may answer a sample only where, on the data the rule is fitted on, it is as
accurate as the final exit would have been on the same samples (minus ``max_loss``), or
reaches a fixed ``target`` accuracy. Because the cascade's accuracy is ``acc_exit`` on the
samples that exit plus ``acc_final`` on the rest, meeting the rule with ``max_loss=0`` keeps
the cascade at least as accurate as the full model on that data.

Pure numpy, so every place that fits thresholds uses the same rule: training's calibration
(:mod:`edgecascade.training.calibration` re-exports it) and the cloud's per-site overlays
(:mod:`edgecascade.device_sdk.model.overlay`), which must not import training code.
"""

from __future__ import annotations

import logging

import numpy as np

from edgecascade.device_sdk.core.policy import confidence_score

__all__ = [
    "DEFAULT_GRID",
    "NEVER_EXIT",
    "cascade_predictions",
    "choose_threshold",
    "choose_thresholds",
    "exit_share",
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
