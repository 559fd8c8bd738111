"""``edgecascade bench cloud``: both servers started as in production and loaded the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecascade.tools import cli

pytestmark = pytest.mark.integration


def test_both_servers_answer_every_request_and_the_report_says_how_fast(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "bench-cloud.json"
    argv = ["bench", "cloud", "--model", str(tiny_bundle), "--report", str(report_path)]
    argv += ["--seconds", "1", "--clients", "2", "--n", "32", "--workers", "1", "--threads", "2"]
    assert cli.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert (report["clients"], report["envelopes"], report["seconds"]) == (2, 32, 1.0)
    assert list(report["servers"]) == ["werkzeug", "gunicorn"]
    for kind, result in report["servers"].items():
        assert result["requests"] > 0 and result["errors"] == 0, (kind, result)
        assert result["exit_code"] == 0, kind  # stopped by SIGTERM, cleanly
        assert 0 < result["p50_ms"] <= result["p99_ms"]
        assert result["requests_per_s"] == pytest.approx(result["requests"] / 1.0, abs=0.1)
    assert report["servers"]["gunicorn"]["workers"] == 1
    rates = {kind: result["requests_per_s"] for kind, result in report["servers"].items()}
    assert report["speedup"] == pytest.approx(rates["gunicorn"] / rates["werkzeug"], abs=0.01)
    table = capsys.readouterr().out
    assert "gunicorn (1×2)" in table and f"report written to {report_path}" in table


def test_the_cloud_requests_of_either_mode_carry_what_the_gateway_forwards(
    tiny_bundle: Path, tiny_models_bundle: Path, fmnist
) -> None:
    from edgecascade.device_sdk import wire
    from edgecascade.device_sdk.model.bundle import load_bundle
    from edgecascade.device_sdk.wire import codec
    from edgecascade.tools.bench_cloud import cloud_requests

    for path in (tiny_bundle, tiny_models_bundle):
        manifest = load_bundle(path).manifest
        bodies = cloud_requests(load_bundle(path), fmnist.x_test[:4])
        envelope = wire.envelope_from_bytes(bodies[0])
        tensor = codec.decode_features(envelope.body, manifest.partition("gateway").encoding)
        assert len(bodies) == 4 and tensor.shape == manifest.partition("cloud").input.shape
