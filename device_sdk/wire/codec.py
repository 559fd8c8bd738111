"""How cut features are encoded for the next tier: float32, float16, int8 or 1 bit per value.

The manifest names one :class:`Encoding` per cut (``PartitionSpec.encoding``); the sending
tier encodes with :func:`encode_features` and the receiving one decodes with
:func:`decode_features`, which refuses a body in any other encoding. The byte layouts are
those of the tensor bodies in :mod:`edgecascade.device_sdk.wire`.

- ``float32``: exact.
- ``float16``: half the bytes; exact for values float16 can hold, else rounded.
- ``int8``: a quarter of the bytes; per-tensor affine quantisation over the tensor's own
  range (``x ≈ (q - zero_point) * scale``), error at most ``scale / 2``.
- ``1bit``: one thirty-second of the bytes; only for a binarised cut, whose values are ±1
  already (sign in the model, trained with a straight-through estimator), so it is exact.
"""

from __future__ import annotations

import enum
import math

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import TensorSpecError

__all__ = ["Encoding", "decode_features", "encode_features", "encoded_size", "quantise_int8", "through_wire"]


class Encoding(enum.StrEnum):
    """A cut's encoding on the wire, as the manifest spells it."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"
    BITS = "1bit"

    @property
    def code(self) -> wire.DType:
        return _CODES[self]


_CODES = {
    Encoding.FLOAT32: wire.DType.FLOAT32,
    Encoding.FLOAT16: wire.DType.FLOAT16,
    Encoding.INT8: wire.DType.QINT8,
    Encoding.BITS: wire.DType.BITS,
}


def quantise_int8(values: np.ndarray) -> tuple[np.ndarray, float, int]:
    """``(q, scale, zero_point)`` with ``values ≈ (q - zero_point) * scale`` over the values' range.

    The range always includes 0 so that zeros (ReLU features are mostly zeros) stay exact.
    """
    lo = min(float(np.min(values, initial=0.0)), 0.0)
    hi = max(float(np.max(values, initial=0.0)), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    scale = max(scale, float(np.finfo(np.float32).tiny))  # the wire's float32 scale must not round to 0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    q = np.clip(np.rint(values / scale) + zero_point, -128, 127).astype(np.int8)
    return q, scale, zero_point


def encode_features(features: np.ndarray, encoding: Encoding | str) -> bytes:
    """A wire tensor body holding ``features`` in ``encoding``; NaN or inf is refused."""
    encoding = Encoding(encoding)
    values = np.asarray(features, dtype=np.float32)
    if not np.isfinite(values).all():
        raise TensorSpecError("features hold NaN or infinite values")
    if encoding is Encoding.FLOAT32:
        return wire.encode_tensor(values)
    if encoding is Encoding.FLOAT16:
        return wire.encode_tensor(values.astype(np.float16))
    if encoding is Encoding.INT8:
        return wire.encode_qint8(*quantise_int8(values))
    return wire.encode_bits(values)


def decode_features(
    body: bytes, encoding: Encoding | str, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """Features as float32 from a tensor body that must be in ``encoding`` (and of ``shape``, if given).

    A receiver passes the shape its partition takes, so a body declaring another shape is
    refused from its head alone; any failure is a :class:`~edgecascade.device_sdk.errors.WireError`.
    """
    encoding = Encoding(encoding)
    code = wire.tensor_code(body)
    if code != encoding.code:
        raise TensorSpecError(f"features arrived as {code.name}; this cut is encoded as {encoding.value}")
    return wire.decode_tensor(body, shape).astype(np.float32, copy=False)


def through_wire(batch: np.ndarray, encoding: Encoding | str) -> np.ndarray:
    """What the next tier receives for each sample of ``batch``, each encoded on its own as on the wire."""
    encoding = Encoding(encoding)
    if encoding is Encoding.FLOAT32:
        return np.asarray(batch, dtype=np.float32)
    return np.stack([decode_features(encode_features(sample, encoding), encoding) for sample in batch])


def encoded_size(encoding: Encoding | str, shape: tuple[int, ...]) -> int:
    """Bytes of the tensor body for features of ``shape`` in ``encoding`` (no envelope)."""
    encoding = Encoding(encoding)
    count = math.prod(shape)
    head = 2 + 4 * len(shape)
    data = {
        Encoding.FLOAT32: 4 * count,
        Encoding.FLOAT16: 2 * count,
        Encoding.INT8: 5 + count,
        Encoding.BITS: -(-count // 8),
    }[encoding]
    return head + data
