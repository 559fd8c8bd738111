"""``--log-format json`` on both daemons: each log line is one JSON object, from the first to the last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("daemon", ["edgecascade.edge_gateway", "edgecascade.cloud_service"])
def test_daemon_logs_json_lines(daemon: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    done = subprocess.run(
        [sys.executable, "-m", daemon, "--config", str(missing), "--log-format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2  # bad configuration
    lines = [line for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines, done.stderr
    entries = [json.loads(line) for line in lines]
    error = entries[-1]
    assert error["level"] == "ERROR" and error["logger"] == "root"
    assert str(missing) in error["message"]
    assert set(error) >= {"time", "level", "logger", "message"}


@pytest.mark.parametrize("daemon", ["edgecascade.edge_gateway", "edgecascade.cloud_service"])
def test_daemon_refuses_an_unknown_log_format(daemon: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", daemon, "--log-format", "xml"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "invalid choice: 'xml'" in done.stderr
