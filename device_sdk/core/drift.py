"""Drift detection on a device: is what the device sees still what its model was calibrated on? Pure numpy.

Every device sees its whole input stream, so each one watches three things its tier decides
per input, against the values the manifest's :class:`~edgecascade.device_sdk.model.bundle.DriftSpec`
recorded on validation data:

- ``confidence``: the device exit's calibrated top probability (falls when inputs move away
  from the training data, e.g. a washed-out camera);
- ``device_share``: whether the device answered (its exit by the manifest's rule, or its
  cache); falls when more inputs must go up;
- ``unknown_share``: whether the exit's unknown-input rule flagged the input; rises when
  classes the model was never taught appear.

Each statistic has a one-sided CUSUM (Page, 1954) over standardised values
``z = ±(x - mean) / std``, signed so that the harmful direction is positive:
``S = max(0, S + z - k)``, alarm when ``S > h``. ``k`` (the allowance) ignores shifts smaller
than ``k`` standard deviations, such as the gap between validation and live data; ``h``
trades false alarms for detection delay (defaults measured in docs/benchmarks.md). After an
alarm the sums restart and no alarm is raised for ``cooldown`` inputs.

:class:`DriftDetector` is the online detector (one input at a time); :func:`replay` runs it
over a recorded stream (:func:`observations` turns exit logits into its values) and returns
its alarms, whose positions :func:`detection_delay` and :func:`false_alarms_per_100k` summarise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.core.policy import policy_from_spec, softmax
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import DriftSpec, ExitSpec

STATISTICS = ("confidence", "device_share", "unknown_share")
"""What the detector watches, in the order :meth:`DriftDetector.update` takes them."""

_DIRECTION = {"confidence": -1.0, "device_share": -1.0, "unknown_share": 1.0}
"""The harmful direction of each statistic: confidence and device share fall, unknown share rises."""

MIN_RATE = 0.01
"""A share below this is taken as this for its standard deviation, so a reference share of
0 (no unknown-input rule) still gives a finite scale."""

MIN_STD = 0.01
"""Floor of the confidence's standard deviation (a model sure of every validation input)."""


@dataclass(frozen=True)
class DriftSettings:
    """``[drift]``: the device's drift detector and what it does on an alarm.

    ``allowance`` (k) and ``threshold`` (h) are in standard deviations of one input's value;
    ``statistics`` names which of :data:`STATISTICS` are watched. On an alarm the device
    raises its audit sample to ``audit_rate`` (until the next model version) and keeps the
    input as a hard example for the reason ``drift``; no further alarm for ``cooldown`` inputs.
    """

    enabled: bool = True
    allowance: float = 0.1
    threshold: float = 55.0
    statistics: tuple[str, ...] = STATISTICS
    audit_rate: float = 0.2
    cooldown: int = 1000

    def __post_init__(self) -> None:
        problems = [
            f"drift.statistics: unknown statistic {s!r}" for s in self.statistics if s not in STATISTICS
        ]
        if not self.statistics:
            problems.append(f"drift.statistics must name at least one of {', '.join(STATISTICS)}")
        if not (math.isfinite(self.allowance) and self.allowance >= 0):
            problems.append("drift.allowance must be a finite number >= 0")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            problems.append("drift.threshold must be a finite number > 0")
        if not 0.0 <= self.audit_rate <= 1.0:
            problems.append("drift.audit_rate must be in [0, 1]")
        if self.cooldown < 0:
            problems.append("drift.cooldown must be >= 0")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class DriftAlarm:
    """One alarm: which statistic crossed the threshold, at which input, and its standardised shift."""

    statistic: str
    position: int  # 0-based index of the input in the detector's stream since its last reset
    sum: float  # the CUSUM when it crossed
    mean_shift: float  # mean standardised value (harmful direction) since the sum last was 0


