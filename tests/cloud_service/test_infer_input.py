"""``POST /v1/infer`` with hostile tensors: the real app and the tiny bundles' LiteRT partition 3.

Whatever shape, rank, dtype or cut encoding a request's tensor declares, the answer is a
result (only for the cut's own encoding and shape) or a 4xx with the project's JSON error
body, counted; never a 500.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.codec import Encoding

dims = st.one_of(
    st.integers(0, 9),
    st.sampled_from([4, 16, 65536, 2**31, 2**32 - 1, 3 * 2**30]),
    st.integers(0, 2**32 - 1),
)
codes = st.one_of(st.sampled_from([int(c) for c in wire.DType]), st.integers(0, 255))


class Served:
    """The cloud app on the tiny bundle, a gateway token, and what its cut 2 looks like."""

    def __init__(self, bundle: Path, state: Path) -> None:
        config = CloudConfig(
            CloudSettings(
                bundle=bundle,
                token_store=state / "tokens.db",
                device_keyring=state / "device-keys",
                max_body_bytes=64 * 1024,
            )
        )
        self.app = create_app(config)
        self.client = self.app.test_client()
        self.auth = {
            "Authorization": f"Bearer {self.app.extensions['edgecascade.tokens'].create('gateway', 'gw')[0]}"
        }
        manifest = load_bundle(bundle).manifest
        self.version = manifest.version
        self.shape = manifest.partition("cloud").input.shape
        self.encoding = Encoding(manifest.partition("gateway").encoding)

    def post(self, body: bytes) -> Any:
        header = wire.Header(wire.MessageType.INFER_REQUEST, "cam-01", self.version)
        return self.client.post(
            wire.ROUTE_INFER, data=wire.envelope_to_bytes(wire.Envelope(header, body)), headers=self.auth
        )


@pytest.fixture(scope="module", params=["tiny_bundle", "tiny_models_bundle"], ids=["partitioned", "models"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Both modes: in the models mode what the cloud receives is the raw input (int8 28x28x1)."""
    return Served(request.getfixturevalue(request.param), tmp_path_factory.mktemp("infer"))


def _fitting(code: int, shape: list[int]) -> bytes | None:
    """Zero bytes of the length ``shape`` needs in dtype ``code``, when that is small; else None."""
    if code not in {int(c) for c in wire.DType} or len(shape) > wire.MAX_NDIM:
        return None
    count = math.prod(shape)
    n = {wire.DType.BITS: -(-count // 8), wire.DType.QINT8: 5 + count}.get(
        wire.DType(code), count * wire.DType(code).numpy.itemsize
    )
    if n > 4096:
        return None
    if code == wire.DType.QINT8:
        return struct.pack("<fb", 0.5, 0) + bytes(count)  # a usable scale and zero point
    return bytes(n)


def _assert_refused(response: Any) -> None:
    assert response.status_code in (400, 422), response.get_data()
    body = response.get_json()
    assert body["error"] in ("malformed", "bad_tensor") and body["message"]


@settings(max_examples=250, deadline=None)
@given(codes, st.lists(dims, max_size=10), st.binary(max_size=48), st.booleans())
@example(int(wire.DType.FLOAT32), [65536] * 4, b"", False)  # 2**64 elements: an int64 count of 0
@example(int(wire.DType.QINT8), [65536] * 4, b"\x00" * 5, False)
@example(int(wire.DType.BITS), [65536] * 4, b"", False)
@example(int(wire.DType.FLOAT16), [65536] * 4, b"", False)
@example(int(wire.DType.QINT8), [4, 4, 16], b"", True)  # the cut's own shape and encoding
def test_no_declared_shape_dtype_or_length_gets_a_500(
    served: Served, code: int, shape: list[int], data: bytes, fit: bool
) -> None:
    if fit:
        data = _fitting(code, shape) or data
    before = served.app.extensions["edgecascade"].counters["http_500"]
    response = served.post(
        struct.pack(">BB", code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + data
    )
    assert served.app.extensions["edgecascade"].counters["http_500"] == before
    if response.status_code == 200:
        assert tuple(shape) == served.shape and code == served.encoding.code
        assert wire.decode_result(wire.envelope_from_bytes(response.data).body).tier is wire.Tier.CLOUD
    else:
        _assert_refused(response)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(Encoding)), st.lists(st.integers(1, 6), max_size=4))
def test_features_in_any_encoding_are_answered_only_in_the_cuts_own(
    served: Served, encoding: Encoding, shape: list[int]
) -> None:
    for candidate in (tuple(shape), served.shape):
        values = np.random.default_rng(len(candidate)).normal(size=candidate).astype(np.float32)
        response = served.post(codec.encode_features(values, encoding))
        if candidate == served.shape and encoding is served.encoding:
            assert response.status_code == 200
        else:
            assert response.status_code == 422, response.get_data()
            assert response.get_json()["error"] == "bad_tensor"


def test_the_wrapped_around_shape_is_a_422_and_is_counted(served: Served) -> None:
    counters = served.app.extensions["edgecascade"].counters
    before = counters["rejected_bad_tensor"]
    head = struct.pack(">BB4I", int(served.encoding.code), 4, *(65536,) * 4)
    response = served.post(head + b"\x00" * 5)
    assert response.status_code == 422
    assert "[65536, 65536, 65536, 65536]" in response.get_json()["message"]
    assert counters["rejected_bad_tensor"] == before + 1
