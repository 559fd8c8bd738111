"""Round bookkeeping: the quorum rule, the outcome of every sampled site, and round states."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.federation.rounds import RoundRule, RoundTally, bytes_per_site, quorum

SITES = ["lab-a", "lab-b", "lab-c", "lab-d", "lab-e"]


def rule(timeout: float = 60.0, min_sites: int = 2, min_fraction: float = 0.5) -> RoundRule:
    return RoundRule(timeout=timeout, min_sites=min_sites, min_fraction=min_fraction)


def tally() -> RoundTally:
    return RoundTally(server_round=3, sampled=list(SITES), bytes_out=1000, started=1_700_000_000.0)


def test_a_bad_rule_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RoundRule(timeout=0, min_sites=0, min_fraction=1.5)
    assert len(info.value.problems) == 3
    bad: dict[str, Any]
    for bad in (
        {"timeout": -1.0},
        {"timeout": math.inf},
        {"timeout": math.nan},
        {"min_sites": 0},
        {"min_sites": 1.5},
        {"min_sites": True},
        {"min_fraction": 0.0},
        {"min_fraction": 1.01},
        {"min_fraction": math.nan},
    ):
        with pytest.raises(ConfigError):
            rule(**bad)
    assert rule(min_fraction=1.0).min_fraction == 1.0


@pytest.mark.parametrize(
    ("min_sites", "min_fraction", "connected", "expected"),
    [
        (2, 0.5, 5, 3),  # ceil(2.5)
        (2, 0.5, 4, 2),
        (4, 0.5, 5, 4),  # the floor wins
        (3, 0.5, 2, 3),  # more than are connected: every round is short
        (1, 0.1, 0, 1),
        (1, 0.07, 100, 7),  # 0.07 * 100 is 7.000000000000001 in binary: ceil would say 8
        (1, 0.14, 50, 7),
        (1, 1.0, 9, 9),
        (1, 0.01, 101, 2),
    ],
)
def test_quorum(min_sites: int, min_fraction: float, connected: int, expected: int) -> None:
    assert quorum(rule(min_sites=min_sites, min_fraction=min_fraction), connected) == expected


@given(
    min_sites=st.integers(1, 50),
    percent=st.integers(1, 100),
    connected=st.integers(0, 1000),
)
def test_quorum_is_the_smallest_count_that_meets_both_rules(
    min_sites: int, percent: int, connected: int
) -> None:
    q = quorum(rule(min_sites=min_sites, min_fraction=percent / 100), connected)
    assert q >= min_sites and q * 100 >= percent * connected
    assert q == min_sites or (q - 1) * 100 < percent * connected


def test_quorum_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError):
        quorum(rule(), -1)


def test_every_sampled_site_ends_accepted_refused_failed_or_late() -> None:
    t = tally()
    t.accept("lab-a", examples=120, nbytes=4000)
    t.refuse("lab-b", "signature")
    t.fail("lab-c", "ValueError: no local data")
    assert t.late == ["lab-d", "lab-e"]
    t.accept("lab-e", examples=80, nbytes=3000)
    assert t.late == ["lab-d"]
    assert t.counters() == {"sampled": 5, "accepted": 2, "failed": 1, "late": 1, "refused_signature": 1}
    assert t.state(rule(min_sites=2, min_fraction=0.4), connected=5) == "completed"
    assert t.state(rule(min_sites=2, min_fraction=0.5), connected=5) == "short"  # needs 3
    assert bytes_per_site(t) == (4000 + 3000 + 2 * 1000) / 2


def test_a_round_where_every_site_is_late_or_refused_is_short() -> None:
    t = tally()
    t.refuse("lab-a", "version")
    t.refuse("lab-b", "version")
    t.refuse("lab-c", "shape")
    assert t.state(rule(min_sites=1, min_fraction=0.01), connected=5) == "short"
    assert t.counters()["refused_version"] == 2 and t.counters()["refused_shape"] == 1
    assert t.counters()["late"] == 2
    assert bytes_per_site(t) == 0.0


def test_one_outcome_per_sampled_site() -> None:
    t = tally()
    t.accept("lab-a", examples=10, nbytes=100)
    for record in (
        lambda: t.accept("lab-a", examples=10, nbytes=100),
        lambda: t.refuse("lab-a", "signature"),
        lambda: t.fail("lab-a", "boom"),
        lambda: t.accept("lab-z", examples=10, nbytes=100),
        lambda: t.accept("lab-b", examples=0, nbytes=100),
    ):
        with pytest.raises(ValueError):
            record()
    assert t.accepted == {"lab-a": 10} and t.late == SITES[1:]


def test_to_json_is_plain_and_reads_back() -> None:
    t = tally()
    t.accept("lab-a", examples=120, nbytes=4000)
    t.refuse("lab-b", "not_finite")
    t.fail("lab-c", "RuntimeError: out of memory")
    t.seconds = 12.345678
    data = json.loads(json.dumps(t.to_json()))
    assert data["seconds"] == 12.346
    assert data["late"] == ["lab-d", "lab-e"]
    assert data["accepted"] == {"lab-a": 120} and data["bytes_in"] == {"lab-a": 4000}
    back = RoundTally.from_json(data)
    assert back.late == t.late and back.accepted == t.accepted and back.refused == t.refused
    assert back.failed == t.failed and back.bytes_out == 1000 and back.started == t.started
    assert back.seconds == 12.346
