"""The federated runs' store on a real database (an SQLite file, then PostgreSQL): runs, rounds, totals."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from edgecascade.cloud_service.federation_store import FederationStore, federated_rounds, reason_code
from edgecascade.cloud_service.store import open_engine
from tests.federation_kit import make_tally


@pytest.fixture
def store(database_url: str) -> Iterator[FederationStore]:
    engine = open_engine(database_url)
    yield FederationStore(engine)
    engine.dispose()


def test_a_run_is_started_followed_round_by_round_and_finished(store: FederationStore) -> None:
    run_id = store.start_run(strategy="fedavg", rounds=3, base_version=4, flower_run=2**64 - 1)
    assert store.set_stage(run_id, "round 1 of 3: training at 3 sites")
    store.record_round(run_id, make_tally(1, late=["site-c"]), state="completed")
    short = make_tally(2, accepted={"site-a": 100}, refused={"site-b": "signature"})
    store.record_round(run_id, short, state="short")
    [listed] = store.runs()
    assert listed["state"] == "running" and listed["stage"] == "round 1 of 3: training at 3 sites"
    assert (listed["rounds_done"], listed["rounds_planned"], listed["flower_run"]) == (2, 3, str(2**64 - 1))
    assert (listed["base_version"], listed["candidate_version"], listed["finished"]) == (4, None, None)

    gate = {"accuracy": 0.91, "base_accuracy": 0.89, "passed": True}
    assert store.finish_run(run_id, state="promoted", candidate_version=5, gate=gate)
    assert not store.finish_run(run_id, state="failed", error="too late")  # it had ended
    assert not store.set_stage(run_id, "aggregating")  # nor does it move on
    run = store.run(run_id)
    assert run is not None
    assert (run["state"], run["stage"], run["candidate_version"]) == ("promoted", "promoted", 5)
    assert run["gate"] == gate and run["error"] is None and run["finished"] >= run["started"]
    first, second = run["rounds"]
    counts = ("server_round", "state", "sampled", "accepted", "late", "refused", "failed")
    assert [first[k] for k in counts] == [1, "completed", 3, 2, 1, 0, 0]
    assert [second[k] for k in counts] == [2, "short", 2, 1, 0, 1, 0]
    assert second["tally"] == short | {"state": "short"}  # the whole tally, with its state
    assert first["seconds"] == 4.5 and "run_id" not in first


def test_a_tally_may_carry_its_own_state_but_must_agree_with_the_one_given(store: FederationStore) -> None:
    run_id = store.start_run(strategy="fedavg", rounds=2, base_version=1)
    store.record_round(run_id, make_tally(1) | {"state": "short", "bytes_per_site": 250_000.0})
    with pytest.raises(ValueError, match="its tally says 'short'"):
        store.record_round(run_id, make_tally(2) | {"state": "short"}, state="completed")
    with pytest.raises(ValueError, match="state is one of"):
        store.record_round(run_id, make_tally(2))  # no state at all
    run = store.run(run_id)
    assert run is not None and [r["state"] for r in run["rounds"]] == ["short"]
    assert run["rounds"][0]["tally"]["bytes_per_site"] == 250_000.0  # keys it does not know are kept


def test_runs_are_listed_newest_first_up_to_the_limit(store: FederationStore) -> None:
    ids = [store.start_run(strategy=s, rounds=2, base_version=None) for s in ("fedavg", "fedprox", "median")]
    assert [r["id"] for r in store.runs()] == ids[::-1]
    assert [r["strategy"] for r in store.runs(limit=2)] == ["median", "fedprox"]
    assert [r["rounds_done"] for r in store.runs()] == [0, 0, 0]
    assert store.run(ids[0] + 100) is None and store.run(2**63) is None


def test_a_round_recorded_again_replaces_the_first_record(store: FederationStore) -> None:
    run_id = store.start_run(strategy="fedavg", rounds=1, base_version=1)
    store.record_round(run_id, make_tally(1, accepted={}, late=["site-a"]), state="short")
    store.record_round(run_id, make_tally(1), state="completed")
    run = store.run(run_id)
    assert run is not None and [(r["state"], r["accepted"]) for r in run["rounds"]] == [("completed", 2)]
    with store.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(federated_rounds)).scalar_one() == 1


@pytest.mark.parametrize(
    ("tally", "state", "message"),
    [
        (make_tally(1), "partial", "state is one of"),
        ({"server_round": 1, "state": "completed"}, None, "lacks sampled, accepted"),
        (make_tally(1) | {"server_round": -1}, "short", "non-negative integer"),
        (make_tally(1, seconds=math.nan), "short", "finite number"),
        (make_tally(1) | {"late": 3}, "short", "late is a list"),
        (make_tally(1) | {"extra": object()}, "short", "not JSON"),
        ([("server_round", 1)], "short", "is a mapping"),
    ],
)
def test_a_bad_tally_is_refused_and_nothing_is_stored(
    store: FederationStore, tally: Any, state: str | None, message: str
) -> None:
    run_id = store.start_run(strategy="fedavg", rounds=1, base_version=1)
    with pytest.raises(ValueError, match=message):
        store.record_round(run_id, tally, state=state)
    assert store.run(run_id)["rounds"] == []  # type: ignore[index]


def test_states_outside_the_allowed_sets_and_unknown_runs_are_refused(store: FederationStore) -> None:
    run_id = store.start_run(strategy="fedavg", rounds=1, base_version=1)
    for state in ("running", "done", "PROMOTED"):
        with pytest.raises(ValueError, match="not a final state"):
            store.finish_run(run_id, state=state)
    with pytest.raises(ValueError, match="rounds must be"):
        store.start_run(strategy="fedavg", rounds=0, base_version=1)
    with pytest.raises(ValueError, match="strategy name"):
        store.start_run(strategy="", rounds=1, base_version=1)
    with pytest.raises(LookupError, match="no federated run 999"):
        store.record_round(999, make_tally(1), state="completed")
    assert not store.finish_run(999, state="failed")
    assert store.run(run_id)["state"] == "running"  # type: ignore[index]


def test_totals_count_runs_rounds_refusals_by_reason_and_late_results(store: FederationStore) -> None:
    empty = store.totals()
    assert empty == {
        "runs": {"running": 0, "promoted": 0, "published": 0, "rejected": 0, "failed": 0},
        "rounds": {"completed": 0, "short": 0},
        "refused": {},
        "late": 0,
    }
    first = store.start_run(strategy="fedavg", rounds=2, base_version=1)
    store.record_round(
        first, make_tally(1, refused={"site-c": "signature: bad key"}, late=["site-d"]), state="completed"
    )
    store.record_round(
        first,
        make_tally(2, refused={"site-c": "signature", "site-d": "stale_version: 3, serving 4"}),
        state="short",
    )
    store.finish_run(first, state="rejected", gate={"passed": False})
    second = store.start_run(strategy="median", rounds=1, base_version=1)
    store.record_round(
        second,
        make_tally(1, refused={"site-e": "Too-Large 9 MB"}, late=["site-c", "site-d"]),
        state="completed",
    )
    store.start_run(strategy="fedavg", rounds=1, base_version=1)
    assert store.totals() == {
        "runs": {"running": 2, "promoted": 0, "published": 0, "rejected": 1, "failed": 0},
        "rounds": {"completed": 2, "short": 1},
        "refused": {"signature": 2, "stale_version": 1, "too_large": 1},
        "late": 3,
    }


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("signature", "signature"),
        ("signature: bad key", "signature"),
        ("Stale-Version 3", "stale_version"),
        ("  norm  too big", "norm"),
        ("", "other"),
        ("3 bytes", "other"),
        ("x" * 41, "other"),
    ],
)
def test_a_refusal_reason_becomes_a_short_label(reason: Any, code: str) -> None:
    assert reason_code(reason) == code
