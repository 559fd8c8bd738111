"""The gateway heartbeat's JSON: round trip, what a newer gateway may add, every problem named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.wire.heartbeat import MAX_DEVICES, Heartbeat, Latency, SeenDevice


def beat(**changes: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "gateway_id": "gw-1",
        "model_name": "fmnist",
        "model_version": 3,
        "sent_at": 1_700_000_010.5,
        "started_at": 1_700_000_000.0,
        "interval": 10.0,
        "requests": 120,
        "answers": {"gateway": 100, "cloud": 18, "gateway_degraded": 2},
        "latency": Latency(12, 3.5, 9.0, 20.25),
        "devices": (SeenDevice("cam-01", 1_700_000_009.0, 7), SeenDevice("cam-02", 1_700_000_001.0, 5)),
        "devices_seen": 2,
        "outbox": {"pending": 4, "sent": 10, "failed": 0},
    }
    return Heartbeat(**(values | changes))


def test_a_heartbeat_survives_the_wire() -> None:
    original = beat()
    sent = json.dumps(original.to_json())
    assert Heartbeat.from_json(json.loads(sent)) == original


def test_optional_parts_may_be_empty() -> None:
    quiet = beat(latency=Latency(), devices=(), devices_seen=0, outbox=None, answers={})
    data = quiet.to_json()
    assert data["latency_ms"] == {"count": 0, "p50": None, "p90": None, "p99": None}
    assert Heartbeat.from_json(data) == quiet


def test_fields_a_newer_gateway_adds_are_ignored() -> None:
    data = beat().to_json() | {"gpu_temperature": 61}
    data["model"]["channel"] = "beta"
    assert Heartbeat.from_json(data) == beat()


def test_every_problem_is_named_at_once() -> None:
    data = beat().to_json()
    data["gateway_id"] = "gw 1/../x"
    data["requests"] = -1
    data["interval"] = 0
    data["answers"]["Bad-Name"] = 3
    data["latency_ms"]["p99"] = "slow"
    data["devices"][1]["last_seen"] = float("nan")
    del data["model"]["version"]
    with pytest.raises(WireError) as caught:
        Heartbeat.from_json(data)
    message = str(caught.value)
    for problem in (
        "gateway_id",
        "requests",
        "interval",
        "'Bad-Name' is not a counter name",
        "latency_ms.p99",
        "devices[1].last_seen",
        "model.version: required",
    ):
        assert problem in message


@pytest.mark.parametrize(
    "data",
    [
        [],
        "heartbeat",
        {"schema": 2},
        beat().to_json()
        | {"devices": [{"id": f"d{i}", "last_seen": 1.0, "requests": 1} for i in range(300)]},
        beat().to_json() | {"requests": True},
        beat().to_json() | {"answers": {f"t{i}": 1 for i in range(40)}},
    ],
    ids=["list", "string", "schema", "too-many-devices", "bool-count", "too-many-tiers"],
)
def test_what_is_not_a_heartbeat_is_refused(data: Any) -> None:
    assert MAX_DEVICES < 300
    with pytest.raises(WireError):
        Heartbeat.from_json(data)
