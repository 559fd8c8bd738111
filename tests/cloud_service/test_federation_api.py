"""``GET /v1/federated/runs[/<id>]`` and the federated metrics, on the real app over a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.device_sdk import wire
from tests.federation_kit import make_tally

from .conftest import Cloud, bearer

ROUTE = "/v1/federated/runs"


@pytest.fixture
def fed(make_cloud: Callable[..., Cloud], tmp_path: Path) -> Cloud:
    return make_cloud(database_url=f"sqlite:///{tmp_path / 'db' / 'cloud.db'}", blob_dir=tmp_path / "blobs")


def runs_store(cloud: Cloud) -> FederationStore:
    return FederationStore(cloud.app.extensions["edgecascade.learning"].store.engine)


def scrape(cloud: Cloud) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = cloud.client.get(wire.ROUTE_PROMETHEUS, headers=bearer(cloud.token("admin"))).get_data(
        as_text=True
    )
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_only_admins_read_the_runs(fed: Cloud) -> None:
    for url in (ROUTE, f"{ROUTE}/1"):
        anonymous = fed.client.get(url)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        assert fed.client.get(url, headers=bearer(fed.token("gateway", "site-a"))).status_code == 403
        assert fed.client.get(url, headers=bearer(fed.token("device", "cam-01"))).status_code == 403


def test_runs_and_a_run_with_its_rounds_are_listed_as_stored(fed: Cloud) -> None:
    admin = bearer(fed.token("admin"))
    assert fed.client.get(ROUTE, headers=admin).json == {"runs": []}
    store = runs_store(fed)
    old = store.start_run(strategy="fedavg", rounds=2, base_version=3, flower_run=77)
    store.record_round(old, make_tally(1, refused={"site-c": "signature"}), state="completed")
    store.record_round(old, make_tally(2, accepted={"site-a": 10}, late=["site-b"]), state="short")
    store.finish_run(old, state="published", candidate_version=4, gate={"accuracy": 0.9})
    new = store.start_run(strategy="median", rounds=5, base_version=4)
    store.set_stage(new, "round 1 of 5: waiting for 3 of 4 sites")

    runs = fed.client.get(ROUTE, headers=admin).json["runs"]
    assert [(r["id"], r["state"], r["strategy"], r["rounds_done"]) for r in runs] == [
        (new, "running", "median", 0),
        (old, "published", "fedavg", 2),
    ]
    assert runs[0]["stage"] == "round 1 of 5: waiting for 3 of 4 sites" and runs[0]["gate"] is None
    assert (runs[1]["flower_run"], runs[1]["candidate_version"], runs[1]["gate"]) == (
        "77",
        4,
        {"accuracy": 0.9},
    )
    assert [r["id"] for r in fed.client.get(f"{ROUTE}?limit=1", headers=admin).json["runs"]] == [new]

    run = fed.client.get(f"{ROUTE}/{old}", headers=admin).json
    assert run["state"] == "published" and run["rounds_planned"] == 2 and run["rounds_done"] == 2
    assert [
        (r["server_round"], r["state"], r["accepted"], r["late"], r["refused"]) for r in run["rounds"]
    ] == [
        (1, "completed", 2, 0, 1),
        (2, "short", 1, 1, 0),
    ]
    assert run["rounds"][0]["tally"]["refused"] == {"site-c": "signature"}
    assert run["rounds"][1]["tally"] == make_tally(2, accepted={"site-a": 10}, late=["site-b"]) | {
        "state": "short"
    }
    assert fed.client.get(f"{ROUTE}/{new}", headers=admin).json["rounds"] == []


def test_a_missing_run_is_a_json_404(fed: Cloud) -> None:
    for run_id in (7, 2**63 - 1):
        reply = fed.client.get(f"{ROUTE}/{run_id}", headers=bearer(fed.token("admin")))
        assert reply.status_code == 404
        assert reply.json == {"error": "not_found", "message": f"no federated run {run_id}"}
    beyond = fed.client.get(f"{ROUTE}/{2**63}", headers=bearer(fed.token("admin")))  # no route: still JSON
    assert beyond.status_code == 404 and beyond.json["error"] == "not_found"


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "two", "1.5"])
def test_a_bad_limit_is_refused_with_a_message(fed: Cloud, limit: str) -> None:
    reply = fed.client.get(f"{ROUTE}?limit={limit}", headers=bearer(fed.token("admin")))
    assert reply.status_code == 400 and reply.json["error"] == "bad_request"
    assert reply.json["message"].startswith("invalid query: limit:")


def test_metrics_count_runs_rounds_refusals_and_late_results_from_the_database(
    fed: Cloud, tmp_path: Path
) -> None:
    assert not any(name.startswith("edgecascade_federated") for name in scrape(fed))
    assert not (tmp_path / "db" / "cloud.db").exists()  # a scrape never creates the database
    store = runs_store(fed)
    first = store.start_run(strategy="fedavg", rounds=2, base_version=1)
    store.record_round(
        first, make_tally(1, refused={"site-c": "signature"}, late=["site-d"]), state="completed"
    )
    store.record_round(first, make_tally(2, refused={"site-c": "signature", "site-d": "norm"}), state="short")
    store.finish_run(first, state="failed", error="no quorum in round 2")
    second = store.start_run(strategy="fedavg", rounds=1, base_version=1)
    store.record_round(second, make_tally(1, late=["site-c", "site-d"]), state="completed")

    samples = scrape(fed)
    runs = samples["edgecascade_federated_runs"]
    assert runs[(("state", "running"),)] == 1 and runs[(("state", "failed"),)] == 1
    assert runs[(("state", "promoted"),)] == 0 and len(runs) == 5
    assert samples["edgecascade_federated_rounds_total"] == {
        (("state", "completed"),): 2,
        (("state", "short"),): 1,
    }
    assert samples["edgecascade_federated_updates_refused_total"] == {
        (("reason", "signature"),): 2,
        (("reason", "norm"),): 1,
    }
    assert samples["edgecascade_federated_late_results_total"] == {(): 3}
