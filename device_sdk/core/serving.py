"""The rules of answering another tier's request, shared by the gateway and the cloud.

Pure functions over envelopes and numpy: read an INFER_REQUEST's features for the model
that will run them (nothing invalid reaches a model), build result and error replies, and
map errors to wire codes. Envelopes are parsed once per hop and passed as objects; the
caller serialises (or seals) a reply once.
"""

from __future__ import annotations

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.tier import TierModel
from edgecascade.device_sdk.errors import (
    CryptoError,
    EdgeCascadeError,
    ModelVersionError,
    RateLimitedError,
    SchemaVersionError,
    TensorSpecError,
    WireError,
)
from edgecascade.device_sdk.wire import codec


def request_features(envelope: wire.Envelope, model: TierModel) -> np.ndarray:
    """The cut features an INFER_REQUEST carries for ``model``'s partition.

    The shape the body declares is checked against the partition's input before any size
    is computed from it. Raises a WireError (TensorSpecError for a wrong encoding, shape or
    non-finite values) or a ModelVersionError, never anything else.
    """
    header = envelope.header
    if header.msg_type != wire.MessageType.INFER_REQUEST:
        raise WireError(f"expected an INFER_REQUEST, got {header.msg_type.name}")
    if header.model_version != model.version:
        raise unknown_version(header.model_version, (model.version,))
    spec = model.spec.input
    try:
        tensor = codec.decode_features(envelope.body, model.cut_encoding, spec.shape)
    except TensorSpecError as exc:
        raise TensorSpecError(f"{model.tier} partition: {exc}") from None
    if tensor.shape != spec.shape or tensor.dtype != np.dtype(spec.dtype):
        raise TensorSpecError(
            f"{model.tier} partition takes {spec.dtype}{list(spec.shape)}, "
            f"got {tensor.dtype}{list(tensor.shape)}"
        )
    return tensor


def unknown_version(requested: int, served: tuple[int, ...]) -> ModelVersionError:
    """The error for a request stamped with a version this tier does not (or no longer) serve."""
    listed = ", ".join(f"v{v}" for v in served)
    return ModelVersionError(f"model version {requested} is not served here (serving {listed})")


def error_code(exc: Exception) -> wire.ErrorCode:
    """The wire error code for an exception raised while serving a request."""
    if isinstance(exc, CryptoError):
        return wire.ErrorCode.UNAUTHORIZED
    if isinstance(exc, SchemaVersionError):
        return wire.ErrorCode.UNSUPPORTED_SCHEMA
    if isinstance(exc, TensorSpecError):
        return wire.ErrorCode.BAD_TENSOR
    if isinstance(exc, ModelVersionError):
        return wire.ErrorCode.UNKNOWN_MODEL_VERSION
    if isinstance(exc, RateLimitedError):
        return wire.ErrorCode.RATE_LIMITED
    if isinstance(exc, WireError):
        return wire.ErrorCode.MALFORMED
    if isinstance(exc, EdgeCascadeError):
        return wire.ErrorCode.UNAVAILABLE
    return wire.ErrorCode.INTERNAL


def error_reply(header: wire.Header, exc: Exception) -> wire.Envelope:
    """An ERROR envelope answering ``header``'s request.

    An unexpected exception (not an :class:`EdgeCascadeError`) is a bug on this side: the
    reply says ``internal error`` and nothing of its text, which may name internals.
    """
    message = str(exc) if isinstance(exc, EdgeCascadeError) else "internal error"
    return wire.Envelope(header.reply(wire.MessageType.ERROR), wire.encode_error(error_code(exc), message))


def result_reply(header: wire.Header, result: wire.Result) -> wire.Envelope:
    """A RESULT envelope answering ``header``'s request."""
    return wire.Envelope(header.reply(wire.MessageType.RESULT), wire.encode_result(result))
