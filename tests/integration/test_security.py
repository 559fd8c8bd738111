"""The device-gateway link against the real Mosquitto: TLS, ACLs and end-to-end encryption."""

from __future__ import annotations

import os
import pwd
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.config import MqttConfig
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import TransportError
from edgecascade.device_sdk.transport.mqtt import MqttLink, tls_context
from edgecascade.device_sdk.wire import codec
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import (
    Mosquitto,
    free_port,
    mosquitto_binary,
    wait_for_port,
    write_broker_config,
)
from edgecascade.tools.certs import Pki, init_pki, issue_device

from .conftest import OBSERVER, RawDevice, device_crypto

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87


@dataclass
class Tap:
    """Everything one MQTT identity receives."""

    link: MqttLink
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def payloads(self, suffix: str) -> list[bytes]:
        return [payload for topic, payload in list(self.messages) if topic.endswith(suffix)]


@pytest.fixture
def tap(broker: Mosquitto) -> Iterator[Callable[[str, str], Tap]]:
    taps: list[Tap] = []

    def make(identity: str, topic: str) -> Tap:
        t = Tap(MqttLink(broker.mqtt_config(identity), f"tap-{uuid.uuid4().hex[:8]}"))
        t.link.subscribe(topic, lambda topic, payload, r, c: t.messages.append((topic, payload)))
        t.link.connect(5)
        taps.append(t)
        return t

    yield make
    for t in taps:
        t.link.close()


def _chunks(data: bytes, size: int = 16) -> list[bytes]:
    """Slices of ``data`` with some variety in them (not runs of one byte value)."""
    return [
        data[i : i + size] for i in range(0, len(data) - size + 1, size) if len(set(data[i : i + size])) > 4
    ]


def test_eavesdroppers_on_the_broker_see_only_ciphertext(
    gateway: GatewayDaemon, fmnist, make_client: Callable[..., DeviceClient], tap: Callable[[str, str], Tap]
) -> None:
    everything = tap(OBSERVER, "#")  # a monitoring identity that may read every topic
    as_gateway = tap("gateway", f"{wire.TOPIC_ROOT}/#")  # what a second gateway process could read
    client = make_client("sniffed-device", policy=NeverExit())
    images = fmnist.x_test[:20]
    predictions = client.predict_batch(images)
    assert not any(p.degraded for p in predictions)
    features = client.models.current.runner.run(client.manifest.input.prepare(images)).features
    assert features is not None
    deadline = time.monotonic() + 5
    while len(everything.payloads("/res")) < len(images) and time.monotonic() < deadline:
        time.sleep(0.05)

    requests, replies = everything.payloads("/req"), everything.payloads("/res")
    assert len(requests) == len(replies) == len(images)
    assert len(as_gateway.payloads("/req")) == len(images)
    encoding = client.manifest.partition("device").encoding
    secrets = [c for f in features for c in _chunks(codec.encode_features(f, encoding))]
    assert len(secrets) > 50  # the features do carry recognisable bytes
    crypto = client.crypto
    assert crypto is not None
    for payload in requests + as_gateway.payloads("/req"):
        assert wire.envelope_from_bytes(payload).header.flags & wire.FLAG_ENCRYPTED
        assert not any(secret in payload for secret in secrets)
    labels = {p.label for p in predictions}
    for payload in replies:
        assert wire.envelope_from_bytes(payload).header.flags & wire.FLAG_ENCRYPTED
        result = wire.decode_result(crypto.open(payload).body)  # only the device's keys read it
        assert result.label in labels
        plain = wire.encode_result(result)
        assert plain not in payload and plain[:8] not in payload  # no tier/label header in clear
        assert not any(c in payload for c in _chunks(result.probabilities.astype("<f4").tobytes(), 8))


@dataclass
class Probe:
    """A raw paho client, to see SUBACK and PUBACK reason codes."""

    client: Any
    acks: dict[int, list[int]] = field(default_factory=dict)
    received: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    done: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, mid: int, timeout: float = 5) -> list[int]:
        with self.done:
            assert self.done.wait_for(lambda: mid in self.acks, timeout), f"no ack for {mid}"
            return self.acks[mid]

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        return self.wait(mid)

    def publish(self, topic: str, payload: bytes) -> int:
        return self.wait(self.client.publish(topic, payload, qos=1).mid)[0]


