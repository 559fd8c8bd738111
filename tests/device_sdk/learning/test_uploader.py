"""The uploader against an in-memory receiver: batches, receipts, back-off, splitting, stopping."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from edgecascade.device_sdk.errors import RemoteError, TransportError
from edgecascade.device_sdk.learning.batch import Receipt, Rejection
from edgecascade.device_sdk.learning.links import InMemoryUploadLink
from edgecascade.device_sdk.learning.outbox import Outbox, State
from edgecascade.device_sdk.learning.uploader import Uploader, backoff_delay
from tests.hard_example_fakes import example


class Receiver:
    """An idempotent receiver with scripted failures."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.batches: list[int] = []
        self.failures: list[Exception] = []  # raised, one per call, before anything else
        self.poison: set[str] = set()  # ids whose presence makes the whole batch refused
        self.reject: dict[str, str] = {}
        self.forget: set[str] = set()  # ids left out of the receipt (e.g. receiver full)
        self.lock = threading.Lock()

    def __call__(self, records: list[dict[str, Any]]) -> Receipt:
        with self.lock:
            self.batches.append(len(records))
            if self.failures:
                raise self.failures.pop(0)
            if self.poison & {r["id"] for r in records}:
                raise RemoteError(400, "batch refused")
            accepted, duplicates, rejected = [], [], []
            for r in records:
                if r["id"] in self.reject:
                    rejected.append(Rejection(r["id"], self.reject[r["id"]]))
                elif r["id"] in self.forget:
                    continue
                elif r["id"] in self.stored:
                    duplicates.append(r["id"])
                else:
                    self.stored[r["id"]] = r
                    accepted.append(r["id"])
            return Receipt(tuple(accepted), tuple(duplicates), tuple(rejected))


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "hx.db")
    yield box
    box.close()


def _uploader(outbox: Outbox, receiver: Receiver, **kwargs: Any) -> Uploader:
    kwargs.setdefault("interval", 0.01)
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("backoff_max", 0.05)
    return Uploader(outbox, InMemoryUploadLink(receiver), rng=random.Random(0), **kwargs)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    assert backoff_delay(0, 1.0, 60.0, rng) == 0.0
    for failures in range(1, 12):
        ceiling = min(60.0, 2.0 ** (failures - 1))
        delays = {backoff_delay(failures, 1.0, 60.0, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert backoff_delay(10_000, 1.0, 60.0, rng) <= 60.0


def test_drains_in_batches_and_marks_only_acknowledged_ids(outbox: Outbox) -> None:
    outbox.add_many([example(i) for i in range(25)])
    receiver = Receiver()
    receiver.reject[example(3).example_id] = "not enrolled"
    receiver.stored[example(4).example_id] = example(4).to_json()  # already there: a duplicate
    uploader = _uploader(outbox, receiver, batch_size=10)
    outcome = uploader.upload_once()
    assert (outcome.attempted, outcome.sent, outcome.failed, outcome.unacknowledged) == (10, 9, 1, 0)
    assert outbox.state(example(3).example_id) is State.FAILED
    assert outbox.failed() == {example(3).example_id: "not enrolled"}
    uploader.start()
    assert uploader.drain(5)
    assert uploader.stop()
    assert receiver.batches == [10, 10, 5]
    assert set(receiver.stored) == {example(i).example_id for i in range(25)} - {example(3).example_id}
    assert uploader.counters["duplicates"] == 1 and uploader.counters["rejected"] == 1


def test_failures_back_off_and_nothing_is_lost_or_duplicated(outbox: Outbox) -> None:
    outbox.add_many([example(i) for i in range(12)])
    receiver = Receiver()
    receiver.failures = [TransportError("down"), RemoteError(503, "busy"), TransportError("down")]
    receiver.forget = {example(0).example_id}  # left out of one receipt: stays pending
    uploader = _uploader(outbox, receiver, batch_size=5).start()
    try:
        threading.Timer(0.2, receiver.forget.clear).start()
        assert uploader.drain(5)
    finally:
        assert uploader.stop()
    assert set(receiver.stored) == {example(i).example_id for i in range(12)}
    assert uploader.counters["failed_TransportError"] == 2
    assert uploader.counters["failed_RemoteError"] == 1
    assert uploader.counters["unacknowledged"] >= 1
    assert outbox.counts() == {"pending": 0, "sent": 12, "failed": 0}


def test_a_batch_refused_as_a_whole_is_split_until_the_bad_record_is_alone(outbox: Outbox) -> None:
    outbox.add_many([example(i) for i in range(8)])
    receiver = Receiver()
    receiver.poison = {example(5).example_id}
    uploader = _uploader(outbox, receiver, batch_size=8).start()
    try:
        assert uploader.drain(5)
    finally:
        uploader.stop()
    assert outbox.state(example(5).example_id) is State.FAILED
    assert "refused as a whole: 400" in outbox.failed()[example(5).example_id]
    assert len(receiver.stored) == 7
    assert max(receiver.batches[1:]) < 8  # split after the first refusal


def test_waits_while_there_is_no_link_and_respects_the_byte_budget(outbox: Outbox) -> None:
    outbox.add_many([example(i) for i in range(6)])
    receiver = Receiver()
    link = InMemoryUploadLink(receiver)
    link.connected = False
    size = outbox.pending(1)[0].size
    uploader = Uploader(outbox, link, batch_size=6, interval=0.01, max_batch_bytes=2 * size + 10)
    assert uploader.upload_once().idle
    assert uploader.counters["no_link"] == 1 and receiver.batches == []
    link.connected = True
    uploader.start()
    assert uploader.drain(5)
    assert uploader.stop()
    assert receiver.batches == [2, 2, 2]


def test_stop_is_prompt_even_during_a_long_back_off(outbox: Outbox) -> None:
    outbox.add(example(1))
    receiver = Receiver()
    receiver.failures = [TransportError("down")] * 3
    uploader = _uploader(outbox, receiver, backoff_base=30.0, backoff_max=60.0).start()
    threading.Event().wait(0.1)
    assert uploader.stop(timeout=2.0)
    assert outbox.counts()["pending"] == 1  # still there for next time
