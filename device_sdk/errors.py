"""The one exception tree of EdgeCascade.

Every error the project raises on purpose derives from :class:`EdgeCascadeError`, so an
application can catch one type. Third-party errors (paho, http.client and ssl, LiteRT, TensorFlow)
are translated at the boundary where they occur.

::

    EdgeCascadeError
    ├── ConfigError            bad or missing configuration (lists every problem)
    ├── WireError              a message that cannot be decoded or is not acceptable
    │   ├── SchemaVersionError unknown envelope schema version
    │   ├── TensorSpecError    tensor of the wrong shape, dtype or with non-finite values
    │   ├── HardExampleError   a hard-example record that cannot be accepted (learning.records)
    │   ├── BatchError         an upload batch refused as a whole (not JSON, not a batch, too many)
    │   ├── UpdateError        a federated model update that cannot be accepted (``reason``: its counter)
    │   ├── RateLimitedError   a sender over its per-device rate
    │   └── CryptoError        a body that cannot be verified (its ``reason`` names the counter)
    │       ├── NotEncryptedError   plaintext where encryption is required
    │       ├── DecryptError        wrong key, tampered, truncated or forged ciphertext
    │       ├── UnknownKeyError     no key for this device and key id
    │       └── ReplayError         sequence number outside the sender's window: already accepted
    │           ├── SequenceTooOldError       older than the window
    │           └── SequenceTooFarAheadError  further ahead than the window may move
    ├── ModelError             bundle or partition problems
    │   ├── BundleError        missing files, bad manifest, hash mismatch
    │   │   ├── SignatureError  manifest.sig missing, malformed, or not by the trusted key
    │   │   ├── RollbackError   older than the running version and not a signed rollback
    │   │   └── ClassListError  a class list that is not the running one followed by new classes
    │   ├── ModelVersionError  a request for a model version this node does not serve
    │   └── RegistryError      a registry operation that cannot be done (see its ``status``)
    ├── TransportError         a link failed
    │   ├── TransportTimeout   no answer in time
    │   ├── RemoteError        the other side answered with an error message
    │   │   └── OutOfWindowError  a sealed refusal of a sequence number: where to continue
    │   └── FlowerCommandError  a ``flwr`` command (register a site, submit a run) failed
    ├── StorageError           a durable store (outbox, replay windows) cannot be opened, read or written
    ├── AuthError              a credential is missing, wrong, expired or revoked (HTTP 401)
    │   └── ScopeError         a valid credential used outside its scope (HTTP 403)
    ├── DatasetError           a dataset file is missing or malformed
    └── DependencyError        an optional extra is not installed
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for a type hint: the wire format imports this module
    from edgecascade.device_sdk.wire.envelope import Envelope


class EdgeCascadeError(Exception):
    """Base class of every error raised by EdgeCascade."""


class ConfigError(EdgeCascadeError):
    """Configuration is missing, malformed or inconsistent."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class WireError(EdgeCascadeError):
    """A message could not be decoded or is not acceptable."""


class SchemaVersionError(WireError):
    """The envelope was written with a schema version this code does not read."""


class TensorSpecError(WireError):
    """A tensor has the wrong shape or dtype, or holds NaN/inf."""


class CryptoError(WireError):
    """A message that cannot be authenticated or decrypted; never served, always counted."""

    reason = "crypto"  # counter suffix: the gateway counts ``rejected_<reason>``


class NotEncryptedError(CryptoError):
    """A plaintext message where encryption is required."""

    reason = "not_encrypted"


class DecryptError(CryptoError):
    """The ciphertext does not authenticate: wrong key, tampered header or body, or truncated."""

    reason = "decrypt"


class UnknownKeyError(CryptoError):
    """No key is known for this device and key id."""

    reason = "unknown_key"


class ReplayError(CryptoError):
    """The sequence number is outside what the sender's window accepts; here: already accepted.

    ``answer`` is set by a gateway when the message itself authenticated: the sealed ERROR
    envelope that tells the sender where its numbers may continue (``edge_gateway.crypto``).
    """

    reason = "replay"
    answer: Envelope | None = None


