"""Hard examples end to end: no loss, no duplicates across restarts and outages; bad uploads refused.

Real SQLite outboxes, a real TLS Mosquitto with client certificates and ACLs, the real
gateway daemon, and real HTTP to :class:`~tests.hard_example_fakes.FakeIntake`, a test
double of the cloud's ``POST /v1/hard-examples`` (the route itself is built separately).
At the end of each scenario every selected id is stored at the fake cloud exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import RemoteError, TransportError
from edgecascade.device_sdk.learning.batch import encode_batch
from edgecascade.device_sdk.learning.links import HttpUploadLink, RelayUploadLink
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.uploader import Uploader
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.transport.mqtt import MqttLink
from edgecascade.device_sdk.wire.crypto import initial_sequence
from edgecascade.edge_gateway.config import OutboxSettings
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto
from edgecascade.tools.certs import Pki
from tests.hard_example_fakes import FakeIntake, example

from .conftest import device_crypto, gateway_config

pytestmark = pytest.mark.integration

DEVICE_TOKEN = "ec_dev0001.device-secret"
GATEWAY_TOKEN = "ec_gw000001.gateway-secret"
READY = b"r" * 16  # correlation of the readiness probes
FAST = {"interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.3}


@pytest.fixture
def intake() -> Iterator[FakeIntake]:
    fake = FakeIntake({DEVICE_TOKEN: "device", GATEWAY_TOKEN: "gateway"}).start()
    yield fake
    fake.stop()


@pytest.fixture
def own_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    """A broker of this test alone, so its gateway is the only one relaying uploads."""
    with Mosquitto(tmp_path / "broker", pki) as broker:
        yield broker


def _offline_hard_examples(bundle_dir: Path, outbox: Outbox, device_id: str, images: np.ndarray) -> set[str]:
    """Answer ``images`` offline (every answer degraded, so every input is kept); their ids."""
    client = DeviceClient(load_bundle(bundle_dir), device_id, None, policy=NeverExit(), outbox=outbox)
    ids = {p.hard_example for p in client.predict_batch(images)}
    assert None not in ids
    assert outbox.counts()["pending"] == len(ids) > 20
    return {i for i in ids if i is not None}


def _gateway(bundle_dir: Path, broker: Mosquitto, intake: FakeIntake, outbox: Path) -> GatewayDaemon:
    config = gateway_config(bundle_dir, broker, intake.url, gateway_id="gw-hx", cloud_token=GATEWAY_TOKEN)
    settings = OutboxSettings(
        path=outbox, batch_size=16, upload_interval=0.05, backoff_base=0.05, backoff_max=0.3
    )
    daemon = GatewayDaemon(dataclasses.replace(config, outbox=settings))
    daemon.start()
    return daemon


def _until_relayed(link: RelayUploadLink) -> None:
    """Wait until a gateway answers uploads (its subscription is live a moment after it starts)."""
    for _ in range(10):
        try:
            link.upload([])
            return
        except TransportError:
            continue
    pytest.fail("no gateway answered an empty upload")


def test_device_restart_mid_upload_loses_and_duplicates_nothing(
    tiny_bundle: Path, tmp_path: Path, fmnist, intake: FakeIntake
) -> None:
    path = tmp_path / "device.db"
    outbox = Outbox(path)
    selected = _offline_hard_examples(tiny_bundle, outbox, "restart-device", fmnist.x_test[:60])
    link = HttpUploadLink(intake.url, DEVICE_TOKEN, timeout=5.0)

    intake.open_gate.clear()  # the cloud holds the first batch: it is in flight when the app stops
    uploader = Uploader(outbox, link, batch_size=16, **FAST).start()
    assert intake.held.wait(5)
    assert not uploader.stop(timeout=0.1)  # still waiting for the receipt
    outbox.close()  # the app is gone; the cloud now stores the batch, nobody marks it sent
    intake.open_gate.set()
    assert uploader.stop(timeout=5)
    assert len(intake.stored) == 16

    reopened = Outbox(path)  # the device starts again on the same file
    assert reopened.counts() == {"pending": len(selected), "sent": 0, "failed": 0}
    again = Uploader(reopened, link, batch_size=16, **FAST).start()
    assert again.drain(10)
    assert again.stop()
    assert set(intake.stored) == selected  # every selected id, once
    assert again.counters["duplicates"] == 16  # the batch in flight at the restart was sent twice...
    assert max(intake.arrivals.values()) == 2 and sum(intake.arrivals.values()) == len(selected) + 16
    assert reopened.counts() == {"pending": 0, "sent": len(selected), "failed": 0}  # ...and stored once
    reopened.close()


def test_cloud_outage_during_upload(tiny_bundle: Path, tmp_path: Path, fmnist, intake: FakeIntake) -> None:
    outbox = Outbox(tmp_path / "device.db")
    selected = _offline_hard_examples(tiny_bundle, outbox, "outage-device", fmnist.x_test[60:120])
    uploader = Uploader(outbox, HttpUploadLink(intake.url, DEVICE_TOKEN, timeout=2.0), batch_size=8, **FAST)
    assert uploader.upload_once().sent == 8

    intake.fail_status = 503  # the cloud answers, but cannot take anything
    uploader.start()
    deadline = time.monotonic() + 5
    while uploader.counters["failed_RemoteError"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uploader.counters["failed_RemoteError"] >= 2
    intake.stop()  # then it is gone altogether: connection refused
    intake.fail_status = None
    while uploader.counters["failed_TransportError"] < 2 and time.monotonic() < deadline + 5:
        time.sleep(0.02)
    assert uploader.counters["failed_TransportError"] >= 2
    assert outbox.counts()["pending"] == len(selected) - 8  # nothing marked sent while it was down

    intake.start()  # back, on the same port
    assert uploader.drain(10)
    assert uploader.stop()
    assert set(intake.stored) == selected
    assert all(n == 1 for n in intake.arrivals.values())  # no receipt was lost, so nothing was re-sent
    outbox.close()


def test_gateway_restart_while_uploads_are_pending(
    tiny_bundle: Path, tmp_path: Path, fmnist, intake: FakeIntake, own_broker: Mosquitto
) -> None:
    device = "relay-device"
    keys = device_crypto(own_broker.pki, device)
    device_box = Outbox(tmp_path / "device.db")
    selected = _offline_hard_examples(tiny_bundle, device_box, device, fmnist.x_test[120:180])
    transport = MqttTransport(own_broker.mqtt_config(device), device)
    version = load_bundle(tiny_bundle).manifest.version
    link = RelayUploadLink(transport, device, version, crypto=keys, timeout=1.0)
    uploader = Uploader(device_box, link, batch_size=8, **FAST)
    gateway_db = tmp_path / "gateway.db"

    intake.fail_status = 503  # the cloud is down: the gateway keeps what it acknowledges
    first = _gateway(tiny_bundle, own_broker, intake, gateway_db)
    try:
        _until_relayed(link)
        for _ in range(3):
            assert uploader.upload_once().sent == 8  # acknowledged only once durable at the gateway
        assert first.outbox is not None and first.outbox.counts()["pending"] == 24
        assert first.service.counters["hx_accepted"] == 24
    finally:
        first.stop()  # restart with 24 records pending at the gateway and the rest on the device
    assert device_box.counts()["pending"] == len(selected) - 24
    with pytest.raises(TransportError):
        uploader.upload_once()  # no gateway: no receipt, nothing marked

    second = _gateway(tiny_bundle, own_broker, intake, gateway_db)
    try:
        assert second.outbox is not None and second.outbox.counts()["pending"] == 24  # survived the restart
        uploader.start()
        assert uploader.drain(10)
        intake.fail_status = None  # the cloud is back
        assert intake.wait_for(selected, 10)
        assert second.uploader is not None and second.uploader.drain(5)
    finally:
        uploader.stop()
        second.stop()
        transport.close()
    assert set(intake.stored) == selected  # every selected id exactly once
    assert intake.callers["gateway"] >= 1 and intake.callers["device"] == 0  # via the gateway's token
    assert all(r["device_id"] == device for r in intake.stored.values())
    assert device_box.counts() == {"pending": 0, "sent": len(selected), "failed": 0}
    with Outbox(gateway_db) as gateway_box:
        assert gateway_box.counts() == {"pending": 0, "sent": len(selected), "failed": 0}
    device_box.close()


class Uploads:
    """Publishes raw upload payloads on a device's hx topic and collects the answers."""

    def __init__(self, broker: Mosquitto, device_id: str) -> None:
        self.device_id = device_id
        self.crypto = device_crypto(broker.pki, device_id)
        self.answers: queue.Queue[tuple[bytes, bytes | None]] = queue.Queue()
        self.link = MqttLink(broker.mqtt_config(device_id), "hx-raw-" + uuid.uuid4().hex[:8])
        self.link.subscribe(wire.response_topic(device_id), lambda t, p, r, c: self.answers.put((p, c)))
        self.link.connect(5)
        self.seq = initial_sequence()

    def sealed(self, body: bytes) -> bytes:
        self.seq += 1
        header = wire.Header(wire.MessageType.HARD_EXAMPLES, self.device_id, 1, self.seq)
        return self.crypto.seal(wire.Envelope(header, body))

    def wait_ready(self) -> None:
        """Send empty batches until the gateway answers one (its subscription is live)."""
        for _ in range(20):
            self.link.publish(
                wire.upload_topic(self.device_id),
                self.sealed(encode_batch([])),
                response_topic=wire.response_topic(self.device_id),
                correlation_data=READY,
            )
            try:
                self.answers.get(timeout=0.5)
            except queue.Empty:
                continue
            return
        pytest.fail("no gateway answered an empty upload")

    def ask(self, payload: bytes) -> wire.Envelope:
        correlation = uuid.uuid4().bytes
        self.link.publish(
            wire.upload_topic(self.device_id),
            payload,
            response_topic=wire.response_topic(self.device_id),
            correlation_data=correlation,
        )
        answer, got = self.answers.get(timeout=5)
        while got == READY:  # a late answer to wait_ready()
            answer, got = self.answers.get(timeout=5)
        assert got == correlation
        envelope = wire.envelope_from_bytes(answer)
        return self.crypto.open(answer) if envelope.header.flags & wire.FLAG_ENCRYPTED else envelope