@pytest.fixture
def probe(broker: Mosquitto) -> Iterator[Callable[[str], Probe]]:
    probes: list[Probe] = []

    def make(identity: str) -> Probe:
        if identity != "gateway":
            device_crypto(broker.pki, identity)  # issue its certificate
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{identity}", protocol=paho.MQTTv5)
        client.tls_set_context(tls_context(broker.mqtt_config(identity)))
        p = Probe(client)

        def ack(mid: int, codes: list[int]) -> None:
            with p.done:
                p.acks[mid] = codes
                p.done.notify_all()

        client.on_subscribe = lambda c, u, mid, codes, props: ack(mid, [int(r.value) for r in codes])
        client.on_publish = lambda c, u, mid, code, props: ack(mid, [int(code.value)])
        client.on_message = lambda c, u, msg: p.received.put((msg.topic, bytes(msg.payload)))
        connected = threading.Event()
        client.on_connect = lambda c, u, f, code, props: connected.set() if not code.is_failure else None
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert connected.wait(5), f"{identity} could not connect"
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.client.disconnect()
        p.client.loop_stop()


def test_a_device_cannot_use_another_devices_topics(probe: Callable[[str], Probe]) -> None:
    a, b, gateway = probe("acl-a"), probe("acl-b"), probe("gateway")
    assert b.subscribe(f"{wire.TOPIC_ROOT}/acl-b/#") == [1]
    # Mosquitto 2.0 grants these subscriptions but never delivers what the ACL forbids A to read.
    for topic in (wire.response_topic("acl-b"), f"{wire.TOPIC_ROOT}/+/res", "#"):
        codes = a.subscribe(topic)
        assert codes == [1] or codes[0] >= 0x80
    assert a.publish(wire.request_topic("acl-b"), b"forged request") == NOT_AUTHORIZED
    assert a.publish(wire.response_topic("acl-b"), b"forged reply") == NOT_AUTHORIZED
    assert a.publish(wire.request_topic("acl-a"), b"own topic") == 0  # control: its own subtree works

    # messages published after A's attempts reach B in order: B got the marker and nothing of A's
    assert gateway.publish(wire.response_topic("acl-b"), b"marker for b") == 0
    assert gateway.publish(wire.response_topic("acl-a"), b"marker for a") == 0
    assert b.received.get(timeout=5) == (wire.response_topic("acl-b"), b"marker for b")
    assert b.received.empty()
    got_a = [a.received.get(timeout=5)]  # its own reply (once per matching subscription)
    time.sleep(0.2)
    got_a += [a.received.get_nowait() for _ in range(a.received.qsize())]
    assert all(topic == wire.response_topic("acl-a") for topic, _ in got_a), got_a  # not even its requests
    assert (wire.response_topic("acl-a"), b"marker for a") in got_a


def test_only_clients_with_a_site_certificate_connect(broker: Mosquitto, tmp_path: Path) -> None:
    rogue = init_pki(tmp_path / "rogue")  # another CA: certificates the broker must not accept
    issue_device(rogue.root, "cam-rogue")
    site = broker.mqtt_config("gateway")
    no_certificate = MqttConfig(host=broker.host, port=broker.port, ca_file=site.ca_file)
    foreign_certificate = rogue.mqtt_config("cam-rogue", broker.host, broker.port)
    foreign_certificate = MqttConfig(
        host=broker.host,
        port=broker.port,
        ca_file=site.ca_file,  # trusts the real broker, but presents another CA's certificate
        cert_file=foreign_certificate.cert_file,
        key_file=foreign_certificate.key_file,
    )
    distrusting = MqttConfig(  # a valid certificate, but the broker's is not from the CA it trusts
        host=broker.host,
        port=broker.port,
        ca_file=rogue.ca_cert,
        cert_file=site.cert_file,
        key_file=site.key_file,
    )

    def attempt(config: MqttConfig) -> str:
        try:
            MqttLink(config, f"intruder-{uuid.uuid4().hex[:6]}").connect(1.5)
        except TransportError as exc:
            return str(exc)
        return "connected"

    with ThreadPoolExecutor(3) as pool:  # each attempt waits out its timeout: run them together
        outcomes = list(pool.map(attempt, (no_certificate, foreign_certificate, distrusting)))
    assert all("failed" in outcome for outcome in outcomes), outcomes
    control = MqttLink(site, "control-gateway-link")
    control.connect(5)
    assert control.connected
    control.close()


