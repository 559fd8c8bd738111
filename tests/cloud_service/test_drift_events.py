"""Drift events: intake records them from ``drift`` examples, the admin API lists them (real app, SQLite)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgecascade.cloud_service.store import hard_examples
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.training.data import Dataset
from tests.learning_kit import LearningCloud, RecordingLauncher, device_examples, make_learning_cloud

ROUTE = "/v1/drift-events"


@pytest.fixture
def lc(tmp_path: Path, tiny_bundle: Path) -> LearningCloud:
    return make_learning_cloud(tmp_path, tiny_bundle, RecordingLauncher())


@pytest.fixture(scope="module")
def examples(tiny_bundle: Path, fmnist: Dataset) -> list[HardExample]:
    return device_examples(tiny_bundle, fmnist.x_test[:4])


def drifted(example: HardExample, created_at: float) -> HardExample:
    return dataclasses.replace(example, reasons=("audit", "drift"), created_at=created_at)


def test_drift_examples_become_events_of_the_uploading_site(
    lc: LearningCloud, examples: list[HardExample]
) -> None:
    site_a = [drifted(examples[0], 1000.0), examples[1]]  # one drift example, one not
    site_b = [drifted(dataclasses.replace(examples[2], device_id="cam-02"), 2000.0)]
    for site, batch in (("site-a", site_a), ("site-b", site_b)):
        reply = lc.client.post(
            wire.ROUTE_HARD_EXAMPLES,
            json={"examples": [e.to_json() for e in batch]},
            headers=lc.auth("gateway", site),
        )
        assert reply.status_code == 200 and len(reply.json["accepted"]) == len(batch)
    again = lc.client.post(  # the same example twice is one event
        wire.ROUTE_HARD_EXAMPLES,
        json={"examples": [site_a[0].to_json()]},
        headers=lc.auth("gateway", "site-a"),
    )
    assert again.json["duplicates"] == [site_a[0].example_id]

    listed = lc.client.get(ROUTE, headers=lc.auth("admin")).json["events"]
    assert [(e["site"], e["device_id"], e["detected_at"]) for e in listed] == [
        ("site-b", "cam-02", 2000.0),  # newest first
        ("site-a", "cam-01", 1000.0),
    ]
    assert listed[1]["example_id"] == site_a[0].example_id and listed[1]["model_version"] == 1
    only_a = lc.client.get(f"{ROUTE}?site=site-a&limit=5", headers=lc.auth("admin")).json["events"]
    assert [e["site"] for e in only_a] == ["site-a"]
    later = lc.client.get(f"{ROUTE}?since={listed[0]['received_at'] + 1}", headers=lc.auth("admin"))
    assert later.json["events"] == []

    columns = hard_examples.c.id, hard_examples.c.site
    with lc.learning.store.engine.connect() as db:  # every example carries its site
        sites = {row.id: row.site for row in db.execute(sa.select(*columns))}
    assert sites[examples[1].example_id] == "site-a" and sites[site_b[0].example_id] == "site-b"

    scraped = lc.client.get(wire.ROUTE_PROMETHEUS, headers=lc.auth("admin")).get_data(as_text=True)
    assert 'edgecascade_drift_events_total{site="site-a"} 1.0' in scraped
    assert 'edgecascade_drift_events_total{site="site-b"} 1.0' in scraped


@pytest.mark.parametrize(
    "query", ["site=no%20spaces", "site=" + "x" * 65, "since=nan", "since=soon", "limit=0", "limit=1001"]
)
def test_bad_query_parameters_are_refused_with_a_message(lc: LearningCloud, query: str) -> None:
    reply = lc.client.get(f"{ROUTE}?{query}", headers=lc.auth("admin"))
    assert reply.status_code == 400
    assert query.split("=")[0] in reply.get_data(as_text=True)


def test_only_admins_list_drift_events(lc: LearningCloud) -> None:
    assert lc.client.get(ROUTE, headers=lc.auth("gateway", "site-a")).status_code == 403
    assert lc.client.get(ROUTE).status_code == 401
