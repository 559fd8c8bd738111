"""The replay-check benchmark: local windows against a shared store, and the gateway path with one."""

from __future__ import annotations

from pathlib import Path

from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.edge_gateway.shared_replay import SharedReplayStore
from edgecascade.tools.bench_gateway import bench_gateway, format_gateway_report
from edgecascade.tools.bench_replay import bench_replay, format_replay_report


def test_every_kind_of_window_is_timed_in_batches_and_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    report = bench_replay({"shared sqlite": lambda: SharedReplayStore(url, 1024)}, requests=64)
    rows = report["us_per_request"]
    assert list(rows) == ["memory", "local mark file", "shared sqlite"]
    assert all(row["batch_32"] > 0 and row["batch_1"] > 0 for row in rows.values())
    assert rows["shared sqlite"]["batch_1"] > rows["memory"]["batch_1"]  # a transaction per request
    assert "shared sqlite" in format_replay_report(report)


def test_the_gateway_path_with_shared_windows_answers_every_request(
    tiny_bundle: Path, fmnist, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    report = bench_gateway(load_bundle(tiny_bundle), fmnist.x_test[:64], batch=32, runs=2, replay_shared=url)
    assert report["us_per_request"] > 0 and report["replay"].endswith("shared.db")
    assert "replay windows in sqlite" in format_gateway_report(report)
    window = SharedReplayStore(url).window_of("bench-device")
    assert window is not None and window.highest is not None  # the numbers were judged there
