"""Envelope bodies: tensors (cut features), results (answers) and errors, each with paired
``encode_*``/``decode_*`` functions. The envelope around them is :mod:`.envelope`.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.errors import TensorSpecError, WireError
from edgecascade.device_sdk.wire.envelope import MAX_BODY_BYTES, ErrorCode, Tier


# ---------------------------------------------------------------------------- tensor body
class DType(enum.IntEnum):
    """Tensor element types on the wire (always little-endian).

    ``QINT8`` and ``BITS`` are encodings of float tensors (see :mod:`edgecascade.device_sdk.wire.codec`):
    ``QINT8`` carries a float32 scale and an int8 zero point before its int8 elements and
    decodes to ``(q - zero_point) * scale``; ``BITS`` carries one bit per element, packed
    with ``numpy.packbits`` (most significant bit first), and decodes to ±1.
    """

    FLOAT32 = 1
    FLOAT16 = 2
    INT8 = 3
    UINT8 = 4
    QINT8 = 5
    BITS = 6

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(_NUMPY_DTYPES[self]).newbyteorder("<")

    @classmethod
    def of(cls, dtype: np.dtype) -> DType:
        for code, name in _NUMPY_DTYPES.items():
            if code in (DType.FLOAT32, DType.FLOAT16, DType.INT8, DType.UINT8) and np.dtype(dtype) == name:
                return code
        raise TensorSpecError(f"dtype {dtype} cannot be sent")


_NUMPY_DTYPES = {
    DType.FLOAT32: "float32",
    DType.FLOAT16: "float16",
    DType.INT8: "int8",
    DType.UINT8: "uint8",
    DType.QINT8: "int8",
    DType.BITS: "uint8",
}
_TENSOR_HEAD = struct.Struct(">BB")
_QUANT = struct.Struct("<fb")  # scale, zero point
MAX_NDIM = 8


_MAX_DIM = 2**32 - 1  # a dimension is a uint32 on the wire
_MAX_ELEMENTS = 8 * MAX_BODY_BYTES  # the most elements a body can carry (1 bit each)


def _tensor_head(code: DType, shape: tuple[int, ...]) -> bytes:
    if len(shape) > MAX_NDIM:
        raise TensorSpecError(f"rank {len(shape)} exceeds {MAX_NDIM}")
    if any(not 0 <= d <= _MAX_DIM for d in shape):
        raise TensorSpecError(f"shape {list(shape)} has a dimension a uint32 cannot hold")
    return _TENSOR_HEAD.pack(int(code), len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def encode_tensor(array: np.ndarray) -> bytes:
    """Tensor body: dtype code, rank, each dimension (uint32), then the raw elements."""
    code = DType.of(array.dtype)
    data = np.ascontiguousarray(array, dtype=code.numpy).tobytes()
    return _tensor_head(code, array.shape) + data


def encode_qint8(values: np.ndarray, scale: float, zero_point: int) -> bytes:
    """A ``QINT8`` body: int8 ``values`` that stand for ``(values - zero_point) * scale``."""
    if not (math.isfinite(scale) and 0 < scale < 1e30) or not -128 <= zero_point <= 127:
        raise TensorSpecError(f"bad int8 quantisation: scale {scale}, zero point {zero_point}")
    data = np.ascontiguousarray(values, dtype=np.int8).tobytes()
    return _tensor_head(DType.QINT8, values.shape) + _QUANT.pack(scale, zero_point) + data


def encode_bits(values: np.ndarray) -> bytes:
    """A ``BITS`` body: one bit per element, set where ``values > 0``."""
    packed = np.packbits(np.asarray(values).reshape(-1) > 0)
    return _tensor_head(DType.BITS, np.shape(values)) + packed.tobytes()


def tensor_code(body: bytes) -> DType:
    """The element type of a tensor body, read from its first byte."""
    if not body:
        raise WireError("tensor body truncated")
    try:
        return DType(body[0])
    except ValueError:
        raise TensorSpecError(f"unknown tensor dtype code {body[0]}") from None


def tensor_shape(body: bytes) -> tuple[DType, tuple[int, ...]]:
    """The element type and shape a tensor body declares, read from its head alone.

    Dimensions are Python ints (never a fixed-width product that could wrap around), so a
    receiver can compare them with the shape it expects before any size arithmetic.
    """
    code = tensor_code(body)
    if len(body) < _TENSOR_HEAD.size:
        raise WireError("tensor body truncated")
    ndim = body[1]
    if ndim > MAX_NDIM:
        raise TensorSpecError(f"rank {ndim} exceeds {MAX_NDIM}")
    if len(body) < _TENSOR_HEAD.size + 4 * ndim:
        raise WireError("tensor body truncated in its shape")
    return code, struct.unpack_from(f">{ndim}I", body, _TENSOR_HEAD.size)


def _data_length(code: DType, count: int) -> int:
    if code == DType.BITS:
        return -(-count // 8)
    if code == DType.QINT8:
        return _QUANT.size + count
    return count * code.numpy.itemsize


def decode_tensor(body: bytes, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Inverse of the ``encode_*`` functions; rejects bad lengths and non-finite floats.

    With ``shape`` (what the receiver's model takes), a body declaring any other shape is a
    :class:`TensorSpecError` before its size is computed. Element counts are Python ints,
    so no declared shape can wrap a count around to match a short body. ``QINT8`` and
    ``BITS`` bodies come back as float32 (dequantised, or ±1). Every failure is a
    :class:`WireError`.
    """
    code, declared = tensor_shape(body)
    if shape is not None and declared != tuple(shape):
        raise TensorSpecError(f"tensor of shape {list(declared)} where {list(shape)} is expected")
    if math.prod(d for d in declared if d) > _MAX_ELEMENTS:  # even with a zero, numpy refuses such a shape
        raise WireError(f"tensor shape {list(declared)} declares more elements than a body can carry")
    offset = _TENSOR_HEAD.size + 4 * len(declared)
    count = math.prod(declared)
    if code == DType.QINT8 and len(body) - offset == count:
        raise WireError("int8 tensor without its scale and zero point")
    if len(body) - offset != _data_length(code, count):
        raise WireError(
            f"tensor data length {len(body) - offset} does not match shape {list(declared)} of {code.name}"
        )
    if code == DType.BITS:
        bits = np.unpackbits(np.frombuffer(body, np.uint8, offset=offset), count=count)
        return (bits.astype(np.float32) * 2.0 - 1.0).reshape(declared)
    if code == DType.QINT8:
        scale, zero_point = _QUANT.unpack_from(body, offset)
        if not (math.isfinite(scale) and 0 < scale < 1e30):  # 255 steps of it must stay finite
            raise TensorSpecError(f"int8 tensor with scale {scale}")
        q = np.frombuffer(body, np.int8, offset=offset + _QUANT.size).astype(np.float32)
        return ((q - np.float32(zero_point)) * np.float32(scale)).reshape(declared)
    dtype = code.numpy
    array = np.frombuffer(body, dtype=dtype, offset=offset).reshape(declared).astype(dtype.newbyteorder("="))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise TensorSpecError("tensor holds NaN or infinite values")
    return array


