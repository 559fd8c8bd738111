"""Bundle export: manifest contract, LiteRT/Keras parity, tamper detection, crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.errors import BundleError, ModelError, RollbackError, SignatureError
from edgecascade.device_sdk.model.bundle import (
    MANIFEST,
    TIERS,
    Manifest,
    load_bundle,
    load_verified_update,
    sign_bundle,
)
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.model.signing import SIGNATURE, generate_signing_key
from edgecascade.tools.cli import main
from edgecascade.training import export
from edgecascade.training.calibration import NEVER_EXIT, softmax
from edgecascade.training.data import Dataset
from edgecascade.training.train import TrainedModel


def test_manifest_round_trips_and_is_complete(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    assert Manifest.from_dict(json.loads(m.to_json())) == m
    assert json.loads((tiny_bundle / MANIFEST).read_text()) == json.loads(m.to_json())
    assert tuple(p.tier for p in m.partitions) == TIERS
    assert [p.file for p in m.partitions] == ["device.tflite", "gateway.tflite", "cloud.tflite"]
    assert m.version == 1 and len(m.classes) == 10 and m.classes[9] == "Ankle boot"
    assert m.input.shape == (28, 28, 1) and m.input.scale == pytest.approx(1 / 255) and m.input.offset == 0.0
    device, gateway, cloud = m.partitions
    assert device.input.shape == (28, 28, 1)
    assert device.features is not None and gateway.features is not None and cloud.features is None
    assert gateway.input.shape == device.features.shape == (7, 7, 16)
    assert cloud.input.shape == gateway.features.shape == (4, 4, 16)
    assert (device.encoding, gateway.encoding, cloud.encoding) == ("1bit", "int8", "float32")
    for p in m.partitions:
        assert p.logits.shape == (10,) and p.logits.dtype == "float32"
        assert 0.05 < p.exit.temperature < 20.0 and p.exit.score == "max_prob"
        assert 0.0 <= p.exit.threshold <= NEVER_EXIT
    assert cloud.exit.threshold == 0.0
    for i in (1, 2, 3):
        assert 0.0 <= m.metrics[f"test_accuracy_exit{i}"] <= 1.0
        assert 0.0 <= m.metrics[f"val_accuracy_exit{i}"] <= 1.0


def test_tensor_names_are_what_litert_reports(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    for tier in TIERS:
        runner = PartitionRunner.from_bundle(bundle, tier)  # raises ModelError if a name is wrong
        spec = bundle.manifest.partition(tier)
        names = {d["name"] for d in runner._interp.get_output_details()}
        assert spec.logits.name in names
        assert runner._interp.get_input_details()[0]["name"] == spec.input.name


def test_partitions_accept_any_batch_size(tiny_bundle: Path, fmnist: Dataset) -> None:
    bundle = load_bundle(tiny_bundle)
    device = PartitionRunner.from_bundle(bundle, "device")
    x = bundle.manifest.input.normalise(fmnist.x_test[:7])
    one, seven = device.run(x[:1]), device.run(x)
    assert (
        seven.logits.shape == (7, 10) and seven.features is not None and seven.features.shape == (7, 7, 7, 16)
    )
    np.testing.assert_allclose(one.logits[0], seven.logits[0], atol=1e-5)


def test_litert_partitions_reproduce_keras(
    tiny_bundle: Path, tiny_trained: TrainedModel, fmnist: Dataset
) -> None:
    result = export.parity(tiny_bundle, tiny_trained, fmnist.x_test[:1000])
    print(f"\nparity over {int(result['n'])} test images: {result}")
    assert result["n"] == 1000
    # exits 1 and 2 are float32 through an exactly-encoded 1-bit cut; exit 3 sits behind the
    # int8 cut 2, where a rounding difference can move a feature by one quantisation step
    assert result["max_abs_diff_exit1"] < 1e-4 and result["max_abs_diff_exit2"] < 1e-4
    assert result["max_abs_diff_exit3"] < 5e-3
    assert result["argmax_agreement"] >= 0.999


def test_quantised_variants_are_measured_and_int8_device_stays_close(
    tiny_trained: TrainedModel, tiny_model_dir: Path, fmnist: Dataset, tmp_path: Path
) -> None:
    # `edgecascade export` measures the variants on the checkpoint's own validation split
    checkpoint = str(tiny_model_dir / "trained")
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "b"), "--version", "2"]) == 0
    manifest = load_bundle(tmp_path / "b").manifest
    assert manifest.version == 2
    m = manifest.metrics
    sizes = {p: m[f"variant_device_{p}_bytes"] for p in ("float32", "float16", "int8")}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    for tier, first in (("device", 1), ("gateway", 2), ("cloud", 3)):
        for precision in ("float32", "float16", "int8"):
            assert 0.3 < m[f"variant_{tier}_{precision}_exit{first}_accuracy"] <= 1.0
    drop = max(
        m[f"variant_device_float32_exit{i}_accuracy"] - m[f"variant_device_int8_exit{i}_accuracy"]
        for i in (1, 2, 3)
    )
    device = manifest.partition("device")
    assert device.precision == ("int8" if drop <= 0.003 else "float32")
    assert {manifest.partition(t).precision for t in ("gateway", "cloud")} == {"float32"}
    int8 = export.export_bundle(
        tiny_trained, tmp_path / "q", representative=fmnist.x_train[:256], precisions={"device": "int8"}
    )
    assert int8.partition("device").precision == "int8"
    assert (tmp_path / "q" / "device.tflite").stat().st_size < (
        tmp_path / "b" / "cloud.tflite"
    ).stat().st_size
    result = export.parity(tmp_path / "q", tiny_trained, fmnist.x_test[:1000])
    print(f"\nint8 device parity: {result}")
    # stated tolerance for an int8 device partition, on its own exit; what its rounding does to
    # the binarised cut (a few flipped bits) is measured by the variants' downstream accuracies
    assert result["argmax_agreement_exit1"] >= 0.97 and result["max_abs_diff_exit1"] < 0.1


def test_int8_without_representative_data_is_refused(tiny_trained: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="representative"):
        export.export_bundle(tiny_trained, tmp_path / "b", precisions={"device": "int8"})
    with pytest.raises(ValueError, match="unknown"):
        export.export_bundle(tiny_trained, tmp_path / "b", precisions={"device": "int4"})


def test_tampered_partition_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    path = copy / "gateway.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)
    load_bundle(copy, tiers=("device",))  # the untouched partition alone still verifies


def test_export_writes_a_loadable_bundle_and_keeps_it_on_conversion_failure(
    tiny_trained: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "bundle"
    manifest = export.export_bundle(tiny_trained, out, name="t", version=3)
    assert load_bundle(out).manifest == manifest and manifest.version == 3
    assert {p.name for p in out.iterdir()} == {MANIFEST, "device.tflite", "gateway.tflite", "cloud.tflite"}

    def broken(*args: object) -> bytes:
        raise ModelError("converter exploded")

    monkeypatch.setattr(export, "convert_stage", broken)
    with pytest.raises(ModelError, match="exploded"):
        export.export_bundle(tiny_trained, out, version=4)
    assert load_bundle(out).manifest.version == 3  # failure before writing leaves the old bundle intact


def test_crash_while_writing_never_leaves_a_dangling_manifest(
    tiny_bundle: Path,
    tiny_trained: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    real_write = export.atomic_write
    calls = []

    def crash_on_second(path: Path, content: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, content)

    monkeypatch.setattr(export, "atomic_write", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        export.export_bundle(tiny_trained, out, version=2)
    assert not (out / MANIFEST).exists()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_tiny_bundle_sends_traffic_to_every_tier(tiny_bundle: Path, fmnist: Dataset) -> None:
    bundle = load_bundle(tiny_bundle)
    runners = [PartitionRunner.from_bundle(bundle, tier) for tier in TIERS]
    t1, t2 = (bundle.manifest.partition(tier).exit.threshold for tier in TIERS[:2])
    dev = runners[0].run(bundle.manifest.input.normalise(fmnist.x_test[:1000]))
    assert dev.features is not None
    gw = runners[1].run(dev.features)
    p1, p2 = softmax(dev.logits).max(1), softmax(gw.logits).max(1)
    device_share = (p1 >= t1).mean()
    gateway_share = ((p1 < t1) & (p2 >= t2)).mean()
    assert 0.3 < device_share < 0.7 and 0.1 < gateway_share < 0.4
    assert not any(k.startswith("test_exit_share") for k in bundle.manifest.metrics)


def test_export_rejects_bad_threshold_override(tiny_trained: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        export.export_bundle(tiny_trained, tmp_path / "b", thresholds=(0.5, -1.0, 0.0))
    assert not (tmp_path / "b").exists()


def test_train_and_export_is_the_whole_pipeline(fmnist: Dataset, tmp_path: Path) -> None:
    """What `edgecascade train` runs: train, save the checkpoint, measure variants, calibrate caches."""
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.train import load_trained

    config = TrainConfig(epochs=1, batch_size=64, train_subset=1500, model=TrainConfig.tiny().model)
    manifest = export.train_and_export(
        config, tmp_path / "bundle", dataset=fmnist, progress=False, checkpoint_dir=tmp_path / "ckpt"
    )
    assert load_bundle(tmp_path / "bundle").manifest == manifest
    assert all(manifest.partition(t).cache is not None for t in ("device", "gateway"))
    assert {p.precision for p in manifest.partitions} <= {"float32", "int8"}
    assert manifest.metrics["variant_device_int8_bytes"] < manifest.metrics["variant_device_float32_bytes"]
    assert load_trained(tmp_path / "ckpt").thresholds == tuple(p.exit.threshold for p in manifest.partitions)


def test_signed_export_and_refused_updates_keep_the_running_model(
    tiny_trained: TrainedModel, tiny_bundle: Path, fmnist: Dataset, tmp_path: Path
) -> None:
    private, public = generate_signing_key(tmp_path / "keys")
    v2 = tmp_path / "v2"
    export.export_bundle(tiny_trained, v2, version=2, signing_key=private)
    assert (v2 / SIGNATURE).is_file()
    client = DeviceClient.from_bundle(v2, "signed-device", verify_key=public)  # offline: device answers only
    x = fmnist.x_test[:32]
    before = np.stack([p.probabilities for p in client.predict_batch(x)])

    tampered = tmp_path / "v3-tampered"
    shutil.copytree(v2, tampered)
    manifest = json.loads((tampered / MANIFEST).read_text())
    manifest["version"] = 3
    (tampered / MANIFEST).write_text(json.dumps(manifest))
    sign_bundle(tampered, private)
    data = bytearray((tampered / "device.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "device.tflite").write_bytes(bytes(data))
    refusals = {
        tampered: BundleError,  # a partition changed after signing
        tiny_bundle: SignatureError,  # never signed
    }
    older = tmp_path / "v1-signed"
    shutil.copytree(tiny_bundle, older)
    sign_bundle(older, private)
    refusals[older] = RollbackError  # signed, but older and not a rollback
    for update, error in refusals.items():
        with pytest.raises(error):
            load_verified_update(update, public, client.manifest.version, tiers=("device",))

    after = np.stack([p.probabilities for p in client.predict_batch(x)])
    np.testing.assert_array_equal(after, before)
    assert client.manifest.version == 2
    assert load_bundle(v2, public_key=public).manifest == client.manifest
    client.close()


def test_the_unknown_input_rules_are_calibrated_and_litert_flags_what_keras_flags(
    tiny_bundle: Path, tiny_trained: TrainedModel, fmnist: Dataset
) -> None:
    from edgecascade.device_sdk.core.chain import run_partitions
    from edgecascade.device_sdk.core.novelty import familiarity, is_unknown

    manifest = load_bundle(tiny_bundle).manifest
    rules = [p.unknown for p in manifest.partitions]
    assert rules == list(tiny_trained.unknown) and all(r is not None and r.score == "energy" for r in rules)
    images = fmnist.x_test[:1000]
    lite = run_partitions(load_bundle(tiny_bundle), images).logits
    keras_logits = tiny_trained.exit_logits(images)
    for rule, z_lite, z_keras in zip(rules, lite, keras_logits, strict=True):
        assert rule is not None
        score = familiarity(rule.score)
        np.testing.assert_allclose(score(z_lite, 1.0), score(z_keras, 1.0), atol=0.05)
        agreement = (is_unknown(z_lite, rule) == is_unknown(z_keras, rule)).mean()
        assert agreement >= 0.99
        assert 0.01 < is_unknown(z_lite, rule).mean() < 0.15  # about the calibrated 5 % of known inputs
