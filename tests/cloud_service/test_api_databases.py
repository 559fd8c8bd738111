"""The learning loop's API on each database the cloud supports: the real app, SQLite and PostgreSQL.

One walk through every route that reads or writes the database (upload, duplicates,
listing with filters and pages, labels, the count trigger, the one-active-job rule, job
status) per database, so a query that only SQLite accepts fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, RetrainSettings
from edgecascade.device_sdk import wire
from edgecascade.training.data import Dataset
from tests.learning_kit import RecordingLauncher, device_examples

URL = wire.ROUTE_HARD_EXAMPLES


@pytest.fixture
def config(database_url: str, tmp_path: Path, tiny_bundle: Path) -> CloudConfig:
    served = tmp_path / "served"
    shutil.copytree(tiny_bundle, served)
    settings = CloudSettings(
        bundle=served,
        token_store=tmp_path / "state" / "tokens.db",
        device_keyring=tmp_path / "state" / "device-keys",
        database_url=database_url,
        blob_dir=tmp_path / "state" / "blobs",
    )
    retrain = RetrainSettings(models_dir=tmp_path / "models", jobs_dir=tmp_path / "jobs", count_threshold=8)
    return CloudConfig(settings, retrain=retrain)


def test_the_learning_api_round_trip(config: CloudConfig, tiny_bundle: Path, fmnist: Dataset) -> None:
    launcher = RecordingLauncher()
    app = create_app(config, launcher=launcher)
    client, tokens = app.test_client(), app.extensions["edgecascade.tokens"]
    gateway = {"Authorization": f"Bearer {tokens.create('gateway', 'gw')[0]}"}
    admin = {"Authorization": f"Bearer {tokens.create('admin', 'ops')[0]}"}
    cam1 = device_examples(tiny_bundle, fmnist.x_test[:5], "cam-01")
    cam2 = device_examples(tiny_bundle, fmnist.x_test[5:8], "cam-02")

    first = client.post(URL, json={"examples": [e.to_json() for e in cam1]}, headers=gateway).json
    assert sorted(first["accepted"]) == sorted(e.example_id for e in cam1)
    again = client.post(URL, json={"examples": [e.to_json() for e in cam1[:2] + cam2]}, headers=gateway).json
    assert sorted(again["duplicates"]) == sorted(e.example_id for e in cam1[:2])
    assert len(again["accepted"]) == 3  # 8 examples now: the count trigger queued a job
    assert [p.parent.name for p in launcher.specs] == ["job-1"]

    pages, cursor = [], ""
    while cursor is not None:
        page = client.get(f"{URL}?limit=3&cursor={cursor}", headers=admin).json
        pages.append([r["id"] for r in page["examples"]])
        cursor = page["next_cursor"]
    assert [len(p) for p in pages] == [3, 3, 2]
    listed = client.get(f"{URL}?device_id=cam-02&model_version=1", headers=admin).json["examples"]
    assert sorted(r["id"] for r in listed) == sorted(e.example_id for e in cam2)

    labelled = client.put(f"{URL}/{cam2[0].example_id}/label", json={"label": 7}, headers=admin).json
    assert (labelled["label"], labelled["label_source"]) == (7, "human")
    assert [r["id"] for r in client.get(f"{URL}?labelled=true", headers=admin).json["examples"]] == [
        cam2[0].example_id
    ]

    assert client.post("/v1/retrain", headers=admin).status_code == 409  # job 1 is still queued
    jobs = client.get("/v1/jobs", headers=admin).json["jobs"]
    assert [(j["id"], j["state"], j["trigger"]) for j in jobs] == [(1, "queued", "count")]
    assert client.get("/v1/jobs/1", headers=admin).json["log"] == ["job queued by a test launcher"]
