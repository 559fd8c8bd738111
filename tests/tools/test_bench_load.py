"""The load benchmark, very short: real broker, echo responder and gateway daemon processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.tools.bench_load import best_step, bundle_with_gateway_threshold
from edgecascade.tools.cli import main

STEP_KEYS = {"offered_per_s", "sent_per_s", "answers_per_s", "p50_ms", "p99_ms", "lost", "errors"}


@pytest.mark.integration
def test_low_rates_are_all_answered_by_the_gateway_itself(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "load.json"
    code = main(
        [
            "bench",
            "load",
            "--model",
            str(tiny_bundle),
            "--report",
            str(path),
            "--rates",
            "40,80",
            "--seconds",
            "1",
            "--devices",
            "3",
            "--processes",
            "1",
            "--drain",
            "1",
            "--scenarios",
            "gateway",
        ]
    )
    assert code == 0
    report = json.loads(path.read_text())
    assert "forward" not in report
    for name in ("echo", "gateway"):
        steps = report[name]["steps"]
        assert [s["offered_per_s"] for s in steps] == [40, 80]
        for step in steps:
            assert step.keys() >= STEP_KEYS
            assert step["lost"] == 0 and step["errors"] == 0  # every request answered, none refused
            assert step["answers_per_s"] > 0.8 * step["offered_per_s"]
            assert 0 < step["p50_ms"] <= step["p99_ms"]
    assert set(report["gateway"]["steps"][0]["cpu_percent"]) == {"gateway", "broker", "cloud", "generators"}
    # the gateway's own counters: every request (120) answered at the gateway, none forwarded
    counters = report["gateway"]["gateway_counters"]
    assert counters["answered_gateway"] == counters["requests"] == 120
    assert "forwarded" not in counters
    assert report["lost"] == 0
    assert report["offloads_per_s"] > 0 and report["ceiling_echo_per_s"] > 0
    assert report["ratio_to_ceiling"] == pytest.approx(
        report["offloads_per_s"] / report["ceiling_echo_per_s"], abs=1e-3
    )
    assert report["p50_ms"] <= report["p99_ms"] <= report["p99_limit_ms"]
    assert report["cpu_percent"] >= 0 and report["rss_mb"] > 10
    assert "offloads/s at p99" in capsys.readouterr().out


def test_the_bundle_copy_changes_only_the_gateway_exit(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = load_bundle(bundle_with_gateway_threshold(tiny_bundle, 2.0, tmp_path / "b")).manifest
    original = load_bundle(tiny_bundle).manifest
    assert copy.partition("gateway").exit.threshold == 2.0
    assert copy.partition("device").exit == original.partition("device").exit
    assert copy.version == original.version


def test_the_best_step_is_the_fastest_within_the_latency_limit() -> None:
    steps = [
        {"answers_per_s": 100.0, "p99_ms": 5.0, "lost": 0},
        {"answers_per_s": 400.0, "p99_ms": 20.0, "lost": 0},
        {"answers_per_s": 600.0, "p99_ms": 80.0, "lost": 0},  # too slow
        {"answers_per_s": 700.0, "p99_ms": 30.0, "lost": 3},  # lost requests
        {"answers_per_s": 0.0, "p99_ms": None, "lost": 10},  # nothing answered
    ]
    assert best_step(steps, 50.0) == steps[1]
    assert best_step(steps[2:], 50.0) is None
