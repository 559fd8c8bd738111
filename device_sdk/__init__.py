"""EdgeCascade device SDK: run the device partition, exit early, offload the rest.

The public API is what ``__all__`` lists; implementation modules are importable but
their names may change. This package never imports TensorFlow.
"""

from device_sdk.bundle import Bundle, Manifest, load_bundle
from device_sdk.cache import CacheConfig, CacheHit, NeuralCache, open_cache
from device_sdk.client import DeviceClient, Prediction
from device_sdk.config import MqttConfig, load_config
from device_sdk.crypto import DeviceCrypto
from device_sdk.errors import (
    AuthError,
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
    TensorSpecError,
    TransportError,
    TransportTimeout,
    UnknownKeyError,
    WireError,
)
from device_sdk.keys import load_device_crypto
from device_sdk.policy import AlwaysExit, ExitPolicy, MaxProbExit, NeverExit
from device_sdk.runtime import PartitionRunner
from device_sdk.transport import InMemoryTransport, MqttTransport, Transport
from device_sdk.updater import ModelUpdater, UpdateSettings

__all__ = [
    "AlwaysExit",
    "AuthError",
    "Bundle",
    "BundleError",
    "CacheConfig",
    "CacheHit",
    "ConfigError",
    "CryptoError",
    "DatasetError",
    "DecryptError",
    "DependencyError",
    "DeviceClient",
    "DeviceCrypto",
    "EdgeCascadeError",
    "ExitPolicy",
    "InMemoryTransport",
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
    "PartitionRunner",
    "Prediction",
    "RegistryError",
    "RemoteError",
    "ReplayError",
    "RollbackError",
    "SchemaVersionError",
    "ScopeError",
    "SequenceTooOldError",
    "SignatureError",
    "TensorSpecError",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "UnknownKeyError",
    "UpdateSettings",
    "WireError",
    "load_bundle",
    "load_config",
    "load_device_crypto",
    "open_cache",
]
