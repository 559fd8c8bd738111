"""The one wire format of EdgeCascade: a versioned binary envelope and its bodies.

An envelope is a fixed header followed by an opaque body::

    offset size  field
    0      2     magic b"EC"
    2      1     schema version (SCHEMA_VERSION)
    3      1     message type (MessageType)
    4      1     flags (bit 0: body is encrypted, see edgecascade.device_sdk.wire.crypto)
    5      4     model version (uint32)
    9      8     sequence number (uint64, per sender)
    17     16    request id
    33     1     device id length n (1..64)
    34     n     device id (ASCII letters, digits, "-", "_", ".")
    34+n   4     body length (uint32)
    38+n   ...   body

All integers are big-endian. The header bytes are what :mod:`edgecascade.device_sdk.wire.crypto` binds as AAD.
Bodies have their own paired ``encode_*``/``decode_*`` functions: a tensor (features), a
result (label, probabilities, answering tier) or an error (code, message). The same
envelope travels over MQTT (device to gateway) and HTTP (gateway to cloud).

Topic and route names live here too, so the transports and the services agree on them.
"""

from __future__ import annotations

import enum
import re
import struct
import uuid
from dataclasses import dataclass, field

from edgecascade.device_sdk.errors import SchemaVersionError, WireError

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


def upload_topic(device_id: str) -> str:
    """Topic a device publishes hard-example upload batches on, for a gateway to relay."""
    return f"{TOPIC_ROOT}/{device_id}/hx"


def gateway_subscription(shared: bool = True, kind: str = "req") -> str:
    """Subscription that lets one or several gateways serve every device's requests (or uploads, ``hx``)."""
    topic = f"{TOPIC_ROOT}/+/{kind}"
    return f"$share/{GATEWAY_SHARE_GROUP}/{topic}" if shared else topic


def gateway_subscriptions(shared: bool = True) -> tuple[str, ...]:
    """Every subscription a gateway makes: inference requests and hard-example uploads."""
    return gateway_subscription(shared, "req"), gateway_subscription(shared, "hx")


def device_id_from_topic(topic: str, kind: str = "req") -> str | None:
    """The device id in a request (or ``kind``) topic, or None if the topic is not one."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == TOPIC_ROOT and parts[4] == kind:
        return parts[3]
    return None


# HTTP routes of the cloud service.
ROUTE_INFER = "/v1/infer"
ROUTE_HEALTH = "/healthz"
ROUTE_METRICS = "/v1/metrics"
ROUTE_PROMETHEUS = "/metrics"  # Prometheus text format (the cloud's, and the gateway's own endpoint)
ROUTE_ENROLL = "/v1/devices/enroll"
ROUTE_HARD_EXAMPLES = (
    "/v1/hard-examples"  # JSON batch in, JSON receipt out (edgecascade.device_sdk.learning.batch)
)
ROUTE_MODELS = "/v1/models"  # registry: list, current, files of a release, promote, rollback
ROUTE_HEARTBEAT = "/v1/heartbeats"  # a gateway's status, JSON (edgecascade.device_sdk.wire.heartbeat)

# The cloud's retained model announcement (edgecascade.device_sdk.model.announcement); every node may read it.
MODELS_TOPIC = "ec/v1/models/current"

# A gateway's retained status: ``online`` (JSON with its model version) once connected, and
# ``offline``, its MQTT last will, when it disconnects or its connection dies.
GATEWAY_STATUS_ROOT = "ec/v1/gw"


def gateway_status_topic(gateway_id: str) -> str:
    """Topic of a gateway's retained status; the id must be one topic level (no ``/``, ``+``, ``#``)."""
    if not gateway_id or any(c in gateway_id for c in "/+#\0"):
        raise ValueError(f"a gateway id must be one MQTT topic level, got {gateway_id!r}")
    return f"{GATEWAY_STATUS_ROOT}/{gateway_id}/status"


CONTENT_TYPE = "application/vnd.edgecascade.envelope"


class MessageType(enum.IntEnum):
    """What an envelope carries."""

    INFER_REQUEST = 1  # features from a lower tier, asking for an answer
    RESULT = 2  # an answer: label, probabilities, tier
    ERROR = 3  # the request could not be served
    HARD_EXAMPLES = 4  # an upload batch of hard examples (JSON body, edgecascade.device_sdk.learning.batch)
    HARD_EXAMPLES_ACK = 5  # the receipt for an upload: ids accepted, duplicate, rejected (JSON body)


class Tier(enum.IntEnum):
    """Which tier produced an answer."""

    DEVICE = 1
    DEVICE_CACHE = 2
    GATEWAY = 3
    GATEWAY_CACHE = 4
    CLOUD = 5

    @property
    def label(self) -> str:
        return _TIER_LABELS[self]


_TIER_LABELS = {tier: tier.name.lower() for tier in Tier}


class ErrorCode(enum.IntEnum):
    """Error codes carried by ERROR bodies; HTTP statuses are derived from them."""

    MALFORMED = 400
    UNAUTHORIZED = 401  # not encrypted, not decryptable, unknown key or replayed
    BAD_TENSOR = 422
    UNKNOWN_MODEL_VERSION = 409
    UNSUPPORTED_SCHEMA = 426
    RATE_LIMITED = 429  # the device sent more than its gateway's per-device rate allows
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
