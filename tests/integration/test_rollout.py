"""Model rollout end to end: registry, retained announcement, signed download, hot swap under load.

The module has its own broker (the session gateway shares ``$share/gateways/...`` on the
session broker, and would answer some of these devices), a real Flask cloud over HTTP with
a model registry that announces over MQTT as the ``cloud`` identity, a real gateway daemon
following announcements, and devices following them too. Versions 2 and 3 are the tiny
bundle with other exit temperatures (re-signed manifests: no re-export), so each answer
shows which version's partitions produced it. A WSGI wrapper around the cloud app plays a
broken network or a tampering proxy: it flips a byte in, or substitutes, files it serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from edgecascade.cloud_service.announce import MqttAnnouncer
from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, RegistrySettings
from edgecascade.cloud_service.inference import CloudInference
from edgecascade.cloud_service.registry import ModelRegistry
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.client import DeviceClient, Prediction
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.policy import NeverExit, softmax
from edgecascade.device_sdk.errors import TransportError
from edgecascade.device_sdk.model.announcement import Announcement
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle, write_manifest
from edgecascade.device_sdk.model.signing import generate_signing_key, sign_manifest
from edgecascade.device_sdk.model.updater import ModelUpdater, UpdateSettings
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.device_sdk.transport.fetch import HttpFetcher
from edgecascade.device_sdk.transport.mqtt import MqttLink
from edgecascade.edge_gateway.config import CacheSettings, CryptoSettings, GatewayConfig, GatewaySettings
from edgecascade.edge_gateway.daemon import GatewayDaemon
from edgecascade.tools.broker import Mosquitto
from edgecascade.tools.certs import Pki

from .conftest import device_crypto

pytestmark = pytest.mark.integration

TEMPERATURE_FACTOR = {1: 1.0, 2: 2.0, 3: 0.5, 4: 3.0}  # gateway and cloud exits; the device keeps its own
RETRY = {"retry_initial": 0.2, "retry_max": 1.0}


class Tamper:
    """WSGI wrapper: flip a byte in the files at ``corrupt`` paths, serve ``substitute`` bytes instead."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.corrupt: set[str] = set()
        self.substitute: dict[str, bytes] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in self.substitute:
            body = self.substitute[path]
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path not in self.corrupt:
            return self.app(environ, start_response)
        status: list[Any] = []
        result = self.app(environ, lambda s, h, exc_info=None: status.extend((s, h)))
        try:
            body = bytearray(b"".join(result))
        finally:
            getattr(result, "close", lambda: None)()
        if status[0].startswith("200"):
            body[len(body) // 2] ^= 0x01
        start_response(*status)
        return [bytes(body)]


@dataclass
class Site:
    """The module's stack and what the tests need to drive it."""

    broker: Mosquitto
    url: str
    inference: CloudInference
    tamper: Tamper
    gateway: GatewayDaemon
    admin: str
    device_token: Callable[[str], str]
    bundles: dict[int, Path]
    workdir: Path

    def post(self, route: str) -> dict[str, Any]:
        response = requests.post(
            self.url + route, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def _variant(v1: Path, out: Path, version: int, key: Path, factor: float | None = None) -> Path:
    """The v1 bundle as ``version``, gateway and cloud exits at another temperature, re-signed."""
    shutil.copytree(v1, out)
    manifest = load_bundle(out).manifest
    factor = TEMPERATURE_FACTOR[version] if factor is None else factor
    parts = tuple(
        p if p.tier == "device" else replace(p, exit=replace(p.exit, temperature=p.exit.temperature * factor))
        for p in manifest.partitions
    )
    write_manifest(out, replace(manifest, version=version, partitions=parts))
    sign_bundle(out, key)
    return out


@pytest.fixture(scope="module")
def site(tiny_bundle: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("rollout")
    v1 = work / "src" / "v1"
    shutil.copytree(tiny_bundle, v1)
    sign_bundle(v1, pki.cloud_signing_key)
    bundles = {
        1: v1,
        **{v: _variant(v1, work / "src" / f"v{v}", v, pki.cloud_signing_key) for v in (2, 3, 4)},
    }
    with Mosquitto(work / "broker", pki) as broker:
        config = CloudConfig(
            CloudSettings(
                bundle=v1,
                token_store=work / "tokens.db",
                verify_key=pki.cloud_signing_pub,
                database_url=f"sqlite:///{work / 'cloud.db'}",
                blob_dir=work / "blobs",
            ),
            RegistrySettings(
                models_dir=work / "models",
                signing_key=pki.cloud_signing_key,
                announce=True,
                check_interval=0.2,
            ),
            broker.mqtt_config("cloud"),
        )
        app = create_app(config)  # an empty registry: registers and promotes v1
        registry = app.extensions["edgecascade.rollout"].registry
        for version in (2, 3, 4):
            registry.register(bundles[version])
        tokens = app.extensions["edgecascade.tokens"]
        tamper = Tamper(app.wsgi_app)
        app.wsgi_app = tamper  # type: ignore[method-assign]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        gateway = GatewayDaemon(
            GatewayConfig(
                GatewaySettings(
                    bundle=v1,
                    cloud_url=url,
                    cloud_timeout=5.0,
                    cloud_token=tokens.create("gateway", "gateway")[0],
                    verify_key=pki.cloud_signing_pub,
                    model_grace=60.0,
                ),
                broker.mqtt_config("gateway"),
                CacheSettings(enabled=False),
                CryptoSettings(
                    private_key=pki.gateway_x25519_key, device_keys=pki.device_keys, rescan_interval=0
                ),
                update=UpdateSettings(enabled=True, dir=work / "gateway-models", **RETRY),
            )
        )
        gateway.start()
        try:
            yield Site(
                broker,
                url,
                app.extensions["edgecascade"],
                tamper,
                gateway,
                tokens.create("admin", "operator")[0],
                lambda device_id: tokens.create("device", device_id)[0],
                bundles,
                work,
            )
        finally:
            gateway.stop()
            server.shutdown()


@pytest.fixture
def devices(site: Site, pki: Pki) -> Iterator[Callable[..., DeviceClient]]:
    """Devices over TLS with payload keys; ``follow=True`` also follows the announcements."""
    made: list[DeviceClient] = []

    def make(device_id: str, follow: bool = True) -> DeviceClient:
        crypto = device_crypto(pki, device_id)
        transport = MqttTransport(site.broker.mqtt_config(device_id), device_id)
        client = DeviceClient(
            load_bundle(site.bundles[1], ("device",)), device_id, transport, crypto=crypto, policy=NeverExit()
        )
        if follow:
            client.follow_updates(
                UpdateSettings(enabled=True, dir=site.workdir / f"{device_id}-models", **RETRY),
                cloud_url=site.url,
                token=site.device_token(device_id),
                verify_key=pki.cloud_signing_pub,
            )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class Load:
    """Threads that keep asking, recording (image index, prediction) or the exception raised."""

    def __init__(self, clients: list[DeviceClient], images: np.ndarray) -> None:
        self.images = images
        self.answers: list[tuple[str, int, Prediction]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in clients]

    def _run(self, client: DeviceClient) -> None:
        start = 0
        while not self._stop.is_set():
            idx = [(start + k) % len(self.images) for k in range(4)]
            start += 4
            try:
                for i, p in zip(idx, client.predict_batch(self.images[idx]), strict=True):
                    self.answers.append((client.device_id, i, p))
            except BaseException as exc:  # recorded, and the test fails on it
                self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout``."""
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout, "condition not reached in time"
        time.sleep(0.005)
    return time.perf_counter() - started


def _serving(site: Site, clients: list[DeviceClient], version: int, rollback_of: int | None = None) -> bool:
    manifests = [site.inference.bundle.manifest, site.gateway.service.bundle.manifest]
    manifests += [c.manifest for c in clients]
    return all((m.version, m.rollback_of) == (version, rollback_of) for m in manifests)


def _check_answers(load: Load, site: Site) -> None:
    """Nothing failed or degraded, and each answer is what its own version's partitions give."""
    assert not load.errors, load.errors[:3]
    bad = [(d, p.tier, p.error) for d, _, p in load.answers if p.degraded or p.error]
    assert not bad, bad[:5]
    chain = run_partitions(load_bundle(site.bundles[1]), load.images)
    temperatures = {v: load_bundle(site.bundles[v], ()).manifest for v in TEMPERATURE_FACTOR}
    for _, i, p in load.answers:
        exit_index = {"gateway": 1, "cloud": 2}[p.tier]
        t = temperatures[p.model_version].partitions[exit_index].exit.temperature
        np.testing.assert_allclose(
            p.probabilities, softmax(chain.logits[exit_index][i][None], t)[0], atol=1e-4
        )


def test_promote_and_rollback_under_load_fail_no_request(
    site: Site, devices: Callable[..., DeviceClient], fmnist: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    follower, lagging = devices("rollout-dev"), devices("rollout-lagging", follow=False)
    with Load([follower, lagging], fmnist.x_test[:64]) as load:
        time.sleep(0.5)
        started = time.perf_counter()
        body = site.post("/v1/models/2/promote")
        assert body["announced"] and body["current"]["version"] == 2
        to_v2 = wait_until(lambda: _serving(site, [follower], 2))
        time.sleep(1.0)  # serve on v2 (and v1 for the lagging device, in the grace period)

        late = devices("rollout-late")  # connects after the promotion: the retained message reaches it
        late_v2 = wait_until(lambda: late.manifest.version == 2)
        assert late.predict(fmnist.x_test[0]).model_version == 2

        body = site.post("/v1/models/rollback")
        assert body["current"]["rollback_of"] == 2
        to_v1 = wait_until(lambda: _serving(site, [follower, late], 1, rollback_of=2))
        time.sleep(0.5)
    total = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n[rollout] promote v2 -> cloud, gateway and device serving v2: {to_v2 * 1000:.0f} ms; "
            f"late device (retained announcement) on v2 after {late_v2 * 1000:.0f} ms; "
            f"rollback -> all serving v1 (rollback of 2): {to_v1 * 1000:.0f} ms; "
            f"{len(load.answers)} answers in {total:.1f} s, none failed"
        )
    _check_answers(load, site)
    versions = {(d, p.model_version) for d, _, p in load.answers}
    assert {("rollout-dev", 1), ("rollout-dev", 2), ("rollout-lagging", 1)} <= versions
    assert ("rollout-lagging", 2) not in versions
    counters = site.gateway.service.counters
    assert counters["requests_v1"] > 0 and counters["requests_v2"] > 0 and counters["model_swaps"] == 2
    assert not any(k.startswith("rejected") for k in counters)
    assert follower.counters["model_swaps"] == 2
    assert not any(k.startswith("offload_failed") for k in follower.counters)


def test_corrupt_or_foreign_downloads_and_replayed_old_versions_are_refused(
    site: Site, devices: Callable[..., DeviceClient], fmnist: Any, pki: Pki
) -> None:
    node = devices("rollout-strict")
    updaters = [site.gateway.updater, node.updater]
    assert all(updaters)
    start_version = site.gateway.service.version  # v1 (or its rollback), whatever ran before
    wait_until(lambda: node.manifest.version == start_version)
    with Load([node], fmnist.x_test[:64]) as load:
        # 1. v3 arrives corrupted (a byte flipped on the way): refused, retried with back-off
        gateway_file, device_file = "/v1/models/3/gateway.tflite", "/v1/models/3/device.tflite"
        site.tamper.corrupt = {gateway_file, device_file}
        site.post("/v1/models/3/promote")
        wait_until(lambda: all(u.counters["update_failed_BundleError"] >= 2 for u in updaters if u))
        assert site.gateway.service.version == start_version and node.manifest.version == start_version
        assert site.inference.version == 3  # the cloud moved on; it still answers the nodes' version
        # the device's copy now arrives intact, the gateway's not yet: the device is ahead of
        # its gateway, which refuses v3 requests; the device asks again with the model it replaced
        site.tamper.corrupt = {gateway_file}
        wait_until(lambda: node.manifest.version == 3)
        wait_until(lambda: node.counters["retried_previous_model"] >= 8)
        assert site.gateway.service.version == start_version
        site.tamper.corrupt = set()
        wait_until(lambda: _serving(site, [node], 3), timeout=5.0)  # the gateway's next retry succeeds

        # 2. v4 with a signature by another key (a tampering proxy): refused, v3 stays
        other = generate_signing_key(site.workdir / "other-key")
        manifest = (site.bundles[4] / "manifest.json").read_bytes()
        site.tamper.substitute = {"/v1/models/4/manifest.sig": sign_manifest(manifest, other[0])}
        site.post("/v1/models/4/promote")
        wait_until(lambda: all(u.counters["update_failed_SignatureError"] >= 1 for u in updaters if u))
        assert site.gateway.service.version == 3 and node.manifest.version == 3

        # 3. the announcement of the plain v1, replayed: a lower version and no rollback, refused for good
        v1 = site.workdir / "models" / "v1" / "manifest.json"
        name = load_bundle(site.bundles[1], ()).manifest.name
        old = Announcement(name, 1, hashlib.sha256(v1.read_bytes()).hexdigest())
        MqttAnnouncer(site.broker.mqtt_config("cloud"), timeout=5).publish(old.sign(pki.cloud_signing_key))
        wait_until(lambda: all(u.counters["update_failed_RollbackError"] >= 1 for u in updaters if u))
        time.sleep(0.3)
    site.tamper.substitute = {}
    assert site.gateway.service.version == 3 and node.manifest.version == 3
    _check_answers(load, site)
    assert {p.model_version for _, _, p in load.answers} >= {start_version, 3}
    assert node.counters["refused_model_version"] == node.counters["retried_previous_model"]

    # only the cloud's identity may announce: a device's publish is refused by the broker
    link = MqttLink(site.broker.mqtt_config("rollout-strict"), "rollout-rogue")
    link.connect(5)
    try:
        with pytest.raises(TransportError, match="refused"):
            link.publish(wire.MODELS_TOPIC, b"{}", retain=True, wait=5)
    finally:
        link.close()


def _current(site: Site) -> Announcement:
    response = requests.get(
        site.url + "/v1/models/current", headers={"Authorization": f"Bearer {site.admin}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return Announcement(**response.json()["announcement"])


def test_a_node_that_hears_no_announcement_catches_up_by_checking_the_cloud(site: Site, pki: Pki) -> None:
    """No broker at all: the updater's periodic HTTPS check is its only news of a release."""
    current = _current(site)
    running = [load_bundle(site.bundles[1], ("device",))]
    updater = ModelUpdater(
        UpdateSettings(enabled=True, dir=site.workdir / "polling-node", poll_interval=0.1, **RETRY),
        public_key=pki.cloud_signing_pub,
        tiers=("device",),
        running=lambda: running[-1].manifest,
        install=running.append,
        fetcher=HttpFetcher(site.url, site.device_token("polling-node")),
    )
    updater.start()  # not subscribed to anything
    try:
        wait_until(lambda: updater.counters["updates_installed"] == 1)
        assert (running[-1].manifest.version, running[-1].manifest.rollback_of) == (
            current.version,
            current.rollback_of,
        )
        assert updater.counters["polls"] >= 1 and updater.counters["announcements"] >= 1
    finally:
        updater.stop()


def test_edgecascade_retrain_promotes_and_announces_like_the_cloud_with_auto_promote(
    site: Site, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's job (a stand-in that publishes v5) is promoted, announced and served everywhere."""
    from edgecascade.cloud_service.candidates import publish_candidate
    from edgecascade.cloud_service.jobs import JobSpec, JobStore
    from edgecascade.cloud_service.store import open_engine
    from edgecascade.tools import cli

    served_before = _current(site)
    candidate = _variant(site.bundles[1], tmp_path / "v5", 5, pki.cloud_signing_key, factor=0.25)
    seen: list[Path] = []

    def job(spec: JobSpec, *, log_file: bool = False) -> str:
        seen.append(spec.bundle)
        jobs = JobStore(open_engine(spec.database_url))
        assert jobs.start(spec.job_id, os.getpid())
        assert spec.retrain.models_dir is not None
        publish_candidate(candidate, 5, {"gate": {"promote": True}}, models_dir=spec.retrain.models_dir)
        jobs.finish(
            spec.job_id, "succeeded", metrics={}, candidate_version=5, base_version=served_before.version
        )
        return "succeeded"

    monkeypatch.setattr("edgecascade.cloud_service.retrain_job.run_job", job)
    mqtt = site.broker.mqtt_config("cloud")
    config = tmp_path / "cloud.toml"
    config.write_text(
        f"""[cloud]
bundle = "{site.bundles[1]}"
verify_key = "{pki.cloud_signing_pub}"
database_url = "sqlite:///{tmp_path / "cloud.db"}"
blob_dir = "{tmp_path / "blobs"}"
token_store = "{tmp_path / "tokens.db"}"
[registry]
models_dir = "{site.workdir / "models"}"
signing_key = "{pki.cloud_signing_key}"
announce = true
[mqtt]
host = "{mqtt.host}"
port = {mqtt.port}
ca_file = "{mqtt.ca_file}"
cert_file = "{mqtt.cert_file}"
key_file = "{mqtt.key_file}"
[retrain]
auto_promote = true
jobs_dir = "{tmp_path / "jobs"}"
"""
    )
    assert cli.main(["retrain", "--config", str(config)]) == 0
    assert "promoted v5 and announced it" in capsys.readouterr().out
    # the job fine-tuned what the registry served, not the configured first bundle
    registry = ModelRegistry(site.workdir / "models", pki.cloud_signing_pub)
    assert seen == [registry.release_dir(served_before.version, served_before.rollback_of)]
    assert served_before.version != 1
    metrics = json.loads((site.workdir / "models" / "v5" / "metrics.json").read_text())
    assert metrics["status"] == "promoted" and metrics["promoted_at"] > 0
    wait_until(lambda: requests.get(site.url + "/healthz", timeout=5).json()["version"] == 5)
    wait_until(lambda: site.gateway.service.version == 5)  # heard the CLI's announcement
    assert _current(site).version == 5
