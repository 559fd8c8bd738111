"""A site's local fine-tuning on the tiny model: weights in and out, loss, FedProx, frozen batch norm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.errors import UpdateError
from edgecascade.federation.local_training import (
    LocalTraining,
    exit_accuracies,
    model_weights,
    set_model_weights,
    train_locally,
)

SETTINGS = LocalTraining(epochs=2, batch_size=32, learning_rate=1e-3, seed=5)


def fresh(tiny_model_dir: Path) -> Any:
    """A copy of the tiny model that a test may change (``tiny_trained`` is shared)."""
    from edgecascade.training.train import load_trained

    return load_trained(tiny_model_dir / "trained")


def summed_loss(trained: Any, x: np.ndarray, y: np.ndarray) -> float:
    """The three exits' cross-entropies summed, as local training minimises them (inference mode)."""
    import keras

    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    outputs = trained.joint(trained.input_spec.normalise(x), training=False)
    return float(sum(float(cross_entropy(y, logits)) for logits in outputs))


def batch_norm_weights(trained: Any) -> list[np.ndarray]:
    """Every batch-norm layer's gamma, beta, moving mean and moving variance."""
    import keras

    stages = [trained.device, trained.gateway, trained.cloud]
    return [
        np.asarray(w)
        for stage in stages
        for layer in stage.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.get_weights()
    ]


def drift(weights: list[np.ndarray], start: list[np.ndarray]) -> float:
    return sum(float(np.sum((w - s) ** 2)) for w, s in zip(weights, start, strict=True))


@dataclass
class Trained:
    """One local fine-tuning run: the model before and after, and what it reported."""

    start: list[np.ndarray]
    batch_norm: list[np.ndarray]
    after: Any
    summary: dict[str, float]
    loss_before: float


@pytest.fixture(scope="module")
def site_data(fmnist: Any) -> tuple[np.ndarray, np.ndarray]:
    """A site's labelled images: 384 test images the tiny model was not trained on."""
    return fmnist.x_test[:384], fmnist.y_test[:384]


@pytest.fixture(scope="module")
def trained_once(tiny_model_dir: Path, site_data: tuple[np.ndarray, np.ndarray]) -> Trained:
    x, y = site_data
    model = fresh(tiny_model_dir)
    start, batch_norm, before = model_weights(model), batch_norm_weights(model), summed_loss(model, x, y)
    summary = train_locally(model, x, y, SETTINGS)
    return Trained(start, batch_norm, model, summary, before)


def test_model_weights_round_trip(tiny_model_dir: Path, site_data: tuple[np.ndarray, np.ndarray]) -> None:
    model = fresh(tiny_model_dir)
    x = site_data[0][:64]
    start = model_weights(model)
    assert len(start) == sum(len(s.get_weights()) for s in (model.device, model.gateway, model.cloud))
    first = model.joint(model.input_spec.normalise(x), training=False)[2].numpy()
    moved = [w + np.float32(0.01) for w in start]
    set_model_weights(model, moved)
    assert all(np.array_equal(a, b) for a, b in zip(model_weights(model), moved, strict=True))
    second = model.joint(model.input_spec.normalise(x), training=False)[2].numpy()
    assert not np.allclose(first, second)  # the joint model computes with the new weights
    set_model_weights(model, start)
    assert all(np.array_equal(a, b) for a, b in zip(model_weights(model), start, strict=True))
    np.testing.assert_allclose(
        model.joint(model.input_spec.normalise(x), training=False)[2], first, atol=1e-5
    )


def test_weights_of_another_model_are_refused_as_shape(tiny_trained: Any) -> None:
    start = model_weights(tiny_trained)
    k = next(i for i, w in enumerate(start) if w.ndim == 2 and w.shape[0] != w.shape[1])
    transposed = [w.T if i == k else w for i, w in enumerate(start)]
    with pytest.raises(UpdateError, check=lambda e: e.reason == "shape") as info:
        set_model_weights(tiny_trained, transposed)
    assert f"array {k}: {start[k].shape[::-1]} for {start[k].shape}" in str(info.value)
    with pytest.raises(UpdateError, check=lambda e: e.reason == "shape") as info:
        set_model_weights(tiny_trained, start[:-1])
    assert f"{len(start) - 1} arrays do not fit this model's {len(start)} weights" in str(info.value)
    with pytest.raises(UpdateError, check=lambda e: e.reason == "shape"):
        set_model_weights(tiny_trained, [*start, np.zeros(3, np.float32)])
    # nothing was loaded by the refused calls
    assert all(np.array_equal(a, b) for a, b in zip(model_weights(tiny_trained), start, strict=True))


def test_local_training_lowers_the_loss_and_moves_the_weights(
    trained_once: Trained, site_data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = site_data
    after = summed_loss(trained_once.after, x, y)
    assert after < 0.9 * trained_once.loss_before, (trained_once.loss_before, after)
    assert set(trained_once.summary) == {"loss", "train-seconds"}
    assert np.isfinite(trained_once.summary["loss"]) and trained_once.summary["train-seconds"] > 0
    weights = model_weights(trained_once.after)
    assert [w.shape for w in weights] == [w.shape for w in trained_once.start]
    changed = sum(not np.array_equal(w, s) for w, s in zip(weights, trained_once.start, strict=True))
    assert changed == len(weights) - len(trained_once.batch_norm) > 0  # every kernel and bias learned
    assert drift(weights, trained_once.start) > 0.1


def test_batch_norm_stays_frozen(trained_once: Trained) -> None:
    import keras

    after = batch_norm_weights(trained_once.after)
    assert len(after) == len(trained_once.batch_norm) > 0
    for a, b in zip(after, trained_once.batch_norm, strict=True):
        np.testing.assert_array_equal(a, b)
    stages = [trained_once.after.device, trained_once.after.gateway, trained_once.after.cloud]
    norms = [
        layer for s in stages for layer in s.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert all(layer.trainable for layer in norms)  # unfrozen again afterwards


def test_a_proximal_term_keeps_the_weights_near_the_round_start(
    tiny_model_dir: Path, trained_once: Trained, site_data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = site_data
    model = fresh(tiny_model_dir)
    train_locally(model, x, y, LocalTraining(**{**SETTINGS.__dict__, "proximal_mu": 1.0}))
    plain = drift(model_weights(trained_once.after), trained_once.start)
    prox = drift(model_weights(model), trained_once.start)
    assert 0 < prox < 0.5 * plain, (prox, plain)


def test_no_data_trains_nothing_and_scores_zero(tiny_model_dir: Path) -> None:
    model = fresh(tiny_model_dir)
    start = model_weights(model)
    x, y = np.zeros((0, *model.input_spec.shape), np.uint8), np.zeros(0, np.int64)
    assert exit_accuracies(model, x, y) == [0.0, 0.0, 0.0]
    assert train_locally(model, x, y, SETTINGS)["loss"] == 0.0
    assert all(np.array_equal(a, b) for a, b in zip(model_weights(model), start, strict=True))


def test_exit_accuracies_are_the_deployed_exits(
    tiny_trained: Any, site_data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = site_data
    accuracies = exit_accuracies(tiny_trained, x, y)
    deployed = [float(np.mean(np.argmax(z, axis=1) == y)) for z in tiny_trained.exit_logits(x)]
    assert accuracies == pytest.approx(deployed, abs=0.01)
    assert all(0.5 < a <= 1.0 for a in accuracies)  # the tiny model is far better than chance (0.1)
