from __future__ import annotations

import pytest

from edgecascade.tools.report import Record, build_report, format_report


def _record(i: int, tier: str, correct: bool, latency: float, up: int = 0) -> Record:
    return Record(i, 1, 1 if correct else 2, tier, False, latency, 0 if tier == "device" else 100, up)


def test_report_shares_accuracy_bytes_and_latency() -> None:
    records = [
        _record(0, "device", True, 1.0),
        _record(1, "device", False, 3.0),
        _record(2, "cloud", True, 10.0, 60),
    ]
    report = build_report(records, device_only=0.5, cloud_only=0.9)
    assert report["n"] == 3
    assert report["accuracy"]["cascade"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["share"] == {
        "device": pytest.approx(2 / 3, abs=1e-6),
        "cloud": pytest.approx(1 / 3, abs=1e-6),
    }
    assert report["bytes_per_input"] == {
        "device_gateway": pytest.approx(33.333, abs=1e-3),
        "gateway_cloud": 20.0,
    }
    assert report["latency_ms"]["device"]["p50"] == 2.0
    assert "cloud" in format_report(report)


def test_empty_report_is_refused() -> None:
    with pytest.raises(ValueError):
        build_report([], device_only=0, cloud_only=0)