def reference(confidence: np.ndarray, answered: np.ndarray, unknown: np.ndarray | None = None) -> DriftSpec:
    """The reference values of a validation set: per input the exit's top calibrated
    probability, whether the device answered, whether the unknown-input rule flagged it."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.ndim != 1 or not len(conf):
        raise ValueError("drift reference needs a non-empty vector of validation confidences")
    flags = np.zeros(len(conf)) if unknown is None else np.asarray(unknown, dtype=np.float64)
    return DriftSpec(
        confidence_mean=float(conf.mean()),
        confidence_std=float(conf.std()),
        device_share=float(np.asarray(answered, dtype=np.float64).mean()),
        unknown_share=float(flags.mean()),
        samples=len(conf),
    )


def _scales(spec: DriftSpec) -> dict[str, tuple[float, float]]:
    """Per statistic its reference mean and standard deviation (floored, see MIN_RATE/MIN_STD)."""

    def rate(p: float) -> tuple[float, float]:
        q = min(max(p, MIN_RATE), 1 - MIN_RATE)
        return p, math.sqrt(q * (1 - q))

    return {
        "confidence": (spec.confidence_mean, max(spec.confidence_std, MIN_STD)),
        "device_share": rate(spec.device_share),
        "unknown_share": rate(spec.unknown_share),
    }


class DriftDetector:
    """One-sided CUSUMs over the statistics ``settings`` names, against ``spec``. Not thread-safe."""

    def __init__(self, spec: DriftSpec, settings: DriftSettings | None = None) -> None:
        self.spec = spec
        self.settings = settings or DriftSettings()
        scales = _scales(spec)
        self._watch = [(s, _DIRECTION[s], *scales[s]) for s in STATISTICS if s in self.settings.statistics]
        self.reset()

    def reset(self) -> None:
        """Forget everything seen (a new model version, whose reference is new)."""
        self.seen = 0
        self.sums = dict.fromkeys(self.statistics, 0.0)
        self._runs = dict.fromkeys(self.statistics, 0)  # inputs since each sum was last 0
        self._quiet_until = 0

    @property
    def statistics(self) -> tuple[str, ...]:
        return tuple(name for name, *_ in self._watch)

    def update(self, confidence: float, answered: bool, unknown: bool) -> DriftAlarm | None:
        """Take one input's values; an alarm when a statistic's sum crosses the threshold."""
        values = {
            "confidence": float(confidence),
            "device_share": float(answered),
            "unknown_share": float(unknown),
        }
        k, h = self.settings.allowance, self.settings.threshold
        position = self.seen
        self.seen += 1
        alarm: DriftAlarm | None = None
        for name, sign, mean, std in self._watch:
            total = max(0.0, self.sums[name] + sign * (values[name] - mean) / std - k)
            self._runs[name] = self._runs[name] + 1 if total > 0 else 0
            self.sums[name] = total
            if total > h and alarm is None and position >= self._quiet_until:
                alarm = DriftAlarm(name, position, total, total / self._runs[name] + k)
        if alarm is not None:
            self.sums = dict.fromkeys(self.statistics, 0.0)
            self._runs = dict.fromkeys(self.statistics, 0)
            self._quiet_until = position + 1 + self.settings.cooldown
        return alarm

    def update_batch(
        self,
        confidence: Sequence[float] | np.ndarray,
        answered: Sequence[bool] | np.ndarray,
        unknown: Sequence[bool] | np.ndarray,
    ) -> list[DriftAlarm | None]:
        """:meth:`update` for each input of a batch, in order."""
        return [
            self.update(c, a, u)
            for c, a, u in zip(
                np.asarray(confidence).tolist(),
                np.asarray(answered).tolist(),
                np.asarray(unknown).tolist(),
                strict=True,
            )
        ]


def replay(
    spec: DriftSpec,
    confidence: np.ndarray,
    answered: np.ndarray,
    unknown: np.ndarray,
    settings: DriftSettings | None = None,
) -> list[DriftAlarm]:
    """Run a fresh detector over a recorded stream; its alarms, in order (positions index the stream)."""
    detector = DriftDetector(spec, settings)
    return [a for a in detector.update_batch(confidence, answered, unknown) if a is not None]


def observations(
    logits: np.ndarray, exit: ExitSpec, unknown: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the detector takes per input, from the device exit's ``logits`` and its manifest
    settings: the top calibrated probability, whether the exit answers by the manifest's rule,
    and the unknown flags (``unknown``, or none flagged)."""
    probs = softmax(logits, exit.temperature)
    answered = policy_from_spec(exit).should_exit(probs)
    flags = np.zeros(len(probs), dtype=bool) if unknown is None else np.asarray(unknown, dtype=bool)
    return probs.max(axis=-1), np.asarray(answered, dtype=bool), flags


def detection_delay(alarms: Sequence[DriftAlarm], change_at: int) -> int | None:
    """Inputs from a change at position ``change_at`` to the first alarm at or after it (None: none)."""
    late = [a.position - change_at for a in alarms if a.position >= change_at]
    return late[0] if late else None


def false_alarms_per_100k(alarms: Sequence[DriftAlarm], inputs: int) -> float:
    """Alarms per 100,000 inputs of an undrifted stream of ``inputs`` inputs."""
    return 100_000 * len(alarms) / inputs if inputs else 0.0
