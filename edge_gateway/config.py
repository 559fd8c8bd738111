"""Gateway configuration: ``[gateway]`` and ``[mqtt]`` sections of ``gateway.toml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.config import MqttConfig, load_config
from device_sdk.errors import ConfigError


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway serves and where it forwards."""

    bundle: Path = Path("artifacts/model")
    gateway_id: str = "gateway-1"
    cloud_url: str = "http://127.0.0.1:8080"
    cloud_timeout: float = 5.0
    max_batch: int = 32
    forward_workers: int = 4
    queue_size: int = 1024
    shared_subscription: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.cloud_url.startswith(("http://", "https://")):
            problems.append(f"gateway.cloud_url must be an http(s) URL, got {self.cloud_url!r}")
        if self.cloud_timeout <= 0:
            problems.append("gateway.cloud_timeout must be > 0")
        for name in ("max_batch", "forward_workers", "queue_size"):
            if getattr(self, name) < 1:
                problems.append(f"gateway.{name} must be >= 1")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CacheSettings:
    """The gateway's neural cache; the hit rule comes from the manifest unless set here.

    Off by default: on Fashion-MNIST the calibrated caches still answer less accurately than
    the tiers they replace (see ``edgecascade bench cache``).
    """

    enabled: bool = False
    path: Path | None = None  # kept across restarts when set
    capacity: int = 10000
    tau: float | None = None  # overrides the manifest's calibrated cosine distance

    def __post_init__(self) -> None:
        problems = []
        if self.capacity < 1:
            problems.append("cache.capacity must be >= 1")
        if self.tau is not None and not 0 <= self.tau <= 2:
            problems.append("cache.tau must be a cosine distance in [0, 2]")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    cache: CacheSettings = field(default_factory=CacheSettings)


def load_gateway_config(path: str | Path | None = None, **kwargs: object) -> GatewayConfig:
    """Load ``gateway.toml`` (optional) with ``EC_GATEWAY__*`` / ``EC_MQTT__*`` overrides."""
    return load_config(GatewayConfig, path, **kwargs)  # type: ignore[arg-type]
