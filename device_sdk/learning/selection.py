"""Hard-example selection: pure decisions over a batch of answers, no I/O.

A :class:`HardExampleFilter` looks at what the cascade did with a batch of inputs and marks
those worth sending to the cloud for retraining, under one of the record's
:data:`~edgecascade.device_sdk.learning.records.REASONS`:

- :class:`ReachedCloud` (``reached_cloud``): neither the device nor the gateway was sure;
- :class:`ExitsDisagree` (``exits_disagree``): the device's exit-1 label differs from the
  answer the application got, i.e. the early exit would have been wrong;
- :class:`LowConfidence` (``low_margin``): even the final answer is unsure (its margin,
  normalised-entropy confidence or top probability is below a threshold);
- :class:`Degraded` (``degraded``): a tier above could not be reached, so the answer is a
  lower tier's best guess and the cloud never saw the input;
- :class:`UnknownInput` (``unknown``): the device exit's calibrated unknown-input rule
  (:mod:`~edgecascade.device_sdk.core.novelty`) says the input is unlike the training data,
  perhaps of a class the model was never taught; the answer may be confidently wrong;
- :class:`AuditSample` (``audit``): a uniform random share of all inputs. After a drift the
  early exit can be confidently wrong, and such answers pass every filter above; a small
  random sample is how they reach the cloud. Being uniform, the audited examples are also an
  unbiased sample of what the node sees, which retraining uses to set exit thresholds.

One reason is not a filter's: ``drift`` marks the input that raised the device's drift alarm
(:mod:`~edgecascade.device_sdk.core.drift`); the :class:`~edgecascade.device_sdk.client.DeviceClient`
adds it, and from then on raises its audit sample to ``[drift] audit_rate``
(:meth:`HardExampleSelector.with_audit_rate`).

A :class:`HardExampleSelector` combines filters and gives each input the reasons it was
selected for (none: not selected). :meth:`HardExampleSelector.from_settings` builds one
from the ``[hard_examples]`` config section.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.core.policy import confidence_score
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.learning.settings import HardExampleSettings


@dataclass(frozen=True)
class Answers:
    """What the cascade did with a batch: the device's exit-1 view and the final answers."""

    exit_probs: np.ndarray  # (N, classes): calibrated exit-1 probabilities on the device
    final_probs: np.ndarray  # (N, classes): probabilities of the answer the application got
    tiers: Sequence[str]  # the answering tier of each input
    degraded: np.ndarray  # (N,) bool
    unknown: np.ndarray | None = None  # (N,) bool: flagged by the exit's unknown-input rule

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.final_probs).argmax(axis=-1)


class HardExampleFilter(abc.ABC):
    """Marks the inputs of a batch that are hard for one reason."""

    reason: str

    @abc.abstractmethod
    def select(self, answers: Answers) -> np.ndarray:
        """Boolean mask over the batch: True where the input is hard for this filter's reason."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReachedCloud(HardExampleFilter):
    """The cloud answered: the early exits were not confident enough."""

    reason = "reached_cloud"

    def select(self, answers: Answers) -> np.ndarray:
        return np.array([tier == "cloud" for tier in answers.tiers], dtype=bool)


class ExitsDisagree(HardExampleFilter):
    """The device's exit-1 label is not the label the application got."""

    reason = "exits_disagree"

    def select(self, answers: Answers) -> np.ndarray:
        return np.asarray(answers.exit_probs).argmax(axis=-1) != answers.labels


class LowConfidence(HardExampleFilter):
    """The final answer's confidence score is below ``threshold``.

    ``score`` is ``margin`` (top-1 minus top-2 probability), ``entropy`` (``1 - H(p)/log C``,
    i.e. normalised entropy above ``1 - threshold``) or ``max_prob``; all lie in [0, 1].
    """

    reason = "low_margin"

    def __init__(self, threshold: float, score: str = "margin") -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"low-confidence threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.score = score
        self._score = confidence_score(score)

    def select(self, answers: Answers) -> np.ndarray:
        return np.asarray(self._score(answers.final_probs) < self.threshold, dtype=bool)

    def __repr__(self) -> str:
        return f"LowConfidence({self.threshold:g}, {self.score!r})"


class Degraded(HardExampleFilter):
    """The answer is flagged degraded: an upper tier was unreachable."""

    reason = "degraded"

    def select(self, answers: Answers) -> np.ndarray:
        return np.asarray(answers.degraded, dtype=bool)


class UnknownInput(HardExampleFilter):
    """The device exit's unknown-input rule flagged the input."""

    reason = "unknown"

    def select(self, answers: Answers) -> np.ndarray:
        if answers.unknown is None:
            return np.zeros(len(answers.tiers), dtype=bool)
        return np.asarray(answers.unknown, dtype=bool)


class AuditSample(HardExampleFilter):
    """Each input with probability ``rate``, independently of what the cascade did."""

    reason = "audit"

    def __init__(self, rate: float, rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"audit rate must be in [0, 1], got {rate}")
        self.rate = rate
        self._rng = rng or np.random.default_rng()
        self._lock = threading.Lock()  # a Generator is not thread-safe

    def select(self, answers: Answers) -> np.ndarray:
        with self._lock:
            draws = self._rng.random(len(answers.tiers))
        return np.asarray(draws < self.rate, dtype=bool)

    def __repr__(self) -> str:
        return f"AuditSample({self.rate:g})"


class HardExampleSelector:
    """Several filters; an input is selected when any of them marks it."""

    def __init__(self, filters: Sequence[HardExampleFilter]) -> None:
        self.filters = tuple(filters)

    @classmethod
    def default(cls) -> HardExampleSelector:
        """Every filter, with the default thresholds of :class:`~.settings.HardExampleSettings`."""
        return cls.from_settings(HardExampleSettings())

    @classmethod
    def from_settings(cls, settings: HardExampleSettings) -> HardExampleSelector:
        """The filters ``settings.filters`` names (in the order of the reasons), then the audit sample."""
        available: dict[str, HardExampleFilter] = {
            "reached_cloud": ReachedCloud(),
            "exits_disagree": ExitsDisagree(),
            "low_margin": LowConfidence(settings.low_threshold, settings.low_score),
            "degraded": Degraded(),
            "unknown": UnknownInput(),
        }
        chosen = [f for name, f in available.items() if name in settings.filters]
        if settings.audit_rate > 0:
            chosen.append(AuditSample(settings.audit_rate))
        return cls(chosen)

    def with_audit_rate(self, rate: float) -> HardExampleSelector:
        """These filters with the audit sample at ``rate``, or at its current rate when that is higher."""
        audits = [f for f in self.filters if isinstance(f, AuditSample)]
        if any(f.rate >= rate for f in audits):
            return self
        return HardExampleSelector(
            [f for f in self.filters if not isinstance(f, AuditSample)] + [AuditSample(rate)]
        )

    def reasons(self, answers: Answers) -> list[tuple[str, ...]]:
        """Per input, the reasons it was selected for; an empty tuple means not selected."""
        n = len(answers.tiers)
        masks = [(f.reason, np.asarray(f.select(answers), dtype=bool).reshape(n)) for f in self.filters]
        return [tuple(reason for reason, mask in masks if mask[i]) for i in range(n)]

    def __repr__(self) -> str:
        return f"HardExampleSelector({list(self.filters)!r})"
