"""Training results, configs, checkpoints and the progress bar."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.errors import ConfigError, ModelError
from edgecascade.training.calibration import NEVER_EXIT
from edgecascade.training.data import Dataset
from edgecascade.training.model import ModelConfig, build_stages
from edgecascade.training.train import (
    TqdmProgress,
    TrainConfig,
    TrainedModel,
    augmented,
    choose_thresholds,
    load_train_config,
    load_trained,
    train,
)


def test_thresholds_keep_the_cascade_as_accurate_as_the_final_exit(tiny_trained: TrainedModel) -> None:
    m, t = tiny_trained.metrics, tiny_trained.thresholds
    assert t[2] == 0.0 and all(0.0 <= x <= NEVER_EXIT for x in t[:2])
    # guaranteed by construction on the split the thresholds were chosen on
    assert m["val_cascade_accuracy"] >= m["val_accuracy_exit3"] - 1e-9
    assert sum(m[f"test_exit_share_exit{i}"] for i in (1, 2, 3)) == pytest.approx(1.0)
    assert m["test_accuracy_exit3"] > 0.5  # even the tiny model learned something


def test_choose_thresholds_uses_only_what_exit1_left_for_exit2() -> None:
    y = np.array([0, 0, 1, 1])
    # exit 1: sure and right on the first two, unsure and wrong on the last two
    p1 = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    # exit 2: wrong where exit 1 answers, right on what exit 1 leaves
    p2 = np.array([[0.1, 0.9], [0.1, 0.9], [0.3, 0.7], [0.3, 0.7]])
    p3 = np.eye(2)[y]
    t1, t2, t3 = choose_thresholds([p1, p2, p3], y, max_loss=0.0)
    assert t1 == pytest.approx(0.56, abs=0.006) and t3 == 0.0
    assert t2 == 0.0  # judged only on the two samples exit 1 left, where exit 2 is right (else: NEVER_EXIT)


def test_config_round_trips_through_json_types() -> None:
    config = TrainConfig.tiny()
    data = config.to_dict()
    data["loss_weights"] = list(data["loss_weights"])
    data["model"]["device_filters"] = list(data["model"]["device_filters"])
    assert TrainConfig.from_dict(data) == config
    assert TrainConfig.quick().epochs < TrainConfig().epochs
    del data["max_shift"]  # a checkpoint from before the setting: trained with 2-pixel shifts
    assert TrainConfig.from_dict(data).max_shift == 2


def test_checkpoint_round_trip(tiny_trained: TrainedModel, fmnist: Dataset, tmp_path: Path) -> None:
    tiny_trained.save(tmp_path / "ckpt")
    again = load_trained(tmp_path / "ckpt")
    assert again.thresholds == tiny_trained.thresholds and again.metrics == tiny_trained.metrics
    assert again.config == tiny_trained.config and again.classes == tiny_trained.classes
    x = fmnist.x_test[:16]
    for a, b in zip(again.exit_logits(x), tiny_trained.exit_logits(x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_progress_bar_counts_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    bar = TqdmProgress(epochs=2)
    bar.set_params({"steps": 3, "epochs": 2})
    bar.on_train_begin()
    total = bar._bar.total
    for epoch in range(2):
        bar.on_epoch_begin(epoch)
        for step in range(3):
            bar.on_train_batch_end(step, {"loss": 1.0})
    count = bar._bar.n
    bar.on_train_end()
    assert (total, count) == (6, 6)
    assert "epoch 2/2" in capsys.readouterr().err


def test_loading_an_incomplete_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a complete training checkpoint"):
        load_trained(tmp_path)


def test_train_config_from_toml_overrides_the_base(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text(
        'epochs = 12\nexit_score = "margin"\n\n[model]\ndropout = 0.1\ndevice_separable = [0, 1]\n'
    )
    config = load_train_config(path, TrainConfig.quick())
    assert config.epochs == 12 and config.exit_score == "margin" and config.batch_size == 128
    assert config.model.dropout == 0.1 and config.model.device_separable == (0, 1)
    assert config.model.device_filters == ModelConfig().device_filters  # untouched fields keep the base's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch = 3\n", "unknown setting(s) epoch"),
        ("[model]\nwidth = 3\n", "unknown setting(s) model.width"),
        ("[model]\ndevice_separable = [1]\n", "one count per device block"),
        ('epochs = "ten"\nexit_score = "vibes"\n', "epochs must be a whole number"),
        ("epochs = \n", "not valid TOML"),
        ("max_shift = -1\n", "max_shift must be a whole number >= 0"),
        ("label_smoothing = 1.0\n", "label_smoothing must be three numbers in [0, 1)"),
        ("label_smoothing = [0.1, 0.1]\n", "label_smoothing must be three numbers in [0, 1)"),
    ],
)
def test_bad_train_config_is_a_config_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_train_config(path, TrainConfig())
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_train_config(tmp_path / "missing.toml", TrainConfig())


def test_train_cli_refuses_a_bad_config_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgecascade.tools.cli import main

    path = tmp_path / "train.toml"
    path.write_text("[model]\ndropout = 'high'\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "bundle")]) != 0
    assert "train.toml" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "bundle")]) != 0
    assert "epochs must be a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_augmentation_shifts_only_when_asked() -> None:
    joint = build_stages(ModelConfig.tiny()).joint
    names = {n: [layer.name for layer in augmented(joint, n).layers] for n in (0, 2)}
    assert "flip" in names[0] and "shift" not in names[0]
    assert {"flip", "shift"} <= set(names[2])


def _dark_or_light(n: int) -> Dataset:
    """Two trivially separable classes: all-dark and all-light images."""
    y = np.arange(n) % 2
    x = np.broadcast_to((y * 200 + 20).astype(np.uint8)[:, None, None, None], (n, 28, 28, 1)).copy()
    return Dataset(x, y, x[:0], y[:0], classes=("dark", "light"))


def test_label_smoothing_keeps_its_exits_training_loss_above_the_targets_entropy() -> None:
    """An easy task's loss falls towards 0 on plain exits, not below the targets' entropy on smoothed ones."""
    data, smoothing = _dark_or_light(256), 0.5
    config = replace(
        TrainConfig.tiny(), epochs=2, val_fraction=0.0, augment=False, label_smoothing=(0.0, 0.0, smoothing)
    )
    history = train(config, data, progress=False).history
    targets = np.array([1 - smoothing / 2, smoothing / 2])
    entropy = float(-(targets * np.log(targets)).sum())
    assert max(history["exit1_loss"][-1], history["exit2_loss"][-1]) < entropy
    assert history["exit3_loss"][-1] >= entropy - 1e-3


def test_single_label_smoothing_number_applies_to_every_exit(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text("label_smoothing = 0.1\n")
    assert load_train_config(path, TrainConfig()).label_smoothing == (0.1, 0.1, 0.1)
    path.write_text("label_smoothing = [0, 0.1, 0.1]\n")
    assert load_train_config(path, TrainConfig()).label_smoothing == (0, 0.1, 0.1)
