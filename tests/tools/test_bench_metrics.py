"""The metrics-overhead benchmark on the tiny bundle: both paths timed with and without histograms."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.tools.bench_metrics import Untimed, bench_metrics, format_metrics_report


def test_both_paths_are_timed_with_and_without_histograms(tiny_bundle: Path, fmnist) -> None:
    report = bench_metrics(load_bundle(tiny_bundle), fmnist.x_test[:64], runs=2, batch=32)
    assert report["observe_ns"] > 0
    for name in ("gateway", "cloud"):
        part = report[name]
        assert len(part["runs_with"]) == len(part["runs_without"]) == 2
        assert part["us_per_request_with"] > 0 and part["us_per_request_without"] > 0
        difference = part["us_per_request_with"] - part["us_per_request_without"]
        assert part["overhead_us"] == pytest.approx(difference, abs=0.011)  # each rounded to 0.01
        assert part["scrape_us"] > 0 and part["scrape_bytes"] > 1000
    assert report["gateway"]["observations_per_request"] == 2.0  # decode and inference
    assert report["cloud"]["observations_per_request"] == 3.0  # decode, inference and total
    text = format_metrics_report(report)
    assert "gateway request path" in text and "cloud POST /v1/infer" in text


def test_untimed_counters_count_but_keep_no_histograms() -> None:
    counters = Untimed()
    counters.add("requests")
    counters.observe("decode", 0.01)
    with counters.timed("total"):
        pass
    assert counters["requests"] == 1 and counters.latencies() == {}
