"""Hard-example intake, listing and labels on the real app, a real SQLite file and the tiny model."""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.cloud_service.intake import CutSpec, VersionSpec
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.learning.records import MAX_BATCH, HardExample
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire import codec
from edgecascade.training.data import Dataset
from tests.learning_kit import (
    LearningCloud,
    RecordingLauncher,
    device_examples,
    make_learning_cloud,
    with_raw,
)

URL = wire.ROUTE_HARD_EXAMPLES


@pytest.fixture
def lc(tmp_path: Path, tiny_bundle: Path) -> LearningCloud:
    return make_learning_cloud(tmp_path, tiny_bundle, RecordingLauncher())


@pytest.fixture(scope="module")
def examples(tiny_bundle: Path, fmnist: Dataset) -> list[HardExample]:
    return device_examples(tiny_bundle, fmnist.x_test[:12])


def upload(lc: LearningCloud, records: list[Any], headers: dict[str, str]) -> Any:
    return lc.client.post(URL, json={"examples": records}, headers=headers)


def teacher_labels(bundle: Path, examples: list[HardExample]) -> list[int]:
    """The final exit's answers for cut-1 features, computed here independently of the cloud."""
    loaded = load_bundle(bundle)
    x = np.stack([codec.decode_features(e.features, e.encoding) for e in examples])
    cut2 = PartitionRunner.from_bundle(loaded, "gateway").run(x).features
    assert cut2 is not None
    cut2 = codec.through_wire(cut2, loaded.manifest.partition("gateway").encoding)
    return [int(i) for i in PartitionRunner.from_bundle(loaded, "cloud").run(cut2).logits.argmax(1)]


def in_listing_order(*batches: list[HardExample]) -> list[str]:
    """Listings run by arrival, then by id among the examples of one upload."""
    return [i for batch in batches for i in sorted(e.example_id for e in batch)]


def record(example: HardExample, **changes: Any) -> dict[str, Any]:
    """The example's record with fields changed after its id was computed."""
    return example.to_json() | changes


def test_each_record_is_accepted_duplicate_or_rejected_with_a_reason(
    lc: LearningCloud, examples: list[HardExample], fmnist: Dataset
) -> None:
    gateway = lc.auth("gateway", "gateway-1")
    good = examples[:3]
    wrong_shape = replace(
        examples[3], features=codec.encode_features(np.ones((7, 7, 8), np.float32), examples[3].encoding)
    )
    wrong_encoding = replace(
        examples[4], encoding="float16", features=wire.encode_tensor(np.ones((7, 7, 16), np.float16))
    )
    unknown_version = replace(examples[5], model_version=99)
    bad_label = replace(examples[6], predicted=10)  # the tiny model has 10 classes
    raw_wrong_shape = replace(examples[7], raw=wire.encode_tensor(np.zeros((28, 27, 1), np.uint8)))
    records = [
        *(e.to_json() for e in good),
        good[0].to_json(),  # repeated inside the batch
        wrong_shape.to_json(),
        wrong_encoding.to_json(),
        unknown_version.to_json(),
        bad_label.to_json(),
        raw_wrong_shape.to_json(),
        record(examples[8], id=examples[9].example_id),  # the id of other content
        {"id": "x" * 64, "device_id": "cam-01"},  # missing fields
        "not an object",
    ]
    response = upload(lc, records, gateway)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["accepted"] == [e.example_id for e in good]
    assert body["duplicates"] == [good[0].example_id]
    reasons = {r["index"]: r["reason"].split(":")[0] for r in body["rejected"]}
    assert reasons == {
        4: "bad_tensor",
        5: "bad_tensor",
        6: "unknown_model_version",
        7: "bad_label",
        8: "bad_tensor",
        9: "malformed",
        10: "malformed",
        11: "malformed",
    }
    assert (
        body["rejected"][0]["id"] == wrong_shape.example_id and "[7, 7, 16]" in body["rejected"][0]["reason"]
    )

    again = upload(lc, [e.to_json() for e in examples[:4]], gateway).json
    assert again["accepted"] == [examples[3].example_id]
    assert again["duplicates"] == [e.example_id for e in good]

    rows = {r["id"]: r for r in lc.client.get(URL, headers=lc.auth("admin")).json["examples"]}
    assert list(rows) == in_listing_order(good, examples[3:4])
    assert [rows[e.example_id]["teacher_label"] for e in examples[:4]] == teacher_labels(
        lc.served, examples[:4]
    )
    assert all(r["label_source"] == "teacher" and r["human_label"] is None for r in rows.values())
    metrics = lc.client.get(wire.ROUTE_METRICS, headers=lc.auth("admin")).json
    assert metrics["hard_examples_accepted"] == 4 and metrics["hard_examples_duplicate"] == 4
    assert metrics["hard_examples_rejected_bad_tensor"] == 3


