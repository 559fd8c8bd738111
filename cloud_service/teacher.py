"""Teacher labels: the served model's final-exit answer for uploaded hard-example features.

The cloud holds the gateway and cloud partitions of the version it serves. Cut-2 features
go through the cloud partition; cut-1 features through the gateway partition, its cut-2
output through the wire encoding (as it would travel), then the cloud partition. The label
is the final exit's argmax (temperature does not change it). In the models mode both cuts
carry the raw input, which the cloud's large model answers directly.

Features from another version are labelled only when that version's cut has the same
shape and encoding as the served one's: features the served partitions cannot read get no
teacher label (a human label can still be set).
"""

from __future__ import annotations

import numpy as np

from edgecascade.cloud_service.intake import Checked, VersionSpec
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire.codec import through_wire


class Teacher:
    """Final-exit predictions of one bundle for features at either cut."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.spec = VersionSpec.from_manifest(bundle.manifest)
        self._gateway = PartitionRunner.from_bundle(bundle, "gateway")
        self._cloud = PartitionRunner.from_bundle(bundle, "cloud")
        self._cut2_encoding = bundle.manifest.partition("gateway").encoding
        self._through_gateway = not bundle.manifest.forwards_input

    @property
    def version(self) -> int:
        return self.spec.version

    def labels(self, items: list[Checked], versions: dict[int, VersionSpec]) -> list[int | None]:
        """One label per item (None where the served partitions cannot read its features)."""
        labels: list[int | None] = [None] * len(items)
        for cut in ("cut1", "cut2"):
            picked = [
                i
                for i, item in enumerate(items)
                if item.example.cut == cut
                and versions[item.example.model_version].cuts[cut] == self.spec.cuts[cut]
            ]
            if not picked:
                continue
            x = np.stack([items[i].features for i in picked]).astype(np.float32)
            if cut == "cut1" and self._through_gateway:
                x = through_wire(self._gateway.run(x).features, self._cut2_encoding)  # type: ignore[arg-type]
            predicted = self._cloud.run(x).logits.argmax(axis=1)
            for i, label in zip(picked, predicted, strict=True):
                labels[i] = int(label)
        return labels
