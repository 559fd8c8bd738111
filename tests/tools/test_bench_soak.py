"""The soak benchmark, a few seconds long: real broker, cloud and gateway daemon processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecascade.tools.cli import main


@pytest.mark.integration
def test_a_short_soak_loses_nothing_and_reports_memory_and_descriptors(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "soak.json"
    code = main(
        [
            "bench",
            "soak",
            "--model",
            str(tiny_bundle),
            "--report",
            str(path),
            "--minutes",
            "0.1",  # two rounds of 3 s
            "--round-seconds",
            "3",
            "--warmup-seconds",
            "1",
            "--devices",
            "5",
            "--rate",
            "20",
            "--processes",
            "1",
            "--drain",
            "1",
        ]
    )
    assert code == 0
    report = json.loads(path.read_text())
    assert report["rounds"] == 2 and len(report["steps"]) == 2
    assert report["sent"] == 20 * 1 + 2 * 60  # warm-up, then two rounds of 3 s at 20/s
    assert report["lost"] == 0 and report["answered"] == report["sent"]
    assert report["errors"] == 0
    gateway = report["gateway"]
    for point in ("idle", "start", "end"):
        assert gateway[point]["rss_mb"] > 10 and gateway[point]["fds"] > 0
    assert len(gateway["series"]) == 3  # after the warm-up and after each round
    assert gateway["series"][0] == gateway["start"] and gateway["series"][-1] == gateway["end"]
    assert gateway["rss_growth_percent"] == pytest.approx(
        (gateway["end"]["rss_mb"] - gateway["start"]["rss_mb"]) / gateway["start"]["rss_mb"] * 100, abs=0.01
    )
    assert gateway["fd_growth"] == gateway["end"]["fds"] - gateway["start"]["fds"]
    assert "lost 0" in capsys.readouterr().out
