"""The demo command end to end: real daemons as processes, report and predictions files, --serve."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.tools.cli import main
from edgecascade.tools.demo import DEVICE_SETTINGS_FILE, SITE_FILE, prepare_site
from edgecascade.tools.report import Record, build_report

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.integration
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


@pytest.mark.integration
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


# ------------------------------------------------------------------------------- --serve
def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's output, line by line, read on a thread so waiting for one can time out."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _read_until(lines: queue.Queue[str], text: str, timeout: float) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if text in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"no {text!r} within {timeout:.0f} s; output so far:\n{''.join(seen)}")


@dataclass
class ServedDemo:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    site: Path
    report: Path
    banner: str  # the output up to "Ctrl-C to stop"

    def daemon(self, module: str) -> int:
        """The pid of the stack's process whose command line names ``module``."""
        for pid in _children(self.process.pid):
            if module in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return pid
        raise AssertionError(f"no {module} process under the demo")

    def finish(self) -> str:
        """Wait for the demo to exit; its last words."""
        self.process.wait(60)
        return _read_until(self.lines, "stack stopped", timeout=5)


@contextlib.contextmanager
def serving_demo(bundle: Path, tmp_path: Path) -> Iterator[ServedDemo]:
    """``edgecascade demo --serve`` on ``bundle``, once its stack is up; killed if still running after."""
    site, report = tmp_path / "site", tmp_path / "report.json"
    command = [sys.executable, "-m", "edgecascade.tools.cli", "demo", "--model", str(bundle), "--limit", "30"]
    command += ["--no-progress", "--serve", "--site", str(site), "--report", str(report)]
    process = subprocess.Popen(  # its own process group, as in a terminal: Ctrl-C reaches the whole group
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        lines = _lines(process)
        yield ServedDemo(process, lines, site, report, _read_until(lines, "Ctrl-C to stop", timeout=180))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.integration
@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_demo_serve_keeps_the_stack_up_for_the_device_example_until_stopped(
    tiny_bundle: Path, tmp_path: Path, stop: str
) -> None:
    with serving_demo(tiny_bundle, tmp_path) as demo:
        site = demo.site.resolve()
        assert "cloud-only" in demo.banner and f"stack is up in {site}" in demo.banner
        assert f"python examples/device_predict.py --site {site}" in demo.banner
        daemons = _children(demo.process.pid)
        assert len(daemons) == 3  # mosquitto, the cloud and the gateway

        example = [sys.executable, str(EXAMPLES / "device_predict.py"), "--site", str(demo.site), "-n", "60"]
        result = subprocess.run(example, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip().endswith("(60 inputs)") and "degraded" not in result.stdout

        if stop == "SIGTERM":
            demo.process.send_signal(signal.SIGTERM)
        else:
            os.killpg(demo.process.pid, signal.SIGINT)
        last = demo.finish()
        assert demo.process.returncode == 0, last
    expected = "SIGTERM" if stop == "SIGTERM" else "SIGINT"
    assert f"stack stopped on {expected}: gateway exit 0, cloud exit 0, broker exit 0" in last
    assert not [pid for pid in daemons if _alive(pid)]
    assert json.loads(demo.report.read_text())["exit_codes"] == {"gateway": 0, "cloud": 0, "broker": 0}


@pytest.mark.integration
def test_demo_serve_stops_the_stack_and_fails_when_a_daemon_dies(tiny_bundle: Path, tmp_path: Path) -> None:
    with serving_demo(tiny_bundle, tmp_path) as demo:
        daemons = _children(demo.process.pid)
        os.kill(demo.daemon("edgecascade.edge_gateway"), signal.SIGKILL)
        last = demo.finish()
    assert demo.process.returncode == 1
    assert "gateway exited on its own; stopping the stack" in last
    assert "stack stopped: gateway exit -9, cloud exit 0, broker exit 0" in last
    assert not [pid for pid in daemons if _alive(pid)]


def test_site_without_serve_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--site", str(tmp_path / "site")]) == 2
    assert "add --serve" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def _old_site(site: Path, port: int) -> None:
    """What an earlier ``demo --serve`` leaves behind (the parts prepare_site looks at)."""
    (site / "pki").mkdir(parents=True)
    (site / "pki" / "ca.pem").write_text("old")
    (site / SITE_FILE).write_text(
        '# written by `edgecascade demo --serve`: ...\ndevice_id = "example-device"\n'
    )
    (site / DEVICE_SETTINGS_FILE).write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n')


def test_prepare_site_replaces_an_earlier_demo_site(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: nothing answers there
        _old_site(tmp_path / "site", port)
        assert prepare_site(tmp_path / "site") == tmp_path / "site"
    assert list((tmp_path / "site").iterdir()) == []
    assert prepare_site(tmp_path / "new" / "site").is_dir()


def test_prepare_site_leaves_a_served_or_foreign_directory_alone(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _old_site(tmp_path / "served", server.getsockname()[1])
        with pytest.raises(ConfigError, match="still serves"):
            prepare_site(tmp_path / "served")
    assert (tmp_path / "served" / "pki" / "ca.pem").read_text() == "old"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "mine" / SITE_FILE).write_text("device_id = 'mine'\n")  # not written by the demo
    with pytest.raises(ConfigError, match="not empty"):
        prepare_site(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="not a directory"):
        prepare_site(tmp_path / "mine" / "notes.txt")
