"""``edgecascade bench accuracy`` on the tiny bundle: every number recomputed another way."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.tools.bench_accuracy import DEVICE_ID, bench_accuracy
from edgecascade.tools.cli import main

N = 600


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, fmnist: Any) -> dict[str, Any]:
    return bench_accuracy(load_bundle(tiny_bundle), fmnist.x_test[:N], fmnist.y_test[:N])


def test_modes_match_the_partitions_run_directly(
    report: dict[str, Any], tiny_bundle: Path, fmnist: Any
) -> None:
    bundle = load_bundle(tiny_bundle)
    probs = run_partitions(bundle, fmnist.x_test[:N]).probs
    y = fmnist.y_test[:N]
    for mode, p in zip(("device_only", "gateway_only", "cloud_only"), probs, strict=True):
        assert report["accuracy"][mode] == pytest.approx(float((p.argmax(1) == y).mean()))
    t1, t2 = (bundle.manifest.partition(t).exit.threshold for t in ("device", "gateway"))
    at_device = probs[0].max(1) >= t1
    at_gateway = ~at_device & (probs[1].max(1) >= t2)
    assert report["share"]["device"] == pytest.approx(at_device.mean())
    assert report["share"]["gateway"] == pytest.approx(at_gateway.mean())
    assert sum(report["share"].values()) == pytest.approx(1.0)
    assert report["modes"]["cloud_only"]["share"]["cloud"] == 1.0


def test_bytes_are_real_envelopes_and_the_raw_baseline_uses_the_same_one(
    report: dict[str, Any], tiny_bundle: Path
) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    header = len(wire.header_to_bytes(wire.Header(wire.MessageType.INFER_REQUEST, DEVICE_ID, 1))) + 4
    device, gateway = manifest.partition("device"), manifest.partition("gateway")
    sizes = report["envelope_bytes"]
    assert sizes["device_gateway"] == header + codec.encoded_size(device.encoding, gateway.input.shape)
    assert sizes["gateway_cloud"] == header + codec.encoded_size(
        gateway.encoding, manifest.partition("cloud").input.shape
    )
    assert sizes["raw"] == header + 2 + 4 * 3 + 28 * 28
    past_device = 1.0 - report["share"]["device"]
    assert report["bytes_per_input"]["device_gateway"] == pytest.approx(past_device * sizes["device_gateway"])
    assert report["bytes_ratio_vs_raw"] == pytest.approx(
        sizes["raw"] / report["bytes_per_input"]["device_gateway"]
    )
    assert report["modes"]["device_only"]["bytes_per_input"]["device_gateway"] == 0.0


def test_sweep_trades_device_share_for_accuracy(report: dict[str, Any]) -> None:
    sweep = report["sweep"]
    shares = [p["device_share"] for p in sweep]
    assert shares[0] == 1.0 and shares[-1] == 0.0  # threshold 0: all exit; above 1: none
    assert all(a >= b for a, b in itertools.pairwise(shares))
    assert sweep[0]["accuracy"] == pytest.approx(report["accuracy"]["device_only"])


def test_device_partition_is_measured(report: dict[str, Any], tiny_bundle: Path) -> None:
    device = report["device_partition"]
    assert device["bytes"] == (tiny_bundle / "device.tflite").stat().st_size
    assert 0.0 < device["ms_per_image"] < 50.0
    assert device["precision"] == load_bundle(tiny_bundle).manifest.partition("device").precision


def test_cli_prints_a_table_and_writes_json_and_a_plot(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acc.json"
    assert main(["bench", "accuracy", "--model", str(tiny_bundle), "--n", "300", "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cascade" in printed and "cloud_only" in printed and "fewer bytes" in printed
    data = json.loads(out.read_text())
    for key in ("accuracy", "share", "bytes_per_input", "bytes_ratio_vs_raw", "device_partition", "sweep"):
        assert key in data
    assert data["n"] == 300 and data["device_partition"]["ms_per_image"] > 0
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert np.isfinite(data["bytes_ratio_vs_raw"])
