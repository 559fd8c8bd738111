"""``[hard_examples]`` settings: which answers a node keeps for retraining and how it uploads them.

Plain values checked when built (one :class:`~edgecascade.device_sdk.errors.ConfigError`
lists every problem); :meth:`~edgecascade.device_sdk.learning.selection.HardExampleSelector.from_settings`
turns them into filters, :meth:`~edgecascade.device_sdk.learning.uploader.Uploader.from_settings`
into an uploader.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.learning.records import MAX_BATCH

FILTERS = ("reached_cloud", "exits_disagree", "low_margin", "degraded", "unknown")
"""Filters ``[hard_examples] filters`` may name (the audit sample is set by ``audit_rate``)."""


@dataclasses.dataclass(frozen=True)
class HardExampleSettings:
    """``[hard_examples]``: which answers a device keeps for retraining, where, and how it uploads them.

    ``filters`` name the selection filters (:mod:`.selection`): ``reached_cloud``,
    ``exits_disagree``, ``low_margin`` (the final answer's ``low_score`` below
    ``low_threshold``), ``degraded`` and ``unknown`` (the device exit's calibrated
    unknown-input rule flagged it; only with a manifest that has one). ``audit_rate`` adds a
    uniform random sample of every input, whatever the cascade did (reason ``audit``):
    confidently wrong answers after a drift pass every filter above, and only such a sample
    shows them to the cloud (0: off). Only cut-1 features are kept unless ``keep_raw`` (the
    application's explicit opt-in to upload raw inputs). ``outbox`` is the SQLite file
    (None: no outbox, nothing is kept); it holds at most ``capacity`` records. The uploader
    sends up to ``batch_size`` records at a time, looks for new ones every
    ``upload_interval`` seconds, and after a failure waits ``backoff_base * 2**n`` seconds
    (with jitter, at most ``backoff_max``).
    """

    filters: tuple[str, ...] = FILTERS
    low_score: str = "margin"
    low_threshold: float = 0.1
    audit_rate: float = 0.0
    keep_raw: bool = False
    outbox: Path | None = None
    capacity: int = 10_000
    batch_size: int = 64
    upload_interval: float = 5.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0

    def __post_init__(self) -> None:
        from edgecascade.device_sdk.learning.settings import FILTERS

        problems = [f"hard_examples.filters: unknown filter {f!r}" for f in self.filters if f not in FILTERS]
        if not 0.0 <= self.audit_rate <= 1.0:
            problems.append("hard_examples.audit_rate must be in [0, 1]")
        if self.low_score not in LOW_SCORES:
            problems.append(f"hard_examples.low_score must be one of {', '.join(LOW_SCORES)}")
        if not 0.0 <= self.low_threshold <= 1.0:
            problems.append("hard_examples.low_threshold must be in [0, 1]")
        problems += upload_problems("hard_examples", self)
        if problems:
            raise ConfigError(problems)


LOW_SCORES = ("margin", "entropy", "max_prob")
"""Confidence scores the ``low_margin`` filter can threshold (see :mod:`~.core.policy`)."""


def upload_problems(section: str, settings: Any) -> list[str]:
    """What is wrong with the outbox and uploader settings every node shares (capacity, batch, timing)."""

    problems = []
    if settings.capacity < 1:
        problems.append(f"{section}.capacity must be >= 1")
    if not 1 <= settings.batch_size <= MAX_BATCH:
        problems.append(f"{section}.batch_size must be in 1..{MAX_BATCH}")
    if not settings.upload_interval > 0:
        problems.append(f"{section}.upload_interval must be > 0")
    if not 0 < settings.backoff_base <= settings.backoff_max:
        problems.append(f"{section}.backoff_base must be > 0 and <= backoff_max")
    return problems
