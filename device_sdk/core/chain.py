"""The whole cascade chained in one process: every exit and cut for a batch of raw inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.core.policy import softmax
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire.codec import through_wire


@dataclass(frozen=True)
class ChainOutputs:
    """Every exit's logits and every cut's features for a batch, the tiers chained in-process."""

    logits: tuple[np.ndarray, ...]  # one per partition, device first
    features: tuple[np.ndarray, ...]  # cut-1, cut-2
    temperatures: tuple[float, ...]

    @property
    def probs(self) -> list[np.ndarray]:
        """Each exit's calibrated probabilities (the manifest's temperatures applied)."""
        return [softmax(z, t) for z, t in zip(self.logits, self.temperatures, strict=True)]


def run_partitions(bundle: Bundle, raw: np.ndarray, batch_size: int = 512) -> ChainOutputs:
    """Run all partitions of ``bundle`` one after another on raw inputs, in batches.

    Each cut's features pass through their wire encoding (:func:`~.wire.codec.through_wire`)
    before the next partition, so the answers are those of the deployed cascade. In the
    models mode every model runs on the input as the tier below sends it, and ``features``
    are those inputs. The
    reference the cascade is measured against: device-only and full-model accuracy, export
    parity, cache calibration and the tests all use it.
    """
    tiers = tuple(p.tier for p in bundle.manifest.partitions)
    runners = [PartitionRunner.from_bundle(bundle, tier) for tier in tiers]
    logits: list[list[np.ndarray]] = [[] for _ in runners]
    features: list[list[np.ndarray]] = [[] for _ in runners[:-1]]
    for start in range(0, len(raw), batch_size):
        x = bundle.manifest.input.normalise(raw[start : start + batch_size])
        for i, runner in enumerate(runners):
            out = runner.run(x)
            logits[i].append(out.logits)
            up = x if bundle.manifest.forwards_input else out.features
            if i < len(features) and up is not None:
                features[i].append(up)
                x = through_wire(up, runner.spec.encoding)
    return ChainOutputs(
        tuple(np.concatenate(chunks) for chunks in logits),
        tuple(np.concatenate(chunks) for chunks in features),
        tuple(bundle.manifest.partition(tier).exit.temperature for tier in tiers),
    )
