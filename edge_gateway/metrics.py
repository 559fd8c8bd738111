"""The gateway's Prometheus metrics, read at scrape time from the counters it already keeps.

Nothing is counted twice: :class:`GatewayCollector` reads the service's
:class:`~edgecascade.device_sdk.counters.Counters` (the same the shutdown log line and the
reports print), the cloud link's, the outbox's and the uploader's, the neural cache's own
statistics and a :class:`~.health.HealthReport`, and turns them into families named
``edgecascade_gateway_*`` (listed in the operations page of the documentation). Each
daemon has its own :class:`prometheus_client.CollectorRegistry` (:func:`gateway_registry`),
so several gateways in one process never share or clash over metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.metrics import CounterRule, counter_families, histogram_family
from edgecascade.edge_gateway.health import HealthReport
from edgecascade.edge_gateway.service import GatewayService

PREFIX = "edgecascade_gateway"

_ANSWERS = "Answers sent, by the tier that gave them"
_REFUSED = "Messages refused, by kind and reason"
_BYTES = "Bytes through the gateway's links"

#: the service's counters (with the daemon's and the relay's, which share them) as families
RULES: tuple[CounterRule, ...] = (
    CounterRule("requests", f"{PREFIX}_requests", "Inference requests taken off the broker"),
    CounterRule(
        r"requests_v(?P<version>\d+)", f"{PREFIX}_requests_by_version", "Requests, by the model version named"
    ),
    CounterRule(r"answered_(?P<tier>\w+?)_degraded", f"{PREFIX}_answers", _ANSWERS, {"degraded": "true"}),
    CounterRule(r"answered_(?P<tier>\w+)", f"{PREFIX}_answers", _ANSWERS, {"degraded": "false"}),
    CounterRule("forwarded", f"{PREFIX}_forwarded", "Requests forwarded to the cloud"),
    CounterRule(
        r"cloud_failed_(?P<error>\w+)", f"{PREFIX}_cloud_failures", "Forwards the cloud did not answer"
    ),
    CounterRule(r"hx_rejected_batch_(?P<reason>\w+)", f"{PREFIX}_rejections", _REFUSED, {"kind": "upload"}),
    CounterRule(
        r"hx_(?:rejected|dropped)_(?P<reason>bad_topic|queue_full)",
        f"{PREFIX}_rejections",
        _REFUSED,
        {"kind": "upload"},
    ),
    CounterRule(
        r"(?:rejected|dropped)_(?P<reason>\w+)", f"{PREFIX}_rejections", _REFUSED, {"kind": "request"}
    ),
    CounterRule("bytes_in", f"{PREFIX}_link_bytes", _BYTES, {"link": "device", "direction": "in"}),
    CounterRule("hx_bytes_in", f"{PREFIX}_link_bytes", _BYTES, {"link": "device", "direction": "in"}),
    CounterRule("bytes_out", f"{PREFIX}_link_bytes", _BYTES, {"link": "device", "direction": "out"}),
    CounterRule("hx_batches", f"{PREFIX}_upload_batches", "Hard-example upload batches from devices"),
    CounterRule(
        r"hx_(?P<outcome>accepted|duplicates|rejected|deferred_full)",
        f"{PREFIX}_relayed_hard_examples",
        "Hard examples in devices' uploads, by what the relay did with them",
    ),
    CounterRule(
        r"hard_examples_(?P<outcome>kept|not_stored)",
        f"{PREFIX}_degraded_hard_examples",
        "Degraded answers' inputs kept as hard examples (or not)",
    ),
    CounterRule(
        r"(?P<kind>batch_failed|forward_failed|hx_failed|reply_seal_failed|hx_reply_seal_failed)",
        f"{PREFIX}_errors",
        "Internal failures, by kind",
    ),
    CounterRule("model_swaps", f"{PREFIX}_model_swaps", "Model versions swapped in"),
)

#: the cloud link's counters; its byte counts are the cloud side of the link family
CLOUD_RULES: tuple[CounterRule, ...] = (
    CounterRule(r"bytes_(?P<direction>in|out)", f"{PREFIX}_link_bytes", _BYTES, {"link": "cloud"}),
    CounterRule("unreachable", f"{PREFIX}_cloud_unreachable", "Calls to the cloud that did not reach it"),
)


class GatewayCollector(Collector):
    """Reads one gateway's counters and health into Prometheus families at each scrape."""

    def __init__(
        self,
        gateway_id: str,
        service: GatewayService,
        health: Callable[[], HealthReport],
        components: Mapping[str, Counters] | None = None,
    ) -> None:
        """``components`` are other counters to show by name (``outbox``, ``uploader``)."""
        self.gateway_id = gateway_id
        self.service = service
        self.health = health
        self.components = dict(components or {})

    def collect(self) -> Iterator[Metric]:
        counts = self.service.counters.snapshot()
        cloud = getattr(self.service.cloud, "counters", None)
        cloud_counts = cloud.snapshot() if isinstance(cloud, Counters) else {}
        yield from _merge(
            counter_families(PREFIX, counts, RULES), counter_families(PREFIX, cloud_counts, CLOUD_RULES)
        )
        yield histogram_family(
            f"{PREFIX}_stage_seconds",
            "Time per stage of a request at the gateway",
            self.service.counters.latencies(),
        )
        for name, counters in self.components.items():
            family = CounterMetricFamily(
                f"{PREFIX}_{name}_events", f"Events of the gateway's {name}", labels=["event"]
            )
            for key, value in sorted(counters.snapshot().items()):
                family.add_metric([key], value)
            yield family
        yield from self._cache()
        yield from self._health()

    def _cache(self) -> Iterator[Metric]:
        cache = self.service.cache
        if cache is None:
            return
        stats = cache.metrics()
        for key in ("lookups", "hits", "insertions", "evictions"):
            yield CounterMetricFamily(
                f"{PREFIX}_cache_{key}", f"Gateway cache {key} (this model version's cache)", value=stats[key]
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_cache_entries", "Entries in the gateway cache", value=stats["size"]
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_lookup_seconds",
            "Time spent in gateway cache lookups",
            value=stats["lookup_time_us_total"] / 1e6,
        )

    def _health(self) -> Iterator[Metric]:
        report = self.health()
        info = InfoMetricFamily(f"{PREFIX}_model", "The model the gateway serves", labels=["gateway"])
        info.add_metric([self.gateway_id], {"model": report.model, "version": str(report.version)})
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_model_version", "Model version served to new requests", value=report.version
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_up", "1 when connected to the broker and serving", value=int(report.healthy)
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_connected", "1 while connected to the broker", value=int(report.connected)
        )
        if report.cloud_reachable is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_cloud_reachable",
                "1 when the last call reached the cloud",
                value=int(report.cloud_reachable),
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting for the worker", value=report.queue_depth
        )
        if report.outbox_pending is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_outbox_depth", "Hard examples waiting to be uploaded", value=report.outbox_pending
            )


def _merge(*groups: list[Metric]) -> list[Metric]:
    """One family per name: samples of families named alike (the device and cloud sides of a link) joined."""
    merged: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family
    return list(merged.values())


def gateway_registry(collector: GatewayCollector) -> CollectorRegistry:
    """A registry of its own for one gateway daemon (the process-wide default one is never used)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
