"""Prometheus metric families read from a tier's :class:`~.counters.Counters` at scrape time.

The serving code keeps counting in plain counters (``requests``, ``answered_gateway``,
``rejected_decrypt``, …); a tier's collector turns them into families with labels through
an ordered table of :class:`CounterRule`: the first rule whose pattern matches a key takes
it, the pattern's named groups become labels. A key no rule matches still shows, as
``<prefix>_events_total{event="<key>"}``, so a counter added later is never lost from the
metrics. Stage histograms come from :meth:`~.counters.Counters.latencies`.

Only the gateway and the cloud import this module: ``prometheus_client`` is in their
extras, not in a device's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgecascade.device_sdk.counters import Latency
from edgecascade.device_sdk.errors import DependencyError

try:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise DependencyError("prometheus-client", "gateway") from exc


@dataclass(frozen=True)
class CounterRule:
    """Counter keys matching ``pattern`` (whole key) feed the counter family ``name``.

    Named groups of the pattern and the fixed ``labels`` label the sample; every rule of
    one family must give the same label names.
    """

    pattern: str
    name: str  # without the ``_total`` suffix Prometheus counters end with
    help: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def match(self, key: str) -> dict[str, str] | None:
        """The labels of ``key`` under this rule, or None when it does not match."""
        found = self._regex.fullmatch(key)  # type: ignore[attr-defined]
        if found is None:
            return None
        return {**{k: v for k, v in found.groupdict().items() if v is not None}, **self.labels}


def counter_families(prefix: str, counts: Mapping[str, int], rules: Sequence[CounterRule]) -> list[Metric]:
    """Counter families of ``counts`` by ``rules``; unmatched keys as ``<prefix>_events_total{event}``."""
    fallback = CounterRule(r"(?P<event>.+)", f"{prefix}_events", "Events counted by name (no other family)")
    helps: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for key, value in sorted(counts.items()):
        for rule in (*rules, fallback):
            labels = rule.match(key)
            if labels is not None:
                helps[rule.name] = rule.help
                sample = (rule.name, tuple(sorted(labels.items())))
                samples[sample] = samples.get(sample, 0) + value  # two keys may add up to one sample
                break
    families: dict[str, CounterMetricFamily] = {}
    for (name, pairs), value in samples.items():
        family = families.get(name)
        if family is None:
            family = families[name] = CounterMetricFamily(name, helps[name], labels=[k for k, _ in pairs])
        family.add_metric([v for _, v in pairs], value)
    return list(families.values())


def histogram_family(name: str, help: str, latencies: Mapping[str, Latency], label: str = "stage") -> Metric:
    """One histogram family of seconds, a series per stage (``le`` buckets, ``_sum``, ``_count``)."""
    family = HistogramMetricFamily(name, help, labels=[label], unit="seconds")
    for stage, latency in sorted(latencies.items()):
        cumulative = latency.cumulative()
        buckets = [(_bound(b), n) for b, n in zip(latency.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        family.add_metric([stage], buckets, latency.total)
    return family


def _bound(value: float) -> str:
    return repr(float(value))
