"""The durable outbox on real SQLite files: idempotency, WAL + fsync, reopening, the full policy, threads."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import StorageError
from edgecascade.device_sdk.learning.outbox import AddStatus, Outbox, State
from tests.hard_example_fakes import example


def test_storing_the_same_example_twice_is_a_no_op(tmp_path: Path) -> None:
    with Outbox(tmp_path / "hx.db") as outbox:
        first = example(1)
        assert outbox.add(first) is AddStatus.STORED
        assert outbox.add(example(1)) is AddStatus.DUPLICATE  # same content, same id
        assert outbox.add_many([example(2), example(2), example(1)]) == [
            AddStatus.STORED,
            AddStatus.DUPLICATE,
            AddStatus.DUPLICATE,
        ]
        assert len(outbox) == 2
        (pending, _) = outbox.pending(10)
        assert pending.id == first.example_id
        assert pending.record == first.to_json()
        # sent is still known: selecting it again does not upload it again
        assert outbox.mark_sent([first.example_id]) == 1
        assert outbox.add(example(1)) is AddStatus.DUPLICATE
        assert outbox.counts() == {"pending": 1, "sent": 1, "failed": 0}


def test_wal_with_full_fsync_and_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hx.db"  # the directory is made
    outbox = Outbox(path)
    assert outbox.pragma("journal_mode") == "wal"
    assert outbox.pragma("synchronous") == 2  # FULL: every commit fsyncs the WAL
    outbox.add_many([example(i) for i in range(5)])
    outbox.mark_sent([example(0).example_id])
    outbox.mark_failed({example(1).example_id: "not enrolled"})
    outbox.close()
    with pytest.raises(StorageError, match="closed"):
        outbox.pending(1)

    # a second process (another connection) sees the same, committed state
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM hard_examples WHERE state = 'pending'").fetchone()[0] == 3
    with Outbox(path) as reopened:
        assert reopened.counts() == {"pending": 3, "sent": 1, "failed": 1}
        assert [p.id for p in reopened.pending(10)] == [example(i).example_id for i in (2, 3, 4)]
        assert reopened.failed() == {example(1).example_id: "not enrolled"}
        assert reopened.state(example(0).example_id) is State.SENT
        assert reopened.requeue_failed() == 1
        assert reopened.state(example(1).example_id) is State.PENDING


def test_only_pending_rows_are_marked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "hx.db") as outbox:
        outbox.add(example(1))
        sent = example(1).example_id
        assert outbox.mark_sent([sent, "unknown-id"]) == 1
        assert outbox.mark_sent([sent]) == 0
        assert outbox.mark_failed({sent: "too late"}) == 0  # a sent record stays sent
        assert outbox.state(sent) is State.SENT


def test_full_outbox_drops_sent_first_and_never_pending(tmp_path: Path, caplog) -> None:
    with Outbox(tmp_path / "hx.db", capacity=3) as outbox:
        outbox.add_many([example(i) for i in range(3)])
        outbox.mark_failed({example(0).example_id: "bad"})
        outbox.mark_sent([example(1).example_id])
        # full: the oldest sent goes first (1), then the failed one (0)
        assert outbox.add(example(3)) is AddStatus.STORED
        assert outbox.state(example(1).example_id) is None
        assert outbox.state(example(0).example_id) is State.FAILED
        assert outbox.add(example(4)) is AddStatus.STORED
        assert outbox.state(example(0).example_id) is None
        # now every row is pending: new examples are refused, counted and logged, none is lost
        assert outbox.add_many([example(5), example(6), example(2)]) == [
            AddStatus.FULL,
            AddStatus.FULL,
            AddStatus.DUPLICATE,
        ]
        assert outbox.counts() == {"pending": 3, "sent": 0, "failed": 0}
        assert outbox.counters["dropped_full"] == 2
        assert outbox.counters["evicted_sent"] == 1 and outbox.counters["evicted_failed"] == 1
        assert "not stored" in caplog.text


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "hx.db")
    errors: list[BaseException] = []

    def add(start: int) -> None:
        try:
            for i in range(start, start + 20):
                outbox.add_many([example(i), example(i + 1)])  # overlapping ids across threads
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def drain() -> None:
        try:
            for _ in range(20):
                outbox.mark_sent([p.id for p in outbox.pending(5)])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(s,)) for s in (0, 10, 20)]
    threads.append(threading.Thread(target=drain))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(outbox) == 41  # ids 0..40, each once
    counts = outbox.counts()
    assert counts["pending"] + counts["sent"] == 41
    outbox.close()


def test_unusable_files_are_storage_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        Outbox(garbage)
    future = tmp_path / "future.db"
    with sqlite3.connect(future) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema 99"):
        Outbox(future)
    with pytest.raises(StorageError):
        Outbox(tmp_path / "x.db", capacity=0)


def test_insert_latency_with_fsync(tmp_path: Path) -> None:
    """Each add is one fsynced commit; a batch shares one. Reported, loosely bounded."""
    with Outbox(tmp_path / "hx.db") as outbox:
        started = time.perf_counter()
        for i in range(50):
            outbox.add(example(i))
        single_ms = (time.perf_counter() - started) * 1000 / 50
        started = time.perf_counter()
        outbox.add_many([example(i) for i in range(100, 150)])
        batch_ms = (time.perf_counter() - started) * 1000
    print(f"\noutbox add: {single_ms:.2f} ms per single fsynced insert; 50 in one commit: {batch_ms:.2f} ms")
    assert single_ms < 200 and batch_ms < 1000
