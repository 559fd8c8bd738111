"""Exit policies: pure decisions over calibrated probabilities, no I/O.

A policy looks at one exit's probabilities for a batch and says which inputs may stop
there. Policies are small objects passed to a client or gateway
(``DeviceClient(..., policy=MaxProbExit(0.9))``); :func:`policy_from_spec` builds the one a
bundle's manifest asks for. The same decisions seen from the other side, which inputs
leave a tier, under the names joint-inference frameworks use and chosen in a node's
``[offload]`` settings, are in :mod:`.offload`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import ExitSpec


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``logits / temperature``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def max_prob(probs: np.ndarray) -> np.ndarray:
    """The top class probability."""
    return np.asarray(probs).max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top probability minus the runner-up's: low when two classes compete."""
    top2 = np.sort(np.asarray(probs), axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def entropy_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - H(p) / log(classes)``: 1 for a one-hot answer, 0 for a uniform one (BranchyNet)."""
    p = np.asarray(probs, dtype=np.float64)
    h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)
    return (1.0 - h / np.log(p.shape[-1])).astype(np.float32)


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": max_prob,
    "margin": margin,
    "entropy": entropy_confidence,
}
"""Confidence scores an exit can threshold, by the name the manifest uses. All lie in [0, 1]."""


def confidence_score(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The score called ``name``, or a ConfigError listing the known ones."""
    try:
        return SCORES[name]
    except KeyError:
        raise ConfigError(f"unknown exit score {name!r} (known: {', '.join(SCORES)})") from None


class ExitPolicy(abc.ABC):
    """Decides, per input, whether an exit's answer is confident enough to return."""

    @abc.abstractmethod
    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """A score per row of ``probs``; higher means more confident."""

    @abc.abstractmethod
    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        """Boolean mask over the batch: True where the input may exit here."""

    def resolve(self, spec: ExitSpec) -> ExitPolicy:
        """The policy to apply to a model version whose manifest exit is ``spec``.

        Most policies are complete on their own and return themselves; one that leaves a
        setting to the manifest (an offload filter without a threshold) returns a complete
        copy, so every model version, also one swapped in later, is judged by its own.
        """
        return self


class ThresholdExit(ExitPolicy):
    """Exit when a confidence score reaches ``threshold``; scores lie in [0, 1], so > 1 never exits."""

    def __init__(self, threshold: float, score: str = "max_prob") -> None:
        if not threshold >= 0.0:  # also rejects NaN
            raise ConfigError(f"exit threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.score = score
        self._score = confidence_score(score)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return self._score(probs)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        return self.confidence(probs) >= self.threshold

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threshold:g}, {self.score!r})"


class MaxProbExit(ThresholdExit):
    """Exit when the top class probability reaches ``threshold`` (BranchyNet-style)."""

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold, "max_prob")


class NeverExit(ExitPolicy):
    """Always defer to the next tier (useful to measure the full model)."""

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        return np.zeros(len(probs), dtype=bool)


class AlwaysExit(ExitPolicy):
    """Always answer here (device-only operation)."""

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        return np.ones(len(probs), dtype=bool)


def policy_from_spec(spec: ExitSpec) -> ExitPolicy:
    """The policy a manifest's exit settings describe."""
    return ThresholdExit(spec.threshold, spec.score)
