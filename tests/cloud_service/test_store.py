"""The SQL store on a real SQLite file and on a real PostgreSQL (``database_url`` in conftest).

The same tests run on both databases: only portable SQL is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecascade.cloud_service.blobs import BlobStore
from edgecascade.cloud_service.intake import Checked, CutSpec, VersionSpec
from edgecascade.cloud_service.jobs import JobStore
from edgecascade.cloud_service.store import ExampleFilter, ExampleStore, decode_cursor, open_engine
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.wire import codec

VERSION = VersionSpec(
    1, "m", 10, (28, 28, 1), {"cut1": CutSpec((2, 2, 2), "1bit"), "cut2": CutSpec((2,), "int8")}
)


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[ExampleStore]:
    engine = open_engine(database_url)
    yield ExampleStore(engine, BlobStore(tmp_path / "blobs"))
    engine.dispose()


def checked(i: int, device: str = "cam-01") -> Checked:
    values = np.where(np.arange(8).reshape(2, 2, 2) == i % 8, 1.0, -1.0).astype(np.float32)
    features = codec.encode_features(values * (1 if i < 8 else -1), "1bit")
    example = HardExample(device, 1, "cut1", "1bit", features, ("degraded",), i % 10, 0.4, "device", 1e9 + i)
    return Checked(example, values)


def test_examples_round_trip_with_labels_filters_and_pages(store: ExampleStore) -> None:
    store.record_version(VERSION)
    store.record_version(VERSION)  # idempotent
    assert store.versions() == {1: VERSION}
    items = [checked(i, "cam-01" if i < 5 else "cam-02") for i in range(12)]
    accepted, duplicates = store.add(items, [i % 3 if i != 4 else None for i in range(12)])
    assert len(accepted) == 12 and duplicates == []
    assert store.add(items[:2], [0, 0]) == ([], [items[0].example.example_id, items[1].example.example_id])
    assert store.existing_ids([items[3].example.example_id, "f" * 64]) == {items[3].example.example_id}

    row = store.get(items[3].example.example_id)
    assert row is not None and (row.reasons, row.teacher_label, row.label_source) == (
        ("degraded",),
        0,
        "teacher",
    )
    assert store.tensors(row) == (items[3].example.features, None)
    assert store.set_human_label(row.id, 9) is not None
    assert store.set_human_label("0" * 64, 1) is None

    everything, cursor = store.page(ExampleFilter(), limit=100)
    assert cursor is None and len(everything) == 12
    pages, after = [], None
    while True:
        page, cursor = store.page(ExampleFilter(), limit=5, after=after)
        pages.append(page)
        if cursor is None:
            break
        after = decode_cursor(cursor)
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [r.id for p in pages for r in p] == [r.id for r in everything]
    assert {r.device_id for r in store.page(ExampleFilter(device_id="cam-02"), 100)[0]} == {"cam-02"}
    assert [r.id for r in store.page(ExampleFilter(labelled=True), 100)[0]] == [row.id]
    assert len(store.page(ExampleFilter(labelled=False, model_version=1), 100)[0]) == 11
    assert store.page(ExampleFilter(since=time.time() + 60), 100)[0] == []

    training = list(store.for_training(until=time.time(), limit=100))
    assert len(training) == 11  # the example without any label is left out
    labelled = {r.id: r.label for r in training}
    assert labelled[row.id] == 9  # the human label wins
    assert store.count_received_after(0.0) == 12 and store.count_received_after(time.time() + 1) == 0


def test_jobs_hold_one_active_slot(store: ExampleStore) -> None:
    jobs = JobStore(store.engine)
    job = jobs.create("api")
    assert job is not None and jobs.create("cli") is None
    assert jobs.start(job.id, 123)
    jobs.report(job.id, 0.25, "fine-tuning")
    assert jobs.finish(job.id, "succeeded", metrics={"gate": {"gain_points": 1.5}}, candidate_version=2)
    done = jobs.get(job.id)
    assert done is not None and (done.state, done.candidate_version, done.metrics) == (
        "succeeded",
        2,
        {"gate": {"gain_points": 1.5}},
    )
    assert jobs.last_watermark() == job.examples_until
    assert jobs.create("schedule") is not None
