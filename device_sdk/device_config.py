"""A device application's settings file: ``[mqtt]`` and ``[hard_examples]``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.config import MqttConfig, load_config
from edgecascade.device_sdk.learning.settings import HardExampleSettings


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """A device application's settings file: ``[mqtt]`` and ``[hard_examples]``."""

    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    hard_examples: HardExampleSettings = dataclasses.field(default_factory=HardExampleSettings)


def load_device_config(path: str | Path | None = None, **kwargs: Any) -> DeviceConfig:
    """Load a device's TOML (optional) with ``EC_<SECTION>__<KEY>`` environment overrides."""
    return load_config(DeviceConfig, path, **kwargs)
