"""The demo command end to end: real daemons as processes, report and predictions files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecascade.tools.cli import main
from edgecascade.tools.report import Record, build_report

pytestmark = pytest.mark.integration


def test_demo_reports_what_its_predictions_say(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    report_path, predictions_path = tmp_path / "report.json", tmp_path / "predictions.jsonl"
    code = main(
        [
            "demo",
            "--model",
            str(tiny_bundle),
            "--limit",
            "300",
            "--no-progress",
            "--caches",
            "--report",
            str(report_path),
            "--predictions",
            str(predictions_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "reusing model" in out and "cloud-only" in out
    report = json.loads(report_path.read_text())
    records = [Record(**json.loads(line)) for line in predictions_path.read_text().splitlines()]
    assert report["n"] == len(records) == 300
    assert sum(report["share"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(report["share"]) <= {"device", "device_cache", "gateway", "gateway_cache", "cloud"}
    assert "device" in report["share"] and "cloud" in report["share"]
    assert report["degraded"] == 0
    assert report["exit_codes"] == {"gateway": 0, "cloud": 0}  # both daemons stopped cleanly on SIGTERM
    recomputed = build_report(
        records, device_only=report["accuracy"]["device_only"], cloud_only=report["accuracy"]["cloud_only"]
    )
    for key in ("accuracy", "share", "bytes_per_input", "latency_ms"):
        assert recomputed[key] == report[key]
    for tier in report["share"]:
        assert 0 < report["latency_ms"][tier]["p50"] <= report["latency_ms"][tier]["p95"]
    assert report["bytes_per_input"]["device_gateway"] > 0


def test_daemons_exit_with_documented_codes_on_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text("[gateway]\nmax_batch = 0\n")
    for module, config, expected in (
        ("edgecascade.edge_gateway", bad, 2),
        ("edgecascade.edge_gateway", None, 3),  # default bundle path does not exist here
        ("edgecascade.cloud_service", None, 3),
    ):
        args = [sys.executable, "-m", module] + (["--config", str(config)] if config else [])
        result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert result.returncode == expected, (module, result.stderr)
        assert "Traceback" not in result.stderr
