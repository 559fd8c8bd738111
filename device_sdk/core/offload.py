"""Offload policies: which inputs leave a tier for the one above, chosen in a node's settings.

An offload policy is an :class:`~.policy.ExitPolicy` read the other way round: the inputs
it does not let exit are the ones sent on (``offload = ~should_exit``). The names are the
ones joint-inference frameworks use for their hard-example filters (KubeEdge Sedna's
``ThresholdFilter``, ``CrossEntropyFilter``, ``RandomFilter``), so a policy carries over
from them, and the same objects serve the partitioned cascade and the small/large model
mode alike:

- :class:`ThresholdFilter`: offload when the top class probability is below a threshold;
- :class:`CrossEntropyFilter`: offload when the prediction's normalised entropy is high;
- :class:`RandomFilter`: offload a random share of inputs (a baseline to compare against);
- :class:`EdgeOnly` / :class:`CloudOnly`: offload nothing / everything.

A filter built without a threshold takes the manifest's calibrated one. The manifest is
per model version, so such a filter is completed per version with
:meth:`~.policy.ExitPolicy.resolve`, which the tier core (:func:`~.tier.decide`) calls for
the model each batch runs on: a model swap brings its own threshold with it.

:class:`OffloadSettings` is the ``[offload]`` section of a device's and a gateway's settings
file; :meth:`OffloadSettings.build_policy` makes the policy it names.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np

from edgecascade.device_sdk.core.policy import (
    AlwaysExit,
    ExitPolicy,
    NeverExit,
    ThresholdExit,
    confidence_score,
    max_prob,
    policy_from_spec,
)
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import ExitSpec

logger = logging.getLogger(__name__)

_MAX_RESOLVED = 16  # model versions a filter remembers its completed copy for (a few are served at once)


class ThresholdFilter(ExitPolicy):
    """Offload an input when its top class probability is below ``threshold``.

    With ``threshold=None`` the manifest decides: :meth:`resolve` returns the exit rule the
    manifest calibrated (its threshold on its confidence score, ``max_prob`` unless the
    model was trained with another), which is also what a node does without any policy.
    Until resolved such a filter cannot decide (:class:`~.errors.ConfigError`).
    """

    score = "max_prob"  # the confidence score this filter thresholds

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold
        self._rule = None if threshold is None else ThresholdExit(threshold, self.score)  # checks it
        self._resolved: dict[ExitSpec, ExitPolicy] = {}

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return confidence_score(self.score)(probs)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        if self._rule is None:
            raise ConfigError(
                f"{self!r} takes its threshold from a model's manifest: decide with its resolve(spec)"
            )
        return self._rule.should_exit(probs)

    def resolve(self, spec: ExitSpec) -> ExitPolicy:
        if self._rule is not None:
            return self
        policy = self._resolved.get(spec)
        if policy is None:
            policy = self._from_manifest(spec)
            if len(self._resolved) >= _MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[spec] = policy
        return policy

    def _from_manifest(self, spec: ExitSpec) -> ExitPolicy:
        """The complete policy for a manifest's exit (its threshold is calibrated for its own score)."""
        return type(self)(spec.threshold) if spec.score == self.score else policy_from_spec(spec)

    def __repr__(self) -> str:
        threshold = "manifest" if self.threshold is None else f"{self.threshold:g}"
        return f"{type(self).__name__}({threshold})"


class CrossEntropyFilter(ThresholdFilter):
    """Offload an input when its prediction's normalised entropy ``H(p) / log(classes)`` is high.

    It thresholds ``1 - H(p) / log(classes)`` (the ``entropy`` confidence): an input stays
    when that reaches ``threshold``. Unlike the top probability, entropy sees how the rest
    of the probability is spread: a prediction torn between many classes leaves sooner than
    one torn between two. With ``threshold=None`` it takes the manifest's threshold; one
    calibrated for another score is used as it is, with a warning (set a threshold then).
    """

    score = "entropy"

    def _from_manifest(self, spec: ExitSpec) -> ExitPolicy:
        if spec.score != self.score:
            logger.warning(
                "the manifest's exit threshold %g is calibrated for %s, not entropy; "
                "the cross_entropy policy uses it as it is (set offload.threshold to choose one)",
                spec.threshold,
                spec.score,
            )
        return type(self)(spec.threshold)


class RandomFilter(ExitPolicy):
    """Offload a random ``share`` of the inputs, whatever their confidence: the baseline.

    A policy that chooses by confidence should beat it at the same share of offloaded
    inputs. Draws come from one seeded generator, so a run is reproducible; a lock keeps
    each batch's draws together when batches are decided concurrently (threads sharing
    one client, or one policy object passed to several clients).
    """

    def __init__(self, share: float, seed: int = 0) -> None:
        if not 0.0 <= share <= 1.0:  # also rejects NaN
            raise ConfigError(f"random offload share must be in [0, 1], got {share}")
        if seed < 0:
            raise ConfigError(f"random offload seed must be >= 0, got {seed}")
        self.share = share
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return max_prob(probs)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        with self._lock:
            draws = self._rng.random(len(probs))
        return draws >= self.share

    def __repr__(self) -> str:
        return f"RandomFilter({self.share:g}, seed={self.seed})"


class EdgeOnly(AlwaysExit):
    """Offload nothing: this tier answers every input (a device or site working alone)."""

    def __repr__(self) -> str:
        return "EdgeOnly()"


class CloudOnly(NeverExit):
    """Offload everything: every input goes on to the tier above (to measure it, or for a weak tier)."""

    def __repr__(self) -> str:
        return "CloudOnly()"


POLICIES = ("threshold", "cross_entropy", "random", "edge_only", "cloud_only")
"""What ``[offload] policy`` may name."""


@dataclasses.dataclass(frozen=True)
class OffloadSettings:
    """``[offload]``: which inputs a node sends on to the tier above.

    ``policy`` names one of :data:`POLICIES`: ``threshold`` (:class:`ThresholdFilter`, the
    default), ``cross_entropy`` (:class:`CrossEntropyFilter`), ``random``
    (:class:`RandomFilter`: ``share`` of the inputs, drawn from ``seed``), ``edge_only``
    (:class:`EdgeOnly`) or ``cloud_only`` (:class:`CloudOnly`). ``threshold`` is the
    confidence in [0, 1] an input needs to stay; unset, each model version's manifest
    decides, so the default is the calibrated behaviour of a node without settings. The
    policies that need no threshold or share ignore them.
    """

    policy: str = "threshold"
    threshold: float | None = None
    share: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.policy not in POLICIES:
            problems.append(f"offload.policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # also rejects NaN
            problems.append(
                f"offload.threshold must be in [0, 1] (unset: the manifest's), got {self.threshold}"
            )
        if not 0.0 <= self.share <= 1.0:
            problems.append(f"offload.share must be in [0, 1], got {self.share}")
        if self.seed < 0:
            problems.append(f"offload.seed must be >= 0, got {self.seed}")
        if problems:
            raise ConfigError(problems)

    def build_policy(self) -> ExitPolicy:
        """A new policy object as these settings name it, to pass as a client's or gateway's ``policy``.

        Build it once per client or gateway: a random filter's draws continue from call to
        call, and one without a threshold is completed per model version where it is used.
        """
        if self.policy == "threshold":
            return ThresholdFilter(self.threshold)
        if self.policy == "cross_entropy":
            return CrossEntropyFilter(self.threshold)
        if self.policy == "random":
            return RandomFilter(self.share, self.seed)
        if self.policy == "edge_only":
            return EdgeOnly()
        return CloudOnly()
