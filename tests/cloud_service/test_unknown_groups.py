"""Unknown uploads grouped and named as classes: the real app, a real SQLite file and the tiny model."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from edgecascade.cloud_service import schema, unknown_groups
from edgecascade.cloud_service.clustering import NOISE, Centroids, GroupingRule, assign, cluster, plan
from edgecascade.cloud_service.store import connect, hard_examples, metadata, open_engine
from edgecascade.cloud_service.unknown_api import grid
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.model.bundle import load_bundle
from tests.learning_kit import LearningCloud, RecordingLauncher, make_learning_cloud
from tests.unknown_kit import synthetic

URL = "/v1/unknown-groups"


@pytest.fixture
def lc(tmp_path: Path, tiny_bundle: Path) -> LearningCloud:
    return make_learning_cloud(tmp_path, tiny_bundle, RecordingLauncher())


def upload(lc: LearningCloud, examples: list[HardExample]) -> None:
    answer = lc.client.post(
        "/v1/hard-examples", json={"examples": [e.to_json() for e in examples]}, headers=lc.auth("gateway")
    )
    assert answer.status_code == 200 and len(answer.json["accepted"]) == len(examples), answer.json


def refresh(lc: LearningCloud) -> dict[str, Any]:
    answer = lc.client.post(f"{URL}/refresh", headers=lc.auth("admin"))
    assert answer.status_code == 200, answer.json
    return {c["cut"]: c for c in answer.json["cuts"]}


def groups(lc: LearningCloud) -> list[dict[str, Any]]:
    answer = lc.client.get(URL, headers=lc.auth("admin"))
    assert answer.status_code == 200
    return list(answer.json["groups"])


def members(lc: LearningCloud, group_id: int) -> set[str]:
    ids: set[str] = set()
    cursor = ""
    while True:
        page = lc.client.get(f"{URL}/{group_id}?limit=7&cursor={cursor}", headers=lc.auth("admin")).json
        ids |= {e["id"] for e in page["examples"]}
        if page["next_cursor"] is None:
            return ids
        cursor = page["next_cursor"]


@pytest.fixture
def grouped(lc: LearningCloud, tiny_bundle: Path) -> dict[str, set[str]]:
    """Two kinds of unknown cut-1 uploads (the second with raw images) and known ones, then grouped."""
    first = synthetic(tiny_bundle, "cut1", 1, 20)
    second = synthetic(tiny_bundle, "cut1", 2, 20, images=True)
    known = [replace(e, reasons=("low_margin",)) for e in synthetic(tiny_bundle, "cut1", 1, 5, seed=9)]
    upload(lc, first + second + known)
    report = refresh(lc)
    assert report["cut1"]["considered"] == 40 and report["cut2"]["considered"] == 0
    return {"first": {e.example_id for e in first}, "second": {e.example_id for e in second}}


def test_grouping_separates_two_clusters_of_unknown_uploads(
    lc: LearningCloud, grouped: dict[str, set[str]]
) -> None:
    found = groups(lc)
    assert {g["cut"] for g in found} == {"cut1"} and all(g["class_name"] is None for g in found)
    kinds = set()
    for group in found:
        ids = members(lc, group["id"])
        assert len(ids) == group["size"] >= 5
        assert ids <= grouped["first"] or ids <= grouped["second"]  # never a mix
        kinds.add("second" if ids <= grouped["second"] else "first")
        assert group["has_images"] is (ids <= grouped["second"])
        assert set(group["examples"]) <= ids and len(group["examples"]) == min(5, len(ids))
    assert kinds == {"first", "second"}
    in_groups = sum(g["size"] for g in found)
    assert in_groups >= 30  # most of the 40 unknown uploads, none of the 5 known ones
    assert lc.client.get(URL, headers=lc.auth("admin")).json["ungrouped"] == 40 - in_groups


def test_new_uploads_join_the_nearest_group_and_grouped_examples_never_move(
    lc: LearningCloud, grouped: dict[str, set[str]], tiny_bundle: Path
) -> None:
    before = {g["id"]: members(lc, g["id"]) for g in groups(lc)}
    left = len(grouped["first"] | grouped["second"]) - sum(len(ids) for ids in before.values())
    upload(lc, synthetic(tiny_bundle, "cut1", 2, 10, seed=1))
    report = refresh(lc)["cut1"]
    assert report["considered"] == 10 + left and report["joined"] >= 5 and report["new_groups"] == 0
    after = {g["id"]: members(lc, g["id"]) for g in groups(lc)}
    for group_id, ids in before.items():
        assert ids <= after[group_id]  # nothing left a group
        joined = after[group_id] - ids
        assert not joined or ids <= grouped["second"]  # the new ones joined the group of their kind
    assert refresh(lc)["cut1"]["joined"] == 0  # nothing new: a second run changes nothing
    assert {g["id"]: members(lc, g["id"]) for g in groups(lc)} == after


def test_cut2_uploads_are_grouped_with_the_gateway_keys(lc: LearningCloud, tiny_bundle: Path) -> None:
    trousers = synthetic(tiny_bundle, "cut2", 1, 15)
    bags = synthetic(tiny_bundle, "cut2", 2, 15)
    upload(lc, trousers + bags)
    report = refresh(lc)["cut2"]
    assert report["considered"] == 30 and report["unreadable"] == 0 and report["new_groups"] >= 2
    found = groups(lc)
    assert {g["cut"] for g in found} == {"cut2"}
    for group in found:
        ids = members(lc, group["id"])
        assert ids <= {e.example_id for e in trousers} or ids <= {e.example_id for e in bags}


def labels(lc: LearningCloud, ids: set[str]) -> set[int | None]:
    with lc.learning.store.engine.connect() as db:
        rows = db.execute(sa.select(hard_examples.c.human_label).where(hard_examples.c.id.in_(ids)))
        return {r.human_label for r in rows}


def test_naming_a_group_labels_its_members_and_is_idempotent(
    lc: LearningCloud, grouped: dict[str, set[str]], tiny_bundle: Path
) -> None:
    classes = load_bundle(tiny_bundle).manifest.classes
    found = groups(lc)
    bag_group = next(g for g in found if members(lc, g["id"]) <= grouped["second"])
    trouser_group = next(g for g in found if members(lc, g["id"]) <= grouped["first"])
    admin = lc.auth("admin")

    named = lc.client.put(f"{URL}/{bag_group['id']}", json={"class_name": "Handbag"}, headers=admin)
    assert named.status_code == 200, named.json
    assert (named.json["class_name"], named.json["class_index"]) == ("Handbag", len(classes))
    assert labels(lc, members(lc, bag_group["id"])) == {len(classes)}
    assert unknown_groups.extended_classes(lc.learning.store.engine, classes) == (*classes, "Handbag")

    again = lc.client.put(f"{URL}/{bag_group['id']}", json={"class_name": "Handbag"}, headers=admin)
    assert again.status_code == 200 and again.json == named.json  # same answer, nothing changed

    renamed = lc.client.put(f"{URL}/{bag_group['id']}", json={"class_name": "Bag"}, headers=admin)
    assert renamed.status_code == 409 and "already named 'Handbag'" in renamed.json["message"]
    assert labels(lc, members(lc, bag_group["id"])) == {len(classes)}

    served = lc.client.put(f"{URL}/{trouser_group['id']}", json={"class_name": "Trouser"}, headers=admin)
    assert served.json["class_index"] == classes.index("Trouser") == 1  # a served class keeps its index
    assert unknown_groups.extended_classes(lc.learning.store.engine, classes) == (*classes, "Handbag")

    # a human label may now be the new class's index, and no index beyond it
    example = next(iter(grouped["first"]))
    relabel = lc.client.put(f"/v1/hard-examples/{example}/label", json={"label": len(classes)}, headers=admin)
    assert relabel.status_code == 200 and relabel.json["human_label"] == len(classes)
    beyond = lc.client.put(
        f"/v1/hard-examples/{example}/label", json={"label": len(classes) + 1}, headers=admin
    )
    assert beyond.status_code == 400 and "classes known now" in beyond.json["message"]


def test_an_example_joining_a_named_group_gets_its_class(
    lc: LearningCloud, grouped: dict[str, set[str]], tiny_bundle: Path
) -> None:
    bag_groups = [g for g in groups(lc) if members(lc, g["id"]) <= grouped["second"]]
    for group in bag_groups:
        lc.client.put(f"{URL}/{group['id']}", json={"class_name": "Bag"}, headers=lc.auth("admin"))
    more = synthetic(tiny_bundle, "cut1", 2, 10, seed=1)
    upload(lc, more)
    refresh(lc)
    joined = set().union(*(members(lc, g["id"]) for g in bag_groups)) & {e.example_id for e in more}
    assert joined and labels(lc, joined) == {8}  # "Bag" is a served class of the tiny model


def test_the_picture_of_a_group_shows_its_kept_raw_inputs(
    lc: LearningCloud, grouped: dict[str, set[str]]
) -> None:
    admin = lc.auth("admin")
    found = groups(lc)
    with_images = next(g for g in found if g["has_images"])
    picture = lc.client.get(f"{URL}/{with_images['id']}/examples.png", headers=admin)
    assert picture.status_code == 200 and picture.mimetype == "image/png"
    width, height = struct.unpack(">II", picture.data[16:24])
    shown = min(16, with_images["size"])
    columns = min(4, shown)
    rows = -(-shown // columns)
    assert (width, height) == (columns * 56 + (columns - 1) * 2, rows * 56 + (rows - 1) * 2)  # 28 px doubled
    assert zlib.decompress(picture.data[41:-12])  # a readable IDAT
    without = next(g for g in found if not g["has_images"])
    missing = lc.client.get(f"{URL}/{without['id']}/examples.png", headers=admin)
    assert missing.status_code == 404 and "raw input" in missing.json["message"]


def test_bad_input_on_every_route_gets_a_4xx_with_a_message(
    lc: LearningCloud, grouped: dict[str, set[str]]
) -> None:
    admin = lc.auth("admin")
    group_id = groups(lc)[0]["id"]
    refused = [
        (lc.client.get(URL, headers=lc.auth("device")), 403),
        (lc.client.post(f"{URL}/refresh", headers=lc.auth("gateway")), 403),
        (lc.client.get(f"{URL}/999", headers=admin), 404),
        (lc.client.get(f"{URL}/{group_id}?limit=0", headers=admin), 400),
        (lc.client.get(f"{URL}/{group_id}?limit=x", headers=admin), 400),
        (lc.client.get(f"{URL}/{group_id}?cursor=bm90LWEtY3Vyc29y", headers=admin), 400),
        (lc.client.get(f"{URL}/999/examples.png", headers=admin), 404),
        (lc.client.put(f"{URL}/999", json={"class_name": "Hat"}, headers=admin), 404),
        (lc.client.put(f"{URL}/{group_id}", json={}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": ""}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": " Hat"}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": "a\nb"}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": "x" * 65}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": 3}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": "Hat", "x": 1}, headers=admin), 400),
        (lc.client.put(f"{URL}/{group_id}", data="not json", headers=admin), 415),
        (lc.client.put(f"{URL}/{group_id}", json={"class_name": "Hat"}, headers=lc.auth("device")), 403),
    ]
    for answer, status in refused:
        assert answer.status_code == status, (answer.request.path, answer.json)
        assert answer.json["message"], answer.request.path
    assert all(g["class_name"] is None for g in groups(lc))  # nothing was named by any of them


def test_the_groups_show_in_the_prometheus_metrics(lc: LearningCloud, grouped: dict[str, set[str]]) -> None:
    text = lc.client.get("/metrics", headers=lc.auth("admin")).get_data(as_text=True)
    n = len(groups(lc))
    assert f'edgecascade_cloud_unknown_groups{{state="unnamed"}} {float(n)}' in text
    assert 'edgecascade_cloud_unknown_examples{state="grouped"}' in text


# ------------------------------------------------------------------------ pure parts
def blobs(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    keys = centre + spread * rng.standard_normal((n, len(centre)))
    return (keys / np.linalg.norm(keys, axis=1, keepdims=True)).astype(np.float32)


def test_clustering_finds_dense_regions_and_assign_joins_only_within_a_radius() -> None:
    rng = np.random.default_rng(3)
    a, b = np.eye(16)[0], np.eye(16)[1]
    keys = np.concatenate([blobs(rng, a, 40, 0.05), blobs(rng, b, 40, 0.05)])
    labels = cluster(keys, GroupingRule())
    assert len(set(labels[:40].tolist())) == 1 and len(set(labels[40:].tolist())) == 1
    assert labels[0] != labels[40] and NOISE not in labels.tolist()
    assert (cluster(keys[:4], GroupingRule()) == NOISE).all()  # fewer than a group's minimum

    centroids = Centroids.of([keys[:40], keys[40:]], GroupingRule())
    near_a, near_b, far = blobs(rng, a, 5, 0.02), blobs(rng, b, 5, 0.02), blobs(rng, np.eye(16)[2], 5, 0.02)
    assert (
        assign(np.concatenate([near_a, near_b, far]), centroids).tolist() == [0] * 5 + [1] * 5 + [NOISE] * 5
    )


def test_a_plan_joins_groups_founds_dense_new_ones_and_leaves_scattered_keys_out() -> None:
    rng = np.random.default_rng(5)
    group = blobs(rng, np.eye(16)[0], 40, 0.05)
    near = blobs(rng, np.eye(16)[0], 6, 0.02)
    dense = blobs(rng, np.eye(16)[1], 20, 0.05)
    scattered = blobs(rng, np.zeros(16), 12, 1.0)  # directions all over the sphere
    keys = np.concatenate([near, dense, scattered])
    placed = plan(keys, [group], GroupingRule())
    assert placed.joined[:6].tolist() == [0] * 6 and set(placed.formed[6:26].tolist()) == {0}
    assert placed.new_groups == 1 and (placed.joined[26:] == NOISE).all()
    left = keys[(placed.joined == NOISE) & (placed.formed == NOISE)]
    assert len(left) >= 8  # the scattered keys stay out...
    again = plan(left, [np.concatenate([group, near]), dense], GroupingRule())
    assert (again.joined == NOISE).all() and again.new_groups == 0  # ...and a second run founds nothing


def test_the_grid_puts_images_four_to_a_row_and_refuses_nothing_to_show() -> None:
    images = [np.full((28, 28), i, np.uint8) for i in range(6)]
    out = grid(images)
    assert out.shape == (2 * 56 + 2, 4 * 56 + 3 * 2, 1)
    assert out[0, 0, 0] == 0 and out[58, 0, 0] == 4 and out[0, 56, 0] == 128  # gap between
    with pytest.raises(ValueError, match="no raw input"):
        grid([])
    with pytest.raises(ValueError, match="not uint8"):
        grid([np.zeros((28, 28), np.float32)])


# ------------------------------------------------------------------------ schema
def test_the_migration_upgrades_a_database_at_0002_keeping_its_examples(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = connect(url)
    with engine.begin() as db:
        command.upgrade(schema.alembic_config(db), "0002")
        db.execute(
            hard_examples.insert().values(
                id="a" * 64,
                device_id="cam-01",
                model_version=1,
                cut="cut1",
                encoding="1bit",
                reasons="unknown",
                predicted=0,
                confidence=0.1,
                tier="device",
                created_at=1.0,
                received_at=2.0,
                features_path="aa/x.features",
            )
        )
    assert not sa.inspect(engine).has_table("unknown_groups")
    engine.dispose()

    engine = open_engine(url)
    assert schema.current_revision(engine) == schema.head_revision()
    assert {"unknown_groups", "unknown_group_members"} <= set(sa.inspect(engine).get_table_names())
    assert schema.differences(engine, metadata) == []  # the migration makes what the code declares
    assert unknown_groups.extended_classes(engine, ("a", "b")) == ("a", "b")
    with engine.connect() as db:
        assert db.execute(sa.select(hard_examples.c.id)).scalars().all() == ["a" * 64]
    with engine.begin() as db:  # and it downgrades cleanly
        command.downgrade(schema.alembic_config(db), "0002")
    assert not sa.inspect(engine).has_table("unknown_group_members")
    engine.dispose()


def test_named_classes_follow_the_served_ones_and_a_concurrent_naming_takes_the_next_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    with engine.begin() as db:
        insert = unknown_groups.unknown_groups.insert().values(cut="cut1", created_at=0.0, size=0)
        ids = [db.execute(insert).inserted_primary_key[0] for _ in range(4)]
    served = ("a", "b")
    assert unknown_groups.name_group(engine, ids[0], "Hat", served).class_index == 2
    assert unknown_groups.name_group(engine, ids[1], "a", served).class_index == 0  # a served class
    assert unknown_groups.name_group(engine, ids[2], "Bag", served).class_index == 3
    assert unknown_groups.extended_classes(engine, served) == ("a", "b", "Hat", "Bag")
    assert unknown_groups.extended_classes(engine, ("a", "b", "Hat")) == ("a", "b", "Hat", "Bag")  # retrained

    # another server process names "Cap" between this naming's read of the classes and its write
    read = unknown_groups._extended
    raced: list[str] = []

    def read_then_race(db: Any, served: tuple[str, ...]) -> tuple[str, ...]:
        known = read(db, served)
        if not raced:
            raced.append("Cap")
            with engine.begin() as other:
                other.execute(
                    unknown_groups.named_classes.insert().values(
                        class_index=len(known), class_name="Cap", named_at=5.0
                    )
                )
        return known

    monkeypatch.setattr(unknown_groups, "_extended", read_then_race)
    assert unknown_groups.name_group(engine, ids[3], "Boot", served).class_index == 5  # not Cap's 4
    monkeypatch.undo()
    assert unknown_groups.extended_classes(engine, served) == ("a", "b", "Hat", "Bag", "Cap", "Boot")
    engine.dispose()
