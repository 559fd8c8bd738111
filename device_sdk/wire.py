"""The one wire format of EdgeCascade: a versioned binary envelope and its bodies.

An envelope is a fixed header followed by an opaque body::

    offset size  field
    0      2     magic b"EC"
    2      1     schema version (SCHEMA_VERSION)
    3      1     message type (MessageType)
    4      1     flags (bit 0: body is encrypted, see device_sdk.crypto)
    5      4     model version (uint32)
    9      8     sequence number (uint64, per sender)
    17     16    request id
    33     1     device id length n (1..64)
    34     n     device id (ASCII letters, digits, "-", "_", ".")
    34+n   4     body length (uint32)
    38+n   ...   body

All integers are big-endian. The header bytes are what :mod:`device_sdk.crypto` binds as AAD.
Bodies have their own paired ``encode_*``/``decode_*`` functions: a tensor (features), a
result (label, probabilities, answering tier) or an error (code, message). The same
envelope travels over MQTT (device to gateway) and HTTP (gateway to cloud).

Topic and route names live here too, so the transports and the services agree on them.
"""

from __future__ import annotations

import enum
import math
import re
import struct
import uuid
from dataclasses import dataclass, field

import numpy as np

from device_sdk.errors import SchemaVersionError, TensorSpecError, WireError

SCHEMA_VERSION = 1
MAGIC = b"EC"
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DEVICE_ID = 64

# MQTT topics: a device publishes requests and receives replies under its own prefix.
TOPIC_ROOT = "ec/v1/dev"
GATEWAY_SHARE_GROUP = "gateways"


def request_topic(device_id: str) -> str:
    """Topic a device publishes inference requests on."""
    return f"{TOPIC_ROOT}/{device_id}/req"


def response_topic(device_id: str) -> str:
    """Topic a device receives replies on (sent as the MQTT v5 response topic)."""
    return f"{TOPIC_ROOT}/{device_id}/res"


def gateway_subscription(shared: bool = True) -> str:
    """Subscription that lets one or several gateways serve every device's requests."""
    topic = f"{TOPIC_ROOT}/+/req"
    return f"$share/{GATEWAY_SHARE_GROUP}/{topic}" if shared else topic


def device_id_from_topic(topic: str) -> str | None:
    """The device id in a request topic, or None if the topic is not a request topic."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == TOPIC_ROOT and parts[4] == "req":
        return parts[3]
    return None


# HTTP routes of the cloud service.
ROUTE_INFER = "/v1/infer"
ROUTE_HEALTH = "/healthz"
ROUTE_METRICS = "/v1/metrics"
ROUTE_ENROLL = "/v1/devices/enroll"
ROUTE_HARD_EXAMPLES = "/v1/hard-examples"
CONTENT_TYPE = "application/vnd.edgecascade.envelope"


class MessageType(enum.IntEnum):
    """What an envelope carries."""

    INFER_REQUEST = 1  # features from a lower tier, asking for an answer
    RESULT = 2  # an answer: label, probabilities, tier
    ERROR = 3  # the request could not be served


class Tier(enum.IntEnum):
    """Which tier produced an answer."""

    DEVICE = 1
    DEVICE_CACHE = 2
    GATEWAY = 3
    GATEWAY_CACHE = 4
    CLOUD = 5

    @property
    def label(self) -> str:
        return self.name.lower()


class ErrorCode(enum.IntEnum):
    """Error codes carried by ERROR bodies; HTTP statuses are derived from them."""

    MALFORMED = 400
    UNAUTHORIZED = 401  # not encrypted, not decryptable, unknown key or replayed
    BAD_TENSOR = 422
    UNKNOWN_MODEL_VERSION = 409
    UNSUPPORTED_SCHEMA = 426
    UNAVAILABLE = 503
    INTERNAL = 500


FLAG_ENCRYPTED = 0x01
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEAD = struct.Struct(">2sBBBIQ16sB")
_BODY_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Header:
    """Routing and replay-protection fields of an envelope."""

    msg_type: MessageType
    device_id: str
    model_version: int
    seq: int = 0
    request_id: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    flags: int = 0

    def __post_init__(self) -> None:
        if not _DEVICE_ID_RE.match(self.device_id):
            raise WireError(f"invalid device id {self.device_id!r}")
        if len(self.request_id) != 16:
            raise WireError("request id must be 16 bytes")
        if not 0 <= self.model_version < 2**32 or not 0 <= self.seq < 2**64:
            raise WireError("model version or sequence number out of range")

    def reply(self, msg_type: MessageType) -> Header:
        """Header of the answer to this message: same request id, device and model."""
        return Header(msg_type, self.device_id, self.model_version, self.seq, self.request_id)


@dataclass(frozen=True)
class Envelope:
    """A header and its (possibly encrypted) body bytes."""

    header: Header
    body: bytes


def header_to_bytes(header: Header) -> bytes:
    """The serialised header (without body length): the AAD for encrypted bodies."""
    device = header.device_id.encode("ascii")
    return (
        _HEAD.pack(
            MAGIC,
            SCHEMA_VERSION,
            int(header.msg_type),
            header.flags,
            header.model_version,
            header.seq,
            header.request_id,
            len(device),
        )
        + device
    )


def envelope_to_bytes(envelope: Envelope) -> bytes:
    """Serialise an envelope."""
    if len(envelope.body) > MAX_BODY_BYTES:
        raise WireError(f"body of {len(envelope.body)} bytes exceeds {MAX_BODY_BYTES}")
    return header_to_bytes(envelope.header) + _BODY_LEN.pack(len(envelope.body)) + envelope.body


def envelope_from_bytes(data: bytes) -> Envelope:
    """Parse an envelope, checking magic, schema version, lengths and field ranges."""
    if len(data) < _HEAD.size:
        raise WireError(f"envelope truncated: {len(data)} bytes, header needs {_HEAD.size}")
    magic, version, msg_type, flags, model_version, seq, request_id, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise WireError("not an EdgeCascade envelope (bad magic)")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(f"unsupported schema version {version} (this reads {SCHEMA_VERSION})")
    try:
        kind = MessageType(msg_type)
    except ValueError:
        raise WireError(f"unknown message type {msg_type}") from None
    offset = _HEAD.size
    if n == 0 or n > MAX_DEVICE_ID or len(data) < offset + n + _BODY_LEN.size:
        raise WireError("envelope truncated or bad device id length")
    try:
        device_id = data[offset : offset + n].decode("ascii")
    except UnicodeDecodeError:
        raise WireError("device id is not ASCII") from None
    offset += n
    (body_len,) = _BODY_LEN.unpack_from(data, offset)
    offset += _BODY_LEN.size
    if body_len > MAX_BODY_BYTES:
        raise WireError(f"body length {body_len} exceeds {MAX_BODY_BYTES}")
    if len(data) - offset != body_len:
        raise WireError(f"body length mismatch: header says {body_len}, got {len(data) - offset}")
    header = Header(kind, device_id, model_version, seq, request_id, flags)
    return Envelope(header, bytes(data[offset:]))


# ---------------------------------------------------------------------------- tensor body
class DType(enum.IntEnum):
    """Tensor element types on the wire (always little-endian).

    ``QINT8`` and ``BITS`` are encodings of float tensors (see :mod:`device_sdk.codec`):
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


