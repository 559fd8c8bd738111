"""``bench novelty``'s drift numbers: how soon the device's detector notices a shift, how often it cries wolf.

The detector (:mod:`edgecascade.device_sdk.core.drift`, the one every device runs) is replayed
over streams built from what the device partition of the bundle does on each test image (its
calibrated top probability, whether its exit answers, whether its unknown-input rule flags
the image), resampled into long streams:

- **undrifted**: ``NO_DRIFT_INPUTS`` known test images drawn at random; every alarm is false;
- **shifts**: ``BEFORE`` known images, then from that position on one of
  - ``camera``: the known images seen by the washed-out camera of ``bench drift``;
  - ``unknown_classes``: the held-out classes mixed in at the stream's unknown share;

  each ``TRIALS`` times with new draws; the delay is the number of inputs from the start of
  the shift to the first alarm (an alarm before it counts as false, a trial without one as missed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.core.drift import (
    DriftSettings,
    detection_delay,
    false_alarms_per_100k,
    observations,
    replay,
)
from edgecascade.device_sdk.core.novelty import UnknownRule
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.tools.bench_drift import shift as washed_out

NO_DRIFT_INPUTS = 100_000
BEFORE = 2_000
AFTER = 3_000
TRIALS = 20

Values = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Per image: the device exit's top probability, whether it answers, whether it is flagged unknown."""


@dataclass(frozen=True)
class DevicePass:
    """What the device partition of a bundle does with a batch of images."""

    logits: np.ndarray
    sent: np.ndarray  # what goes up: cut-1 features, or in the models mode the input
    unknown: np.ndarray | None  # the unknown-input rule's flags; None: the bundle has no rule


def device_pass(bundle: Bundle, images: np.ndarray, batch: int = 512) -> DevicePass:
    """Run ``bundle``'s device partition and its unknown-input rule on raw ``images``, in batches."""
    runner = PartitionRunner.from_bundle(bundle, "device")
    x = bundle.manifest.input.prepare(images)
    outs = [runner.run(x[i : i + batch]) for i in range(0, len(x), batch)]
    logits = np.concatenate([o.logits for o in outs])
    sent = x if bundle.manifest.forwards_input else np.concatenate([o.features for o in outs])
    rule = UnknownRule.from_bundle(bundle, "device")
    return DevicePass(logits, sent, rule.flags(logits, sent) if rule is not None else None)


def device_values(bundle_dir: Path, images: np.ndarray) -> Values:
    """What the device detector takes for each image, from the bundle's device partition."""
    bundle = load_bundle(bundle_dir)
    done = device_pass(bundle, images)
    return observations(done.logits, bundle.manifest.partition("device").exit, done.unknown)


def _draw(values: Values, index: np.ndarray) -> Values:
    return values[0][index], values[1][index], values[2][index]


def _join(*parts: Values) -> Values:
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def measure_drift(
    bundle_dir: Path,
    known: np.ndarray,
    unknown: np.ndarray,
    unknown_share: float,
    seed: int = 0,
    settings: DriftSettings | None = None,
) -> dict[str, Any]:
    """The ``drift`` section of the report (see the module docstring)."""
    spec = load_bundle(bundle_dir).manifest.partition("device").drift
    if spec is None:
        raise ValueError(f"{bundle_dir}: the device partition has no drift reference")
    settings = settings or DriftSettings()
    rng = np.random.default_rng(seed)
    plain, camera = device_values(bundle_dir, known), device_values(bundle_dir, washed_out(known))
    new = device_values(bundle_dir, unknown)
    false = replay(spec, *_draw(plain, rng.integers(0, len(known), NO_DRIFT_INPUTS)), settings)

    def mixed(n: int) -> Values:
        is_new = rng.random(n) < unknown_share
        out = _draw(plain, rng.integers(0, len(known), n))
        drawn = _draw(new, rng.integers(0, len(unknown), int(is_new.sum())))
        for column, values in zip(out, drawn, strict=True):
            column[is_new] = values
        return out

    shifts: dict[str, Callable[[int], Values]] = {
        "camera": lambda n: _draw(camera, rng.integers(0, len(known), n)),
        "unknown_classes": mixed,
    }
    by_shift = {}
    for name, after in shifts.items():
        delays, early = [], 0
        for _ in range(TRIALS):
            stream = _join(_draw(plain, rng.integers(0, len(known), BEFORE)), after(AFTER))
            alarms = replay(spec, *stream, settings)
            early += sum(a.position < BEFORE for a in alarms)
            delays.append(detection_delay(alarms, BEFORE))
        found = [d for d in delays if d is not None]
        by_shift[name] = {
            "median_delay_inputs": float(np.median(found)) if found else None,
            "max_delay_inputs": max(found) if found else None,
            "missed": len(delays) - len(found),
            "alarms_before_shift": early,
            "trials": TRIALS,
        }
    return {
        "detection_delay_inputs": by_shift["camera"]["median_delay_inputs"],
        "false_alarms_per_100k": false_alarms_per_100k(false, NO_DRIFT_INPUTS),
        "undrifted_inputs": NO_DRIFT_INPUTS,
        "shifts": by_shift,
        "settings": {"allowance": settings.allowance, "threshold": settings.threshold},
    }
