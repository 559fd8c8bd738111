"""The gateway's decisions in-process: in-memory transport and cloud link, real LiteRT partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecascade.cloud_service.inference import CloudInference
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import TransportError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import InMemoryTransport
from edgecascade.device_sdk.wire import codec
from edgecascade.edge_gateway.cloud_link import InMemoryCloudLink
from edgecascade.edge_gateway.messages import Message
from edgecascade.edge_gateway.service import Forward, GatewayService


def _services(bundle_dir: Path) -> tuple[GatewayService, CloudInference]:
    bundle = load_bundle(bundle_dir)
    cloud = CloudInference(bundle)
    return GatewayService(bundle, InMemoryCloudLink(cloud.handle)), cloud


def test_in_memory_cascade_uses_every_tier(tiny_bundle: Path, fmnist) -> None:
    gateway, cloud = _services(tiny_bundle)
    transport = InMemoryTransport(gateway.handle)
    client = DeviceClient(load_bundle(tiny_bundle), "mem-device", transport, policy=NeverExit())
    predictions = client.predict_batch(fmnist.x_test[:200])
    tiers = {p.tier for p in predictions}
    assert tiers == {"gateway", "cloud"}
    assert cloud.counters["answered_cloud"] == sum(p.tier == "cloud" for p in predictions)
    assert transport.sent_bytes == sum(p.bytes_sent for p in predictions)


def test_micro_batch_decides_like_single_requests(tiny_bundle: Path, fmnist) -> None:
    gateway, _ = _services(tiny_bundle)
    client = DeviceClient(load_bundle(tiny_bundle), "batch-device", None, policy=NeverExit())
    features = client.models.current.runner.run(client.manifest.input.prepare(fmnist.x_test[:16])).features
    assert features is not None
    requests = [
        Message(
            wire.envelope_to_bytes(
                wire.Envelope(
                    wire.Header(wire.MessageType.INFER_REQUEST, "batch-device", client.manifest.version),
                    codec.encode_features(f, client.manifest.partition("device").encoding),
                )
            )
        )
        for f in features
    ]
    batched = gateway.decide(requests)
    single = [gateway.decide([r])[0] for r in requests]
    for a, b in zip(batched, single, strict=True):
        assert type(a) is type(b)
        if isinstance(a, Forward) and isinstance(b, Forward):
            np.testing.assert_allclose(a.decision.probs, b.decision.probs, atol=1e-5)
        else:
            assert isinstance(a, bytes) and isinstance(b, bytes)
            ra = wire.decode_result(wire.envelope_from_bytes(a).body)
            rb = wire.decode_result(wire.envelope_from_bytes(b).body)
            assert ra.label == rb.label


def test_failing_cloud_gives_degraded_gateway_answers(tiny_bundle: Path, fmnist) -> None:
    def down(_: bytes) -> bytes:
        raise TransportError("cloud unreachable")

    bundle = load_bundle(tiny_bundle)
    gateway = GatewayService(bundle, InMemoryCloudLink(down))
    client = DeviceClient(bundle, "mem-device", InMemoryTransport(gateway.handle), policy=NeverExit())
    predictions = client.predict_batch(fmnist.x_test[:100])
    assert gateway.counters["forwarded"] > 0
    assert sum(p.degraded for p in predictions) == gateway.counters["forwarded"]
    assert {p.tier for p in predictions} == {"gateway"}