def _tensor_head(code: DType, shape: tuple[int, ...]) -> bytes:
    if len(shape) > MAX_NDIM:
        raise TensorSpecError(f"rank {len(shape)} exceeds {MAX_NDIM}")
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


def _data_length(code: DType, count: int) -> int:
    if code == DType.BITS:
        return -(-count // 8)
    if code == DType.QINT8:
        return _QUANT.size + count
    return count * code.numpy.itemsize


def decode_tensor(body: bytes) -> np.ndarray:
    """Inverse of the ``encode_*`` functions; rejects bad lengths and non-finite floats.

    ``QINT8`` and ``BITS`` bodies come back as float32 (dequantised, or ±1).
    """
    code = tensor_code(body)
    if len(body) < _TENSOR_HEAD.size:
        raise WireError("tensor body truncated")
    ndim = body[1]
    if ndim > MAX_NDIM:
        raise TensorSpecError(f"rank {ndim} exceeds {MAX_NDIM}")
    offset = _TENSOR_HEAD.size + 4 * ndim
    if len(body) < offset:
        raise WireError("tensor body truncated in its shape")
    shape = struct.unpack_from(f">{ndim}I", body, _TENSOR_HEAD.size)
    count = int(np.prod(shape, dtype=np.int64)) if ndim else 1
    if code == DType.QINT8 and len(body) - offset == count:
        raise WireError("int8 tensor without its scale and zero point")
    if len(body) - offset != _data_length(code, count):
        raise WireError(
            f"tensor data length {len(body) - offset} does not match shape {shape} of {code.name}"
        )
    if code == DType.BITS:
        bits = np.unpackbits(np.frombuffer(body, np.uint8, offset=offset), count=count)
        return (bits.astype(np.float32) * 2.0 - 1.0).reshape(shape)
    if code == DType.QINT8:
        scale, zero_point = _QUANT.unpack_from(body, offset)
        if not (math.isfinite(scale) and 0 < scale < 1e30):  # 255 steps of it must stay finite
            raise TensorSpecError(f"int8 tensor with scale {scale}")
        q = np.frombuffer(body, np.int8, offset=offset + _QUANT.size).astype(np.float32)
        return ((q - np.float32(zero_point)) * np.float32(scale)).reshape(shape)
    dtype = code.numpy
    array = np.frombuffer(body, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))
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
