"""The operator dashboard end to end, in a real headless Chromium driven by Playwright.

The module's stack is real: its own TLS Mosquitto, the Flask cloud over HTTPS with a model
registry holding two signed versions (announcing promotions over MQTT as the ``cloud``
identity), the learning loop on SQLite (jobs recorded, not run), a gateway daemon sending
heartbeats every half second, and a device whose requests the gateway answers or forwards.
Hard examples with raw inputs are uploaded with a device token, then, through the gateway's
token, unknown inputs of two kinds (one with raw inputs) and a drift alarm. The browser
enters the admin token, finds the gateway in the fleet table, checks that both charts drew
data (SVG geometry, and the pixels of a screenshot), labels a hard example, sees a job's
progress, promotes version 2 and rolls back; then it groups the unknown inputs, sees a
group's picture, names groups (a conflicting name shows the API's message in the card) and
finds the drift event, then the collaborative training runs. Each change is checked against
the API as well.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``tools/system-deps.sh``);
nothing is downloaded.
"""

from __future__ import annotations

import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from werkzeug.serving import make_server

from edgecascade.cloud_service.__main__ import tls_context
from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, RegistrySettings, RetrainSettings
from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.cloud_service.learning import Learning
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle, write_manifest
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.transport.http import CloudHttp
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto
from edgecascade.tools.certs import Pki
from edgecascade.training.data import Dataset
from tests.federation_kit import make_tally
from tests.learning_kit import RecordingLauncher, device_examples, with_raw
from tests.unknown_kit import synthetic

from .conftest import device_crypto, gateway_config

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
GATEWAY = "gw-dash"
SITE = "site-a"  # the gateway token's name: the site its uploads speak for
DEVICE = "cam-dash"
TIER_COLOURS = {"gateway": (0x2B, 0x8A, 0x3E), "cloud": (0x1C, 0x7E, 0xD6)}  # as dashboard.js draws them
PANEL = (0xF8, 0xF9, 0xFA)  # the charts' background
WAIT_MS = 15_000


@dataclass
class Site:
    url: str
    admin: str
    api: CloudHttp  # the cloud's API with the admin token
    learning: Learning
    example_ids: list[str]
    job_id: int
    unknown_pictured: set[str]  # unknown uploads with their raw inputs
    unknown_plain: set[str]  # unknown uploads with features only
    drift_id: str  # the example a device's drift alarm kept


