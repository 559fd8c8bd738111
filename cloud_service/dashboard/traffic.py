"""The fleet's traffic over time from gateways' heartbeats: exit mix and latency, without I/O.

Heartbeats carry cumulative counters, so the answers of an interval are the difference
between a gateway's consecutive heartbeats; a heartbeat with a new ``started_at`` or a
counter that went down (a restarted gateway) counts from zero. Differences are summed
over the fleet in time buckets, and each bucket's share of answers per answering tier is
what the dashboard stacks. Latency percentiles cannot be merged exactly across gateways:
a bucket's p50 is the request-weighted mean of the gateways' p50s, and its p90 and p99
are the worst gateway's (an upper bound, which is what an operator watches).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from edgecascade.cloud_service.dashboard.fleet import HeartbeatRow
from edgecascade.device_sdk.wire.heartbeat import Heartbeat

TIER_ORDER = ("gateway", "gateway_cache", "cloud", "gateway_degraded", "gateway_cache_degraded")
"""How tiers stack, bottom up: answered at the gateway, then by the cloud, then degraded."""


def answers_between(previous: Heartbeat | None, current: Heartbeat) -> dict[str, int] | None:
    """Answers per tier between two heartbeats of one gateway (None: no baseline yet)."""
    if previous is None:
        return None
    restarted = current.started_at != previous.started_at or any(
        n < previous.answers.get(tier, 0) for tier, n in current.answers.items()
    )
    if restarted:
        return dict(current.answers)
    return {tier: n - previous.answers.get(tier, 0) for tier, n in current.answers.items()}


def bucket_seconds(rows: list[HeartbeatRow], window: float) -> float:
    """A bucket as long as the slowest gateway's interval (1 s at least, a tenth of the window at most)."""
    longest = max((r.heartbeat.interval for r in rows), default=1.0)
    return max(1.0, min(longest, window / 10))


def traffic_series(rows: list[HeartbeatRow], since: float, until: float, bucket: float) -> dict[str, Any]:
    """The exit mix and latency series of heartbeats received in ``[since, until]`` (oldest first)."""
    answers: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    latency: dict[int, dict[str, float]] = {}
    previous: dict[str, Heartbeat] = {}
    for row in rows:
        beat = row.heartbeat
        index = math.floor((row.received_at - since) / bucket)
        delta = answers_between(previous.get(row.gateway_id), beat)
        previous[row.gateway_id] = beat
        if delta is not None:
            for tier, n in delta.items():
                answers[index][tier] += n
        if beat.latency.count and beat.latency.p50 is not None:
            point = latency.setdefault(index, {"count": 0, "p50_sum": 0.0, "p90": 0.0, "p99": 0.0})
            point["count"] += beat.latency.count
            point["p50_sum"] += beat.latency.p50 * beat.latency.count
            point["p90"] = max(point["p90"], beat.latency.p90 or 0.0)
            point["p99"] = max(point["p99"], beat.latency.p99 or 0.0)
    seen = {tier for counts in answers.values() for tier in counts}
    tiers = [t for t in TIER_ORDER if t in seen] + sorted(seen - set(TIER_ORDER))
    mix = []
    for index in sorted(answers):
        counts = {t: answers[index].get(t, 0) for t in tiers}
        total = sum(counts.values())
        if total <= 0:
            continue
        mix.append(
            {
                "t": _time(since, index, bucket),
                "total": total,
                "answers": counts,
                "shares": {t: round(n / total, 4) for t, n in counts.items()},
            }
        )
    lat = [
        {
            "t": _time(since, index, bucket),
            "count": int(p["count"]),
            "p50": round(p["p50_sum"] / p["count"], 3),
            "p90": round(p["p90"], 3),
            "p99": round(p["p99"], 3),
        }
        for index, p in sorted(latency.items())
    ]
    return {
        "since": since,
        "until": until,
        "bucket_seconds": bucket,
        "tiers": tiers,
        "mix": mix,
        "latency": lat,
    }


def _time(since: float, index: int, bucket: float) -> float:
    """The end of a bucket (what the chart's x axis shows)."""
    return round(since + (index + 1) * bucket, 3)
