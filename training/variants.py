"""Quantised variants of each partition (float32, float16, int8), measured, and the choice among them.

Every tier's stage is converted at each precision; each variant is then run in LiteRT on
held-out images, fed exactly what that tier receives in deployment (the previous tiers'
cut features after their wire encoding), and the tiers after it run in float32. A variant
is thus judged by every exit it can influence: an int8 device partition that flipped the
signs of a binarised cut would show up at the final exit, not only at its own.

The device gets int8 by default when no exit it influences loses more than
``max_drop`` (0.3 points) of accuracy: a quarter of the size and faster on a phone's CPU.
The heavier tiers stay float32 unless asked otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.model.bundle import MODELS, PRECISIONS, TIERS, PartitionSpec
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire.codec import through_wire
from edgecascade.training.train import TrainedModel

logger = logging.getLogger(__name__)

MAX_INT8_DROP = 0.003
"""Accuracy (0.3 points) the device's int8 variant may lose at any exit before float32 is kept."""


@dataclass(frozen=True)
class Variant:
    """One partition converted at one precision, with its size and the accuracy it leads to."""

    tier: str
    precision: str
    content: bytes
    exit_accuracy: tuple[float, ...]  # exits from this tier on (its own first), later tiers in float32

    @property
    def size(self) -> int:
        return len(self.content)


def stage_inputs(trained: TrainedModel, raw: np.ndarray) -> dict[str, np.ndarray]:
    """What each tier's partition receives for raw images: Keras features (or, in the models
    mode, the input) after their wire encoding."""
    x = trained.input_spec.normalise(raw)
    inputs = {TIERS[0]: x}
    for tier, nxt, encoding in zip(TIERS[:-1], TIERS[1:], trained.encodings, strict=True):
        if trained.mode == MODELS:
            inputs[nxt] = through_wire(inputs[tier], encoding)
        else:
            _, features = trained.stage(tier).predict(inputs[tier], batch_size=1024, verbose=0)
            inputs[nxt] = through_wire(np.asarray(features), encoding)
    return inputs


def _accuracies(
    runners: list[PartitionRunner],
    x: np.ndarray,
    y: np.ndarray,
    encodings: tuple[str, ...],
    forwards_input: bool,
) -> tuple[float, ...]:
    """Exit accuracies of ``runners`` chained (what goes up through its wire encoding), in batches."""
    correct = np.zeros(len(runners))
    for start in range(0, len(x), 512):
        batch = x[start : start + 512]
        for i, runner in enumerate(runners):
            out = runner.run(batch)
            correct[i] += int((out.logits.argmax(1) == y[start : start + 512]).sum())
            up = batch if forwards_input else out.features
            if up is not None and i < len(runners) - 1:
                batch = through_wire(up, encodings[TIERS.index(runner.spec.tier)])
    return tuple(float(c / len(x)) for c in correct)


def build_variants(
    trained: TrainedModel,
    specs: dict[tuple[str, str], PartitionSpec],
    contents: dict[tuple[str, str], bytes],
    holdout: tuple[np.ndarray, np.ndarray],
) -> dict[tuple[str, str], Variant]:
    """Measure every converted ``(tier, precision)`` on the raw ``holdout`` images and labels."""
    x_raw, y = holdout
    inputs = stage_inputs(trained, x_raw)
    encodings = trained.encodings
    variants = {}
    for (tier, precision), content in contents.items():
        later = TIERS[TIERS.index(tier) + 1 :]
        runners = [PartitionRunner(content, specs[tier, precision])] + [
            PartitionRunner(contents[t, "float32"], specs[t, "float32"]) for t in later
        ]
        accuracy = _accuracies(runners, inputs[tier], y, encodings, trained.mode == MODELS)
        variants[tier, precision] = Variant(tier, precision, content, accuracy)
        logger.info("%s %s: %d bytes, exit accuracies %s", tier, precision, len(content), accuracy)
    return variants


def choose_precisions(
    variants: dict[tuple[str, str], Variant], max_drop: float = MAX_INT8_DROP
) -> dict[str, str]:
    """Device int8 when no exit it influences drops more than ``max_drop``; other tiers float32."""
    chosen = dict.fromkeys(TIERS, "float32")
    device = TIERS[0]
    base, int8 = variants.get((device, "float32")), variants.get((device, "int8"))
    if base is not None and int8 is not None:
        drop = max(b - q for b, q in zip(base.exit_accuracy, int8.exit_accuracy, strict=True))
        if drop <= max_drop + 1e-12:
            chosen[device] = "int8"
        logger.info("device int8 loses at most %.2f points: %s", 100 * drop, chosen[device])
    return chosen


def variant_metrics(variants: dict[tuple[str, str], Variant]) -> dict[str, float]:
    """Flat ``{tier}_{precision}_bytes`` and ``..._exit{i}_accuracy`` entries for the manifest."""
    metrics: dict[str, float] = {}
    for (tier, precision), v in sorted(variants.items()):
        metrics[f"variant_{tier}_{precision}_bytes"] = float(v.size)
        first = TIERS.index(tier) + 1
        for i, acc in enumerate(v.exit_accuracy, start=first):
            metrics[f"variant_{tier}_{precision}_exit{i}_accuracy"] = acc
    return metrics


__all__ = [
    "MAX_INT8_DROP",
    "PRECISIONS",
    "Variant",
    "build_variants",
    "choose_precisions",
    "stage_inputs",
    "variant_metrics",
]
