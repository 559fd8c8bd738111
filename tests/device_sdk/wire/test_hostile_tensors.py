"""Tensor bodies built by an attacker: any declared shape, rank, dtype and length, in every cut encoding.

The decoder's contract: a body decodes to an array of exactly the shape it declares (and,
given the shape the receiver expects, of that shape), or it raises a WireError. Never a
ValueError from numpy, never an allocation sized by a declared shape.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import TensorSpecError, WireError
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.codec import Encoding

#: dimensions an attacker picks: small, zero, and those whose products wrap a 64-bit count
dims = st.one_of(
    st.integers(0, 9),
    st.sampled_from([65536, 2**31, 2**32 - 1, 2**16 + 1, 3 * 2**30]),
    st.integers(0, 2**32 - 1),
)
codes = st.one_of(st.sampled_from([int(c) for c in wire.DType]), st.integers(0, 255))
CUT = (7, 7, 16)  # the shape a receiving partition takes


def _head(code: int, shape: list[int], rank: int | None = None) -> bytes:
    """A tensor body's head: dtype code, rank (declared, may lie), dimensions."""
    return struct.pack(">BB", code, len(shape) if rank is None else rank) + struct.pack(
        f">{len(shape)}I", *shape
    )


def _data_length(code: wire.DType, shape: list[int]) -> int:
    count = math.prod(shape)
    if code is wire.DType.BITS:
        return -(-count // 8)
    if code is wire.DType.QINT8:
        return 5 + count
    return count * code.numpy.itemsize


@settings(max_examples=400)
@given(codes, st.lists(dims, max_size=10), st.binary(max_size=48), st.booleans())
@example(int(wire.DType.FLOAT32), [65536] * 4, b"", False)  # 2**64 elements: an int64 count of 0
@example(int(wire.DType.BITS), [2**32 - 1] * 2, b"\x00" * 3, False)
@example(int(wire.DType.QINT8), [2**16] * 4, b"\x00" * 5, False)
def test_any_declared_shape_decodes_exactly_or_raises_a_wire_error(
    code: int, shape: list[int], data: bytes, fit: bool
) -> None:
    known = code in {int(c) for c in wire.DType}
    if fit and known and len(shape) <= wire.MAX_NDIM and _data_length(wire.DType(code), shape) <= 4096:
        data = bytes(_data_length(wire.DType(code), shape))  # a length that matches the declared shape
    body = _head(code, shape) + data
    try:
        array = wire.decode_tensor(body)
    except WireError:
        return
    assert array.shape == tuple(shape)
    assert len(data) == _data_length(wire.DType(code), shape)


@settings(max_examples=300)
@given(st.sampled_from(list(Encoding)), st.lists(dims, max_size=10), st.binary(max_size=48))
@example(Encoding.FLOAT32, [65536] * 4, b"")
@example(Encoding.FLOAT16, [65536] * 4, b"")
@example(Encoding.INT8, [65536] * 4, b"\x00" * 5)
@example(Encoding.BITS, [65536] * 4, b"")
def test_a_shape_other_than_the_expected_one_is_refused_from_the_head(
    encoding: Encoding, shape: list[int], data: bytes
) -> None:
    body = _head(int(encoding.code), shape) + data
    if tuple(shape) == CUT:
        return
    with pytest.raises(TensorSpecError):  # a shape other than CUT, or a rank beyond any
        codec.decode_features(body, encoding, CUT)


@settings(max_examples=200)
@given(
    st.sampled_from(list(Encoding)), st.integers(0, 255), st.lists(dims, max_size=3), st.binary(max_size=16)
)
def test_a_lying_rank_raises_a_wire_error(
    encoding: Encoding, rank: int, shape: list[int], data: bytes
) -> None:
    body = _head(int(encoding.code), shape, rank) + data  # the rank byte disagrees with the dimensions
    try:
        out = codec.decode_features(body, encoding, CUT)
    except WireError:
        return
    assert out.shape == CUT and out.dtype == np.float32


@given(st.sampled_from(list(Encoding)), st.lists(st.integers(0, 6), max_size=4))
def test_the_expected_shape_changes_nothing_for_a_body_of_that_shape(
    encoding: Encoding, shape: list[int]
) -> None:
    values = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    body = codec.encode_features(values, encoding)
    decoded = codec.decode_features(body, encoding, tuple(shape))
    assert decoded.shape == tuple(shape) and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, codec.decode_features(body, encoding))


def test_the_int64_wrap_around_that_used_to_escape_as_a_value_error() -> None:
    body = _head(int(wire.DType.FLOAT32), [65536] * 4)  # 2**64 elements, and no data
    with pytest.raises(WireError, match="more elements than a body can carry"):
        wire.decode_tensor(body)
    with pytest.raises(TensorSpecError, match=r"\[65536, 65536, 65536, 65536\] where \[7, 7, 16\]"):
        codec.decode_features(body, "float32", CUT)


def test_a_shape_the_wire_cannot_carry_is_refused_when_encoding() -> None:
    empty = np.zeros((2**32, 0), np.float32)  # no elements, but a dimension beyond a uint32
    with pytest.raises(TensorSpecError, match="uint32"):
        wire.encode_tensor(empty)
