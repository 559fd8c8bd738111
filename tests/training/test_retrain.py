"""Incremental retraining's model steps on the tiny model: loading, data slices, calibration, gate, export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset
from edgecascade.training.gate import GateRule
from edgecascade.training.hard_examples import HardSet
from edgecascade.training.retrain import (
    export_candidate,
    gate_candidate,
    load_for_finetuning,
    original_slices,
    recalibrate,
)
from edgecascade.training.train import load_trained, training_split

SHAPES = {"raw": (28, 28, 1), "cut1": (7, 7, 16), "cut2": (4, 4, 16)}


def _raw_only(x: np.ndarray, y: np.ndarray) -> HardSet:
    return HardSet.build(
        [("cut1", np.zeros(SHAPES["cut1"]), image, int(label)) for image, label in zip(x, y, strict=True)],
        SHAPES,
    )


def test_the_checkpoint_loads_twice_and_must_have_the_served_classes(tiny_model_dir: Path) -> None:
    manifest = load_bundle(tiny_model_dir / "bundle").manifest
    current, candidate = load_for_finetuning(tiny_model_dir / "trained", manifest)
    assert current.device is not candidate.device and current.classes == candidate.classes
    fewer = dataclasses.replace(manifest, classes=manifest.classes[:5])
    with pytest.raises(ModelError, match="has 10 classes, the served bundle 5"):
        load_for_finetuning(tiny_model_dir / "trained", fewer)


def test_replay_comes_from_the_training_split_only() -> None:
    n = 400
    x = (np.arange(n) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 28, 28, 1), np.uint8)
    ids = np.arange(n)  # labels that name each image, to see where every slice came from
    data = Dataset(x, ids, x[:100], ids[:100], classes=("a", "b"))
    config = TrainConfig(val_fraction=0.25, seed=3)
    slices = original_slices(data, config, replay_size=50, val_size=40, test_size=30, seed=1)
    _, y_train, _, y_val = training_split(config, data)
    replay_ids = slices.replay[1]
    assert len(replay_ids) == 50 and set(replay_ids) <= set(y_train) and not set(replay_ids) & set(y_val)
    np.testing.assert_array_equal(slices.replay[0][:, 0, 0, 0], replay_ids % 256)  # images stay with labels
    assert slices.validation[1].tolist() == y_val[:40].tolist()
    assert slices.test[1].tolist() == list(range(30))
    again = original_slices(data, config, replay_size=50, val_size=40, test_size=30, seed=1)
    other = original_slices(data, config, replay_size=50, val_size=40, test_size=30, seed=2)
    assert again.replay[1].tolist() == replay_ids.tolist() != other.replay[1].tolist()


def test_recalibration_uses_the_calibration_slice_and_the_gate_records_test_accuracy(
    tiny_model_dir: Path, fmnist: Dataset
) -> None:
    current, candidate = load_for_finetuning(
        tiny_model_dir / "trained", load_bundle(tiny_model_dir / "bundle").manifest
    )
    x, y = fmnist.x_train[50000:50300], fmnist.y_train[50000:50300]
    no_validation = (x[:0], y[:0])  # so every number below comes from the calibration slice
    metrics = recalibrate(candidate, no_validation, _raw_only(x, y))
    assert candidate.metrics is metrics and candidate.temperatures != (1.0, 1.0, 1.0)
    final = candidate.exit_probs(x)[2].argmax(1)
    assert metrics["val_accuracy_exit3"] == pytest.approx(float((final == y).mean()))
    assert metrics["val_cascade_accuracy"] >= metrics["val_accuracy_exit3"] - 1e-9  # the accuracy rule

    test = (fmnist.x_test[:200], fmnist.y_test[:200])
    decision = gate_candidate(current, candidate, test, _raw_only(x[:0], y[:0]), GateRule(0.5, 0.5, 20))
    assert not decision.promote  # no held-out hard examples: the gate cannot judge
    accuracies = [candidate.metrics[f"test_accuracy_exit{i}"] for i in (1, 2, 3)]
    assert accuracies == list(decision.candidate.original) and decision.candidate.n_original == 200


def test_a_frozen_device_keeps_the_served_partition_byte_for_byte_and_signs_last(
    tiny_model_dir: Path, fmnist: Dataset, tmp_path: Path
) -> None:
    served = load_bundle(tiny_model_dir / "bundle")
    candidate = load_trained(tiny_model_dir / "trained")
    candidate.device.set_weights([w + 0.01 for w in candidate.device.get_weights()])  # exports differently
    candidate.thresholds = (0.9, 0.8, 0.0)
    private, public = generate_signing_key(tmp_path / "keys")
    out = tmp_path / "candidate"
    manifest = export_candidate(
        candidate,
        out,
        served,
        7,
        replay=(fmnist.x_train[:128], fmnist.y_train[:128]),
        validation=(fmnist.x_train[128:256], fmnist.y_train[128:256]),
        device_frozen=True,
        signing_key=private,
    )
    assert (manifest.version, manifest.name, manifest.classes) == (
        7,
        served.manifest.name,
        served.manifest.classes,
    )
    assert (out / "device.tflite").read_bytes() == (tiny_model_dir / "bundle" / "device.tflite").read_bytes()
    device = manifest.partition("device")
    assert device.exit.threshold == pytest.approx(0.9) != served.manifest.partition("device").exit.threshold
    assert [p.precision for p in manifest.partitions] == [p.precision for p in served.manifest.partitions]
    assert load_bundle(out, public_key=public).manifest == manifest  # the signature covers the final manifest