@pytest.fixture(scope="module")
def site(
    tiny_bundle: Path, pki: Pki, fmnist: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("dashboard")
    v1, v2 = work / "src" / "v1", work / "src" / "v2"
    shutil.copytree(tiny_bundle, v1)
    sign_bundle(v1, pki.cloud_signing_key)
    shutil.copytree(v1, v2)
    write_manifest(v2, replace(load_bundle(v1, tiers=()).manifest, version=2))
    sign_bundle(v2, pki.cloud_signing_key)
    with Mosquitto(work / "broker", pki) as broker:
        config = CloudConfig(
            CloudSettings(
                bundle=v1,
                verify_key=pki.cloud_signing_pub,
                token_store=work / "tokens.db",
                database_url=f"sqlite:///{work / 'cloud.db'}",
                blob_dir=work / "blobs",
                max_upload_bytes=256 * 1024,
            ),
            RegistrySettings(models_dir=work / "models", signing_key=pki.cloud_signing_key, announce=True),
            broker.mqtt_config("cloud"),
            retrain=RetrainSettings(jobs_dir=work / "jobs", count_threshold=0),
        )
        app = create_app(config, launcher=RecordingLauncher())  # registers and promotes v1
        app.extensions["edgecascade.rollout"].registry.register(v2)
        tokens = app.extensions["edgecascade.tokens"]
        gateway_token = tokens.create("gateway", SITE)[0]
        server = make_server(
            "127.0.0.1", 0, app, threaded=True, ssl_context=tls_context(pki.broker_cert, pki.broker_key)
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"https://127.0.0.1:{server.server_port}"
        admin = tokens.create("admin", "operator")[0]
        api = CloudHttp(url, admin, ca_file=pki.ca_cert)
        gateway = GatewayDaemon(
            gateway_config(
                v1,
                broker,
                url,
                gateway_id=GATEWAY,
                cloud_token=gateway_token,
                heartbeat_interval=0.5,
            )
        )
        gateway.start()
        crypto = device_crypto(pki, DEVICE)  # issues the device's certificate and payload keys
        client = DeviceClient(
            load_bundle(v1),
            DEVICE,
            MqttTransport(broker.mqtt_config(DEVICE), DEVICE),
            crypto=crypto,
            policy=NeverExit(),  # every input goes to the gateway, which answers or forwards it
        )
        try:
            for start in (0, 48):  # two rounds, at least one heartbeat apart: a difference to chart
                predictions = client.predict_batch(fmnist.x_test[start : start + 48])
                assert {p.tier for p in predictions} <= {"gateway", "cloud"}
                time.sleep(1.2)
            images = fmnist.x_test[100:104]
            examples = [
                with_raw(e, image)
                for e, image in zip(device_examples(v1, images, DEVICE), images, strict=True)
            ]
            uploader = CloudHttp(url, tokens.create("device", DEVICE)[0], ca_file=pki.ca_cert)
            receipt = uploader.call_json(
                "POST", wire.ROUTE_HARD_EXAMPLES, {"examples": [e.to_json() for e in examples]}
            )
            assert len(receipt["accepted"]) == len(examples)
            pictured = synthetic(v1, "cut1", 2, 12, images=True)
            plain = synthetic(v1, "cut1", 1, 12)
            (drift,) = device_examples(v1, fmnist.x_test[104:105], DEVICE)
            drift = replace(drift, reasons=("drift",), created_at=time.time() - 60)
            relay = [*pictured, *plain, drift]
            relayed = CloudHttp(url, gateway_token, ca_file=pki.ca_cert).call_json(
                "POST", wire.ROUTE_HARD_EXAMPLES, {"examples": [e.to_json() for e in relay]}
            )
            assert len(relayed["accepted"]) == len(relay)
            job = api.call_json("POST", "/v1/retrain")
            learning: Learning = app.extensions["edgecascade.learning"]
            jobs = learning.scheduler.jobs
            assert jobs.start(job["id"], pid=1)
            jobs.report(job["id"], 0.4, "fine-tuning")
            yield Site(
                url,
                admin,
                api,
                learning,
                receipt["accepted"],
                job["id"],
                {e.example_id for e in pictured},
                {e.example_id for e in plain},
                drift.example_id,
            )
        finally:
            client.close()
            gateway.stop()
            server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (tools/system-deps.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def png_pixels(data: bytes) -> np.ndarray:
    """The RGB(A) pixels of an 8-bit PNG, with every row filter undone (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width, bpp), np.int32)
    previous = np.zeros((width, bpp), np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32).reshape(width, bpp)
        if kind == 0:
            row = line
        elif kind == 1:  # Sub: a running sum along the row
            row = np.cumsum(line, axis=0) & 0xFF
        elif kind == 2:  # Up
            row = (line + previous) & 0xFF
        else:  # Average or Paeth: pixel by pixel
            row = np.zeros_like(line)
            left = np.zeros(bpp, np.int32)
            upper_left = np.zeros(bpp, np.int32)
            for x in range(width):
                up = previous[x]
                if kind == 3:
                    predicted = (left + up) // 2
                else:
                    p = left + up - upper_left
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upper_left)
                    predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
                row[x] = (line[x] + predicted) & 0xFF
                left, upper_left = row[x], up
        out[y] = row
        previous = row
    return out[:, :, :3].astype(np.uint8)


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 24) -> np.ndarray:
    return np.abs(pixels.astype(np.int32) - np.array(colour)).max(axis=2) <= tolerance


def series_extent(page: Any, chart: str) -> list[dict[str, float]]:
    """Width and height of each data series an SVG chart drew."""
    extent: list[dict[str, float]] = page.eval_on_selector_all(
        f"#{chart} .series",
        "nodes => nodes.map(n => { const b = n.getBBox(); "
        "return {w: b.width, h: b.height, tier: n.dataset.tier || n.dataset.series}; })",
    )
    return extent


def test_an_operator_watches_the_fleet_labels_and_rolls_out_in_a_browser(
    site: Site, browser: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmation before a promotion
    page.set_default_timeout(WAIT_MS)
    page.goto(site.url + "/dashboard/")

    # the token, once; a wrong one is refused first
    page.fill("#token", "ec_0000000000000000.wrong")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('refused')")
    page.fill("#token", site.admin)
    page.click("#login-form button")
    page.wait_for_selector("#app:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('edgecascade.admin-token')") == site.admin

    # fleet: the gateway, its model version and the device it heard from
    gateway_row = page.wait_for_selector(f"#nodes tr[data-gateway='{GATEWAY}']")
    cells = gateway_row.eval_on_selector_all("td", "tds => tds.map(td => td.textContent)")
    assert cells[0] == f"gateway {GATEWAY}" and cells[2] == "1" and cells[-1] == "ok"
    assert int(cells[4]) >= 96  # requests the gateway received
    page.wait_for_selector(f"#devices tr[data-device='{DEVICE}']")
    device_cells = page.eval_on_selector_all(
        f"#devices tr[data-device='{DEVICE}'] td", "tds => tds.map(td => td.textContent)"
    )
    assert f"gateway {GATEWAY}" in device_cells[2] and "hard examples" in device_cells[2]

    # charts: data series with real extent, and pixels of their colours on screen
    page.wait_for_selector("#mix-chart .series[data-tier='gateway']")
    page.wait_for_selector("#latency-chart .series[data-series='p99']")
    mix = series_extent(page, "mix-chart")
    assert {s["tier"] for s in mix} >= {"gateway"}
    assert all(s["w"] > 0 and s["h"] > 0 for s in mix)
    latency = series_extent(page, "latency-chart")
    assert {s["tier"] for s in latency} == {"p50", "p90", "p99"} and all(s["w"] > 0 for s in latency)
    shot = page.locator("#mix-chart").screenshot()
    (tmp_path / "mix-chart.png").write_bytes(shot)
    pixels = png_pixels(shot)
    painted = sum(near(pixels, colour).mean() for colour in TIER_COLOURS.values())
    background = near(pixels, PANEL, 4).mean()
    assert painted > 0.02, f"only {painted:.1%} of the chart is drawn in the tiers' colours"
    assert background < 0.98
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    # hard examples: the raw input drawn, a human label stored
    example_id = site.example_ids[0]
    card = page.wait_for_selector(f".card[data-id='{example_id}']")
    page.wait_for_function(
        "id => { const i = document.querySelector(`.card[data-id='${id}'] img`); "
        "return i && i.complete && i.naturalWidth === 28; }",
        arg=example_id,
    )
    card.query_selector("select").select_option("3")
    card.query_selector("button").click()
    page.wait_for_selector(f".card[data-id='{example_id}'] dd.label:has-text('(human)')")
    stored = site.learning.store.get(example_id)
    assert stored is not None and stored.human_label == 3

    # retraining: the running job and its progress
    job_row = page.wait_for_selector(f"#job-table tr[data-job='{site.job_id}']")
    assert job_row.get_attribute("data-state") == "running"
    assert job_row.query_selector("progress").get_attribute("value") == "0.4"
    assert "40%" in job_row.inner_text() and "fine-tuning" in job_row.inner_text()

    # model versions: promote v2, then roll back to v1
    page.wait_for_selector("#current-model[data-version='1']")
    page.click("#model-table button[data-version='2']")
    page.wait_for_selector("#current-model[data-version='2']")
    page.wait_for_selector("#models-message:has-text('now serving v2 (announced)')")
    assert site.api.call_json("GET", wire.ROUTE_HEALTH)["version"] == 2
    assert site.api.call_json("GET", wire.ROUTE_MODELS)["current"]["version"] == 2
    page.wait_for_selector("#served:has-text('v2')")
    page.click("#rollback")
    page.wait_for_selector("#current-model:has-text('rollback of v2')")
    assert page.get_attribute("#current-model", "data-version") == "1"
    current = site.api.call_json("GET", wire.ROUTE_MODELS)["current"]
    assert (current["version"], current["rollback_of"]) == (1, 2)
    assert site.api.call_json("GET", wire.ROUTE_HEALTH)["version"] == 1

    assert errors == []
    context.close()
    assert time.monotonic() - started < 40


def members(site: Site, group_id: int) -> list[dict[str, Any]]:
    """A group's members as the API lists them (the fixture's groups fit in one page)."""
    page = site.api.call_json("GET", f"/v1/unknown-groups/{group_id}?limit=100")
    assert page["next_cursor"] is None
    examples: list[dict[str, Any]] = page["examples"]
    return examples


def test_an_operator_groups_and_names_unknown_inputs_and_sees_drift_in_a_browser(
    site: Site, browser: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    runs = FederationStore(site.learning.store.engine)  # collaborative training's, shown at the end
    rejected = runs.start_run(strategy="fedavg", rounds=2, base_version=1)
    for server_round in (1, 2):
        runs.record_round(rejected, make_tally(server_round), state="completed")
    gate = {"reason": "exit 1 drops 2.32 points on the original test data; tolerance 0.5"}
    runs.finish_run(rejected, state="rejected", gate=gate)
    going = runs.start_run(strategy="median", rounds=5, base_version=1)
    runs.set_stage(going, "round 1/5")
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(site.url + "/dashboard/")
    page.fill("#token", site.admin)
    page.click("#login-form button")
    page.wait_for_selector("#app:not([hidden])")
    unknown = len(site.unknown_pictured) + len(site.unknown_plain)

    # nothing grouped yet; the button groups them, and the cards are the API's groups
    page.wait_for_selector(f"#ungrouped[data-count='{unknown}']")
    assert page.query_selector("#group-list .card") is None
    page.click("#group-unknown")
    page.wait_for_selector("#unknown-message:has-text('new groups')")
    page.wait_for_selector("#group-list .card[data-group]")
    listing = site.api.call_json("GET", "/v1/unknown-groups")
    groups = {g["id"]: g for g in listing["groups"]}
    shown = page.eval_on_selector_all("#group-list .card", "cards => cards.map(c => Number(c.dataset.group))")
    assert sorted(shown) == sorted(groups) and len(groups) >= 2
    assert page.get_attribute("#ungrouped", "data-count") == str(listing["ungrouped"])
    kinds = {g: {m["id"] for m in members(site, g)} for g in groups}
    pictured = next(g for g, ids in kinds.items() if ids <= site.unknown_pictured)
    plain = next(g for g, ids in kinds.items() if ids <= site.unknown_plain)
    assert groups[pictured]["has_images"] and not groups[plain]["has_images"]

    # a group with raw inputs shows their grid; one without says so
    page.wait_for_function(
        "id => { const i = document.querySelector(`.card[data-group='${id}'] img`); "
        "return i && i.complete && i.naturalWidth > 0; }",
        arg=pictured,
    )
    assert "features only" in page.inner_text(f".card[data-group='{plain}'] .picture")
    card = f".card[data-group='{pictured}']"
    facts = page.eval_on_selector_all(f"{card} dd", "dds => dds.map(d => d.textContent)")
    assert facts[1:3] == ["cut1", str(groups[pictured]["size"])] and facts[-1] == "unnamed"
    page.locator(card).screenshot(path=str(tmp_path / "group.png"))

    # naming through the form labels every member with the new class
    classes = len(site.api.call_json("GET", "/v1/fleet")["cloud"]["classes"])
    page.fill(f"{card} input", "Umbrella")
    page.click(f"{card} button")
    page.wait_for_selector(f"{card}.labelled dd.class:has-text('{classes} Umbrella')")
    assert page.query_selector(f"{card} form") is None
    named = members(site, pictured)
    assert {m["human_label"] for m in named} == {classes} and len(named) == groups[pictured]["size"]

    # a group named meanwhile by someone else: the API's refusal is shown in its card
    site.api.call_json("PUT", f"/v1/unknown-groups/{plain}", {"class_name": "Handbag"})
    card = f".card[data-group='{plain}']"
    page.fill(f"{card} input", "Scarf")
    page.click(f"{card} button")
    page.wait_for_selector(f"{card} p.error:has-text(\"already named 'Handbag'\")")
    assert {m["human_label"] for m in members(site, plain)} == {classes + 1}

    # the drift alarm, with the site that relayed it
    drift_row = page.wait_for_selector(f"#drift-table tr[data-example='{site.drift_id}']")
    cells = drift_row.eval_on_selector_all("td", "tds => tds.map(td => td.textContent)")
    assert cells[:3] == [SITE, DEVICE, "1"] and "–" not in cells[3:]
    events = site.api.call_json("GET", f"/v1/drift-events?site={SITE}")["events"]
    assert [e["example_id"] for e in events] == [site.drift_id]

    # collaborative training: a run the gate rejected and one still going, as the API lists them
    page.wait_for_selector(f"#federated-table tr[data-run='{going}'][data-state='running']")
    shown = {
        tr.get_attribute("data-run"): tr.eval_on_selector_all("td", "tds => tds.map(td => td.textContent)")
        for tr in page.query_selector_all("#federated-table tbody tr")
    }
    assert shown[str(rejected)][:5] == [str(rejected), "rejected", "fedavg", "2/2", "rejected"]
    assert shown[str(rejected)][-1] == gate["reason"]
    assert shown[str(going)][:5] == [str(going), "running", "median", "0/5", "round 1/5"]
    assert [r["id"] for r in site.api.call_json("GET", "/v1/federated/runs")["runs"]] == [going, rejected]

    assert errors == []
    context.close()
    assert time.monotonic() - started < 20
