"""Hard examples: inputs the cascade found difficult, as they travel to the cloud for retraining.

One record format for every hop (device outbox, gateway relay, cloud intake), so an
example keeps its identity end to end. The id is a content id: the sha256 of what makes
the example (model version, cut, encoding, features, raw input), so storing or uploading
the same example twice is detectable and harmless (idempotent uploads).

On the wire a batch is JSON ``{"examples": [record, ...]}`` with at most
:data:`MAX_BATCH` records; tensors are wire tensor bodies (:mod:`edgecascade.device_sdk.wire.codec`), base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.wire.bodies import encode_tensor
from edgecascade.device_sdk.wire.codec import Encoding

MAX_BATCH = 256
"""Most records one upload may carry."""

MAX_TENSOR_BYTES = 64 * 1024
"""Largest features or raw tensor body accepted in a record."""

CUTS = ("cut1", "cut2")
"""Which features a record carries: the device's output (gateway input) or the gateway's."""

REASONS = ("reached_cloud", "exits_disagree", "low_margin", "degraded", "audit", "unknown", "drift")
"""Why an example was selected (see the selection filters); ``audit``: a uniform random sample;
``drift``: the input that raised the device's drift alarm (:mod:`~edgecascade.device_sdk.core.drift`)."""


class HardExampleError(WireError):
    """A hard-example record that cannot be accepted; the message says why."""


def content_id(model_version: int, cut: str, encoding: str, features: bytes, raw: bytes | None) -> str:
    """The sha256 (hex) identifying an example by its content."""
    h = hashlib.sha256()
    h.update(struct.pack(">I", model_version))
    for part in (cut.encode(), encoding.encode(), features, raw or b""):
        h.update(struct.pack(">I", len(part)) + part)
    return h.hexdigest()


def raw_body(x: np.ndarray) -> bytes | None:
    """An input as a record's raw tensor body (uint8 as given, else float32); None if too large."""
    x = np.asarray(x)
    body = encode_tensor(x if x.dtype == np.uint8 else x.astype(np.float32))
    return body if len(body) <= MAX_TENSOR_BYTES else None


@dataclass(frozen=True)
class HardExample:
    """One hard example: features at a cut (never the raw input unless the app opts in)."""

    device_id: str
    model_version: int
    cut: str
    encoding: str
    features: bytes  # a wire tensor body in ``encoding``
    reasons: tuple[str, ...]
    predicted: int  # the label the cascade answered with
    confidence: float
    tier: str  # the tier that answered
    created_at: float  # unix seconds on the selecting node
    raw: bytes | None = None  # uint8 tensor body of the input, only when the app enables it

    @classmethod
    def answered(
        cls,
        *,
        device_id: str,
        model_version: int,
        encoding: str,
        features: bytes,
        reasons: tuple[str, ...],
        label: int,
        probabilities: np.ndarray,
        tier: str,
        created_at: float,
        raw: bytes | None = None,
    ) -> HardExample:
        """The record a node keeps of an input it answered: cut-1 features, why, and the answer."""
        confidence = min(1.0, max(0.0, float(np.max(probabilities))))
        return cls(
            device_id,
            model_version,
            "cut1",
            encoding,
            features,
            reasons,
            label,
            confidence,
            tier,
            created_at,
            raw,
        )

    @property
    def example_id(self) -> str:
        return content_id(self.model_version, self.cut, self.encoding, self.features, self.raw)

    def to_json(self) -> dict[str, Any]:
        """The record as sent in an upload batch."""
        record: dict[str, Any] = {
            "id": self.example_id,
            "device_id": self.device_id,
            "model_version": self.model_version,
            "cut": self.cut,
            "encoding": self.encoding,
            "features": base64.b64encode(self.features).decode(),
            "reasons": list(self.reasons),
            "predicted": self.predicted,
            "confidence": self.confidence,
            "tier": self.tier,
            "created_at": self.created_at,
        }
        if self.raw is not None:
            record["raw"] = base64.b64encode(self.raw).decode()
        return record

    @classmethod
    def from_json(cls, record: Any) -> HardExample:
        """Parse and check one record; any problem is a :class:`HardExampleError`.

        Checks types and ranges, that tensors are base64 within :data:`MAX_TENSOR_BYTES`,
        and that ``id`` is the content id of what the record holds (so an id cannot be
        reused for other content).
        """
        if not isinstance(record, dict):
            raise HardExampleError("a hard example must be a JSON object")
        try:
            example = cls(
                device_id=_text(record, "device_id", 64),
                model_version=_int(record, "model_version", 1, 2**32 - 1),
                cut=_choice(record, "cut", CUTS),
                encoding=_choice(record, "encoding", tuple(e.value for e in Encoding)),
                features=_tensor(record, "features"),
                reasons=_reasons(record),
                predicted=_int(record, "predicted", 0, 65535),
                confidence=_unit(record, "confidence"),
                tier=_text(record, "tier", 32),
                created_at=_number(record, "created_at"),
                raw=_tensor(record, "raw") if record.get("raw") is not None else None,
            )
        except KeyError as exc:
            raise HardExampleError(f"missing field {exc}") from None
        if record.get("id") != example.example_id:
            raise HardExampleError("id is not the content id of this example")
        return example


def _text(record: dict[str, Any], key: str, limit: int) -> str:
    value = record[key]
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise HardExampleError(f"{key} must be a string of 1..{limit} characters")
    return value


def _int(record: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HardExampleError(f"{key} must be an integer in [{lo}, {hi}]")
    return value


def _number(record: dict[str, Any], key: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HardExampleError(f"{key} must be a finite number")
    return float(value)


def _unit(record: dict[str, Any], key: str) -> float:
    value = _number(record, key)
    if not 0.0 <= value <= 1.0:
        raise HardExampleError(f"{key} must be in [0, 1]")
    return value


def _choice(record: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = record[key]
    if value not in allowed:
        raise HardExampleError(f"{key} must be one of {', '.join(allowed)}")
    return str(value)


def _reasons(record: dict[str, Any]) -> tuple[str, ...]:
    value = record["reasons"]
    if not isinstance(value, list) or not value or any(r not in REASONS for r in value):
        raise HardExampleError(f"reasons must be a non-empty list of {', '.join(REASONS)}")
    return tuple(value)


def _tensor(record: dict[str, Any], key: str) -> bytes:
    value = record[key]
    if not isinstance(value, str) or len(value) > 4 * MAX_TENSOR_BYTES // 3 + 4:
        raise HardExampleError(f"{key} must be base64 of at most {MAX_TENSOR_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HardExampleError(f"{key} is not valid base64") from None
    if not data:
        raise HardExampleError(f"{key} is empty")
    return data
