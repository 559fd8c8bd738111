"""Request handling shared by the tiers that answer others (gateway and cloud).

Pure functions over bytes and numpy: parse and validate an inference request against the
partition that will run it, build result and error replies, and map errors to wire codes.
"""

from __future__ import annotations

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import (
    CryptoError,
    EdgeCascadeError,
    ModelVersionError,
    SchemaVersionError,
    TensorSpecError,
    WireError,
)
from edgecascade.device_sdk.model.bundle import PartitionSpec
from edgecascade.device_sdk.wire import codec


def parse_infer_request(
    payload: bytes, model_version: int, spec: PartitionSpec, encoding: str
) -> tuple[wire.Header, np.ndarray]:
    """Decode an INFER_REQUEST for ``spec``'s partition, its features in ``encoding``.

    Raises a WireError (TensorSpecError for a wrong encoding, shape or non-finite values)
    or a ModelVersionError; nothing invalid reaches a model.
    """
    return check_infer_request(wire.envelope_from_bytes(payload), model_version, spec, encoding)


def check_infer_request(
    envelope: wire.Envelope, model_version: int, spec: PartitionSpec, encoding: str
) -> tuple[wire.Header, np.ndarray]:
    """:func:`parse_infer_request` for an envelope already parsed (to pick the model by its version)."""
    header = envelope.header
    if header.msg_type != wire.MessageType.INFER_REQUEST:
        raise WireError(f"expected an INFER_REQUEST, got {header.msg_type.name}")
    if header.model_version != model_version:
        raise ModelVersionError(
            f"model version {header.model_version} is not served here (serving {model_version})"
        )
    tensor = codec.decode_features(envelope.body, encoding)
    if tensor.shape != spec.input.shape or tensor.dtype != np.dtype(spec.input.dtype):
        raise TensorSpecError(
            f"{spec.tier} partition takes {spec.input.dtype}{list(spec.input.shape)}, "
            f"got {tensor.dtype}{list(tensor.shape)}"
        )
    return header, tensor


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
    if isinstance(exc, WireError):
        return wire.ErrorCode.MALFORMED
    if isinstance(exc, EdgeCascadeError):
        return wire.ErrorCode.UNAVAILABLE
    return wire.ErrorCode.INTERNAL


def error_reply(header: wire.Header, exc: Exception) -> bytes:
    """An ERROR envelope answering ``header``'s request."""
    body = wire.encode_error(error_code(exc), str(exc))
    return wire.envelope_to_bytes(wire.Envelope(header.reply(wire.MessageType.ERROR), body))


def result_reply(header: wire.Header, result: wire.Result) -> bytes:
    """A RESULT envelope answering ``header``'s request."""
    return wire.envelope_to_bytes(
        wire.Envelope(header.reply(wire.MessageType.RESULT), wire.encode_result(result))
    )
