"""Two gateway daemons in one share group, and one of them lost while a device streams.

The site runs as an operator runs it (:class:`~edgecascade.tools.stack.LocalStack`: Mosquitto
with TLS, the cloud and a gateway daemon as processes) plus a second gateway daemon with
the same payload key, so the same share group. A device streams encrypted requests; one
gateway is killed with ``SIGKILL``. It is first frozen (``SIGSTOP``) for a moment so that
the broker has handed it some of the stream when it dies: those requests are lost with it,
and the device sends each once more after ``retry_after``, to the gateway that is left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from edgecascade.device_sdk.client import DeviceClient, Prediction
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.tools.bench_scaleout import spawn_gateway, stop_gateway
from edgecascade.tools.stack import LocalStack

pytestmark = pytest.mark.integration

TIMEOUT = 4.0
RETRY_AFTER = 1.0


def test_a_gateway_lost_mid_stream_loses_only_what_was_in_flight(
    tiny_bundle: Path, tmp_path: Path, fmnist
) -> None:
    images = fmnist.x_test[:240]
    with LocalStack(tiny_bundle, tmp_path / "site") as stack:
        second = spawn_gateway(stack, "gateway-2")
        try:
            mqtt, crypto = stack.device("stream-device")
            client = DeviceClient(
                load_bundle(tiny_bundle),
                "stream-device",
                MqttTransport(mqtt, "stream-device"),
                crypto=crypto,
                policy=NeverExit(),  # every input travels
                timeout=TIMEOUT,
                retry_after=RETRY_AFTER,
            )
            answers: list[Prediction] = []
            done = threading.Event()

            def stream() -> None:
                try:
                    for start in range(0, len(images), 8):
                        answers.extend(client.predict_batch(images[start : start + 8]))
                finally:
                    done.set()

            streamer = threading.Thread(target=stream)
            streamer.start()
            deadline = time.monotonic() + 60
            while len(answers) < 40 and not done.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            before = client.counters.snapshot().get("retries", 0)
            victim = stack.processes["gateway"]
            os.kill(victim.pid, signal.SIGSTOP)  # requests handed to it now stay with it
            time.sleep(RETRY_AFTER / 2)
            victim.kill()  # SIGKILL: the broker sees the connection drop
            victim.wait(10)
            killed_at = len(answers)
            streamer.join(120)
            assert not streamer.is_alive()
            counters = client.counters.snapshot()
            client.close()
        finally:
            stop_gateway(second)

    print(
        f"\n{len(answers)} answers, {counters.get('retries', 0)} retried, slowest "
        f"{max(p.latency_ms for p in answers):.0f} ms, {sum(p.degraded for p in answers)} degraded"
    )
    assert len(answers) == len(images)  # every input got an answer
    assert [p for p in answers if p.degraded] == []  # none degraded: the lost ones were retried
    assert before == 0  # two live gateways: nothing retried
    retried = counters.get("retries", 0)
    assert retried >= 1  # some requests were in flight at the dead gateway
    assert retried < len(images) - killed_at  # only those: the rest went to the other gateway at once
    slow = [p for p in answers if p.latency_ms >= RETRY_AFTER * 1000]
    assert len(slow) >= retried  # a retried input waited retry_after first ...
    assert max(p.latency_ms for p in answers) < TIMEOUT * 1000  # ... and was answered within the timeout
    assert {p.tier for p in answers} <= {"gateway", "cloud"}
