"""Hard examples in-process: the device keeps them before answering, the gateway relays and keeps its own.

Real LiteRT partitions, real SQLite outboxes and real payload encryption; the links are the
in-memory twins (the same flows over Mosquitto and HTTP are in tests/integration).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.cloud_service.inference import CloudInference
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import ConfigError, TransportError
from edgecascade.device_sdk.learning.batch import encode_batch
from edgecascade.device_sdk.learning.links import RelayUploadLink
from edgecascade.device_sdk.learning.outbox import Outbox, State
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.learning.selection import Degraded, HardExampleSelector
from edgecascade.device_sdk.learning.uploader import Uploader
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import InMemoryTransport
from edgecascade.device_sdk.wire import codec, crypto
from edgecascade.edge_gateway.cloud_link import InMemoryCloudLink
from edgecascade.edge_gateway.config import load_gateway_config
from edgecascade.edge_gateway.crypto import GatewayCrypto, GatewayKeyring
from edgecascade.edge_gateway.relay import HardExampleRelay
from edgecascade.edge_gateway.service import GatewayService
from tests.hard_example_fakes import example

DEVICE = "hx-device"


def _keys(device_id: str = DEVICE) -> tuple[crypto.DeviceCrypto, GatewayCrypto]:
    gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    keyring = GatewayKeyring(gateway_key)
    keyring.add(device_id, 1, device_key.public_key())
    pair = crypto.device_pair_keys(device_key, gateway_key.public_key(), device_id, 1)
    return crypto.DeviceCrypto(device_id, {1: pair}), GatewayCrypto(keyring)


def _failing_cloud(envelope: bytes) -> bytes:
    raise TransportError("cloud unreachable")


def test_offline_device_keeps_degraded_inputs_before_predict_returns(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    bundle = load_bundle(tiny_bundle)
    outbox = Outbox(tmp_path / "device.db")
    client = DeviceClient(bundle, DEVICE, None, policy=NeverExit(), outbox=outbox)
    images = fmnist.x_test[:8]
    predictions = client.predict_batch(images)
    # durable already: another connection to the file sees every record
    with Outbox(tmp_path / "device.db") as other:
        assert other.counts()["pending"] == 8
    spec = bundle.manifest.partition("device")
    features = client.models.current.runner.run(client.manifest.input.prepare(images)).features
    for prediction, pending, f in zip(predictions, outbox.pending(10), features, strict=True):
        assert prediction.degraded and prediction.hard_example == pending.id
        record = HardExample.from_json(pending.record)  # the shared format, id checked
        assert record.cut == "cut1" and record.encoding == spec.encoding
        assert record.features == codec.encode_features(f, spec.encoding)
        assert record.raw is None  # features only by default
        assert "degraded" in record.reasons and record.tier == "device"
        assert record.predicted == prediction.label
    # the same inputs again: the same content ids, nothing new stored
    again = client.predict_batch(images)
    assert [p.hard_example for p in again] == [p.hard_example for p in predictions]
    assert len(outbox) == 8
    outbox.close()


def test_raw_inputs_only_when_the_app_opts_in(tiny_bundle: Path, tmp_path: Path, fmnist) -> None:
    with Outbox(tmp_path / "raw.db") as outbox:
        client = DeviceClient(
            load_bundle(tiny_bundle), DEVICE, None, policy=NeverExit(), outbox=outbox, keep_raw=True
        )
        client.predict(fmnist.x_test[0])
        (pending,) = outbox.pending(5)
        raw = wire.decode_tensor(base64.b64decode(pending.record["raw"]))
        np.testing.assert_array_equal(raw, fmnist.x_test[0])


def test_cascade_selects_cloud_answers_and_relays_them_through_the_gateway(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    bundle = load_bundle(tiny_bundle)
    cloud = CloudInference(bundle)
    device_crypto, gateway_crypto = _keys()
    gateway_box = Outbox(tmp_path / "gateway.db")
    gateway = GatewayService(bundle, InMemoryCloudLink(cloud.handle), crypto=gateway_crypto)
    relay = HardExampleRelay(gateway_box, gateway_crypto, gateway.counters)
    transport = InMemoryTransport(gateway.handle, lambda payload: relay.handle(payload, DEVICE) or b"")
    device_box = Outbox(tmp_path / "device.db")
    client = DeviceClient(bundle, DEVICE, transport, crypto=device_crypto, outbox=device_box)
    predictions = client.predict_batch(fmnist.x_test[:200])
    kept = {p.hard_example for p in predictions if p.hard_example}
    assert {p.hard_example for p in predictions if p.tier == "cloud"} <= kept
    assert any(p.tier == "cloud" for p in predictions)
    assert all(p.hard_example is None for p in predictions if p.tier == "device" and p.confidence > 0.99)
    assert device_box.counts()["pending"] == len(kept)

    link = RelayUploadLink(
        transport, DEVICE, bundle.manifest.version, crypto=device_crypto, sequence=client.next_seq
    )
    uploader = Uploader(device_box, link, batch_size=16, interval=0.01)
    while not uploader.upload_once().idle:
        pass
    assert device_box.counts() == {"pending": 0, "sent": len(kept), "failed": 0}
    assert {p.id for p in gateway_box.pending(1000)} == kept
    assert gateway.counters["hx_accepted"] == len(kept)
    # inference still works after uploads shared the sequence numbers and replay window
    assert client.predict(fmnist.x_test[0]).degraded is False
    device_box.close()
    gateway_box.close()


def test_gateway_keeps_its_degraded_answers_with_the_devices_content_id(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    bundle = load_bundle(tiny_bundle)
    gateway_box = Outbox(tmp_path / "gateway.db")
    gateway = GatewayService(bundle, InMemoryCloudLink(_failing_cloud), outbox=gateway_box)
    device_box = Outbox(tmp_path / "device.db")
    client = DeviceClient(
        bundle,
        DEVICE,
        InMemoryTransport(gateway.handle),
        policy=NeverExit(),
        outbox=device_box,
        selector=HardExampleSelector([Degraded()]),
    )
    predictions = client.predict_batch(fmnist.x_test[:20])
    degraded = {p.hard_example for p in predictions if p.degraded and p.tier == "gateway"}
    assert degraded and None not in degraded
    at_gateway = {p.id: p.record for p in gateway_box.pending(100)}
    assert set(at_gateway) == degraded  # the same examples, the same ids: stored once upstream
    assert all(r["tier"] == "gateway" and r["reasons"] == ["degraded"] for r in at_gateway.values())
    assert gateway.counters["hard_examples_kept"] == len(degraded)
    device_box.close()
    gateway_box.close()


def _upload(device_crypto: crypto.DeviceCrypto, body: bytes, device_id: str = DEVICE) -> bytes:
    header = wire.Header(wire.MessageType.HARD_EXAMPLES, device_id, 1, crypto.initial_sequence())
    return device_crypto.seal(wire.Envelope(header, body))


def _receipt(device_crypto: crypto.DeviceCrypto, reply: bytes | None) -> dict:
    assert reply is not None
    envelope = device_crypto.open(reply)
    assert envelope.header.msg_type is wire.MessageType.HARD_EXAMPLES_ACK
    return json.loads(envelope.body)


def test_relay_rejects_bad_records_one_by_one(tmp_path: Path) -> None:
    device_crypto, gateway_crypto = _keys()
    with Outbox(tmp_path / "gateway.db") as outbox:
        relay = HardExampleRelay(outbox, gateway_crypto)
        good = example(1, DEVICE).to_json()
        foreign = example(2, "someone-else").to_json()
        lying = {**example(3, DEVICE).to_json(), "id": example(4, DEVICE).example_id}
        typed = {**example(5, DEVICE).to_json(), "reasons": "degraded"}
        body = encode_batch([good, foreign, lying, typed, good])
        receipt = _receipt(device_crypto, relay.handle(_upload(device_crypto, body), DEVICE))
        assert receipt["accepted"] == [good["id"]]
        assert receipt["duplicates"] == [good["id"]]  # the same id twice in one batch
        reasons = {r["id"]: r["reason"] for r in receipt["rejected"]}
        assert set(reasons) == {foreign["id"], example(4, DEVICE).example_id, typed["id"]}
        assert "sender" in reasons[foreign["id"]] and "reasons" in reasons[typed["id"]]
        assert outbox.state(good["id"]) is State.PENDING and len(outbox) == 1
        assert relay.counters["hx_rejected"] == 3 and relay.counters["hx_accepted"] == 1


@pytest.mark.parametrize(
    ("body", "counter"),
    [
        (b"{oops", "hx_rejected_batch_malformed_json"),
        (b'{"examples": 3}', "hx_rejected_batch_not_a_batch"),
        (
            json.dumps({"examples": [example(1, DEVICE).to_json()] * 257}).encode(),
            "hx_rejected_batch_too_many",
        ),
    ],
)
def test_relay_refuses_whole_batches_with_a_typed_error(tmp_path: Path, body: bytes, counter: str) -> None:
    device_crypto, gateway_crypto = _keys()
    with Outbox(tmp_path / "gateway.db") as outbox:
        relay = HardExampleRelay(outbox, gateway_crypto)
        reply = relay.handle(_upload(device_crypto, body), DEVICE)
        assert reply is not None
        envelope = device_crypto.open(reply)  # an error to an authentic sender is sealed too
        assert envelope.header.msg_type is wire.MessageType.ERROR
        assert wire.decode_error(envelope.body)[0] is wire.ErrorCode.MALFORMED
        assert relay.counters[counter] == 1 and len(outbox) == 0


def test_relay_refuses_what_it_cannot_verify(tmp_path: Path) -> None:
    device_crypto, gateway_crypto = _keys()
    with Outbox(tmp_path / "gateway.db") as outbox:
        relay = HardExampleRelay(outbox, gateway_crypto)
        body = encode_batch([example(1, DEVICE).to_json()])
        plain = wire.envelope_to_bytes(
            wire.Envelope(wire.Header(wire.MessageType.HARD_EXAMPLES, DEVICE, 1, 5), body)
        )
        sealed = _upload(device_crypto, body)
        tampered = sealed[:-1] + bytes([sealed[-1] ^ 0x01])  # one bit of the tag flipped
        for payload, topic_device, counter in [
            (plain, DEVICE, "hx_rejected_batch_not_encrypted"),
            (tampered, DEVICE, "hx_rejected_batch_decrypt"),
            (b"garbage", DEVICE, "hx_rejected_batch_malformed"),
            (_upload(device_crypto, body), "other-device", "hx_rejected_batch_malformed"),  # wrong topic
        ]:
            before = relay.counters[counter]
            reply = relay.handle(payload, topic_device, correlation=b"c" * 16)
            assert reply is not None
            envelope = wire.envelope_from_bytes(reply)
            assert envelope.header.msg_type is wire.MessageType.ERROR
            assert not envelope.header.flags & wire.FLAG_ENCRYPTED  # nothing sealed for an unverified sender
            assert relay.counters[counter] == before + 1
        assert len(outbox) == 0


def test_outbox_section_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[outbox]\npath = "state/gw.db"\nbatch_size = 32\n')
    config = load_gateway_config(path, env={"EC_OUTBOX__RECORD_DEGRADED": "false"})
    assert config.outbox.path == tmp_path.resolve() / "state" / "gw.db"  # relative to gateway.toml
    assert config.outbox.batch_size == 32
    assert config.outbox.record_degraded is False
    assert load_gateway_config(env={}).outbox.path is None  # relay off unless configured
    with pytest.raises(ConfigError) as err:
        load_gateway_config(env={"EC_OUTBOX__BATCH_SIZE": "0", "EC_OUTBOX__RELAY_QUEUE": "0"})
    assert "outbox.batch_size" in str(err.value) and "outbox.relay_queue" in str(err.value)
