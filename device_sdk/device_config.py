"""A device application's settings file: one section per concern (``[mqtt]``, ``[drift]``, ...)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.config import MqttConfig, load_config
from edgecascade.device_sdk.core.drift import DriftSettings
from edgecascade.device_sdk.core.offload import OffloadSettings
from edgecascade.device_sdk.learning.settings import HardExampleSettings
from edgecascade.device_sdk.model.overlay import ModelSettings


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """A device application's settings file: ``[mqtt]``, ``[hard_examples]`` and ``[offload]``.

    ``offload`` names the policy that decides which inputs leave the device; pass
    ``config.offload.build_policy()`` as the client's ``policy``. ``model.overlay`` is the
    site's signed exit thresholds: pass it as ``DeviceClient.from_bundle(..., overlay=...)``.
    ``drift`` is the drift detector's settings: pass it as the client's ``drift``.
    """

    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    hard_examples: HardExampleSettings = dataclasses.field(default_factory=HardExampleSettings)
    offload: OffloadSettings = dataclasses.field(default_factory=OffloadSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    drift: DriftSettings = dataclasses.field(default_factory=DriftSettings)


def load_device_config(path: str | Path | None = None, **kwargs: Any) -> DeviceConfig:
    """Load a device's TOML (optional) with ``EC_<SECTION>__<KEY>`` environment overrides."""
    return load_config(DeviceConfig, path, **kwargs)
