"""The drift detector: quiet on a stationary stream, an alarm soon after a step in each statistic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgecascade.device_sdk.core.drift import (
    DriftDetector,
    DriftSettings,
    detection_delay,
    false_alarms_per_100k,
    observations,
    reference,
    replay,
)
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import ExitSpec


def stream(n: int, seed: int, conf: float = 0.9, share: float = 0.85, unknown: float = 0.05) -> tuple:
    """Synthetic per-input values: confidence around ``conf``, answered and unknown at the given rates."""
    rng = np.random.default_rng(seed)
    return (
        np.clip(rng.normal(conf, 0.1, n), 0, 1),
        rng.random(n) < share,
        rng.random(n) < unknown,
    )


SPEC = reference(*stream(20_000, seed=99))  # the "validation" sample of the same distribution


def test_a_stationary_stream_raises_no_alarm() -> None:
    alarms = replay(SPEC, *stream(100_000, seed=0))
    assert alarms == []
    assert false_alarms_per_100k(alarms, 100_000) == 0.0


@pytest.mark.parametrize(
    ("statistic", "after"),
    [
        ("confidence", {"conf": 0.75}),
        ("device_share", {"share": 0.6}),
        ("unknown_share", {"unknown": 0.3}),
    ],
)
def test_a_step_in_each_statistic_is_detected_within_500_inputs(statistic: str, after: dict) -> None:
    settings = DriftSettings(statistics=(statistic,))
    before = stream(2000, seed=1)
    changed = stream(2000, seed=2, **after)
    joined = [np.concatenate([a, b]) for a, b in zip(before, changed, strict=True)]
    alarms = replay(SPEC, *joined, settings=settings)
    delay = detection_delay(alarms, 2000)
    assert delay is not None and delay < 500
    assert all(a.statistic == statistic for a in alarms)
    assert alarms[0].mean_shift > settings.allowance


def test_a_harmless_direction_raises_nothing() -> None:
    """Higher confidence, a larger device share (a warm cache) and fewer unknown inputs are not drift."""
    assert replay(SPEC, *stream(20_000, seed=3, conf=0.98, share=1.0, unknown=0.0)) == []


def test_reset_forgets_the_evidence_and_cooldown_holds_alarms_back() -> None:
    detector = DriftDetector(SPEC, DriftSettings(threshold=5.0, cooldown=100))
    for _ in range(3):
        detector.update(0.4, True, False)
    assert detector.sums["confidence"] > 0
    detector.reset()
    assert detector.seen == 0 and detector.sums["confidence"] == 0.0
    alarms = [detector.update(0.2, False, True) for _ in range(200)]
    positions = [i for i, a in enumerate(alarms) if a is not None]
    assert positions[0] < 5
    assert all(b - a > 100 for a, b in itertools.pairwise(positions))


def test_reference_and_observations_from_logits() -> None:
    logits = np.array([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    conf, answered, unknown = observations(logits, ExitSpec(threshold=0.8), np.array([False, True]))
    assert answered.tolist() == [True, False] and unknown.tolist() == [False, True]
    spec = reference(conf, answered, unknown)
    assert spec.device_share == 0.5 and spec.unknown_share == 0.5 and spec.samples == 2
    assert spec.confidence_mean == pytest.approx(conf.mean())


def test_settings_list_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        DriftSettings(allowance=-1, threshold=0, statistics=("nope",), audit_rate=2, cooldown=-1)
    assert len(err.value.problems) == 5