def test_tensors_go_to_content_addressed_files_and_rows_to_the_database(
    lc: LearningCloud, examples: list[HardExample], fmnist: Dataset
) -> None:
    example = with_raw(examples[0], fmnist.x_test[0])
    assert upload(lc, [example.to_json()], lc.auth("gateway")).json["accepted"] == [example.example_id]
    blobs = lc.config.cloud.blob_dir
    assert (
        blobs / example.example_id[:2] / f"{example.example_id}.features"
    ).read_bytes() == example.features
    assert (blobs / example.example_id[:2] / f"{example.example_id}.raw").read_bytes() == example.raw
    database = lc.config.cloud.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT device_id, model_version, cut, reasons, raw_path FROM hard_examples WHERE id = ?",
            (example.example_id,),
        ).fetchone()
    assert row == ("cam-01", 1, "cut1", "reached_cloud", f"{example.example_id[:2]}/{example.example_id}.raw")
    assert not list(blobs.rglob(".*"))  # no temp files left behind


def test_device_tokens_upload_only_their_own_examples(lc: LearningCloud, examples: list[HardExample]) -> None:
    mine = examples[0]
    theirs = replace(examples[1], device_id="cam-02")
    body = upload(lc, [mine.to_json(), theirs.to_json()], lc.auth("device", "cam-01")).json
    assert body["accepted"] == [mine.example_id]
    assert [r["reason"].split(":")[0] for r in body["rejected"]] == ["wrong_device"]
    assert upload(lc, [theirs.to_json()], lc.auth("gateway")).json["accepted"] == [theirs.example_id]
    for scope in ("admin", "enroll"):
        assert upload(lc, [examples[2].to_json()], lc.auth(scope, "cam-01")).status_code == 403
    assert upload(lc, [examples[2].to_json()], {}).status_code == 401


def test_malformed_or_oversize_batches_are_refused_whole(
    lc: LearningCloud, examples: list[HardExample]
) -> None:
    headers = lc.auth("gateway")
    one = examples[0].to_json()
    assert upload(lc, [one] * (MAX_BATCH + 1), headers).status_code == 413
    big = record(examples[0], features=base64.b64encode(b"\x01" * 60_000).decode())
    assert upload(lc, [big] * 6, headers).status_code == 413  # over max_upload_bytes (256 KiB here)
    for body in ({}, {"examples": "x"}, {"examples": [], "extra": 1}, [one]):
        assert lc.client.post(URL, json=body, headers=headers).status_code == 400, body
    assert (
        lc.client.post(URL, data=b"{not json", headers=headers, content_type="application/json").status_code
        == 400
    )
    assert lc.client.post(URL, data=json.dumps({"examples": [one]}), headers=headers).status_code == 415
    assert lc.client.get(URL, headers=lc.auth("admin")).json["examples"] == []