def test_gateway_rejects_replayed_reordered_truncated_and_flipped_envelopes(
    gateway: GatewayDaemon,
    tiny_bundle: Path,
    fmnist,
    make_raw: Callable[[str], RawDevice],
    make_client: Callable[..., DeviceClient],
) -> None:
    counters = gateway.service.counters
    before = dict(counters)
    attacker = make_raw("replayed-device")
    cut1 = np.zeros(gateway.service.bundle.manifest.partition("gateway").input.shape, np.float32)

    def unauthorized(payload: bytes, sealed: bool = False) -> bool:
        reply = attacker.ask(payload)
        assert attacker.last_encrypted is sealed  # only what authenticated is answered sealed
        code, _ = wire.decode_error(reply.body)
        return code is wire.ErrorCode.UNAUTHORIZED

    good = attacker.sealed(tiny_bundle, cut1)
    assert attacker.ask(good).header.msg_type is wire.MessageType.RESULT
    assert unauthorized(good, sealed=True)  # replayed
    old = attacker.sealed(tiny_bundle, cut1)  # sealed now, sent after 64 newer ones
    for _ in range(64):
        next(attacker.seq)
    assert attacker.ask(attacker.sealed(tiny_bundle, cut1)).header.msg_type is wire.MessageType.RESULT
    assert unauthorized(old, sealed=True)  # reordered beyond the window
    sealed = wire.envelope_from_bytes(attacker.sealed(tiny_bundle, cut1))
    truncated = wire.envelope_to_bytes(wire.Envelope(sealed.header, sealed.body[:-5]))
    assert unauthorized(truncated)  # lengths consistent, tag cut short
    flipped = bytearray(attacker.sealed(tiny_bundle, cut1))
    flipped[-20] ^= 0x10  # one bit of ciphertext
    assert unauthorized(bytes(flipped))
    header_flipped = bytearray(attacker.sealed(tiny_bundle, cut1))
    header_flipped[20] ^= 0x01  # one bit of the request id (part of the AAD)
    assert unauthorized(bytes(header_flipped))
    cut_short = attacker.sealed(tiny_bundle, cut1)[:-3]  # envelope length no longer matches
    reply = attacker.ask(cut_short)
    assert wire.decode_error(reply.body)[0] is wire.ErrorCode.MALFORMED

    def delta(key: str) -> int:
        return counters[key] - before.get(key, 0)

    assert delta("rejected_replay") == 1
    assert delta("rejected_too_old") == 1
    assert delta("rejected_decrypt") == 3
    assert delta("rejected_malformed") == 1
    # the gateway keeps serving: another device, and the attacked device's next honest request
    bystander = make_client("bystander-device", policy=NeverExit())
    assert not any(p.degraded for p in bystander.predict_batch(fmnist.x_test[:10]))
    assert attacker.ask(attacker.sealed(tiny_bundle, cut1)).header.msg_type is wire.MessageType.RESULT


def test_a_device_without_payload_keys_is_refused(
    gateway: GatewayDaemon, fmnist, make_client: Callable[..., DeviceClient]
) -> None:
    before = gateway.service.counters["rejected_not_encrypted"]
    plain = make_client("plaintext-device", encrypted=False, policy=NeverExit())
    prediction = plain.predict(fmnist.x_test[0])
    assert prediction.degraded and prediction.tier == "device"
    assert "401" in (prediction.error or "")
    assert gateway.service.counters["rejected_not_encrypted"] == before + 1


#: What a device certificate may ask for: the gateways' share group by its public name, every
#: device's requests, uploads and replies, everything, a share group of its own, the broker's $SYS.
GREEDY_SUBSCRIPTIONS = (
    f"$share/{wire.GATEWAY_SHARE_GROUP}/{wire.gateway_subscription(False)}",
    f"$share/{wire.GATEWAY_SHARE_GROUP}/{wire.gateway_subscription(False, 'hx')}",
    wire.gateway_subscription(False),
    wire.gateway_subscription(False, "hx"),
    wire.response_topic("+"),
    "#",
    "$share/x/#",
    "$SYS/#",
)


def _drain(received: queue.Queue[tuple[str, bytes]], settle: float = 0.3) -> list[tuple[str, bytes]]:
    time.sleep(settle)
    return [received.get_nowait() for _ in range(received.qsize())]


