"""Exit policies: pure decisions over calibrated probabilities, no I/O.

A policy looks at one exit's probabilities for a batch and says which inputs may stop
there. Policies are small objects passed to a client or gateway
(``DeviceClient(..., policy=MaxProbExit(0.9))``); :func:`policy_from_spec` builds the one a
bundle's manifest asks for.
"""

from __future__ import annotations

import abc

import numpy as np

from device_sdk.bundle import ExitSpec
from device_sdk.errors import ConfigError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``logits / temperature``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class ExitPolicy(abc.ABC):
    """Decides, per input, whether an exit's answer is confident enough to return."""

    @abc.abstractmethod
    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """A score per row of ``probs``; higher means more confident."""

    @abc.abstractmethod
    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        """Boolean mask over the batch: True where the input may exit here."""


class MaxProbExit(ExitPolicy):
    """Exit when the top class probability reaches ``threshold`` (BranchyNet-style)."""

    def __init__(self, threshold: float) -> None:
        if not threshold >= 0.0:  # also rejects NaN; a threshold above 1 never exits
            raise ConfigError(f"max-probability threshold must be >= 0, got {threshold}")
        self.threshold = threshold

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        return self.confidence(probs) >= self.threshold

    def __repr__(self) -> str:
        return f"MaxProbExit({self.threshold:g})"


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
    if spec.score == "max_prob":
        return MaxProbExit(spec.threshold)
    raise ConfigError(f"unknown exit score {spec.score!r} (known: max_prob)")
