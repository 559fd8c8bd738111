"""Training results, checkpoints, augmentation and the progress bar."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.errors import ModelError
from edgecascade.training.calibration import NEVER_EXIT
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset
from edgecascade.training.model import ModelConfig, build_stages
from edgecascade.training.train import TqdmProgress, TrainedModel, augmented, load_trained, train


def test_thresholds_keep_the_cascade_as_accurate_as_the_final_exit(tiny_trained: TrainedModel) -> None:
    m, t = tiny_trained.metrics, tiny_trained.thresholds
    assert t[2] == 0.0 and all(0.0 <= x <= NEVER_EXIT for x in t[:2])
    # guaranteed by construction on the split the thresholds were chosen on
    assert m["val_cascade_accuracy"] >= m["val_accuracy_exit3"] - 1e-9
    assert sum(m[f"test_exit_share_exit{i}"] for i in (1, 2, 3)) == pytest.approx(1.0)
    assert m["test_accuracy_exit3"] > 0.5  # even the tiny model learned something


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