def test_a_device_subscribed_everywhere_gets_nothing_and_costs_the_others_nothing(
    gateway: GatewayDaemon, fmnist, probe: Callable[[str], Probe], make_client: Callable[..., DeviceClient]
) -> None:
    thief = probe("acl-thief")
    for topic in GREEDY_SUBSCRIPTIONS:
        codes = thief.subscribe(topic)
        assert codes == [1] or codes[0] >= 0x80  # Mosquitto 2.0 grants them; the ACL acts on delivery
    before = dict(gateway.service.counters)
    victims = [make_client(f"acl-victim-{i}", policy=NeverExit()) for i in range(2)]
    predictions = [p for victim in victims for p in victim.predict_batch(fmnist.x_test[:30])]

    assert len(predictions) == 60
    degraded = [p.error for p in predictions if p.degraded]
    assert not degraded, f"{len(degraded)} of 60 requests lost: {degraded[:3]}"
    assert {p.tier for p in predictions} <= {"gateway", "gateway_cache", "cloud"}
    assert gateway.service.counters["requests"] - before.get("requests", 0) >= 60
    got = _drain(thief.received)
    assert all(topic.startswith("ec/v1/models/") for topic, _ in got), got  # what every client may read


def test_a_device_publishes_only_its_own_requests_and_uploads(probe: Callable[[str], Probe]) -> None:
    device = probe("acl-publisher")
    refused = (
        wire.MODELS_TOPIC,  # a forged model announcement
        wire.request_topic("acl-other"),
        wire.upload_topic("acl-other"),
        wire.response_topic("acl-other"),
        wire.response_topic("acl-publisher"),  # its replies come from a gateway, not from itself
        f"{wire.TOPIC_ROOT}/acl-publisher/anything",  # nothing else under its own id
        "ec/v1/gw/gateway-1/status",  # a gateway's presence
        "$SYS/broker/uptime",
        "anywhere/else",
    )
    assert [device.publish(topic, b"x") for topic in refused] == [NOT_AUTHORIZED] * len(refused)
    for topic in (wire.upload_topic("acl-publisher"), wire.request_topic("acl-publisher")):
        assert device.publish(topic, b"not an envelope") < 0x80  # accepted (0x10: no one listening)


def _paho(
    config: MqttConfig, client_id: str
) -> tuple[Any, queue.Queue[tuple[str, bytes]], list[int], threading.Event]:
    """A raw MQTT v5 client: what it receives, its disconnects, and an event set once connected."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.tls_set_context(tls_context(config))
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    disconnects: list[int] = []
    connected = threading.Event()
    client.on_message = lambda c, u, msg: received.put((msg.topic, bytes(msg.payload)))
    client.on_connect = lambda c, u, f, code, props: connected.set() if not code.is_failure else None
    client.on_disconnect = lambda c, u, f, code, props: disconnects.append(int(code.value))
    client.reconnect_delay_set(min_delay=5, max_delay=5)  # a kicked client must not win the id back at once
    client.connect(config.host, config.port)
    client.loop_start()
    assert connected.wait(5), f"{client_id} could not connect"
    return client, received, disconnects, connected


def test_a_device_cannot_take_over_a_gateways_connection(pki: Pki, tmp_path: Path) -> None:
    """On a broker from ``broker config``, a device that says it is ``gateway-1`` is still itself."""
    files = write_broker_config(
        pki, tmp_path / "broker", port=free_port(), host="127.0.0.1", user=pwd.getpwuid(os.geteuid()).pw_name
    )
    port = int(files.conf.read_text().split("listener ", 1)[1].split()[0])
    log = tmp_path / "mosquitto.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen([mosquitto_binary(), "-c", str(files.conf)], stdout=out, stderr=out)
    clients = []
    try:
        wait_for_port("127.0.0.1", port, 10, broker)
        device_crypto(pki, "acl-hijacker")
        device_crypto(pki, "acl-honest")
        gw, requests, gw_disconnects, _ = _paho(pki.mqtt_config("gateway", "127.0.0.1", port), "gateway-1")
        clients.append(gw)
        gw.subscribe(wire.gateway_subscription(False), qos=1)
        hijacker, _, _, _ = _paho(pki.mqtt_config("acl-hijacker", "127.0.0.1", port), "gateway-1")
        clients.append(hijacker)
        honest, _, _, _ = _paho(pki.mqtt_config("acl-honest", "127.0.0.1", port), "device-acl-honest")
        clients.append(honest)
        time.sleep(0.3)
        honest.publish(wire.request_topic("acl-honest"), b"request", qos=1).wait_for_publish(5)
        assert requests.get(timeout=5) == (wire.request_topic("acl-honest"), b"request")
        assert gw_disconnects == []  # the gateway kept its connection
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.terminate()
        broker.wait(5)
