"""Unknown-input scores: does an input look like anything the model was trained on? Pure numpy.

An exit's softmax can be confidently wrong on an input of a class it never saw; the scale
of its logits says more. A familiarity score is high for inputs like the training data and
low for the rest:

- ``energy``: ``T · logsumexp(logits / T)``, the negative free energy (Liu et al., 2020);
- ``max_logit``: the largest logit (Hendrycks et al., 2022);
- ``max_prob``: the top softmax probability (the classic baseline).

A manifest's :class:`~edgecascade.device_sdk.model.bundle.UnknownSpec` names the score and
a threshold calibrated on validation data (a small share of known inputs falls below it);
:func:`is_unknown` applies it. Unknown inputs are never answered by a cache and are kept as
hard examples for the reason ``unknown``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgecascade.device_sdk.core.policy import softmax
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import UnknownSpec


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``T · logsumexp(logits / T)`` per row: the negative free energy, high for familiar inputs."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=-1)
    return (temperature * (top + np.log(np.exp(z - top[..., None]).sum(axis=-1)))).astype(np.float32)


def max_logit(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The largest logit per row (divided by the temperature, which keeps the order)."""
    return (np.asarray(logits, dtype=np.float64).max(axis=-1) / temperature).astype(np.float32)


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The top class probability per row, at ``temperature``."""
    return softmax(logits, temperature).max(axis=-1)


FAMILIARITY: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "energy": energy,
    "max_logit": max_logit,
    "max_prob": max_softmax,
}
"""Familiarity scores over logits, by the name a manifest uses; higher means more familiar."""


def familiarity(name: str) -> Callable[[np.ndarray, float], np.ndarray]:
    """The score called ``name``, or a ConfigError listing the known ones."""
    try:
        return FAMILIARITY[name]
    except KeyError:
        raise ConfigError(f"unknown familiarity score {name!r} (known: {', '.join(FAMILIARITY)})") from None


def is_unknown(logits: np.ndarray, spec: UnknownSpec) -> np.ndarray:
    """Boolean mask over a batch of logits: True where the input falls below the calibrated threshold."""
    return familiarity(spec.score)(logits, spec.temperature) < spec.threshold


def calibrate_unknown(
    logits: np.ndarray, score: str = "energy", known_fpr: float = 0.05, temperature: float = 1.0
) -> UnknownSpec:
    """The threshold that flags ``known_fpr`` of known (validation) inputs as unknown."""
    if not 0.0 < known_fpr < 1.0:
        raise ValueError(f"known_fpr must be in (0, 1), got {known_fpr}")
    if not len(logits):
        raise ValueError("calibrating the unknown-input threshold needs validation logits")
    values = familiarity(score)(logits, temperature)
    threshold = float(np.quantile(values, known_fpr))
    return UnknownSpec(score=score, threshold=threshold, temperature=temperature, known_fpr=known_fpr)
