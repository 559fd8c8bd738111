"""A structurally valid model bundle whose partition files are random bytes.

Enough for code that reads manifests, hashes and signatures but never runs a partition.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgecascade.device_sdk.files import sha256_file
from edgecascade.device_sdk.model.bundle import (
    TIERS,
    ExitSpec,
    InputSpec,
    Manifest,
    PartitionSpec,
    TensorSpec,
    write_manifest,
)

SHAPES = {"device": ((28, 28, 1), (7, 7, 8)), "gateway": ((7, 7, 8), (4, 4, 16)), "cloud": ((4, 4, 16), None)}


def make_bundle(path: Path, version: int = 1, rollback_of: int | None = None, seed: int = 0) -> Path:
    """A structurally valid bundle whose partition files are random bytes."""
    path.mkdir(parents=True)
    parts = []
    for i, tier in enumerate(TIERS):
        file = path / f"{tier}.tflite"
        file.write_bytes(os.urandom(64) + bytes([seed, i]) * 100)
        shape_in, shape_out = SHAPES[tier]
        parts.append(
            PartitionSpec(
                tier=tier,
                file=file.name,
                sha256=sha256_file(file),
                input=TensorSpec(f"{tier}_in", shape_in),
                logits=TensorSpec(f"{tier}_logits", (10,)),
                exit=ExitSpec(threshold=0.8 if tier != "cloud" else 0.0),
                features=TensorSpec(f"{tier}_cut", shape_out) if shape_out else None,
            )
        )
    manifest = Manifest(
        name="test-model",
        version=version,
        classes=tuple(f"c{i}" for i in range(10)),
        input=InputSpec((28, 28, 1)),
        partitions=tuple(parts),
        metrics={"val_accuracy_exit1": 0.5},
        rollback_of=rollback_of,
    )
    write_manifest(path, manifest)
    return path
