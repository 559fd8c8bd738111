"""Cloud service configuration: the ``[cloud]``, ``[registry]`` and ``[mqtt]`` sections of ``cloud.toml``.

Authentication is always on: the token store is created empty when missing, so a fresh
cloud answers every route but ``/healthz`` with 401 until an operator creates tokens.
``[registry]`` turns on the model registry (:mod:`cloud_service.registry`); ``[mqtt]`` is
the cloud's own broker identity, used only to publish model announcements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.config import MqttConfig, load_config
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
class RegistrySettings:
    """The model registry: versions in ``models_dir``, promotion, rollback, announcements.

    Unset ``models_dir``: no registry, the cloud serves ``cloud.bundle``. ``signing_key``
    (``cloud-signing.key``) signs rollback manifests and announcements; ``cloud.verify_key``
    (or the signing key's public half) is what every registered bundle must verify with.
    ``public_url`` is the download base URL announced to nodes (default: the URL the
    promotion request came in on). ``grace`` is how long a replaced version is still
    answered; ``check_interval`` how often a server process looks for a promotion made by
    another process. ``announce`` publishes each promotion, retained, over ``[mqtt]``.
    """

    models_dir: Path | None = None
    signing_key: Path | None = None
    public_url: str = ""
    grace: float = 600.0
    check_interval: float = 1.0
    announce: bool = False
    announce_timeout: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            problems.append(f"registry.public_url must be an http(s) URL, got {self.public_url!r}")
        if self.grace < 0 or self.check_interval < 0:
            problems.append("registry.grace and registry.check_interval must be >= 0")
        if self.announce_timeout <= 0:
            problems.append("registry.announce_timeout must be > 0")
        if self.signing_key is not None and not self.signing_key.is_file():
            problems.append(f"registry.signing_key: no such file {self.signing_key}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CloudConfig:
    cloud: CloudSettings = field(default_factory=CloudSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    mqtt: MqttConfig = field(default_factory=MqttConfig)

    def __post_init__(self) -> None:
        problems = []
        registry = self.registry
        if registry.models_dir is not None and self.cloud.verify_key is None and registry.signing_key is None:
            problems.append(
                "registry.models_dir needs cloud.verify_key or registry.signing_key to verify bundles"
            )
        if registry.announce and registry.signing_key is None:
            problems.append("registry.announce needs registry.signing_key: announcements are signed")
        if registry.announce and not self.mqtt.tls:
            problems.append("registry.announce needs the [mqtt] settings of the cloud's broker identity")
        if problems:
            raise ConfigError(problems)


def load_cloud_config(path: str | Path | None = None, **kwargs: object) -> CloudConfig:
    """Load ``cloud.toml`` (optional) with ``EC_CLOUD__*`` overrides."""
    return load_config(CloudConfig, path, **kwargs)  # type: ignore[arg-type]
