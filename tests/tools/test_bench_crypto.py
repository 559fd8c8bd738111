"""Smoke test of ``edgecascade bench crypto``: sizes are exact, times are positive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecascade.device_sdk.wire.crypto import OVERHEAD
from edgecascade.tools.bench_crypto import PAYLOADS, bench_crypto, format_crypto_report
from edgecascade.tools.cli import main


def test_bench_crypto_reports_bytes_and_times() -> None:
    report = bench_crypto(n=200)
    assert set(report["requests"]) == set(PAYLOADS)
    rows = [*report["requests"].values(), report["reply_result_10_classes"]]
    for row in rows:
        assert row["added_bytes"] == OVERHEAD == 30
        assert row["sealed_bytes"] == row["plain_bytes"] + 30
        assert row["plain_us"] > 0 and row["sealed_us"] > 0
    assert report["requests"]["float32_7x7x16"]["body_bytes"] == 2 + 3 * 4 + 7 * 7 * 16 * 4
    table = format_crypto_report(report)
    assert len(table.splitlines()) == len(rows) + 2


def test_bench_crypto_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "crypto.json"
    assert main(["bench", "crypto", "--n", "100", "--report", str(path)]) == 0
    assert json.loads(path.read_text())["n"] == 100
    assert "sealed µs" in capsys.readouterr().out
