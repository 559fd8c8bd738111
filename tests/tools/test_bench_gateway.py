"""The gateway request-path benchmark on the tiny bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.tools.bench_gateway import bench_gateway, format_gateway_report


@pytest.mark.parametrize("cache", [False, True])
def test_every_request_is_answered_and_timed(tiny_bundle: Path, fmnist, cache: bool) -> None:
    report = bench_gateway(load_bundle(tiny_bundle), fmnist.x_test[:96], batch=32, runs=2, cache=cache)
    assert report["n"] == 96 and len(report["us_per_request_runs"]) == 2
    assert (
        min(report["us_per_request_runs"]) <= report["us_per_request"] <= max(report["us_per_request_runs"])
    )
    assert report["us_per_request"] > 0
    assert sum(report["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["share"].get("cloud", 0.0) == pytest.approx(report["forwarded_share"], abs=1e-3)
    assert 0 < report["forwarded_share"] < 1  # the tiny bundle sends a quarter on to the cloud
    text = format_gateway_report(report)
    assert f"{report['us_per_request']:.1f} µs per request" in text
    assert ("cache on" if cache else "cache off") in text


def test_a_models_mode_bundle_is_measured_on_the_inputs_its_devices_send(
    tiny_models_bundle: Path, fmnist
) -> None:
    report = bench_gateway(load_bundle(tiny_models_bundle), fmnist.x_test[:64], batch=32, runs=1)
    assert report["n"] == 64 and report["us_per_request"] > 0
    assert sum(report["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert 0 < report["forwarded_share"] < 1
