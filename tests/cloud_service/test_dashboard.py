"""The dashboard's page and the fleet API on the real app: heartbeats, fleet, traffic, raw images.

Most tests run the app on :class:`EchoInference` (no model needed) with a real SQLite
database; the raw-image test uploads hard examples made by the tiny model's device
partition, with their raw inputs, and reads the pixels back out of the PNG.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.cloud_service.dashboard.fleet import (
    HISTORY,
    MAX_SIGHTINGS,
    DeviceSightings,
    FleetStore,
    HeartbeatRow,
    merge_devices,
)
from edgecascade.cloud_service.dashboard.png import png_bytes
from edgecascade.cloud_service.dashboard.traffic import answers_between, bucket_seconds, traffic_series
from edgecascade.cloud_service.store import open_engine
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire.envelope import ROUTE_HEARTBEAT
from edgecascade.device_sdk.wire.heartbeat import Heartbeat, Latency, SeenDevice
from edgecascade.training.data import Dataset
from tests.learning_kit import RecordingLauncher, device_examples, make_learning_cloud, with_raw

from .conftest import Cloud, bearer, envelope


@pytest.fixture
def cloud(make_cloud: Callable[..., Cloud], tmp_path: Path) -> Cloud:
    return make_cloud(database_url=f"sqlite:///{tmp_path / 'db' / 'cloud.db'}", blob_dir=tmp_path / "blobs")


def beat(gateway: str = "gw-1", **changes: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "gateway_id": gateway,
        "model_name": "fmnist",
        "model_version": 2,
        "sent_at": time.time(),
        "started_at": 1_700_000_000.0,
        "interval": 10.0,
        "requests": 10,
        "answers": {"gateway": 8, "cloud": 2},
        "latency": Latency(10, 2.0, 5.0, 9.0),
        "devices": (SeenDevice("cam-01", time.time(), 10),),
        "devices_seen": 1,
        "outbox": {"pending": 3, "sent": 0, "failed": 0},
    }
    return Heartbeat(**(values | changes))


def post(cloud: Cloud, body: Any, token: str) -> Any:
    return cloud.client.post(ROUTE_HEARTBEAT, json=body, headers=bearer(token))


def decode_png(data: bytes) -> tuple[int, int, int, np.ndarray]:
    """Width, height, colour type and pixels of a PNG as :mod:`png` writes it (filter 0 rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and b"IEND" in chunks
    channels = {0: 1, 2: 3, 6: 4}[colour]
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return width, height, colour, rows[:, 1:].reshape(height, width, channels)


# ------------------------------------------------------------------------------- the page
def test_the_page_and_its_files_need_no_token(cloud: Cloud) -> None:
    page = cloud.client.get("/dashboard/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'src="static/dashboard.js"' in html and 'href="static/dashboard.css"' in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]  # nothing from elsewhere
    for name, mimetype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        response = cloud.client.get(f"/dashboard/static/{name}")
        assert response.status_code == 200
        assert response.mimetype == mimetype
        response.close()
    assert cloud.client.get("/dashboard").status_code == 308  # to the page's own URL
    assert cloud.client.get("/dashboard/static/missing.js").status_code == 404


def test_the_page_loads_nothing_from_another_origin() -> None:
    static = Path(__file__).resolve().parents[2] / "cloud_service" / "dashboard" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text


# ----------------------------------------------------------------------------- heartbeats
def test_only_a_gateway_token_may_send_heartbeats(cloud: Cloud) -> None:
    body = beat().to_json()
    assert cloud.client.post(ROUTE_HEARTBEAT, json=body).status_code == 401
    assert post(cloud, body, cloud.token("device", "cam-01")).status_code == 403
    assert post(cloud, body, cloud.token("admin")).status_code == 403
    answer = post(cloud, body, cloud.token("gateway", "site-a"))
    assert answer.status_code == 200
    assert abs(answer.get_json()["received_at"] - time.time()) < 5
    assert cloud.inference.counters["heartbeats"] == 1


def test_a_bad_heartbeat_is_refused_with_its_problems_and_counted(cloud: Cloud) -> None:
    gateway = cloud.token("gateway")
    body = beat().to_json() | {"requests": -5, "gateway_id": "no spaces"}
    answer = post(cloud, body, gateway)
    assert answer.status_code == 400
    message = answer.get_json()["message"]
    assert "requests" in message and "gateway_id" in message
    assert cloud.inference.counters["heartbeats_rejected"] == 1
    not_json = cloud.client.post(
        ROUTE_HEARTBEAT, data=b"{", content_type="application/json", headers=bearer(gateway)
    )
    assert not_json.status_code == 400
    wrong_type = cloud.client.post(ROUTE_HEARTBEAT, data=b"x", headers=bearer(gateway))
    assert wrong_type.status_code == 415
    admin = cloud.token("admin")
    assert cloud.client.get("/v1/fleet", headers=bearer(admin)).get_json()["gateways"] == []


# ---------------------------------------------------------------------------------- fleet
def test_the_fleet_lists_gateways_and_devices_from_every_source(cloud: Cloud) -> None:
    admin = bearer(cloud.token("admin"))
    assert cloud.client.get("/v1/fleet").status_code == 401
    assert cloud.client.get("/v1/fleet", headers=bearer(cloud.token("gateway"))).status_code == 403
    post(cloud, beat("gw-1").to_json(), cloud.token("gateway", "site-a"))
    post(cloud, beat("gw-1", requests=25).to_json(), cloud.token("gateway", "site-a"))
    post(cloud, beat("gw-2", model_version=1, devices=(), devices_seen=0).to_json(), cloud.token("gateway"))
    forwarded = cloud.client.post(
        wire.ROUTE_INFER,
        data=envelope("cam-09"),
        content_type=wire.CONTENT_TYPE,
        headers=bearer(cloud.token("gateway", "site-a")),
    )
    assert forwarded.status_code == 200

    fleet = cloud.client.get("/v1/fleet", headers=admin).get_json()
    assert fleet["cloud"]["model"] == {"name": "stub", "version": 1}
    gateways = {g["gateway_id"]: g for g in fleet["gateways"]}
    assert sorted(gateways) == ["gw-1", "gw-2"]
    assert gateways["gw-1"]["requests"] == 25  # the latest heartbeat
    assert gateways["gw-1"]["model"]["version"] == 2 and gateways["gw-2"]["model"]["version"] == 1
    assert gateways["gw-1"]["token"] == "site-a"
    assert gateways["gw-1"]["outbox"] == {"pending": 3, "sent": 0, "failed": 0}
    assert not gateways["gw-1"]["stale"]
    devices = {d["device_id"]: d for d in fleet["devices"]}
    assert devices["cam-01"]["seen_by"] == ["gateway gw-1"] and devices["cam-01"]["gateway_requests"] == 10
    assert devices["cam-09"]["seen_by"] == ["cloud inference"] and devices["cam-09"]["cloud_requests"] == 1


def test_a_quiet_gateway_turns_stale_but_stays_listed(cloud: Cloud) -> None:
    post(cloud, beat("gw-q", interval=0.02).to_json(), cloud.token("gateway"))
    time.sleep(0.1)
    fleet = cloud.client.get("/v1/fleet", headers=bearer(cloud.token("admin"))).get_json()
    (gateway,) = fleet["gateways"]
    assert gateway["stale"] and gateway["age"] >= 0.1


def test_the_fleet_store_keeps_each_gateways_latest_heartbeat_and_counts_devices(database_url: str) -> None:
    now = [1_000_000.0]
    store = FleetStore(open_engine(database_url), clock=lambda: now[0])
    for gateway, at in (("gw-1", 0.0), ("gw-1", 10.0), ("gw-2", 20.0), ("gw-1", HISTORY + 30)):
        now[0] = 1_000_000.0 + at
        store.record_heartbeat(beat(gateway, sent_at=now[0]), "token")
    # the last one pruned what is older than HISTORY: gw-1's first two, but not gw-2's only one
    kept = [(r.gateway_id, r.received_at - 1_000_000.0) for r in store.heartbeats_since(0)]
    assert kept == [("gw-2", 20.0), ("gw-1", HISTORY + 30)]
    assert store.prune(now[0] + 10 * HISTORY) == 0  # a gateway's latest heartbeat is never pruned
    assert [r.gateway_id for r in store.latest_heartbeats()] == ["gw-1", "gw-2"]
    sightings = DeviceSightings(clock=lambda: 5.0)
    sightings.saw("cam-01", "gateway site-a")
    sightings.saw("cam-01", "gateway site-a")
    store.record_sightings(sightings.drain())
    assert sightings.drain() == {} and sightings.take_dropped() == 0
    later = DeviceSightings(clock=lambda: 9.0)
    later.saw("cam-01", "device cam-01")
    later.saw("cam-02", "device cam-02")
    store.record_sightings(later.drain())
    rows = {r["device_id"]: r for r in store.infer_devices()}
    assert rows["cam-01"]["requests"] == 3 and rows["cam-01"]["last_seen"] == 9.0
    assert rows["cam-01"]["first_seen"] == 5.0 and rows["cam-01"]["via"] == "device cam-01"
    assert rows["cam-02"]["requests"] == 1


def test_sightings_are_bounded_and_the_overflow_counted() -> None:
    sightings = DeviceSightings()
    for i in range(MAX_SIGHTINGS + 3):
        sightings.saw(f"d{i}", "gateway g")
    sightings.saw("d0", "gateway g")  # a device already pending still counts
    pending = sightings.drain()
    assert len(pending) == MAX_SIGHTINGS and pending["d0"].requests == 2
    assert sightings.take_dropped() == 3 and sightings.take_dropped() == 0


def test_devices_from_three_sources_merge_into_one_line_each() -> None:
    row = HeartbeatRow("gw-1", "t", 100.0, beat(devices=(SeenDevice("cam-01", 90.0, 4),)))
    merged = merge_devices(
        [row],
        [{"device_id": "cam-01", "last_seen": 95.0, "requests": 2, "via": "gateway t", "first_seen": 1.0}],
        [
            {"device_id": "cam-01", "hard_examples": 3, "last": 80.0},
            {"device_id": "cam-07", "hard_examples": 1, "last": 99.0},
        ],
    )
    assert [d["device_id"] for d in merged] == ["cam-07", "cam-01"]  # most recently seen first
    cam = merged[1]
    assert cam["seen_by"] == ["gateway gw-1", "cloud inference", "hard examples"]
    assert (cam["last_seen"], cam["gateway_requests"], cam["cloud_requests"], cam["hard_examples"]) == (
        95.0,
        4,
        2,
        3,
    )


# -------------------------------------------------------------------------------- traffic
def rows(*beats: tuple[str, float, Heartbeat]) -> list[HeartbeatRow]:
    return [HeartbeatRow(gateway, "t", at, b) for gateway, at, b in beats]


def test_traffic_is_the_difference_of_cumulative_counters_and_a_restart_counts_from_zero() -> None:
    history = rows(
        ("gw-1", 5.0, beat(answers={"gateway": 10, "cloud": 0}, latency=Latency())),
        ("gw-1", 15.0, beat(answers={"gateway": 16, "cloud": 4}, latency=Latency(10, 2.0, 4.0, 8.0))),
        ("gw-2", 16.0, beat("gw-2", answers={"gateway": 1}, latency=Latency(30, 6.0, 7.0, 30.0))),
        ("gw-2", 18.0, beat("gw-2", answers={"gateway": 5, "gateway_degraded": 2}, latency=Latency())),
        ("gw-1", 25.0, beat(started_at=2e9, answers={"gateway": 3, "cloud": 1}, latency=Latency())),
    )
    series = traffic_series(history, since=0.0, until=30.0, bucket=10.0)
    assert series["tiers"] == ["gateway", "cloud", "gateway_degraded"]  # stacking order
    first, second = series["mix"]
    assert (first["t"], first["answers"]) == (20.0, {"gateway": 6 + 4, "cloud": 4, "gateway_degraded": 2})
    assert first["total"] == 16 and first["shares"]["cloud"] == 0.25
    assert (second["t"], second["answers"]) == (30.0, {"gateway": 3, "cloud": 1, "gateway_degraded": 0})
    (latency,) = series["latency"]
    assert latency["count"] == 40
    assert latency["p50"] == pytest.approx((10 * 2.0 + 30 * 6.0) / 40)  # weighted by requests
    assert (latency["p90"], latency["p99"]) == (7.0, 30.0)  # the worst gateway's


def test_a_counter_that_goes_down_is_a_restart() -> None:
    assert answers_between(None, beat()) is None  # no baseline
    assert answers_between(beat(answers={"gateway": 9}), beat(answers={"gateway": 4})) == {"gateway": 4}
    assert answers_between(beat(answers={"gateway": 4}), beat(answers={"gateway": 9})) == {"gateway": 5}


def test_buckets_follow_the_slowest_heartbeat_within_limits() -> None:
    assert bucket_seconds([], 900) == 1.0
    assert bucket_seconds(rows(("g", 1.0, beat(interval=30.0))), 900) == 30.0
    assert bucket_seconds(rows(("g", 1.0, beat(interval=0.2))), 900) == 1.0
    assert bucket_seconds(rows(("g", 1.0, beat(interval=600.0))), 900) == 90.0


def test_the_traffic_route_serves_the_series_of_recent_heartbeats(cloud: Cloud) -> None:
    gateway = cloud.token("gateway")
    post(cloud, beat(answers={"gateway": 1, "cloud": 1}).to_json(), gateway)
    post(cloud, beat(answers={"gateway": 5, "cloud": 3}).to_json(), gateway)
    admin = bearer(cloud.token("admin"))
    series = cloud.client.get("/v1/fleet/traffic?minutes=5", headers=admin).get_json()
    assert series["until"] - series["since"] == pytest.approx(300)
    (point,) = series["mix"]
    assert point["answers"] == {"gateway": 4, "cloud": 2}
    assert len(series["latency"]) >= 1
    for bad in ("0", "-1", "61", "soon", "nan"):
        answer = cloud.client.get(f"/v1/fleet/traffic?minutes={bad}", headers=admin)
        assert answer.status_code == 400, bad


# ----------------------------------------------------------------------------- raw images
def test_png_bytes_round_trip_and_refusals() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert decode_png(png_bytes(rgb))[:3] == (3, 2, 2)
    assert np.array_equal(decode_png(png_bytes(rgb))[3], rgb)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(decode_png(png_bytes(grey))[3][:, :, 0], grey)
    for bad in (np.zeros((2, 2), np.float32), np.zeros((2, 2, 2), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(ValueError):
            png_bytes(bad)


def test_a_hard_examples_raw_input_is_served_as_png(
    tmp_path: Path, tiny_bundle: Path, fmnist: Dataset
) -> None:
    lc = make_learning_cloud(tmp_path, tiny_bundle, RecordingLauncher())
    images = fmnist.x_test[:2]
    with_image, features_only = device_examples(tiny_bundle, images)
    with_image = with_raw(with_image, images[0])
    upload = lc.client.post(
        wire.ROUTE_HARD_EXAMPLES,
        json={"examples": [with_image.to_json(), features_only.to_json()]},
        headers=lc.auth("device", "cam-01"),
    )
    assert sorted(upload.get_json()["accepted"]) == sorted([with_image.example_id, features_only.example_id])
    admin = lc.auth("admin")
    url = f"{wire.ROUTE_HARD_EXAMPLES}/{with_image.example_id}/raw.png"
    answer = lc.client.get(url, headers=admin)
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    width, height, colour, pixels = decode_png(answer.get_data())
    assert (width, height, colour) == (28, 28, 0)
    assert np.array_equal(pixels.reshape(28, 28), np.asarray(images[0], np.uint8).reshape(28, 28))
    missing = lc.client.get(f"{wire.ROUTE_HARD_EXAMPLES}/{features_only.example_id}/raw.png", headers=admin)
    assert missing.status_code == 404 and "without its raw input" in missing.get_json()["message"]
    assert lc.client.get(f"{wire.ROUTE_HARD_EXAMPLES}/{'0' * 64}/raw.png", headers=admin).status_code == 404
    assert lc.client.get(url, headers=lc.auth("device", "cam-01")).status_code == 403
    fleet = lc.client.get("/v1/fleet", headers=admin).get_json()
    (device,) = fleet["devices"]
    assert (device["device_id"], device["hard_examples"], device["seen_by"]) == (
        "cam-01",
        2,
        ["hard examples"],
    )
    assert len(fleet["cloud"]["classes"]) == 10
    assert json.loads(json.dumps(fleet)) == fleet