def test_gateway_refuses_bad_uploads_with_typed_answers_and_keeps_relaying(
    tiny_bundle: Path, tmp_path: Path, intake: FakeIntake, own_broker: Mosquitto
) -> None:
    device = "hx-rogue"
    gateway = _gateway(tiny_bundle, own_broker, intake, tmp_path / "gateway.db")
    uploads = Uploads(own_broker, device)
    try:
        uploads.wait_ready()
        counters = gateway.service.counters

        def error(payload: bytes) -> wire.ErrorCode:
            answer = uploads.ask(payload)
            assert answer.header.msg_type is wire.MessageType.ERROR
            return wire.decode_error(answer.body)[0]

        # refused as a whole, with a code that tells the device what to do
        assert error(uploads.sealed(b"{not json")) is wire.ErrorCode.MALFORMED
        assert error(uploads.sealed(b'{"examples": "all of them"}')) is wire.ErrorCode.MALFORMED
        too_many = json.dumps({"examples": [example(1, device).to_json()] * 300}).encode()
        assert error(uploads.sealed(too_many)) is wire.ErrorCode.MALFORMED
        assert error(b"\x00not an envelope") is wire.ErrorCode.MALFORMED
        plain = wire.envelope_to_bytes(
            wire.Envelope(wire.Header(wire.MessageType.HARD_EXAMPLES, device, 1, 1), encode_batch([]))
        )
        assert error(plain) is wire.ErrorCode.UNAUTHORIZED
        assert counters["hx_rejected_batch_malformed_json"] == 1
        assert counters["hx_rejected_batch_not_a_batch"] == 1
        assert counters["hx_rejected_batch_too_many"] == 1
        assert counters["hx_rejected_batch_not_encrypted"] == 1

        # one bad record does not spoil the batch: per-item reasons
        good = example(2, device).to_json()
        wrong_types = {**example(3, device).to_json(), "predicted": "seven", "confidence": None}
        wrong_id = {**example(4, device).to_json(), "id": "0" * 64}
        answer = uploads.ask(uploads.sealed(encode_batch([good, wrong_types, wrong_id])))
        assert answer.header.msg_type is wire.MessageType.HARD_EXAMPLES_ACK
        receipt = json.loads(answer.body)
        assert receipt["accepted"] == [good["id"]]
        assert {r["id"] for r in receipt["rejected"]} == {wrong_types["id"], "0" * 64}
        assert counters["hx_rejected"] == 2
        assert gateway.outbox is not None and gateway.outbox.state(good["id"]) is not None
        assert intake.wait_for({good["id"]}, 5)  # and the gateway still uploads what is valid
        assert set(intake.stored) == {good["id"]}
    finally:
        uploads.link.close()
        gateway.stop()


def test_a_wrong_token_marks_nothing(tmp_path: Path, intake: FakeIntake) -> None:
    with Outbox(tmp_path / "device.db") as outbox:
        outbox.add_many([example(i, "token-device") for i in range(3)])
        uploader = Uploader(outbox, HttpUploadLink(intake.url, "ec_nobody.wrong"), **FAST)
        with pytest.raises(RemoteError) as err:
            uploader.upload_once()
        assert err.value.code == 401
        assert outbox.counts()["pending"] == 3 and not intake.stored
