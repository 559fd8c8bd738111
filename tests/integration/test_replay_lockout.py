"""A device is never locked out by its replay window, and windows survive a gateway restart.

Through the real broker (TLS, ACLs) and gateway daemon: authenticated messages numbered far
ahead, a device whose clock jumps forward and back, and a captured request played again
after the gateway restarted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.wire import sequence
from edgecascade.device_sdk.wire.sequence import SequenceCounter, initial_sequence, parse_resync
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.edge_gateway.replay_store import RESERVE
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, RawDevice, device_crypto, gateway_config

pytestmark = pytest.mark.integration

SECOND = 1_000_000  # devices number in µs of their clock
INPUTS = 40


def _cut1(gateway: GatewayDaemon) -> np.ndarray:
    return np.zeros(gateway.service.bundle.manifest.partition("gateway").input.shape, np.float32)


def _numbered(raw: RawDevice, bundle: Path, tensor: np.ndarray, seq: int) -> bytes:
    """A sealed, authentic request of ``raw``'s device with the sequence number ``seq``."""
    envelope = raw.envelope(bundle, tensor)
    return raw.crypto.seal(wire.Envelope(dataclasses.replace(envelope.header, seq=seq), envelope.body))


def _resync_of(reply: wire.Envelope) -> tuple[int, int]:
    """The (next, limit) a sealed refusal carries."""
    assert reply.header.msg_type is wire.MessageType.ERROR
    code, text = wire.decode_error(reply.body)
    window = parse_resync(text)
    assert code is wire.ErrorCode.UNAUTHORIZED and window is not None, text
    return window


def _delta(gateway: GatewayDaemon, before: dict[str, int], key: str) -> int:
    return gateway.service.counters[key] - before.get(key, 0)


def test_a_far_ahead_message_does_not_lock_the_device_out(
    gateway: GatewayDaemon,
    tiny_bundle: Path,
    fmnist,
    make_raw: Callable[[str], RawDevice],
    make_client: Callable[..., DeviceClient],
) -> None:
    before = dict(gateway.service.counters)
    raw = make_raw("lockout-far")
    reply = raw.ask(_numbered(raw, tiny_bundle, _cut1(gateway), initial_sequence() + 1000 * SECOND))
    assert raw.last_encrypted  # authentic: refused, and answered sealed
    next_seq, limit = _resync_of(reply)
    assert next_seq < limit < initial_sequence() + 1000 * SECOND
    assert _delta(gateway, before, "rejected_too_far_ahead") == 1

    client = make_client("lockout-far", policy=NeverExit())
    predictions = client.predict_batch(fmnist.x_test[:INPUTS])
    assert [p for p in predictions if p.degraded] == []  # before the fix: every one degraded
    assert client.counters["sequence_resyncs"] == 0  # the window never moved
    assert _delta(gateway, before, "rejected_too_old") == 0


def test_a_window_pushed_ahead_within_the_bound_costs_one_resync(
    gateway: GatewayDaemon,
    tiny_bundle: Path,
    fmnist,
    make_raw: Callable[[str], RawDevice],
    make_client: Callable[..., DeviceClient],
) -> None:
    before = dict(gateway.service.counters)
    raw = make_raw("lockout-near")
    pushed = raw.ask(_numbered(raw, tiny_bundle, _cut1(gateway), initial_sequence() + 30 * SECOND))
    assert pushed.header.msg_type is wire.MessageType.RESULT  # 30 s ahead is inside the bound

    client = make_client("lockout-near", policy=NeverExit())
    predictions = client.predict_batch(fmnist.x_test[:INPUTS])
    assert [p for p in predictions if p.degraded] == []
    assert client.counters["sequence_resyncs"] == 1
    assert client.counters["resent_after_resync"] == _delta(gateway, before, "rejected_too_old") > 0
    again = client.predict_batch(fmnist.x_test[INPUTS : 2 * INPUTS])  # settled: no more refusals
    assert [p for p in again if p.degraded] == [] and client.counters["sequence_resyncs"] == 1


@pytest.mark.parametrize("jump", [30, 1000], ids=["within-bound", "beyond-bound"])
def test_a_clock_that_jumps_forward_then_back_does_not_lock_the_device_out(
    jump: int,
    gateway: GatewayDaemon,
    fmnist,
    make_client: Callable[..., DeviceClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device_id = f"clock-jump-{jump}"
    monkeypatch.setattr(sequence, "initial_sequence", lambda: initial_sequence() + jump * SECOND)
    forward = make_client(device_id, policy=NeverExit())  # started while its clock ran ahead
    monkeypatch.undo()  # the clock is set right; the application restarts
    ahead = forward.predict_batch(fmnist.x_test[:INPUTS])
    forward.close()
    back = make_client(device_id, policy=NeverExit())
    behind = back.predict_batch(fmnist.x_test[INPUTS : 2 * INPUTS])

    assert [p for p in ahead + behind if p.degraded] == []  # before the fix: every one of `behind`
    # beyond the bound the fast clock is refused and pulled back; within it, the slow one is pushed up
    resyncs = (forward.counters["sequence_resyncs"], back.counters["sequence_resyncs"])
    assert resyncs == ((1, 0) if jump > gateway.config.crypto.max_ahead else (0, 1))


@pytest.fixture
def own_broker(tmp_path: Path, broker: Mosquitto) -> Iterator[Mosquitto]:
    """A broker of the site's PKI for this test alone: its gateway serves nobody else's requests."""
    with Mosquitto(tmp_path / "broker", broker.pki) as own:
        yield own


def test_a_captured_request_is_refused_after_a_gateway_restart(
    tiny_bundle: Path, tmp_path: Path, cloud: CloudServer, own_broker: Mosquitto, fmnist
) -> None:
    config = gateway_config(tiny_bundle, own_broker, cloud.url, gateway_id="gw-restart")
    store = tmp_path / "state" / "replay.db"
    config = dataclasses.replace(config, crypto=dataclasses.replace(config.crypto, replay_store=store))
    device_id = "restart-device"
    keys = device_crypto(own_broker.pki, device_id)
    raw = RawDevice(own_broker, keys, device_id)
    first = GatewayDaemon(config)
    first.start()
    try:
        captured = raw.sealed(tiny_bundle, _cut1(first))
        assert raw.ask(captured).header.msg_type is wire.MessageType.RESULT
    finally:
        first.stop()

    restarted = GatewayDaemon(config)
    restarted.start()
    try:
        replayed = raw.ask(captured)  # before the fix: answered once more
        assert raw.last_encrypted
        seq = wire.envelope_from_bytes(captured).header.seq
        assert _resync_of(replayed)[0] == seq + RESERVE + 1  # above everything the first gateway accepted
        counters = restarted.service.counters
        assert counters["requests"] == counters["rejected_too_old"] == 1
        # the device goes on numbering where it was (below the restored mark): one resync, no degraded answer
        transport = MqttTransport(own_broker.mqtt_config(device_id), device_id)
        with DeviceClient(
            load_bundle(tiny_bundle), device_id, transport, crypto=keys, policy=NeverExit()
        ) as client:
            client.sequence = SequenceCounter(seq + 1)
            predictions = client.predict_batch(fmnist.x_test[:10])
        assert [p for p in predictions if p.degraded] == []
        assert client.counters["sequence_resyncs"] == 1
    finally:
        restarted.stop()
        raw.link.close()
