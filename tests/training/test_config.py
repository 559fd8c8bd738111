"""Training configs: checks, JSON round trips and TOML files laid over a base."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.training.config import TrainConfig, load_train_config
from edgecascade.training.model import ModelConfig


def test_config_round_trips_through_json_types() -> None:
    config = TrainConfig.tiny()
    data = config.to_dict()
    data["loss_weights"] = list(data["loss_weights"])
    data["model"]["device_filters"] = list(data["model"]["device_filters"])
    assert TrainConfig.from_dict(data) == config
    assert TrainConfig.quick().epochs < TrainConfig().epochs
    del data["max_shift"]  # a checkpoint from before the setting: trained with 2-pixel shifts
    assert TrainConfig.from_dict(data).max_shift == 2


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


def test_single_label_smoothing_number_applies_to_every_exit(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text("label_smoothing = 0.1\n")
    assert load_train_config(path, TrainConfig()).label_smoothing == (0.1, 0.1, 0.1)
    path.write_text("label_smoothing = [0, 0.1, 0.1]\n")
    assert load_train_config(path, TrainConfig()).label_smoothing == (0, 0.1, 0.1)
