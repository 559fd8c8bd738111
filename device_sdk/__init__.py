"""EdgeCascade device SDK: run the device partition, exit early, offload the rest.

The public API is what ``__all__`` lists; implementation modules are importable but
their names may change. This package never imports TensorFlow.
"""

from edgecascade.device_sdk.cache import CacheConfig, CacheHit, NeuralCache, open_cache
from edgecascade.device_sdk.client import DeviceClient, Prediction
from edgecascade.device_sdk.config import MqttConfig, load_config
from edgecascade.device_sdk.core.policy import AlwaysExit, ExitPolicy, MaxProbExit, NeverExit
from edgecascade.device_sdk.device_config import DeviceConfig, load_device_config
from edgecascade.device_sdk.errors import (
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
from edgecascade.device_sdk.learning.batch import Receipt
from edgecascade.device_sdk.learning.links import HttpUploadLink, InMemoryUploadLink, RelayUploadLink
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.records import HardExample, HardExampleError
from edgecascade.device_sdk.learning.selection import (
    AuditSample,
    Degraded,
    ExitsDisagree,
    HardExampleFilter,
    HardExampleSelector,
    LowConfidence,
    ReachedCloud,
)
from edgecascade.device_sdk.learning.settings import HardExampleSettings
from edgecascade.device_sdk.learning.uploader import Uploader, UploadLink
from edgecascade.device_sdk.model.bundle import Bundle, Manifest, load_bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.model.updater import ModelUpdater, UpdateSettings
from edgecascade.device_sdk.transport import InMemoryTransport, MqttTransport, Transport
from edgecascade.device_sdk.wire.crypto import DeviceCrypto
from edgecascade.device_sdk.wire.keys import load_device_crypto

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
