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
as the full model on that validation set. The rule itself is pure numpy in
:mod:`edgecascade.device_sdk.core.thresholds` (re-exported here), so the cloud fits a site's
thresholds with the very same code.

:func:`calibrate` applies both to a trained model's three exits on validation data (exit 2's
threshold is chosen on what exit 1 leaves, :func:`choose_thresholds`). It calls the model,
so it runs Keras, but this module never imports TensorFlow itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from edgecascade.device_sdk.core import drift
from edgecascade.device_sdk.core.novelty import FAMILIARITY, calibrate_unknown, is_unknown
from edgecascade.device_sdk.core.policy import confidence_score, softmax
from edgecascade.device_sdk.core.thresholds import (
    DEFAULT_GRID,
    NEVER_EXIT,
    cascade_predictions,
    choose_threshold,
    choose_thresholds,
    exit_share,
)
from edgecascade.device_sdk.model.bundle import DriftSpec, UnknownSpec

if TYPE_CHECKING:
    from edgecascade.training.train import TrainedModel

__all__ = [
    "DEFAULT_GRID",
    "NEVER_EXIT",
    "accuracy_metrics",
    "calibrate",
    "cascade_metrics",
    "cascade_predictions",
    "choose_threshold",
    "choose_thresholds",
    "drift_reference",
    "exit_share",
    "fit_temperature",
    "nll",
    "softmax",
]

logger = logging.getLogger(__name__)


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


def drift_reference(
    probs: np.ndarray, logits: np.ndarray, threshold: float, score: str, rule: UnknownSpec | None
) -> DriftSpec:
    """The device drift detector's reference on validation data: the device exit's calibrated
    ``probs`` (and ``logits``) with its exit ``threshold`` on ``score`` and its unknown-input ``rule``."""
    answered = confidence_score(score)(probs) >= threshold
    flags = is_unknown(logits, rule) if rule is not None and rule.score in FAMILIARITY else None
    return drift.reference(probs.max(axis=-1), answered, flags)


def calibrate(trained: TrainedModel, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
    """Fit each exit's temperature, then choose the thresholds, each exit's unknown-input
    rule and the device's drift reference, on validation data; returns val metrics."""
    config = trained.config
    logits = trained.exit_logits(x_val)
    trained.temperatures = tuple(fit_temperature(z, y_val) for z in logits)  # type: ignore[assignment]
    metrics = {
        f"val_nll_exit{i}_{when}": nll(z, y_val, t)
        for i, (z, t0) in enumerate(zip(logits, trained.temperatures, strict=True), 1)
        for when, t in (("raw", 1.0), ("calibrated", t0))
    }
    if config.unknown_score != "none":  # each exit's unknown-input rule, on the same data
        # a score over cache keys needs the exported bundle (training.unknown_calibration);
        # until then, and on a tier without keys, the rule is energy over the logits
        score = config.unknown_score if config.unknown_score in FAMILIARITY else "energy"
        trained.unknown = tuple(calibrate_unknown(z, score, config.unknown_fpr) for z in logits)
    probs = trained.exit_probs(x_val)
    trained.thresholds = choose_thresholds(
        probs, y_val, config.max_loss, config.exit_score, config.exit_target
    )
    trained.drift = drift_reference(
        probs[0], logits[0], trained.thresholds[0], config.exit_score, trained.unknown[0]
    )
    metrics |= accuracy_metrics("val", probs, y_val)
    metrics |= cascade_metrics("val", probs, y_val, trained.thresholds, config.exit_score)
    logger.info(
        "temperatures %s, thresholds %s on %s", trained.temperatures, trained.thresholds, config.exit_score
    )
    return metrics
