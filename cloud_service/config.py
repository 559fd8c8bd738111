"""Cloud service configuration: the ``[cloud]`` section of ``cloud.toml``.

Authentication is always on: the token store is created empty when missing, so a fresh
cloud answers every route but ``/healthz`` with 401 until an operator creates tokens.
"""

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
    verify_key: Path | None = None  # cloud-signing.pub: when set, the bundle's signature must verify
    token_store: Path = Path("state/tokens.db")  # hashed bearer tokens (SQLite)
    device_keyring: Path = Path("state/device-keys")  # X25519 keys of enrolled devices
    gateway_public_key: Path | None = None  # X25519 key handed to enrolling devices; unset: no enrolment
    gateway_name: str = "gateway"  # bound into the payload keys; what the gateways' crypto.gateway_name says

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
