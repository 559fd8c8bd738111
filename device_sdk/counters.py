"""Event counters and latency histograms of a serving tier, safe to update from several threads.

:class:`Counters` is a ``Counter[str]`` of events (``requests``, ``answered_gateway``,
``rejected_decrypt``, …), so reports and tests read it like a dict; beside the counts it
keeps one fixed-bucket histogram of seconds per named stage (:meth:`Counters.observe`,
:meth:`Counters.timed`). The gateway's and the cloud's Prometheus collectors read both at
scrape time (:meth:`Counters.snapshot`, :meth:`Counters.latencies`), so every number is
kept once, in the object the serving code already updates, and nothing here needs
``prometheus_client`` (a device never installs it).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

#: upper bounds (seconds) of the latency buckets: 100 µs to 10 s, as a Prometheus histogram's ``le``
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class Latency:
    """One stage's histogram at one moment: counts per bucket (the last is above every bound)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # len(bounds) + 1, not cumulative
    total: float  # seconds, summed over every observation
    count: int

    def cumulative(self) -> list[int]:
        """Observations at or below each bound, then all of them (Prometheus ``_bucket`` values)."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out

    def quantile(self, q: float) -> float:
        """An upper estimate of the ``q`` quantile: the bound of the bucket it falls in (0 if empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        for bound, seen in zip((*self.bounds, float("inf")), self.cumulative(), strict=True):
            if seen >= rank:
                return bound if bound != float("inf") else self.bounds[-1]
        return self.bounds[-1]


class _Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0
        self.count = 0


class Counters(Counter[str]):
    """Event counters of a serving tier, plus per-stage latency histograms; thread-safe."""

    def __init__(self, *, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._bounds = tuple(sorted(buckets))
        self._histograms: dict[str, _Histogram] = {}

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self[key] += n

    def observe(self, stage: str, seconds: float, n: int = 1) -> None:
        """Count a duration of ``stage`` (seconds) in its histogram, ``n`` times (a batch's requests
        each waited for the whole batch)."""
        slot = bisect.bisect_left(self._bounds, seconds)  # the first bound >= seconds: Prometheus' le
        with self._lock:
            histogram = self._histograms.get(stage)
            if histogram is None:
                histogram = self._histograms[stage] = _Histogram(len(self._bounds) + 1)
            histogram.counts[slot] += n
            histogram.total += seconds * n
            histogram.count += n

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time the block as one observation of ``stage`` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - started)

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of the counts (``dict(counters)`` may race a new key being added)."""
        with self._lock:
            return dict(self)

    def latencies(self) -> dict[str, Latency]:
        """A consistent copy of every stage's histogram."""
        with self._lock:
            return {
                stage: Latency(self._bounds, tuple(h.counts), h.total, h.count)
                for stage, h in self._histograms.items()
            }