def test_examples_of_a_version_served_before_are_accepted(
    lc: LearningCloud, tiny_bundle: Path, fmnist: Dataset
) -> None:
    served = VersionSpec.from_manifest(load_bundle(lc.served).manifest)
    lc.learning.store.record_version(replace(served, version=7))  # served earlier, same cuts
    other_cut = {"cut1": CutSpec((7, 7, 16), "float16"), "cut2": served.cuts["cut2"]}
    lc.learning.store.record_version(replace(served, version=8, cuts=other_cut))
    v7 = device_examples(tiny_bundle, fmnist.x_test[20:21], version=7)[0]
    v8 = replace(
        v7, model_version=8, encoding="float16", features=wire.encode_tensor(np.ones((7, 7, 16), np.float16))
    )
    body = upload(lc, [v7.to_json(), v8.to_json()], lc.auth("gateway")).json
    assert body["accepted"] == [v7.example_id, v8.example_id]
    rows = {r["id"]: r for r in lc.client.get(URL, headers=lc.auth("admin")).json["examples"]}
    assert rows[v7.example_id]["teacher_label"] == teacher_labels(lc.served, [v7])[0]
    assert rows[v8.example_id]["teacher_label"] is None  # the served partitions cannot read float16 cut 1


def test_listing_filters_and_pages(lc: LearningCloud, tiny_bundle: Path, fmnist: Dataset) -> None:
    cam1 = device_examples(tiny_bundle, fmnist.x_test[30:37], "cam-01")
    cam2 = device_examples(tiny_bundle, fmnist.x_test[40:43], "cam-02")
    upload(lc, [e.to_json() for e in cam1], lc.auth("gateway"))
    upload(lc, [e.to_json() for e in cam2], lc.auth("gateway"))
    admin = lc.auth("admin")

    def ids(query: str) -> list[str]:
        response = lc.client.get(f"{URL}?{query}", headers=admin)
        assert response.status_code == 200, response.json
        return [r["id"] for r in response.json["examples"]]

    assert ids("device_id=cam-02") == in_listing_order(cam2)
    assert ids("model_version=1") == in_listing_order(cam1, cam2)
    assert ids("model_version=2") == []
    assert ids("labelled=true") == []
    first_cam2 = lc.client.get(f"{URL}?device_id=cam-02", headers=admin).json["examples"][0]
    assert ids(f"since={first_cam2['received_at']}") == in_listing_order(cam2)

    pages, cursor = [], ""
    while True:
        page = lc.client.get(f"{URL}?limit=3&cursor={cursor}", headers=admin).json
        pages.append([r["id"] for r in page["examples"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [i for page in pages for i in page] == in_listing_order(cam1, cam2)

    for bad in ("limit=0", "limit=5000", "model_version=x", "labelled=maybe", "cursor=abc", "since=soon"):
        assert lc.client.get(f"{URL}?{bad}", headers=admin).status_code == 400, bad
    assert lc.client.get(URL, headers=lc.auth("gateway")).status_code == 403


def test_a_human_label_overrides_the_teacher(lc: LearningCloud, examples: list[HardExample]) -> None:
    example = examples[0]
    upload(lc, [example.to_json()], lc.auth("gateway"))
    admin = lc.auth("admin")
    teacher = lc.client.get(URL, headers=admin).json["examples"][0]["teacher_label"]
    human = (teacher + 1) % 10
    response = lc.client.put(f"{URL}/{example.example_id}/label", json={"label": human}, headers=admin)
    assert response.status_code == 200
    assert (response.json["label"], response.json["label_source"], response.json["teacher_label"]) == (
        human,
        "human",
        teacher,
    )
    assert [r["id"] for r in lc.client.get(f"{URL}?labelled=true", headers=admin).json["examples"]] == [
        example.example_id
    ]
    assert lc.client.get(f"{URL}?labelled=false", headers=admin).json["examples"] == []
    label_url = f"{URL}/{example.example_id}/label"
    assert lc.client.put(label_url, json={"label": 10}, headers=admin).status_code == 400
    assert lc.client.put(label_url, json={"label": -1}, headers=admin).status_code == 400
    assert lc.client.put(label_url, json={"label": "3"}, headers=admin).status_code == 400
    assert lc.client.put(f"{URL}/{'0' * 64}/label", json={"label": 1}, headers=admin).status_code == 404
    assert lc.client.put(label_url, json={"label": 1}, headers=lc.auth("gateway")).status_code == 403
    assert lc.client.get(URL, headers=admin).json["examples"][0]["label"] == human
