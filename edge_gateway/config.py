"""Gateway settings, one frozen dataclass per section of ``gateway.toml`` (``[gateway]``, ``[mqtt]``, …)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgecascade.device_sdk.config import MqttConfig, load_config, must_exist
from edgecascade.device_sdk.core.offload import OffloadSettings
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.learning.settings import upload_problems
from edgecascade.device_sdk.model.overlay import ModelSettings
from edgecascade.device_sdk.model.updater import UpdateSettings


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway serves and where it forwards."""

    bundle: Path = Path("artifacts/model")
    gateway_id: str = "gateway-1"
    cloud_url: str = "http://127.0.0.1:8080"
    cloud_timeout: float = 5.0
    # CA that signed the cloud's HTTPS certificate (default: the system trust store)
    cloud_ca: Path | None = field(default=None, metadata=must_exist("file"))
    max_batch: int = 32
    forward_workers: int = 4
    queue_size: int = 1024
    forward_backlog: int = 256  # requests waiting for the cloud; beyond it answered at once, degraded
    shared_subscription: bool = True
    cloud_token: str = field(default="", repr=False)  # bearer token for the cloud; EC_GATEWAY__CLOUD_TOKEN
    # cloud-signing.pub: when set, the bundle's signature must verify
    verify_key: Path | None = field(default=None, metadata=must_exist("file"))
    model_grace: float = 300.0  # seconds the version a swap replaced is still served (lagging devices)
    heartbeat_interval: float = 10.0  # seconds between status reports to the cloud's fleet view (0: none)
    device_rate: float = 0.0  # requests/s one device may send on average; more are refused (0: no limit)
    device_burst: int = 128  # requests one device may send at once before device_rate applies

    def __post_init__(self) -> None:
        problems = []
        if not self.cloud_url.startswith(("http://", "https://")):
            problems.append(f"gateway.cloud_url must be an http(s) URL, got {self.cloud_url!r}")
        if any(c.isspace() for c in self.cloud_token):
            problems.append("gateway.cloud_token must not contain whitespace")
        if self.cloud_timeout <= 0:
            problems.append("gateway.cloud_timeout must be > 0")
        if self.model_grace < 0:
            problems.append("gateway.model_grace must be >= 0")
        if self.heartbeat_interval < 0:
            problems.append("gateway.heartbeat_interval must be >= 0 (0: no heartbeats)")
        if self.device_rate < 0:
            problems.append("gateway.device_rate must be >= 0 (0: no limit)")
        for name in ("max_batch", "forward_workers", "queue_size", "forward_backlog", "device_burst"):
            if getattr(self, name) < 1:
                problems.append(f"gateway.{name} must be >= 1")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CacheSettings:
    """The gateway's neural cache; the hit rule comes from the manifest unless set here.

    Off by default: with the default Fashion-MNIST model the gateway's exit answers every
    input that reaches it, so its cache is never consulted (see ``edgecascade bench cache``).
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
class CryptoSettings:
    """End-to-end payload encryption with the devices (see :mod:`edgecascade.device_sdk.wire.crypto`).

    ``private_key`` is the gateways' X25519 key (``gateway-x25519.key``), ``device_keys``
    the directory of device public keys (``<id>.k<n>.pub``), rescanned for new devices at
    most every ``rescan_interval`` seconds. ``gateway_name`` is bound into every derived
    key and must match the devices'. With ``required`` (the default) unencrypted requests
    are refused; turning it off is for migrating a fleet, never for production.
    ``max_ahead``: seconds a device's sequence numbers (its clock in µs) may run ahead of
    the gateway's clock; ``replay_store``: the SQLite file that keeps replay windows across
    a restart (empty: in memory only). ``replay_shared``: a database URL (``sqlite:///file``
    for gateways on one host, ``postgresql://...`` for several) where the gateways of a
    share group keep every window whole, so none accepts a number another accepted; when
    set, ``replay_store`` is not used.
    """

    required: bool = True
    private_key: Path | None = None
    device_keys: Path | None = None
    gateway_name: str = "gateway"
    window: int = 64
    rescan_interval: float = 5.0
    max_ahead: float = 60.0
    replay_store: Path | None = Path("state/replay-windows.db")
    replay_shared: str = field(default="", repr=False)  # may hold a password; EC_CRYPTO__REPLAY_SHARED

    def __post_init__(self) -> None:
        problems = []
        if self.private_key is not None and not self.private_key.is_file():
            problems.append(f"crypto.private_key: no such file {self.private_key}")
        if self.device_keys is not None and not self.device_keys.is_dir():
            problems.append(f"crypto.device_keys: no such directory {self.device_keys}")
        if (self.private_key is None) != (self.device_keys is None):
            problems.append("crypto.private_key and crypto.device_keys must be set together")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.gateway_name):
            problems.append(f"crypto.gateway_name must be 1-64 of [A-Za-z0-9_.-], got {self.gateway_name!r}")
        if not 1 <= self.window <= 1024:
            problems.append("crypto.window must be in 1..1024")
        if self.rescan_interval < 0:
            problems.append("crypto.rescan_interval must be >= 0")
        if not 0 < self.max_ahead <= 86400:
            problems.append("crypto.max_ahead must be in (0, 86400] seconds")
        if self.replay_shared and not self.replay_shared.startswith(("sqlite:///", "postgresql")):
            problems.append("crypto.replay_shared must be an sqlite:/// or postgresql:// URL (or empty)")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class OutboxSettings:
    """The gateway's hard-example outbox: what it relays for devices and its own degraded answers.

    With ``path`` unset the gateway neither relays uploads nor keeps hard examples. With it,
    the gateway subscribes to every device's upload topic, stores valid records durably in
    this SQLite file before acknowledging them, and an uploader sends them to the cloud's
    ``POST /v1/hard-examples`` with ``gateway.cloud_token``: up to ``batch_size`` at a time,
    looking for new ones every ``upload_interval`` seconds, backing off from ``backoff_base``
    up to ``backoff_max`` seconds while the cloud is unreachable. ``record_degraded`` keeps
    the cut-1 features of requests the gateway had to answer ``degraded``.
    """

    path: Path | None = None
    capacity: int = 100_000
    batch_size: int = 128
    upload_interval: float = 5.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    record_degraded: bool = True
    relay_queue: int = 256  # upload batches waiting to be stored; more are dropped (devices retry)

    def __post_init__(self) -> None:
        problems = upload_problems("outbox", self)
        if self.relay_queue < 1:
            problems.append("outbox.relay_queue must be >= 1")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class MetricsSettings:
    """The gateway's operations endpoint: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON).

    Loopback by default: the numbers name devices and model versions. ``port = 0`` turns it off.
    """

    host: str = "127.0.0.1"
    port: int = 9810

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port < 65536:
            problems.append(f"metrics.port must be in 0..65535, got {self.port}")
        if not self.host:
            problems.append("metrics.host must not be empty")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    cache: CacheSettings = field(default_factory=CacheSettings)
    crypto: CryptoSettings = field(default_factory=CryptoSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    update: UpdateSettings = field(default_factory=UpdateSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    offload: OffloadSettings = field(default_factory=OffloadSettings)  # which requests go on to the cloud
    model: ModelSettings = field(default_factory=ModelSettings)  # the site overlay of exit thresholds

    def __post_init__(self) -> None:
        problems = []
        if self.update.enabled and self.gateway.verify_key is None:
            problems.append("update.enabled needs gateway.verify_key: a downloaded model must verify")
        if self.model.overlay is not None and self.gateway.verify_key is None:
            problems.append("model.overlay needs gateway.verify_key: a site overlay must verify")
        if problems:
            raise ConfigError(problems)


def load_gateway_config(path: str | Path | None = None, **kwargs: object) -> GatewayConfig:
    """Load ``gateway.toml`` (optional) with ``EC_<SECTION>__<KEY>`` environment overrides."""
    return load_config(GatewayConfig, path, **kwargs)  # type: ignore[arg-type]
