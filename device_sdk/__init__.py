"""EdgeCascade device SDK: run the device partition, exit early, offload the rest.

The public API is what ``__all__`` lists; implementation modules are importable but
their names may change. This package never imports TensorFlow.
"""

from device_sdk.bundle import Bundle, Manifest, load_bundle
from device_sdk.cache import CacheConfig, CacheHit, NeuralCache, open_cache
from device_sdk.client import DeviceClient, Prediction
from device_sdk.config import DeviceConfig, HardExampleSettings, MqttConfig, load_config, load_device_config
from device_sdk.crypto import DeviceCrypto
from device_sdk.errors import (
    AuthError,
    BatchError,
    BundleError,
    ConfigError,
    CryptoError,
    DatasetError,
    DecryptError,
    DependencyError,
    EdgeCascadeError,
    ModelError,
    ModelVersionError,
    NotEncryptedError,
    RegistryError,
    RemoteError,
    ReplayError,
    RollbackError,
    SchemaVersionError,
    ScopeError,
    SequenceTooOldError,
    SignatureError,
    StorageError,
    TensorSpecError,
    TransportError,
    TransportTimeout,
    UnknownKeyError,
    WireError,
)
from device_sdk.hard_examples import HardExample, HardExampleError
from device_sdk.keys import load_device_crypto
from device_sdk.outbox import Outbox
from device_sdk.policy import AlwaysExit, ExitPolicy, MaxProbExit, NeverExit
from device_sdk.runtime import PartitionRunner
from device_sdk.selection import (
    AuditSample,
    Degraded,
    ExitsDisagree,
    HardExampleFilter,
    HardExampleSelector,
    LowConfidence,
    ReachedCloud,
)
from device_sdk.transport import InMemoryTransport, MqttTransport, Transport
from device_sdk.updater import ModelUpdater, UpdateSettings
from device_sdk.upload_batch import Receipt
from device_sdk.upload_links import HttpUploadLink, InMemoryUploadLink, RelayUploadLink
from device_sdk.uploader import Uploader, UploadLink

__all__ = [
    "AlwaysExit",
    "AuditSample",
    "AuthError",
    "BatchError",
    "Bundle",
    "BundleError",
    "CacheConfig",
    "CacheHit",
    "ConfigError",
    "CryptoError",
    "DatasetError",
    "DecryptError",
    "Degraded",
    "DependencyError",
    "DeviceClient",
    "DeviceConfig",
    "DeviceCrypto",
    "EdgeCascadeError",
    "ExitPolicy",
    "ExitsDisagree",
    "HardExample",
    "HardExampleError",
    "HardExampleFilter",
    "HardExampleSelector",
    "HardExampleSettings",
    "HttpUploadLink",
    "InMemoryTransport",
    "InMemoryUploadLink",
    "LowConfidence",
    "Manifest",
    "MaxProbExit",
    "ModelError",
    "ModelUpdater",
    "ModelVersionError",
    "MqttConfig",
    "MqttTransport",
    "NeuralCache",
    "NeverExit",
    "NotEncryptedError",
    "Outbox",
    "PartitionRunner",
    "Prediction",
    "ReachedCloud",
    "Receipt",
    "RegistryError",
    "RelayUploadLink",
    "RemoteError",
    "ReplayError",
    "RollbackError",
    "SchemaVersionError",
    "ScopeError",
    "SequenceTooOldError",
    "SignatureError",
    "StorageError",
    "TensorSpecError",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "UnknownKeyError",
    "UpdateSettings",
    "UploadLink",
    "Uploader",
    "WireError",
    "load_bundle",
    "load_config",
    "load_device_config",
    "load_device_crypto",
    "open_cache",
]
