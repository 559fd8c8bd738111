"""The large model, distillation, and the models mode's training and export."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.tools.cli import main
from edgecascade.training.classifier import ClassifierConfig
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset
from edgecascade.training.distill import DistillationLoss, soft_targets
from edgecascade.training.export import parity
from edgecascade.training.large import LargeConfig, load_large
from edgecascade.training.models_mode import train_models
from edgecascade.training.train import load_trained


def loss(alpha: float, y_true: np.ndarray, y_pred: np.ndarray, temperature: float = 4.0) -> float:
    return float(DistillationLoss(alpha, temperature)(y_true, y_pred))


def test_distillation_is_cross_entropy_without_the_teacher_and_pulls_towards_it_with() -> None:
    rng = np.random.default_rng(0)
    labels = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
    teacher, student = (
        rng.normal(size=(64, 10)).astype("float32"),
        rng.normal(size=(64, 10)).astype("float32"),
    )
    targets = soft_targets(labels, teacher)
    assert targets.shape == (64, 20)
    ce = float(keras.losses.CategoricalCrossentropy(from_logits=True)(labels, student))
    assert loss(0.0, targets, student) == pytest.approx(ce, rel=1e-5)
    # the soft term is smallest where the student's (softened) answer is the teacher's
    assert loss(1.0, targets, teacher) < loss(1.0, targets, student)
    assert loss(1.0, targets, teacher) < loss(1.0, targets, teacher + rng.normal(size=teacher.shape) * 0.5)


def test_soft_targets_of_another_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        soft_targets(np.zeros((4, 10), "float32"), np.zeros((4, 9), "float32"))


@pytest.mark.parametrize(
    "bad",
    [{"blocks": ()}, {"blocks": ((0,),)}, {"dense": 0}, {"dropout": 1.0}],
)
def test_a_wrong_classifier_setting_fails_before_training(bad: dict) -> None:
    with pytest.raises(ValueError):
        ClassifierConfig(**bad)


def test_distillation_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="distill_alpha"):
        TrainConfig(distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(distill_temperature=0)
    with pytest.raises(ValueError, match="max_shift"):
        LargeConfig(max_shift=-1)


def test_the_large_checkpoint_round_trips(tiny_models_dir: Path, fmnist: Dataset) -> None:
    large = load_large(tiny_models_dir / "large")
    assert large.config == LargeConfig.tiny()
    assert large.classes == fmnist.classes and 0.0 < large.metrics["test_accuracy"] <= 1.0
    again = load_large(large.save(tiny_models_dir.parent / "large-copy"))
    np.testing.assert_array_equal(again.logits(fmnist.x_test[:32]), large.logits(fmnist.x_test[:32]))


def test_a_directory_that_is_no_large_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--preset large"):
        load_large(tmp_path)
    (tmp_path / "large.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        load_large(tmp_path)


def test_the_models_mode_checkpoint_and_bundle_agree(tiny_models_dir: Path, fmnist: Dataset) -> None:
    trained = load_trained(tiny_models_dir / "trained")
    bundle = load_bundle(tiny_models_dir / "bundle")
    assert trained.mode == bundle.manifest.mode == "models"
    large = load_large(tiny_models_dir / "large")
    # the cloud tier is the large model itself, unchanged by the small models' training (it sees
    # the raw input after the int8 wire encoding, a step of at most 1/255 of the range)
    cloud, reference = trained.exit_logits(fmnist.x_test[:64])[2], large.logits(fmnist.x_test[:64])
    np.testing.assert_allclose(cloud, reference, atol=0.05)
    assert (cloud.argmax(1) == reference.argmax(1)).mean() >= 0.95
    measured = parity(tiny_models_dir / "bundle", trained, fmnist.x_test[:300])
    assert measured["argmax_agreement_exit3"] >= 0.99 and measured["argmax_agreement"] >= 0.95


def test_the_models_mode_refuses_a_large_model_of_other_classes(
    tiny_models_dir: Path, fmnist: Dataset
) -> None:
    large = load_large(tiny_models_dir / "large")
    other = Dataset(
        fmnist.x_train[:100],
        fmnist.y_train[:100] % 5,
        fmnist.x_test[:10],
        fmnist.y_test[:10] % 5,
        tuple(f"c{i}" for i in range(5)),
    )
    with pytest.raises(ModelError, match="classes"):
        train_models(TrainConfig.tiny(), other, large, progress=False)


def test_the_cli_trains_the_large_model_then_a_models_bundle_and_a_distilled_cascade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    large = tmp_path / "large"
    assert main(["train", "--preset", "large", "--epochs", "1", "--subset", "600", "--out", str(large)]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    assert (large / "large.json").is_file()
    models = tmp_path / "models"
    args = ["--epochs", "1", "--subset", "600", "--teacher", str(large)]
    assert (
        main(
            ["train", "--preset", "models", *args, "--out", str(models), "--checkpoint", str(tmp_path / "mc")]
        )
        == 0
    )
    assert json.loads((models / "manifest.json").read_text())["mode"] == "models"
    cascade = tmp_path / "cascade"
    assert main(["train", *args, "--out", str(cascade), "--checkpoint", str(tmp_path / "cc")]) == 0
    history = load_trained(tmp_path / "cc").history
    assert load_bundle(cascade).manifest.mode == "partitioned" and history["loss"][0] > 0
    assert main(["train", "--preset", "large", "--quick", "--out", str(tmp_path / "x")]) == 2


def test_the_large_model_reads_its_settings_from_a_toml_file(tmp_path: Path) -> None:
    from edgecascade.device_sdk.errors import ConfigError
    from edgecascade.training.config import load_train_config

    path = tmp_path / "large.toml"
    path.write_text("epochs = 30\nmax_shift = 1\n[model]\nblocks = [[32], [64, 64]]\ndense = 128\n")
    config = load_train_config(path, LargeConfig())
    assert (config.epochs, config.max_shift) == (30, 1)
    assert config.model == ClassifierConfig(blocks=((32,), (64, 64)), dense=128)
    path.write_text("epoch = 30\n[model]\nwidth = 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) epoch, model.width"):
        load_train_config(path, LargeConfig())
    path.write_text("[model]\nblocks = [[0]]\n")
    with pytest.raises(ConfigError, match="blocks"):
        load_train_config(path, LargeConfig())


def test_the_mirrored_large_model_answers_an_image_and_its_mirror_image_alike(
    tiny_models_dir: Path, fmnist: Dataset
) -> None:
    large = load_large(tiny_models_dir / "large")
    assert large.config.mirror and "test_accuracy_unmirrored" in large.metrics
    images = fmnist.x_test[:64]
    np.testing.assert_allclose(large.logits(images), large.logits(images[:, :, ::-1]), atol=1e-4)
    # and so does its LiteRT partition in the models-mode bundle
    lite = run_partitions(load_bundle(tiny_models_dir / "bundle"), images)
    mirrored = run_partitions(load_bundle(tiny_models_dir / "bundle"), images[:, :, ::-1])
    np.testing.assert_allclose(lite.logits[2], mirrored.logits[2], atol=0.05)


def test_a_checkpoint_from_before_the_mirror_setting_reads_as_unmirrored() -> None:
    config = LargeConfig.tiny().to_dict()
    del config["mirror"]
    assert LargeConfig.from_dict(config).mirror is False