class SequenceTooOldError(ReplayError):
    """The sequence number is older than the sender's sliding window: it cannot be checked."""

    reason = "too_old"


class SequenceTooFarAheadError(ReplayError):
    """The sequence number is further ahead than the window may move (a bound over the clock)."""

    reason = "too_far_ahead"


class RateLimitedError(WireError):
    """A sender over the per-device rate its gateway allows; refused before it is read."""


class BatchError(WireError):
    """An upload batch of hard examples that is refused as a whole; ``reason`` names the counter."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class UpdateError(WireError):
    """A federated model update that cannot be accepted; ``reason`` names the counter.

    The server counts ``refused_<reason>`` and leaves the update out of the round's aggregate
    (``federation.updates`` lists the reasons).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class ModelError(EdgeCascadeError):
    """A model bundle or partition cannot be used."""


class BundleError(ModelError):
    """A bundle is incomplete, malformed, or its files do not match their hashes."""


class SignatureError(BundleError):
    """A bundle's signature is missing, malformed, or does not verify with the trusted key."""


class RollbackError(BundleError):
    """A bundle is older than the running version and its signed manifest does not allow a rollback."""


class ClassListError(BundleError):
    """A model's class list shrinks, renames or reorders the running one's (only growth is allowed)."""


class ModelVersionError(ModelError):
    """A request names a model version this node does not serve."""


class RegistryError(ModelError):
    """The model registry cannot do what was asked; ``status`` is the HTTP status that says why.

    404: no such version; 409: the operation conflicts with the registry's state (nothing to
    roll back to, a version already registered, a bundle that does not verify, no signing key).
    """

    def __init__(self, message: str, status: int = 409) -> None:
        self.status = status
        super().__init__(message)


class TransportError(EdgeCascadeError):
    """A link to another tier failed."""


class TransportTimeout(TransportError):
    """The other tier did not answer in time."""


class RemoteError(TransportError):
    """The other tier answered with an error message."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"remote error {code}: {message}")


class FlowerCommandError(TransportError):
    """A ``flwr`` command against the SuperLink failed; the message is Flower's."""


class OutOfWindowError(RemoteError):
    """A gateway refused a request's sequence number and said, sealed, where the device's may go.

    Every number from ``next_seq`` up to ``limit`` is acceptable to that gateway
    (``wire.sequence``); the device moves its counter there and sends the request again.
    ``refused`` is the refused request's own number.
    """

    def __init__(self, code: int, message: str, next_seq: int, limit: int, refused: int) -> None:
        self.next_seq = next_seq
        self.limit = limit
        self.refused = refused
        super().__init__(code, message)


class StorageError(EdgeCascadeError):
    """A durable store (the outbox, a gateway's replay windows) cannot be opened, read or written."""


class DependencyError(EdgeCascadeError):
    """An optional dependency is missing; the message says which extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(f"{module} is not installed; install it with: pip install 'edgecascade[{extra}]'")


class DatasetError(EdgeCascadeError):
    """A dataset file is missing, malformed or inconsistent."""


class AuthError(EdgeCascadeError):
    """A request's credential is missing, wrong, expired, used up or revoked."""


class ScopeError(AuthError):
    """A valid credential was used for something its scope does not allow."""


# Exit codes of the daemons and the command line, documented in one place.
EXIT_OK = 0
EXIT_ERROR = 1  # any other failure
EXIT_CONFIG = 2  # bad usage or configuration
EXIT_MODEL = 3  # model bundle missing or unusable
EXIT_TRANSPORT = 4  # broker or another tier unreachable at start


def exit_code(exc: EdgeCascadeError) -> int:
    """The documented process exit code for an error that ends a daemon or command."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, ModelError):
        return EXIT_MODEL
    if isinstance(exc, TransportError):
        return EXIT_TRANSPORT
    return EXIT_ERROR
