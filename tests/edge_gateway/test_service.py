"""The gateway's decisions in-process: in-memory transport and cloud link, real LiteRT partitions."""

from __future__ import annotations

import dataclasses
import logging
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgecascade.cloud_service.inference import CloudInference
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.core.policy import ExitPolicy, NeverExit
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


def _cut1_requests(bundle_dir: Path, images: np.ndarray, device_id: str) -> list[Message]:
    """Plain INFER_REQUESTs with the device partition's cut-1 features of ``images``."""
    bundle = load_bundle(bundle_dir)
    device = DeviceClient(bundle, device_id, None, policy=NeverExit())
    features = device.models.current.runner.run(bundle.manifest.input.prepare(images)).features
    assert features is not None
    header = wire.Header(wire.MessageType.INFER_REQUEST, device_id, bundle.manifest.version)
    encoding = bundle.manifest.partition("device").encoding
    return [
        Message(
            wire.envelope_to_bytes(
                wire.Envelope(
                    dataclasses.replace(header, request_id=uuid.uuid4().bytes),
                    codec.encode_features(f, encoding),
                )
            )
        )
        for f in features
    ]


def _request_id(message: Message) -> bytes:
    return wire.envelope_from_bytes(message.payload).header.request_id


def test_one_bad_request_never_costs_the_other_requests_of_its_batch_their_answers(
    tiny_bundle: Path, fmnist, caplog: pytest.LogCaptureFixture
) -> None:
    gateway, _ = _services(tiny_bundle)
    version = load_bundle(tiny_bundle).manifest.version
    bystander = _cut1_requests(tiny_bundle, fmnist.x_test[:6], "bystander")
    # (65536,) * 4 holds 2**64 elements, an int64 count of 0: once a ValueError that lost the batch
    wrapped = struct.pack(">BB4I", int(wire.DType.BITS), 4, *(65536,) * 4)
    rogue = wire.Header(wire.MessageType.INFER_REQUEST, "rogue", version)
    bad = Message(wire.envelope_to_bytes(wire.Envelope(rogue, wrapped)))
    batch = [*bystander[:3], bad, *bystander[3:]]

    with caplog.at_level(logging.WARNING, logger="edgecascade.edge_gateway.service"):
        out = gateway.decide(batch)

    for message, decision in zip(batch, out, strict=True):
        if message is bad:
            assert isinstance(decision, bytes)
            reply = wire.envelope_from_bytes(decision)
            assert reply.header.msg_type is wire.MessageType.ERROR
            assert (reply.header.device_id, reply.header.request_id) == ("rogue", rogue.request_id)
            assert wire.decode_error(reply.body)[0] is wire.ErrorCode.BAD_TENSOR
        elif isinstance(decision, Forward):  # to be answered by the cloud
            assert decision.request.header.request_id == _request_id(message)
        else:
            assert isinstance(decision, bytes)
            reply = wire.envelope_from_bytes(decision)
            assert reply.header.msg_type is wire.MessageType.RESULT
            assert reply.header.request_id == _request_id(message)
    assert gateway.counters["rejected_bad_tensor"] == 1
    assert gateway.counters["requests"] == len(batch)
    assert any("rejected request from rogue" in r.getMessage() for r in caplog.records)


class _FailsOnBatches(ExitPolicy):
    """An exit policy that breaks on any batch of more than one input (a stand-in for a broken call)."""

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1)

    def should_exit(self, probs: np.ndarray) -> np.ndarray:
        if len(probs) > 1:
            raise RuntimeError("this batch cannot be decided")
        return np.zeros(len(probs), dtype=bool)


def test_a_batch_the_model_cannot_decide_is_decided_request_by_request(tiny_bundle: Path, fmnist) -> None:
    bundle = load_bundle(tiny_bundle)
    gateway = GatewayService(bundle, None, policy=_FailsOnBatches())
    batch = _cut1_requests(tiny_bundle, fmnist.x_test[:4], "bystander")
    out = gateway.decide(batch)
    for message, decision in zip(batch, out, strict=True):
        assert isinstance(decision, bytes)  # no cloud: the gateway's own (degraded) answer
        reply = wire.envelope_from_bytes(decision)
        assert reply.header.msg_type is wire.MessageType.RESULT
        assert reply.header.request_id == _request_id(message)
    assert gateway.counters["batch_failed"] == 1


def test_a_cloud_answer_over_another_class_count_is_a_cloud_failure(tiny_bundle: Path, fmnist) -> None:
    def three_classes(payload: bytes) -> bytes:
        request = wire.envelope_from_bytes(payload)
        result = wire.Result(0, np.full(3, 1 / 3, np.float32), wire.Tier.CLOUD)
        return wire.envelope_to_bytes(serving.result_reply(request.header, result))

    bundle = load_bundle(tiny_bundle)
    gateway = GatewayService(bundle, InMemoryCloudLink(three_classes), policy=NeverExit())
    (job,) = gateway.decide(_cut1_requests(tiny_bundle, fmnist.x_test[:1], "bystander"))
    assert isinstance(job, Forward)
    reply = gateway.forward(job)
    assert reply is not None
    result = wire.decode_result(wire.envelope_from_bytes(reply).body)
    assert result.degraded and result.tier is wire.Tier.GATEWAY
    assert len(result.probabilities) == len(bundle.manifest.classes)
    assert gateway.counters["cloud_failed_WireError"] == 1
