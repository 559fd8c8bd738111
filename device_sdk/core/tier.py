"""What one tier loaded for one model version."""

from __future__ import annotations

from dataclasses import dataclass

from edgecascade.device_sdk.cache import NeuralCache
from edgecascade.device_sdk.core.policy import ExitPolicy
from edgecascade.device_sdk.model.bundle import TIERS, Bundle, Manifest, PartitionSpec
from edgecascade.device_sdk.model.hotswap import ServedModels
from edgecascade.device_sdk.model.runtime import PartitionRunner


@dataclass(frozen=True)
class TierModel:
    """What one tier loaded for one model version; replaced whole by a swap."""

    tier: str
    bundle: Bundle
    runner: PartitionRunner
    policy: ExitPolicy  # the manifest's exit rule for this tier (an explicit override wins over it)
    cache: NeuralCache | None = None

    @property
    def version(self) -> int:
        return self.bundle.manifest.version

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def spec(self) -> PartitionSpec:
        return self.bundle.manifest.partition(self.tier)

    @property
    def cut_encoding(self) -> str:
        """How this version's previous tier encodes the features this tier receives."""
        index = TIERS.index(self.tier)
        if index == 0:
            raise ValueError(f"the {self.tier} partition receives raw inputs, not cut features")
        return self.bundle.manifest.partition(TIERS[index - 1]).encoding


class ServesModels:
    """What every tier shows of the models it serves, read from its ``_models``.

    Mixed into the device client, the gateway service and the cloud's inference, which
    each set ``self._models`` to their :class:`ServedModels` of :class:`TierModel`.
    """

    _models: ServedModels[TierModel]

    @property
    def bundle(self) -> Bundle:
        """The bundle of the current model version."""
        return self._models.current.bundle

    @property
    def version(self) -> int:
        """The current model version."""
        return self._models.current.version

    def versions(self) -> tuple[int, ...]:
        """Model versions answered right now, the current one first."""
        return self._models.versions()