# ---------------------------------------------------------------------------- result body
_RESULT_HEAD = struct.Struct(">BBHHI")
RESULT_DEGRADED = 0x01


@dataclass(frozen=True)
class Result:
    """An answer from a tier.

    ``degraded`` means a tier above could not be reached and this is the best local answer;
    ``upstream_bytes`` counts the bytes the answering path sent on the links above the
    receiving tier (gateway to cloud), so every node can account for traffic it caused.
    """

    label: int
    probabilities: np.ndarray
    tier: Tier
    degraded: bool = False
    upstream_bytes: int = 0


def encode_result(result: Result) -> bytes:
    """Result body: flags, tier, label, class count, upstream bytes, float32 probabilities."""
    probs = np.ascontiguousarray(result.probabilities, dtype="<f4").ravel()
    flags = RESULT_DEGRADED if result.degraded else 0
    head = _RESULT_HEAD.pack(flags, int(result.tier), result.label, probs.size, result.upstream_bytes)
    return head + probs.tobytes()


def decode_result(body: bytes) -> Result:
    """Inverse of :func:`encode_result`; checks tier, label range and probabilities."""
    if len(body) < _RESULT_HEAD.size:
        raise WireError("result body truncated")
    flags, tier, label, n, upstream = _RESULT_HEAD.unpack_from(body)
    if len(body) != _RESULT_HEAD.size + 4 * n:
        raise WireError("result body length does not match its class count")
    try:
        tier_enum = Tier(tier)
    except ValueError:
        raise WireError(f"unknown tier {tier}") from None
    if not label < n:
        raise WireError(f"label {label} outside {n} classes")
    probs = np.frombuffer(body, dtype="<f4", offset=_RESULT_HEAD.size).astype(np.float32)
    if not np.isfinite(probs).all():
        raise TensorSpecError("result probabilities hold NaN or infinite values")
    return Result(label, probs, tier_enum, bool(flags & RESULT_DEGRADED), upstream)


# ----------------------------------------------------------------------------- error body
_ERROR_HEAD = struct.Struct(">H")
MAX_ERROR_MESSAGE = 1024


def encode_error(code: ErrorCode, message: str) -> bytes:
    """Error body: code then a UTF-8 message (truncated to a bounded length)."""
    return _ERROR_HEAD.pack(int(code)) + message.encode("utf-8")[:MAX_ERROR_MESSAGE]


def decode_error(body: bytes) -> tuple[ErrorCode, str]:
    """Inverse of :func:`encode_error`; unknown codes read as INTERNAL."""
    if len(body) < _ERROR_HEAD.size:
        raise WireError("error body truncated")
    (code,) = _ERROR_HEAD.unpack_from(body)
    try:
        error = ErrorCode(code)
    except ValueError:
        error = ErrorCode.INTERNAL
    return error, body[_ERROR_HEAD.size :].decode("utf-8", errors="replace")
