"""The device's drift watch: its detector fed with what the device tier decided, and what an alarm changes.

Per model version one :class:`~edgecascade.device_sdk.core.drift.DriftDetector` against that
version's manifest reference (a new version, whose calibration is new, starts a new one). On
an alarm: a warning log line, the ``drift_alarms`` counter, the audit sample raised to
``[drift] audit_rate`` until the next model version, and the input that raised it marked to be
kept as a hard example for the reason ``drift`` (the client stores it in its outbox, so the
event travels the durable upload path with its example).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.drift import DriftDetector, DriftSettings
from edgecascade.device_sdk.core.policy import policy_from_spec
from edgecascade.device_sdk.core.tier import Decision, TierModel
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.learning.selection import HardExampleSelector

logger = logging.getLogger(__name__)


class DriftWatch:
    """One device's drift detector across model versions; thread-safe."""

    def __init__(self, settings: DriftSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        self._lock = threading.Lock()
        self._detector: tuple[int, DriftDetector] | None = None  # (model version, its detector)
        self._raised_on: int | None = None  # the model version an alarm raised the audit sample on
        self._selectors: tuple[HardExampleSelector, HardExampleSelector] | None = None  # (base, raised)

    def detector(self, model: TierModel) -> DriftDetector | None:
        """The detector of ``model``'s version (made on first use); None when off or without a reference."""
        reference = model.bundle.manifest.partition(model.tier).drift
        if not self.settings.enabled or reference is None:
            return None
        if self._detector is None or self._detector[0] != model.version:
            self._detector = (model.version, DriftDetector(reference, self.settings))
            self._raised_on = None  # the raised audit sample lasts until the next model version
        return self._detector[1]

    def observe(self, model: TierModel, decisions: list[Decision]) -> set[int]:
        """Feed the batch's decisions (on the current model) in order; the indices that raised an alarm.

        ``device_share`` counts an input as answered when the manifest's own exit rule would
        let it exit or the device cache answered it, so an explicit offload policy or a site
        overlay does not read as drift.
        """
        if not decisions:
            return set()
        exit_rule = policy_from_spec(model.bundle.manifest.partition(model.tier).exit)
        probs = np.stack([d.probs for d in decisions])
        exits = exit_rule.should_exit(probs).tolist()
        cached = [d.answer is not None and d.answer.tier == wire.Tier.DEVICE_CACHE for d in decisions]
        raised: set[int] = set()
        with self._lock:
            detector = self.detector(model)
            if detector is None:
                return raised
            for i, decision in enumerate(decisions):
                alarm = detector.update(float(probs[i].max()), exits[i] or cached[i], decision.unknown)
                if alarm is None:
                    continue
                raised.add(i)
                self.counters.add("drift_alarms")
                logger.warning(
                    "drift on model v%d: %s shifted by %.2f standard deviations (alarm after %d inputs); "
                    "audit sample raised to %s",
                    model.version,
                    alarm.statistic,
                    alarm.mean_shift,
                    alarm.position + 1,
                    self.settings.audit_rate,
                )
                self._raised_on = model.version
        return raised

    def selector(self, base: HardExampleSelector, version: int) -> HardExampleSelector:
        """``base``, or after an alarm on ``version`` the same filters with the raised audit sample."""
        with self._lock:
            if self._raised_on != version:
                return base
            if self._selectors is None or self._selectors[0] is not base:  # built once per base selector
                self._selectors = (base, base.with_audit_rate(self.settings.audit_rate))
            return self._selectors[1]

    @property
    def raised_on(self) -> int | None:
        """The model version whose audit sample an alarm raised (None: not raised)."""
        with self._lock:
            return self._raised_on
