"""Unknown hard-example records near chosen prototypes, at either cut, for the unknown-groups tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec
from tests.learning_kit import with_raw

TIERS = {"cut1": "device", "cut2": "gateway"}  # the tier that sends a cut's features


def synthetic(
    bundle: Path, cut: str, kind: int, n: int, *, seed: int = 0, images: bool = False
) -> list[HardExample]:
    """``n`` unknown records at ``cut`` near prototype ``kind``: its ±1 feature map with 5 % of the signs
    flipped (so any encoding carries them exactly), each with a raw image of grey ``kind`` if ``images``."""
    manifest = load_bundle(bundle).manifest
    tier = TIERS[cut]
    spec = manifest.sent_up(tier)
    encoding = manifest.partition(tier).encoding
    assert spec is not None
    prototype = np.where(np.random.default_rng(1000 + kind).random(spec.shape) < 0.5, -1.0, 1.0)
    rng = np.random.default_rng(seed * 100 + kind)
    examples = []
    for i in range(n):
        features = np.where(rng.random(spec.shape) < 0.05, -prototype, prototype).astype(np.float32)
        example = HardExample(
            device_id="cam-01",
            model_version=manifest.version,
            cut=cut,
            encoding=encoding,
            features=codec.encode_features(features, encoding),
            reasons=("unknown",),
            predicted=0,
            confidence=0.2,
            tier=tier,
            created_at=1_700_000_000.0 + i,
        )
        examples.append(
            with_raw(example, np.full(manifest.input.shape, 40 * kind, np.uint8)) if images else example
        )
    return examples
