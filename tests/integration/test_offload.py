"""A gateway daemon's ``[offload] policy`` on the real broker and cloud: who answers what.

Each test runs its own gateway subscribed without the share group, so it sees every request
its device sends; its own counters say where it answered them (another gateway of the
session may answer the device first, so the device's predictions alone would not tell).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgecascade.device_sdk.core.offload import CloudOnly, OffloadSettings
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto

from .conftest import CloudServer, gateway_config

pytestmark = pytest.mark.integration

INPUTS = 16


@pytest.fixture
def make_gateway(
    tiny_bundle: Path, broker: Mosquitto, cloud: CloudServer
) -> Iterator[Callable[[str], GatewayDaemon]]:
    daemons: list[GatewayDaemon] = []

    def make(policy: str) -> GatewayDaemon:
        config = gateway_config(
            tiny_bundle, broker, cloud.url, gateway_id="gw-" + uuid.uuid4().hex[:8], shared_subscription=False
        )
        daemon = GatewayDaemon(dataclasses.replace(config, offload=OffloadSettings(policy=policy)))
        daemon.start()
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        daemon.stop()


def answers(daemon: GatewayDaemon, n: int, timeout: float = 30.0) -> dict[str, int]:
    """The gateway's answers per tier once it gave ``n`` (it may still be answering when the device has)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {k: v for k, v in daemon.service.counters.items() if k.startswith("answered_")}
        if sum(counts.values()) >= n or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("policy", "expected", "forwarded"),
    [("cloud_only", {"answered_cloud": INPUTS}, INPUTS), ("edge_only", {"answered_gateway": INPUTS}, 0)],
)
def test_the_configured_policy_decides_where_the_gateway_answers(
    make_gateway, make_client, fmnist, policy: str, expected: dict[str, int], forwarded: int
) -> None:
    daemon = make_gateway(policy)
    client = make_client(f"offload-{policy.replace('_', '-')}", policy=CloudOnly())  # all reach the gateway
    predictions = client.predict_batch(fmnist.x_test[:INPUTS])
    assert len(predictions) == INPUTS and not any(p.degraded for p in predictions)
    assert answers(daemon, INPUTS) == expected
    assert daemon.service.counters["forwarded"] == forwarded
