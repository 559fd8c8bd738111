"""Cloud service configuration: the ``[cloud]``, ``[registry]`` and ``[mqtt]`` sections of ``cloud.toml``.

Authentication is always on: the token store is created empty when missing, so a fresh
cloud answers every route but ``/healthz`` with 401 until an operator creates tokens.
``[registry]`` turns on the model registry (:mod:`edgecascade.cloud_service.registry`); ``[mqtt]`` is
the cloud's own broker identity, used only to publish model announcements.

The ``[retrain]`` section configures the learning loop: when retraining jobs start, what
they train on, and the evaluation gate a candidate must pass (see :mod:`edgecascade.cloud_service.jobs`).
``[federated]`` configures collaborative training rounds across sites, whose aggregate
passes the same gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgecascade.device_sdk.config import MqttConfig, load_config, must_exist
from edgecascade.device_sdk.errors import ConfigError

DEFAULT_MODELS_DIR = Path("state/models")


@dataclass(frozen=True)
class CloudSettings:
    bundle: Path = Path("artifacts/model")
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    # cloud-signing.pub: when set, the bundle's signature must verify
    verify_key: Path | None = field(default=None, metadata=must_exist("file"))
    token_store: Path = Path("state/tokens.db")  # hashed bearer tokens (SQLite)
    device_keyring: Path = Path("state/device-keys")  # X25519 keys of enrolled devices
    # X25519 key handed to enrolling devices; unset: no enrolment
    gateway_public_key: Path | None = field(default=None, metadata=must_exist("file"))
    gateway_name: str = "gateway"  # bound into the payload keys; what the gateways' crypto.gateway_name says
    database_url: str = "sqlite:///state/cloud.db"  # hard examples and jobs (SQLAlchemy URL; PostgreSQL too)
    blob_dir: Path = Path("state/blobs")  # hard-example tensors, one file per example id
    max_upload_bytes: int = 8 * 1024 * 1024  # largest POST /v1/hard-examples body
    tls_cert: Path | None = None  # server certificate (PEM): the API is served over HTTPS (TLS >= 1.2)
    tls_key: Path | None = None  # its private key

    def __post_init__(self) -> None:
        problems = []
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("cloud.tls_cert and cloud.tls_key go together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"cloud.{name}: no such file {path}")
        if not 0 <= self.port < 65536:
            problems.append(f"cloud.port must be in 0..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            problems.append("cloud.max_body_bytes must be >= 1024")
        if self.max_upload_bytes < 1024:
            problems.append("cloud.max_upload_bytes must be >= 1024")
        if "://" not in self.database_url:
            problems.append(
                f"cloud.database_url must be a URL (sqlite:///state/cloud.db), got {self.database_url!r}"
            )
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class RetrainSettings:
    """When retraining jobs start, what they fine-tune on, and the gate a candidate must pass.

    Triggers: ``count_threshold`` new hard examples since the last job, every
    ``interval_seconds`` (when there is at least one new example), or ``POST /v1/retrain``;
    0 turns the count or schedule trigger off. Accuracy figures (``min_gain``,
    ``tolerance``) are in percentage points.
    """

    checkpoint: Path = Path("artifacts/checkpoint")  # Keras checkpoint of the served version (fallback)
    models_dir: Path | None = (
        None  # unset: registry.models_dir, else state/models (see CloudConfig.models_dir)
    )
    auto_promote: bool = False  # promote and announce a candidate that passed the gate (needs [registry])
    jobs_dir: Path = Path("state/jobs")  # one directory per job: spec.json and job.log
    count_threshold: int = 1000  # new examples since the last job that start one (0: off)
    interval_seconds: float = 0.0  # start a job this often when there are new examples (0: off)
    # .npz of the original data; unset: Debian's Fashion-MNIST
    data: Path | None = field(default=None, metadata=must_exist("file"))
    replay_size: int = 5000  # original training images mixed into every fine-tune
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 3e-4
    hard_weight: float = 2.0  # loss weight of a hard example relative to a replay image
    train_device: bool = True  # fine-tune the device stage too when every example carries its raw input
    holdout_fraction: float = 0.2  # share of hard examples (by id hash) kept out of training for the gate
    calibration_fraction: float = 0.2  # share of audited examples (by id hash) kept for fitting thresholds
    min_holdout: int = 20  # fewer held-out examples than this: the gate cannot judge, the job is rejected
    min_gain: float = 0.5  # points the candidate must gain on the held-out hard examples (and always > 0)
    tolerance: float = 0.5  # points any exit may lose on the original test data
    test_size: int = 10000  # original test images the gate compares on
    val_size: int = 6000  # original validation images the temperatures and thresholds are fitted on
    # cloud-signing.key: candidates are signed when set
    signing_key: Path | None = field(default=None, metadata=must_exist("file"))
    stale_seconds: float = 600.0  # a running job without a heartbeat for this long is marked failed
    max_examples: int = 50000  # most recent labelled hard examples a job uses
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("count_threshold", "replay_size", "min_holdout"):
            if getattr(self, name) < 0:
                problems.append(f"retrain.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "test_size", "val_size", "max_examples"):
            if getattr(self, name) < 1:
                problems.append(f"retrain.{name} must be >= 1, got {getattr(self, name)}")
        if self.interval_seconds < 0:
            problems.append(f"retrain.interval_seconds must be >= 0, got {self.interval_seconds}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"retrain.learning_rate must be in (0, 1), got {self.learning_rate}")
        if not self.hard_weight > 0:
            problems.append(f"retrain.hard_weight must be > 0, got {self.hard_weight}")
        if not 0 < self.holdout_fraction < 1:
            problems.append(f"retrain.holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        calibration = self.calibration_fraction
        if not 0 <= calibration < 1:
            problems.append(f"retrain.calibration_fraction must be in [0, 1), got {calibration}")
        elif 0 < self.holdout_fraction < 1 <= self.holdout_fraction + calibration:
            problems.append("retrain.holdout_fraction + calibration_fraction >= 1: nothing would train")
        if not 0 <= self.tolerance <= 100:
            problems.append(f"retrain.tolerance must be in [0, 100] points, got {self.tolerance}")
        if not 0 <= self.min_gain <= 100:
            problems.append(f"retrain.min_gain must be in [0, 100] points, got {self.min_gain}")
        if not self.stale_seconds > 0:
            problems.append(f"retrain.stale_seconds must be > 0, got {self.stale_seconds}")
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


STRATEGIES = ("fedavg", "fedprox", "trimmed_mean", "median")
COMPRESSIONS = ("none", "float16", "int8")  # federation.updates.COMPRESSIONS (no import: layering)
DOWNLINKS = ("float32", "float16")  # federation.updates.DOWNLINKS


@dataclass(frozen=True)
class FederatedSettings:
    """Collaborative training rounds, run by the ServerApp beside the SuperLink (``edgecascade.federation``).

    Each round asks every connected site to fine-tune the current weights for
    ``local_epochs`` on its own data and waits at most ``round_timeout`` seconds; a round
    counts when at least max(``min_sites``, ceil(``min_fraction`` x connected sites)) signed
    updates were accepted, else the model stays as it was and the next round starts. The
    aggregate of the last round goes through the ``[retrain]`` gate and is exported, signed
    and published like a retrained candidate. ``strategy``: ``fedavg`` (weighted by
    examples), ``fedprox`` (``proximal_mu``), ``trimmed_mean`` (``trim_fraction`` cut at each
    end) or ``median``. Updates travel as deltas in ``compression``; the round's weights go
    down to the sites as ``downlink`` (``float16`` halves the bytes, ``float32`` is exact).
    ``site_keys`` holds one ``<site>.pub`` (EC P-256, OpenSSH) per site: the keys registered
    with the SuperLink and the ones every update's signature must verify with. ``min_gain``
    and ``tolerance``, when set, replace ``[retrain]``'s in the aggregate's gate only: a
    federation serving sites unlike the cloud's own data may knowingly accept a drop on it.
    """

    strategy: str = "fedavg"
    rounds: int = 5
    round_timeout: float = 600.0
    min_sites: int = 2
    min_fraction: float = 0.5
    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    proximal_mu: float = 0.01
    trim_fraction: float = 0.2
    compression: str = "int8"
    downlink: str = "float16"
    min_gain: float | None = None  # points the aggregate must gain at the sites (unset: [retrain]'s)
    tolerance: float | None = None  # points an exit may lose on the cloud's test data (unset: [retrain]'s)
    site_keys: Path = Path("state/federation/sites")
    link_address: str = "127.0.0.1:9093"  # the SuperLink, as `edgecascade federated start` reaches it
    workdir: Path = Path("state/federation/runs")  # one directory per run: exported candidates

    def __post_init__(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(
                f"federated.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.compression not in COMPRESSIONS:
            problems.append(
                f"federated.compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        if self.downlink not in DOWNLINKS:
            problems.append(
                f"federated.downlink must be one of {', '.join(DOWNLINKS)}, got {self.downlink!r}"
            )
        for name in ("rounds", "min_sites", "local_epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"federated.{name} must be >= 1, got {getattr(self, name)}")
        if not self.round_timeout > 0:
            problems.append(f"federated.round_timeout must be > 0, got {self.round_timeout}")
        if not 0 < self.min_fraction <= 1:
            problems.append(f"federated.min_fraction must be in (0, 1], got {self.min_fraction}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"federated.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.proximal_mu < 0:
            problems.append(f"federated.proximal_mu must be >= 0, got {self.proximal_mu}")
        if not 0 <= self.trim_fraction < 0.5:
            problems.append(f"federated.trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        for name in ("min_gain", "tolerance"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                problems.append(f"federated.{name} must be in [0, 100] points, got {value}")
        if ":" not in self.link_address:
            problems.append(f"federated.link_address must be host:port, got {self.link_address!r}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CloudConfig:
    cloud: CloudSettings = field(default_factory=CloudSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    federated: FederatedSettings = field(default_factory=FederatedSettings)

    def __post_init__(self) -> None:
        problems = []
        registry = self.registry
        if registry.models_dir is not None and self.cloud.verify_key is None and registry.signing_key is None:
            problems.append(
                "registry.models_dir needs cloud.verify_key or registry.signing_key to verify bundles"
            )
        if registry.announce and registry.signing_key is None:
            problems.append("registry.announce needs registry.signing_key: announcements are signed")
        if (
            self.retrain.models_dir is not None
            and registry.models_dir is not None
            and Path(self.retrain.models_dir).resolve() != Path(registry.models_dir).resolve()
        ):
            problems.append(
                "retrain.models_dir and registry.models_dir must be the same directory "
                "(leave retrain.models_dir unset: candidates go to the registry)"
            )
        if self.retrain.auto_promote and registry.models_dir is None:
            problems.append("retrain.auto_promote needs the model registry (registry.models_dir)")
        if self.retrain.auto_promote and self.candidate_signing_key is None:
            problems.append(
                "retrain.auto_promote needs retrain.signing_key or registry.signing_key: "
                "the registry promotes signed bundles only"
            )
        if registry.announce and not self.mqtt.tls:
            problems.append("registry.announce needs the [mqtt] settings of the cloud's broker identity")
        if problems:
            raise ConfigError(problems)

    @property
    def models_dir(self) -> Path:
        """Where versions live: candidates are published here and the registry serves them from here."""
        return self.registry.models_dir or self.retrain.models_dir or DEFAULT_MODELS_DIR

    @property
    def candidate_signing_key(self) -> Path | None:
        """The key retraining signs candidates with: its own, else the registry's."""
        return self.retrain.signing_key or self.registry.signing_key


def load_cloud_config(path: str | Path | None = None, **kwargs: object) -> CloudConfig:
    """Load ``cloud.toml`` (optional) with ``EC_CLOUD__*`` and ``EC_RETRAIN__*`` overrides."""
    return load_config(CloudConfig, path, **kwargs)  # type: ignore[arg-type]
