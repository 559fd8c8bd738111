"""``edgecascade bench accuracy`` on the tiny bundles of both modes: every number recomputed another way."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.tools.bench_accuracy import DEVICE_ID, TIERS, bench_accuracy, open_bundles
from edgecascade.tools.cli import main

N = 300
HEADER = len(wire.header_to_bytes(wire.Header(wire.MessageType.INFER_REQUEST, DEVICE_ID, 1))) + 4
RAW = HEADER + 2 + 4 * 3 + 28 * 28  # the raw uint8 image in the same envelope


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, tiny_models_bundle: Path, fmnist: Any) -> dict[str, Any]:
    return bench_accuracy(
        load_bundle(tiny_bundle), fmnist.x_test[:N], fmnist.y_test[:N], load_bundle(tiny_models_bundle)
    )


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tiny_models_bundle: Path) -> dict[str, Path]:
    return {"partitioned": tiny_bundle, "models": tiny_models_bundle}


def test_both_modes_are_measured_and_the_top_level_is_the_model_bundle(report: dict[str, Any]) -> None:
    assert list(report["modes"]) == ["partitioned", "models"]
    assert report["modes"]["models"]["model"]["name"] != report["model"]["name"]
    partitioned = report["modes"]["partitioned"]
    for key, value in partitioned.items():
        assert report[key] == value
    assert "modes" not in partitioned and "device_share_target_met" not in report


@pytest.mark.parametrize("mode", ["partitioned", "models"])
def test_runs_match_the_partitions_run_directly(
    report: dict[str, Any], bundles: dict[str, Path], fmnist: Any, mode: str
) -> None:
    r = report["modes"][mode]
    bundle = load_bundle(bundles[mode])
    assert r["mode"] == bundle.manifest.mode == mode
    probs = run_partitions(bundle, fmnist.x_test[:N]).probs
    y = fmnist.y_test[:N]
    for run, p in zip(("device_only", "gateway_only", "cloud_only"), probs, strict=True):
        assert r["accuracy"][run] == pytest.approx(float((p.argmax(1) == y).mean()))
    t1, t2 = (bundle.manifest.partition(t).exit.threshold for t in ("device", "gateway"))
    at_device = probs[0].max(1) >= t1
    at_gateway = ~at_device & (probs[1].max(1) >= t2)
    assert r["share"]["device"] == pytest.approx(at_device.mean())
    assert r["share"]["gateway"] == pytest.approx(at_gateway.mean())
    assert 0.0 < r["share"]["device"] < 1.0  # the tiny bundles' thresholds send traffic up
    for summary in r["runs"].values():
        assert sum(summary["share"].values()) == pytest.approx(1.0)
    assert r["runs"]["cloud_only"]["share"]["cloud"] == 1.0


def test_partitioned_bytes_are_real_envelopes_of_the_cuts(report: dict[str, Any], tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    r = report["modes"]["partitioned"]
    device, gateway = manifest.partition("device"), manifest.partition("gateway")
    sizes = r["envelope_bytes"]
    assert sizes["device_gateway"] == HEADER + codec.encoded_size(device.encoding, gateway.input.shape)
    assert sizes["gateway_cloud"] == HEADER + codec.encoded_size(
        gateway.encoding, manifest.partition("cloud").input.shape
    )
    assert sizes["raw"] == RAW
    past_device = 1.0 - r["share"]["device"]
    assert r["bytes_per_input"]["device_gateway"] == pytest.approx(past_device * sizes["device_gateway"])
    assert r["bytes_ratio_vs_raw"] == pytest.approx(sizes["raw"] / r["bytes_per_input"]["device_gateway"])
    assert r["runs"]["device_only"]["bytes_per_input"]["device_gateway"] == 0.0
    assert sizes["device_gateway"] < report["modes"]["models"]["envelope_bytes"]["device_gateway"]
    assert sizes["device_gateway"] < sizes["raw"]


def test_models_mode_sends_the_raw_input_in_an_image_sized_envelope(
    report: dict[str, Any], tiny_models_bundle: Path
) -> None:
    manifest = load_bundle(tiny_models_bundle).manifest
    r = report["modes"]["models"]
    image_sized = HEADER + codec.encoded_size("int8", manifest.input.shape)  # one byte per pixel + scale
    assert r["envelope_bytes"] == {"device_gateway": image_sized, "gateway_cloud": image_sized, "raw": RAW}
    assert r["encodings"] == {"device": "int8", "gateway": "int8"}
    past_device = 1.0 - r["share"]["device"]
    assert r["bytes_per_input"]["device_gateway"] == pytest.approx(past_device * image_sized)
    assert r["raw_input_leaves_device"] is True
    assert report["modes"]["partitioned"]["raw_input_leaves_device"] is False


@pytest.mark.parametrize("mode", ["partitioned", "models"])
def test_latency_is_measured_per_tier_and_weighted_by_the_cascade_shares(
    report: dict[str, Any], mode: str
) -> None:
    r = report["modes"][mode]
    ms, share = r["latency_ms"], r["share"]
    assert set(ms) == {*TIERS, "cascade"}
    assert all(0.0 < ms[t] < 50.0 for t in TIERS)
    expected = ms["device"] + (1 - share["device"]) * ms["gateway"] + share["cloud"] * ms["cloud"]
    assert ms["cascade"] == pytest.approx(expected)
    assert ms["device"] <= ms["cascade"] < ms["device"] + ms["gateway"] + ms["cloud"]
    assert r["device_partition"]["ms_per_image"] == ms["device"]


@pytest.mark.parametrize("mode", ["partitioned", "models"])
def test_sweep_trades_device_share_for_accuracy(report: dict[str, Any], mode: str) -> None:
    r = report["modes"][mode]
    sweep = r["sweep"]
    shares = [p["device_share"] for p in sweep]
    assert shares[0] == 1.0 and shares[-1] == 0.0  # threshold 0: all exit; above 1: none
    assert all(a >= b for a, b in itertools.pairwise(shares))
    assert sweep[0]["accuracy"] == pytest.approx(r["accuracy"]["device_only"])


def test_device_partition_is_measured(report: dict[str, Any], bundles: dict[str, Path]) -> None:
    for mode, path in bundles.items():
        device = report["modes"][mode]["device_partition"]
        assert device["bytes"] == (path / "device.tflite").stat().st_size
        assert device["precision"] == load_bundle(path).manifest.partition("device").precision


def test_two_bundles_of_one_mode_are_refused(tiny_bundle: Path, fmnist: Any) -> None:
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(ConfigError, match="both 'partitioned'"):
        bench_accuracy(bundle, fmnist.x_test[:10], fmnist.y_test[:10], bundle)
    with pytest.raises(ConfigError, match="both 'partitioned'"):
        open_bundles(tiny_bundle, tiny_bundle)
    assert main(["bench", "accuracy", "--model", str(tiny_bundle), "--models-bundle", str(tiny_bundle)]) == 2


def test_a_missing_explicit_models_bundle_exits_2(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "models"
    assert main(["bench", "accuracy", "--model", str(tiny_bundle), "--models-bundle", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_writes_both_modes_to_the_report_and_one_plot(
    tiny_bundle: Path, tiny_models_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acc.json"
    argv = ["bench", "accuracy", "--model", str(tiny_bundle), "--models-bundle", str(tiny_models_bundle)]
    assert main([*argv, "--n", str(N), "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("cloud_only") == 2 and "fewer bytes" in printed
    assert "raw input leaves the device" in printed  # the side-by-side comparison
    data = json.loads(out.read_text())
    assert data["n"] == N and set(data["modes"]) == {"partitioned", "models"}
    for r in data["modes"].values():
        for key in (
            "accuracy",
            "share",
            "bytes_per_input",
            "runs",
            "latency_ms",
            "sweep",
            "device_partition",
        ):
            assert key in r
    assert np.isfinite(data["bytes_ratio_vs_raw"])
    png = Path(data["plot"])
    assert png == out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_without_the_default_models_bundle_measures_one_mode_and_says_how_to_get_the_other(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no artifacts/models here
    assert main(["bench", "accuracy", "--model", str(tiny_bundle), "--n", "100", "--report", "acc.json"]) == 0
    printed = capsys.readouterr().out
    assert "`edgecascade train --preset large` then `edgecascade train --preset models`" in printed
    data = json.loads((tmp_path / "acc.json").read_text())
    assert list(data["modes"]) == ["partitioned"] and data["runs"]["cascade"]["accuracy"] > 0.0
    assert (tmp_path / "acc.png").is_file()
