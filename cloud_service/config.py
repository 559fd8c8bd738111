"""Cloud service configuration: the ``[cloud]`` section of ``cloud.toml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.config import load_config
from device_sdk.errors import ConfigError


@dataclass(frozen=True)
class CloudSettings:
    bundle: Path = Path("artifacts/model")
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port < 65536:
            problems.append(f"cloud.port must be in 0..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            problems.append("cloud.max_body_bytes must be >= 1024")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CloudConfig:
    cloud: CloudSettings = field(default_factory=CloudSettings)


def load_cloud_config(path: str | Path | None = None, **kwargs: object) -> CloudConfig:
    """Load ``cloud.toml`` (optional) with ``EC_CLOUD__*`` overrides."""
    return load_config(CloudConfig, path, **kwargs)  # type: ignore[arg-type]
