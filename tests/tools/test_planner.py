"""``edgecascade plan``: trunk tracing on hand-built graphs, profiling and the command on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.core.policy import confidence_score
from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.wire.codec import encoded_size
from edgecascade.tools.cli import main
from edgecascade.tools.cut_cost import Profile, envelope_overhead

keras = pytest.importorskip("keras")
layers = keras.layers


def _stages(exit_from_inside_block: bool = False) -> tuple[Any, Any, Any]:
    """Device with a residual block and a tanh cut, gateway and cloud that reuse a layer name."""
    image = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="a_conv")(image)
    x = layers.BatchNormalization(name="a_bn")(x)
    x = layers.ReLU(name="a_relu")(x)
    y = layers.Conv2D(4, 3, padding="same", name="r_conv")(x)
    y = layers.ReLU(name="r_relu")(y)
    x = layers.Add(name="r_add")([x, y])
    x = layers.MaxPooling2D(2, name="pool")(x)
    head = y if exit_from_inside_block else x
    logits = layers.Dense(3, name="exit1")(layers.Flatten(name="exit1_flat")(head))
    cut = layers.Activation("tanh", name="cut_act")(layers.Conv2D(2, 1, name="cut_conv")(x))
    device = keras.Model(image, [logits, cut], name="device")

    inp = keras.Input((4, 4, 2), name="cut1")
    x = layers.ReLU(name="g_relu")(layers.Conv2D(4, 3, padding="same", name="g_conv")(inp))
    logits = layers.Dense(3, name="exit2")(layers.Flatten(name="exit2_flat")(x))
    x = layers.MaxPooling2D(2, name="pool")(x)
    gateway = keras.Model(inp, [logits, x], name="gateway")

    inp = keras.Input((2, 2, 4), name="cut2")
    x = layers.Conv2D(4, 1, name="c_conv")(inp)
    cloud = keras.Model(inp, layers.Dense(3, name="exit3")(layers.Flatten(name="c_flat")(x)), name="cloud")
    return device, gateway, cloud


def test_trunk_has_block_boundaries_only() -> None:
    from edgecascade.tools.cut_profile import trace_trunk

    trunk = trace_trunk(_stages())
    # not after conv or BN (a follower comes next), not inside the residual block, not before tanh
    assert trunk.names == ("a_relu", "r_add", "device/pool", "cut_act", "g_relu", "gateway/pool", "c_conv")
    assert [p.current for p in trunk.points] == [None, None, None, "cut1", None, "cut2", None]
    assert [(e.name, e.position) for e in trunk.exits] == [("exit1", 2), ("exit2", 4)]


def test_an_exit_that_branches_inside_a_block_is_refused() -> None:
    from edgecascade.tools.cut_profile import trace_trunk

    with pytest.raises(ModelError, match="inside a block"):
        trace_trunk(_stages(exit_from_inside_block=True))


@pytest.fixture(scope="module")
def tiny_profile(tiny_model_dir: Path, fmnist: Any) -> tuple[Profile, Any]:
    """The tiny model, profiled; loaded anew, since profiling adds nodes to its layers."""
    from edgecascade.tools.cut_profile import profile_trunk, trace_trunk
    from edgecascade.training.train import load_trained

    trained = load_trained(tiny_model_dir / "trained")
    trunk = trace_trunk((trained.device, trained.gateway, trained.cloud))
    lines: list[str] = []
    profile = profile_trunk(trunk, trained, fmnist.x_test[:1000], samples=40, progress=lines.append)
    assert len(lines) == len(trunk.points) + 1 + len(trunk.exits)  # one line per timed sub-model
    return profile, trained


def test_profile_holds_todays_cuts_with_positive_latencies(tiny_profile: tuple[Profile, Any]) -> None:
    profile, trained = tiny_profile
    current = {p.current: p for p in profile.points if p.current}
    assert set(current) == {"cut1", "cut2"}
    assert current["cut1"].shape == tuple(trained.device.outputs[1].shape[1:])
    assert current["cut2"].shape == tuple(trained.gateway.outputs[1].shape[1:])
    assert [p.stage for p in profile.points] == sorted(
        (p.stage for p in profile.points), key=("device", "gateway", "cloud").index
    )
    assert all(p.segment_ms > 0 for p in profile.points) and profile.head_ms > 0
    assert len(profile.exits) == 2 and all(e.ms > 0 for e in profile.exits)
    assert profile.samples == 40 and profile.exit_samples == 1000


def test_profile_bytes_are_encoded_size_plus_header(tiny_profile: tuple[Profile, Any]) -> None:
    profile, trained = tiny_profile
    header = envelope_overhead()
    assert profile.header_bytes == header
    for point in profile.points:
        expected = {e: encoded_size(e, point.shape) + header for e in ("float32", "float16", "int8")}
        assert {k: v for k, v in point.bytes.items() if k != "1bit"} == expected
        assert ("1bit" in point.bytes) == point.binarised
    cut1 = next(p for p in profile.points if p.current == "cut1")
    assert cut1.binarised == (str(getattr(trained.config.model, "cut1_encoding", "")) == "1bit")
    assert not any(p.binarised for p in profile.points if p.stage == "cloud")


def test_profile_exit_rates_follow_the_thresholds(tiny_profile: tuple[Profile, Any], fmnist: Any) -> None:
    profile, trained = tiny_profile
    probs = trained.exit_probs(fmnist.x_test[:1000])
    score = confidence_score(trained.config.exit_score)
    first = float((score(probs[0]) < trained.thresholds[0]).mean())
    assert profile.survival[0] == 1.0
    assert profile.survival[1] == pytest.approx(first)
    assert profile.survival[2] <= profile.survival[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--uplink-mbps", "0"], "uplink-mbps"),
        (["--backhaul-mbps", "-1"], "backhaul-mbps"),
        (["--uplink-ms", "-3"], "uplink-ms"),
        (["--device-factor", "-8"], "device-factor"),
        (["--encoding", "int4"], "unknown encoding"),
        (["--samples", "0"], "samples"),
    ],
)
def test_impossible_arguments_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--model", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_missing_model_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_an_unknown_cut_exits_2(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(tiny_model_dir / "trained")
    assert main(["plan", "--model", model, "--encoding", "no_such_layer=int8"]) == 2
    assert "unknown cut 'no_such_layer'" in capsys.readouterr().err


def test_plan_prints_a_table_and_writes_json(
    tiny_model_dir: Path, fmnist: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "test.npz", tmp_path / "plan.json"
    x, y = fmnist.x_test[:300], fmnist.y_test[:300]
    np.savez(data, x=x[:10], y=y[:10], x_test=x, y_test=y)  # a small test split keeps this quick
    argv = ["plan", "--model", str(tiny_model_dir / "trained"), "--data", str(data), "--samples", "20"]
    assert main([*argv, "--json", str(out), "--uplink-mbps", "0.5", "--encoding", "float16"]) == 0
    captured = capsys.readouterr()
    assert "[1/" in captured.err  # progress, one line per segment

    report = json.loads(out.read_text())
    n = len(report["profile"]["points"])
    assert len(report["pairs"]) == n * (n + 1) // 2
    assert report["best"]["expected_ms"] == min(p["expected_ms"] for p in report["pairs"])
    assert report["current"] is not None and report["current"]["current"] is True
    assert report["deployment"]["uplink_mbps"] == 0.5
    assert report["profile"]["exit_samples"] == 300
    assert set(report["encodings"].values()) == {"float16"}  # the user's choice beats the model's own

    lines = captured.out.splitlines()
    best = report["best"]
    starred = [line for line in lines if line.startswith("*")]
    assert len(starred) == 1 and starred[0].split()[1:3] == [best["cut1"], best["cut2"]]
    for pair in report["pairs"]:  # one row per pair, ending in its expected latency
        row = f" {pair['cut1']} {pair['cut2']} "
        assert any(
            row in f" {' '.join(line.split())} "
            for line in lines
            if line.endswith(f"{pair['expected_ms']:.3f}")
        )
