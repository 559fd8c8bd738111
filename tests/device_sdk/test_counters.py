"""Counters with latency histograms, and the Prometheus families a tier's collector makes of them."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgecascade.device_sdk.counters import LATENCY_BUCKETS, Counters
from edgecascade.device_sdk.metrics import CounterRule, counter_families, histogram_family


def test_counters_stay_a_plain_mapping_of_counts() -> None:
    counters = Counters()
    counters.add("requests")
    counters.add("bytes_in", 40)
    counters.observe("decode", 0.001)
    assert dict(counters) == {"requests": 1, "bytes_in": 40}  # reports read them like this
    assert counters.snapshot() == {"requests": 1, "bytes_in": 40}


def test_histogram_buckets_follow_prometheus_le() -> None:
    counters = Counters(buckets=(0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):
        counters.observe("inference", seconds)
    latency = counters.latencies()["inference"]
    assert latency.counts == (2, 1, 1, 1)  # a value equal to a bound is in that bound's bucket
    assert latency.cumulative() == [2, 3, 4, 5]
    assert latency.count == 5
    assert latency.total == pytest.approx(3.0535)
    assert latency.quantile(0.5) == 0.01
    assert latency.quantile(0.99) == 0.1  # above every bound: the largest bound, as an estimate


def test_timed_counts_a_block_even_when_it_raises() -> None:
    counters = Counters()
    with pytest.raises(KeyError), counters.timed("forward"):
        raise KeyError("cloud")
    with counters.timed("forward"):
        pass
    assert counters.latencies()["forward"].count == 2
    assert counters.latencies()["forward"].bounds == LATENCY_BUCKETS


def test_counters_are_exact_under_threads() -> None:
    counters = Counters()

    def work() -> None:
        for _ in range(2000):
            counters.add("requests")
            counters.observe("total", 0.0001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters["requests"] == 8000
    assert counters.latencies()["total"].count == 8000


RULES = (
    CounterRule("requests", "t_requests", "Requests"),
    CounterRule(r"answered_(?P<tier>\w+?)_degraded", "t_answers", "Answers", {"degraded": "true"}),
    CounterRule(r"answered_(?P<tier>\w+)", "t_answers", "Answers", {"degraded": "false"}),
    CounterRule("bytes_in", "t_bytes", "Bytes", {"link": "device"}),
    CounterRule("hx_bytes_in", "t_bytes", "Bytes", {"link": "device"}),
)


def _scrape(*families: object) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            yield from families

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_counter_rules_label_samples_and_nothing_is_dropped() -> None:
    counts = {
        "requests": 10,
        "answered_gateway": 6,
        "answered_gateway_degraded": 1,
        "answered_gateway_cache": 2,
        "bytes_in": 300,
        "hx_bytes_in": 50,
        "something_new": 4,
    }
    scraped = _scrape(*counter_families("t", counts, RULES))
    assert scraped["t_requests_total"] == {(): 10}
    assert scraped["t_answers_total"] == {
        (("degraded", "false"), ("tier", "gateway")): 6,
        (("degraded", "true"), ("tier", "gateway")): 1,
        (("degraded", "false"), ("tier", "gateway_cache")): 2,
    }
    assert scraped["t_bytes_total"] == {(("link", "device"),): 350}  # two keys, one sample
    assert scraped["t_events_total"] == {(("event", "something_new"),): 4}  # a key no rule names


def test_histogram_family_is_a_prometheus_histogram() -> None:
    counters = Counters(buckets=(0.01, 0.1))
    counters.observe("decode", 0.005)
    counters.observe("decode", 0.5)
    scraped = _scrape(histogram_family("t_stage_seconds", "Stages", counters.latencies()))
    buckets = scraped["t_stage_seconds_bucket"]
    assert buckets[(("le", "0.01"), ("stage", "decode"))] == 1
    assert buckets[(("le", "0.1"), ("stage", "decode"))] == 1
    assert buckets[(("le", "+Inf"), ("stage", "decode"))] == 2
    assert scraped["t_stage_seconds_count"] == {(("stage", "decode"),): 2}
    assert scraped["t_stage_seconds_sum"][(("stage", "decode"),)] == pytest.approx(0.505)
