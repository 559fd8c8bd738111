"""The processes of ``edgecascade bench load``: light simulated devices, and the echo responder.

Both run in processes of their own (``multiprocessing``, spawned) and speak to the parent
only through a pipe, in bytes: ``ready``, the start time, and the results as JSON.
"""

from __future__ import annotations

import json
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.keys import load_device_crypto
from edgecascade.device_sdk.wire.sequence import initial_sequence
from edgecascade.tools.certs import Pki


def generate(spec: dict[str, Any], conn: Connection) -> None:
    """One generator process: connect its devices, seal every step's requests, say ready, run.

    Receives the common start time (wall clock) over ``conn`` and sends back one JSON
    document with each step's numbers; JSON, so no Python objects cross the pipe.
    """
    from edgecascade.device_sdk.transport.mqtt import MqttLink  # paho only in the generator

    pki = Pki(Path(spec["pki"]))
    rng = np.random.default_rng(spec["seed"])
    shape, encoding = tuple(spec["shape"]), spec["encoding"]
    bodies = [
        codec.encode_features(rng.standard_normal(shape).astype(np.float32), encoding) for _ in range(8)
    ]
    sent: dict[bytes, float] = {}
    answered: dict[bytes, tuple[float, float]] = {}  # correlation -> (latency s, wall time of the reply)
    errors: list[bytes] = []

    def on_reply(topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        now = time.perf_counter()
        if correlation is None or correlation not in sent:
            return
        answered[correlation] = (now - sent[correlation], time.time())
        if len(payload) > 3 and payload[3] == wire.MessageType.ERROR:  # the header's message type
            errors.append(correlation)

    devices = []
    for device_id in spec["devices"]:
        link = MqttLink(pki.mqtt_config(device_id, spec["host"], spec["port"]), f"{device_id}-load")
        link.subscribe(wire.response_topic(device_id), on_reply)
        link.connect(15)
        crypto = load_device_crypto(pki.device_dir(device_id), device_id)
        devices.append((device_id, link, crypto, iter(range(initial_sequence(), 2**63))))
    steps: list[list[tuple[bytes, Any, str, str, bytes]]] = []
    for step, rate in enumerate(spec["rates"]):
        messages = []
        for k in range(round(rate * spec["seconds"])):
            device_id, link, crypto, seq = devices[k % len(devices)]
            header = wire.Header(wire.MessageType.INFER_REQUEST, device_id, spec["version"], next(seq))
            payload = crypto.seal(wire.Envelope(header, bodies[k % len(bodies)]))
            correlation = (spec["index"] << 48 | step << 32 | k).to_bytes(8, "big")
            topics = wire.request_topic(device_id), wire.response_topic(device_id)
            messages.append((correlation, link, *topics, payload))
        steps.append(messages)
    conn.send_bytes(b"ready")
    start = float(conn.recv_bytes().decode())
    results = []
    for step, (rate, messages) in enumerate(zip(spec["rates"], steps, strict=True)):
        begin = start + step * (spec["seconds"] + spec["drain"])
        interval = 1.0 / rate if rate > 0 else 0.0
        time.sleep(max(0.0, begin - time.time()))
        first, cpu = time.time(), time.process_time()
        for k, (correlation, link, topic, response, payload) in enumerate(messages):
            delay = begin + k * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            sent[correlation] = time.perf_counter()
            link.publish(topic, payload, response_topic=response, correlation_data=correlation)
        last_sent, cpu = time.time(), time.process_time() - cpu
        time.sleep(max(0.0, begin + spec["seconds"] + spec["drain"] - time.time()))
        replies = [answered[c] for c, *_ in messages if c in answered]
        refused = set(errors)
        results.append(
            {
                "sent": len(messages),
                "first_sent": first,
                "cpu_seconds": cpu,
                "last_sent": last_sent,
                "last_reply": max((wall for _, wall in replies), default=last_sent),
                "latencies_ms": [round(latency * 1000, 3) for latency, _ in replies],
                "errors": sum(1 for c, *_ in messages if c in refused),
            }
        )
    for _, link, _, _ in devices:
        link.close()
    conn.send_bytes(json.dumps(results).encode())


def echo(pki_root: str, host: str, port: int, conn: Connection) -> None:
    """The ceiling's responder: every device's request published back to it as its reply."""
    from edgecascade.device_sdk.transport.mqtt import MqttLink

    pki = Pki(Path(pki_root))
    link = MqttLink(pki.mqtt_config("gateway", host, port), "echo-responder")

    def reply(topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        device_id = wire.device_id_from_topic(topic)
        if device_id is not None:
            link.publish(wire.response_topic(device_id), payload, correlation_data=correlation)

    link.subscribe(wire.gateway_subscription(shared=False), reply)
    link.connect(15)
    conn.send_bytes(b"ready")
    conn.recv_bytes()  # anything: stop
    link.close()
