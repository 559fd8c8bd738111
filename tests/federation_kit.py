"""Test kit for collaborative training's records: a round's tally as the server side writes it."""

from __future__ import annotations

from typing import Any

from edgecascade.federation.rounds import RoundTally


def make_tally(
    server_round: int,
    *,
    accepted: dict[str, int] | None = None,
    refused: dict[str, str] | None = None,
    failed: dict[str, str] | None = None,
    late: list[str] | None = None,
    seconds: float = 4.5,
) -> dict[str, Any]:
    """``RoundTally.to_json()`` of a round in which every site named was sampled and ``late`` did
    not answer; each accepted site sent 50,000 bytes, and each sampled site was sent 200,000."""
    accepted = {"site-a": 120, "site-b": 80} if accepted is None else accepted
    refused, failed, late = refused or {}, failed or {}, late or []
    tally = RoundTally(server_round, sorted({*accepted, *refused, *failed, *late}), bytes_out=200_000)
    for site, examples in accepted.items():
        tally.accept(site, examples, 50_000)
    for site, reason in refused.items():
        tally.refuse(site, reason)
    for site, error in failed.items():
        tally.fail(site, error)
    tally.started, tally.seconds = 1_800_000_000.0, seconds
    return tally.to_json()
