"""Cut encodings: exact round trips, bounded int8 error, and refusal of bad payloads."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import EdgeCascadeError, TensorSpecError, WireError
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.codec import Encoding

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)
finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@given(hnp.arrays(np.float32, shapes, elements=finite))
def test_float32_round_trips_exactly(x: np.ndarray) -> None:
    body = codec.encode_features(x, Encoding.FLOAT32)
    np.testing.assert_array_equal(codec.decode_features(body, "float32"), x)
    assert len(body) == codec.encoded_size("float32", x.shape)


@given(hnp.arrays(np.float16, shapes, elements=st.floats(-6e4, 6e4, allow_nan=False, width=16)))
def test_float16_round_trips_values_float16_can_hold(x: np.ndarray) -> None:
    body = codec.encode_features(x.astype(np.float32), Encoding.FLOAT16)
    np.testing.assert_array_equal(codec.decode_features(body, "float16"), x.astype(np.float32))
    assert len(body) == codec.encoded_size("float16", x.shape)


@given(hnp.arrays(np.int8, shapes), st.floats(1e-4, 10.0), st.integers(-128, 127))
def test_int8_round_trips_its_grid_exactly(q: np.ndarray, scale: float, zero_point: int) -> None:
    scale = float(np.float32(scale))  # the wire carries a float32 scale
    values = ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    body = wire.encode_qint8(q, scale, zero_point)
    np.testing.assert_array_equal(codec.decode_features(body, "int8"), values)


@given(hnp.arrays(np.float32, shapes, elements=finite))
def test_int8_error_is_at_most_half_a_step(x: np.ndarray) -> None:
    _, scale, _ = codec.quantise_int8(x)
    back = codec.decode_features(codec.encode_features(x, Encoding.INT8), Encoding.INT8)
    assert np.abs(back - x).max() <= scale / 2 + 1e-3 * scale + 1e-6
    assert len(codec.encode_features(x, Encoding.INT8)) == codec.encoded_size("int8", x.shape)


def test_int8_keeps_zeros_exact() -> None:
    relu = np.maximum(np.random.default_rng(0).normal(size=(7, 7, 16)), 0).astype(np.float32)
    back = codec.decode_features(codec.encode_features(relu, "int8"), "int8")
    assert (back[relu == 0] == 0).all()


@given(hnp.arrays(np.bool_, shapes))
def test_bits_round_trip_plus_minus_one_exactly(signs: np.ndarray) -> None:
    x = np.where(signs, 1.0, -1.0).astype(np.float32)
    body = codec.encode_features(x, Encoding.BITS)
    np.testing.assert_array_equal(codec.decode_features(body, "1bit"), x)
    assert len(body) == codec.encoded_size("1bit", x.shape) == 2 + 4 * x.ndim + -(-x.size // 8)


def test_a_binarised_cut_costs_one_thirty_second_of_float32() -> None:
    data = {e: codec.encoded_size(e, (7, 7, 16)) - 2 - 12 for e in Encoding}
    assert data == {"float32": 3136, "float16": 1568, "int8": 789, "1bit": 98}


def test_wrong_length_bit_payload_is_refused() -> None:
    body = codec.encode_features(np.ones((7, 7, 16), np.float32), "1bit")
    for bad in (body[:-1], body + b"\0"):
        with pytest.raises(WireError, match="length"):
            codec.decode_features(bad, "1bit")


def test_int8_without_scale_or_with_a_bad_scale_is_refused() -> None:
    body = codec.encode_features(np.ones((2, 3), np.float32), "int8")
    head = 2 + 4 * 2
    with pytest.raises(WireError, match="scale"):
        codec.decode_features(body[:head] + body[head + 5 :], "int8")
    for scale in (float("nan"), float("inf"), 0.0, -1.0):
        bad = body[:head] + struct.pack("<f", scale) + body[head + 4 :]
        with pytest.raises(TensorSpecError, match="scale"):
            codec.decode_features(bad, "int8")
    with pytest.raises(TensorSpecError):
        wire.encode_qint8(np.zeros(3, np.int8), float("nan"), 0)


def test_non_finite_features_are_refused_before_sending() -> None:
    for encoding in Encoding:
        with pytest.raises(TensorSpecError, match="NaN"):
            codec.encode_features(np.array([1.0, np.nan], np.float32), encoding)
        with pytest.raises(TensorSpecError):
            codec.encode_features(np.array([np.inf], np.float32), encoding)


def test_a_body_in_another_encoding_is_refused() -> None:
    body = codec.encode_features(np.ones(4, np.float32), "float32")
    with pytest.raises(TensorSpecError, match="1bit"):
        codec.decode_features(body, "1bit")
    with pytest.raises(ValueError):
        codec.encode_features(np.ones(4, np.float32), "2bit")


def test_through_wire_encodes_each_sample_on_its_own() -> None:
    batch = np.stack([np.linspace(0, 1, 8), np.linspace(0, 100, 8)]).astype(np.float32)
    through = codec.through_wire(batch, "int8")
    for sample, got in zip(batch, through, strict=True):  # each sample keeps its own scale
        np.testing.assert_array_equal(
            got, codec.decode_features(codec.encode_features(sample, "int8"), "int8")
        )
    assert np.abs(through[0] - batch[0]).max() < 0.01


@settings(max_examples=300)
@given(st.binary(max_size=64), st.sampled_from(list(Encoding)))
def test_decoder_raises_only_typed_errors(data: bytes, encoding: Encoding) -> None:
    try:
        out = codec.decode_features(data, encoding)
    except EdgeCascadeError:
        return
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_int8_of_a_subnormal_range_stays_decodable() -> None:
    x = np.array([1e-45, 0.0], np.float32)  # (hi - lo) / 255 rounds to a float32 scale of 0
    back = codec.decode_features(codec.encode_features(x, "int8"), "int8")
    assert np.abs(back - x).max() <= 1e-38
