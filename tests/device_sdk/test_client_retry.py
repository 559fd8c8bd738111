"""The device's single retry: a request whose gateway went down is answered by another one.

A real gateway service (LiteRT partitions) behind a transport that loses chosen requests,
as a gateway killed with them in flight loses them: their futures never resolve.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.cloud_service.inference import CloudInference
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import Transport
from edgecascade.edge_gateway.cloud_link import InMemoryCloudLink
from edgecascade.edge_gateway.service import GatewayService


class LosingTransport(Transport):
    """Hands requests to a gateway's handler, except those ``lose(n)`` picks (n: submissions so far)."""

    def __init__(self, bundle_dir: Path, lose: Callable[[int], bool]) -> None:
        bundle = load_bundle(bundle_dir)
        self._gateway = GatewayService(bundle, InMemoryCloudLink(CloudInference(bundle).handle))
        self._lose = lose
        self.submitted: list[wire.Header] = []
        self.forgotten: list[bytes] = []

    def submit(self, request: bytes, request_id: bytes) -> Future[bytes]:
        future: Future[bytes] = Future()
        lost = self._lose(len(self.submitted))
        self.submitted.append(wire.envelope_from_bytes(request).header)
        if not lost:
            future.set_result(self._gateway.handle(request))
        return future

    def forget(self, request_id: bytes) -> None:
        self.forgotten.append(request_id)


def _client(bundle_dir: Path, transport: Transport, **kwargs: Any) -> DeviceClient:
    return DeviceClient(load_bundle(bundle_dir), "retry-device", transport, policy=NeverExit(), **kwargs)


def test_requests_lost_in_flight_are_answered_after_one_retry(tiny_bundle: Path, fmnist) -> None:
    transport = LosingTransport(tiny_bundle, lose=lambda n: n in (1, 3))  # two of the first five
    client = _client(tiny_bundle, transport, timeout=1.0, retry_after=0.2)
    started = time.perf_counter()
    predictions = client.predict_batch(fmnist.x_test[:5])
    elapsed = time.perf_counter() - started
    assert [p.degraded for p in predictions] == [False] * 5
    assert client.counters.snapshot().get("retries") == 2
    assert len(transport.submitted) == 7  # five, and the two lost ones again
    assert 0.2 <= elapsed < 1.0  # the retry waited retry_after, not the timeout
    for i in (1, 3):
        assert predictions[i].latency_ms >= 200


def test_by_default_a_lost_request_is_answered_degraded_at_the_timeout(tiny_bundle: Path, fmnist) -> None:
    transport = LosingTransport(tiny_bundle, lose=lambda n: n == 0)
    client = _client(tiny_bundle, transport, timeout=0.3)  # no retry_after: a single gateway's site
    prediction = client.predict(fmnist.x_test[0])
    assert prediction.degraded
    assert "no reply within" in (prediction.error or "")
    assert "retries" not in client.counters.snapshot()
    assert transport.forgotten == [h.request_id for h in transport.submitted]


def test_a_request_lost_twice_is_degraded_within_the_timeout(tiny_bundle: Path, fmnist) -> None:
    transport = LosingTransport(tiny_bundle, lose=lambda n: True)
    client = _client(tiny_bundle, transport, timeout=0.4, retry_after=0.2)
    started = time.perf_counter()
    prediction = client.predict(fmnist.x_test[0])
    assert time.perf_counter() - started < 0.6
    assert prediction.degraded
    assert client.counters.snapshot()["retries"] == 1
    assert len(transport.submitted) == 2
    assert sorted(transport.forgotten) == sorted(
        h.request_id for h in transport.submitted
    )  # late replies to either are dropped


def test_the_retry_is_a_new_request_under_a_fresh_number(tiny_bundle: Path, fmnist) -> None:
    transport = LosingTransport(tiny_bundle, lose=lambda n: n == 0)
    client = _client(tiny_bundle, transport, timeout=1.0, retry_after=0.1)
    prediction = client.predict(fmnist.x_test[0])
    assert not prediction.degraded
    first, second = transport.submitted
    assert second.seq > first.seq
    assert second.request_id != first.request_id
    assert transport.forgotten == [first.request_id]  # a late reply to the lost copy is dropped
    assert prediction.bytes_sent > 0
    np.testing.assert_allclose(prediction.probabilities.sum(), 1.0, rtol=1e-3)


def test_a_retry_after_not_below_the_timeout_never_retries(tiny_bundle: Path, fmnist) -> None:
    transport = LosingTransport(tiny_bundle, lose=lambda n: n == 0)
    client = _client(tiny_bundle, transport, timeout=0.3, retry_after=0.3)
    assert client.predict(fmnist.x_test[0]).degraded
    assert len(transport.submitted) == 1
