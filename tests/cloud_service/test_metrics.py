"""``GET /metrics`` on the real cloud app: Prometheus text for admins, from the counters the API keeps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.cloud_service.inference import CloudInference
from edgecascade.cloud_service.jobs import JobStore
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec

from .conftest import Cloud, bearer

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@dataclass
class Served:
    app: Flask
    client: FlaskClient
    inference: CloudInference
    admin: dict[str, str]
    gateway: dict[str, str]
    request: bytes  # a valid inference request for the served model
    database: Path


@pytest.fixture
def served(tiny_bundle: Path, tmp_path: Path) -> Served:
    """The app on the tiny model's real partition 3, its database in a temporary directory."""
    database = tmp_path / "db" / "cloud.db"
    settings = CloudSettings(
        bundle=tiny_bundle,
        token_store=tmp_path / "tokens.db",
        database_url=f"sqlite:///{database}",
        blob_dir=tmp_path / "blobs",
    )
    bundle = load_bundle(tiny_bundle, tiers=("cloud",))
    inference = CloudInference(bundle)
    app = create_app(CloudConfig(settings), inference=inference)
    tokens: TokenStore = app.extensions["edgecascade.tokens"]
    manifest = bundle.manifest
    tensor = np.zeros(manifest.partition("cloud").input.shape, np.float32)
    header = wire.Header(wire.MessageType.INFER_REQUEST, "metrics-test", manifest.version)
    body = codec.encode_features(tensor, manifest.partition("gateway").encoding)
    return Served(
        app,
        app.test_client(),
        inference,
        bearer(tokens.create("admin", "ops")[0]),
        bearer(tokens.create("gateway", "gw")[0]),
        wire.envelope_to_bytes(wire.Envelope(header, body)),
        database,
    )


def scrape(client: FlaskClient, headers: dict[str, str]) -> Samples:
    response = client.get(wire.ROUTE_PROMETHEUS, headers=headers)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_need_an_admin_token(cloud: Cloud) -> None:
    assert cloud.client.get(wire.ROUTE_PROMETHEUS).status_code == 401
    assert cloud.client.get(wire.ROUTE_PROMETHEUS, headers=bearer(cloud.token("gateway"))).status_code == 403
    assert cloud.client.get(wire.ROUTE_PROMETHEUS, headers=bearer(cloud.token("admin"))).status_code == 200


def test_scrape_shows_answers_bytes_stages_and_refusals(served: Served) -> None:
    client = served.client
    before = scrape(client, served.admin)
    assert "edgecascade_cloud_requests_total" not in before
    for _ in range(5):
        reply = client.post(wire.ROUTE_INFER, data=served.request, headers=served.gateway)
        assert reply.status_code == 200
    assert client.post(wire.ROUTE_INFER, data=b"junk", headers=served.gateway).status_code == 400
    assert client.post(wire.ROUTE_INFER, data=served.request).status_code == 401

    after = scrape(client, served.admin)
    assert after["edgecascade_cloud_requests_total"] == {(): 6}
    assert after["edgecascade_cloud_answers_total"] == {(("degraded", "false"), ("tier", "cloud")): 5}
    ((labels, refused),) = after["edgecascade_cloud_rejections_total"].items()
    assert refused == 1 and dict(labels)["reason"] == "malformed"
    assert after["edgecascade_cloud_http_errors_total"][(("status", "401"),)] == 1
    links = after["edgecascade_cloud_link_bytes_total"]
    assert links[(("direction", "in"),)] == 5 * len(served.request) + len(b"junk")
    assert links[(("direction", "out"),)] > 0
    counts = after["edgecascade_cloud_stage_seconds_count"]
    assert counts[(("stage", "decode"),)] == counts[(("stage", "inference"),)] == 5
    assert counts[(("stage", "total"),)] == 5
    assert after["edgecascade_cloud_stage_seconds_sum"][(("stage", "inference"),)] > 0
    version = served.inference.version
    assert after["edgecascade_cloud_model_version"] == {(): version}
    ((info, _),) = after["edgecascade_cloud_model_info"].items()
    assert dict(info)["version"] == str(version)


def test_jobs_by_state_once_the_database_exists_and_never_creating_it(served: Served) -> None:
    scraped = scrape(served.client, served.admin)
    assert "edgecascade_cloud_retrain_jobs" not in scraped
    assert not served.database.exists()  # a scrape never creates the learning loop's database

    store = served.app.extensions["edgecascade.learning"].store  # what the first upload would open
    job = JobStore(store.engine).create("api")
    assert job is not None
    jobs = scrape(served.client, served.admin)["edgecascade_cloud_retrain_jobs"]
    assert jobs[(("state", "queued"),)] == 1
    assert jobs[(("state", "failed"),)] == 0


def test_the_json_counters_stay_as_they_were(served: Served) -> None:
    served.client.post(wire.ROUTE_INFER, data=served.request, headers=served.gateway)
    body = served.client.get(wire.ROUTE_METRICS, headers=served.admin).json
    assert body["requests"] == 1 and body["answered_cloud"] == 1


def test_a_flood_of_bad_requests_is_counted_but_barely_logged(
    make_cloud: Callable[..., Cloud], caplog: pytest.LogCaptureFixture
) -> None:
    cloud = make_cloud()
    headers = bearer(cloud.token("gateway"))
    caplog.set_level(logging.INFO, logger="edgecascade.cloud_service")
    for _ in range(2000):
        assert cloud.client.post(wire.ROUTE_INFER, data=b"junk", headers=headers).status_code == 400
    for _ in range(500):
        assert (
            cloud.client.post(wire.ROUTE_INFER, data=b"junk", headers=bearer("ec_x.wrong")).status_code == 401
        )
    cloud.app.extensions["edgecascade.log_limiter"].flush()
    counts = cloud.inference.counters
    assert counts["rejected_malformed"] == 2000 and counts["http_401"] == 500
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edgecascade.cloud_service")]
    assert sum("rejected inference request" in line for line in lines) == 5
    assert sum(line.startswith("refused POST") for line in lines) == 5
    (summary,) = [line for line in lines if "similar log lines" in line]
    assert summary.startswith("suppressed 2490 similar log lines")
