"""What a site does with the weights a round sends it: fine-tune them on its own data, measure them.

The model is the served version's three Keras stages (the checkpoint it was exported from);
a round's weights are every stage's weights in order (device, gateway, cloud), which is what
travels and what the strategies average. All three exits learn on the site's raw images,
with the exits' cross-entropies summed as in training. Batch-norm statistics stay frozen
(inference mode), as in incremental fine-tuning: a site's label-skewed batches would pull
them towards its own mix, and averaging such statistics across sites is not what the
global model was trained with.

FedProx adds ``mu / 2 * ||w - w_round||^2`` over the trainable weights, which keeps a site
with an unusual label mix from walking far from the round's model in its local epochs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from edgecascade.device_sdk.errors import UpdateError
from edgecascade.training.finetune import exit_logits, freeze_batch_norm
from edgecascade.training.train import TrainedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTraining:
    """How a site fine-tunes one round's weights."""

    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    proximal_mu: float = 0.0  # > 0: FedProx's proximal term
    seed: int = 0


def _stages(trained: TrainedModel) -> list[keras.Model]:
    return [trained.device, trained.gateway, trained.cloud]


def model_weights(trained: TrainedModel) -> list[np.ndarray]:
    """Every stage's weights, device first: what a round sends and a site returns."""
    return [np.asarray(w) for stage in _stages(trained) for w in stage.get_weights()]


def set_model_weights(trained: TrainedModel, arrays: Sequence[np.ndarray]) -> None:
    """Load ``arrays`` (as :func:`model_weights` orders them) into ``trained``.

    Raises :class:`UpdateError` (reason ``shape``) when they are not this model's weights:
    another architecture, or another version's class count.
    """
    expected = [w.shape for w in model_weights(trained)]
    got = [np.shape(a) for a in arrays]
    if got != expected:
        wrong = next(
            (
                f" (array {i}: {g} for {e})"
                for i, (g, e) in enumerate(zip(got, expected, strict=False))
                if g != e
            ),
            "",
        )
        raise UpdateError(
            "shape", f"{len(got)} arrays do not fit this model's {len(expected)} weights{wrong}"
        )
    start = 0
    for stage in _stages(trained):
        count = len(stage.get_weights())
        stage.set_weights(list(arrays[start : start + count]))
        start += count
    trained._joint = None  # rebuilt over the new weights on next use


def exit_accuracies(trained: TrainedModel, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Each exit's accuracy on raw images ``x``, as deployed (the cut features through the wire encoding)."""
    if not len(y):
        return [0.0, 0.0, 0.0]
    return [float(np.mean(np.argmax(logits, axis=1) == y)) for logits in exit_logits(trained, x)]


def train_locally(
    trained: TrainedModel, x: np.ndarray, y: np.ndarray, settings: LocalTraining
) -> dict[str, float]:
    """Fine-tune ``trained`` in place on raw images ``x`` with labels ``y``; returns loss and seconds."""
    keras.utils.set_random_seed(settings.seed)
    tic = time.monotonic()
    model = trained.joint
    stages = _stages(trained)
    freeze_batch_norm(stages, True)
    try:
        variables = list(model.trainable_variables)
        anchor = [tf.constant(v.numpy()) for v in variables]
        optimizer = keras.optimizers.Adam(settings.learning_rate)  # fresh each round
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        mu = tf.constant(settings.proximal_mu, tf.float32)

        @tf.function
        def step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                outputs = model(xb, training=True)
                loss = tf.add_n([cross_entropy(yb, logits) for logits in outputs])
                if settings.proximal_mu > 0:
                    drift = tf.add_n(
                        [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchor, strict=True)]
                    )
                    loss += mu / 2.0 * drift
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        data = (
            tf.data.Dataset.from_tensor_slices((trained.input_spec.normalise(x), y.astype(np.int64)))
            .shuffle(max(len(y), 1), seed=settings.seed, reshuffle_each_iteration=True)  # no data: no steps
            .batch(settings.batch_size)
        )
        losses = []
        for epoch in range(settings.epochs):
            total, batches = 0.0, 0
            for xb, yb in data:
                total += float(step(xb, yb))
                batches += 1
            losses.append(total / max(batches, 1))
            logger.info("local epoch %d/%d: loss %.4f", epoch + 1, settings.epochs, losses[-1])
    finally:
        freeze_batch_norm(stages, False)
    trained._joint = None
    return {"loss": losses[-1] if losses else 0.0, "train-seconds": time.monotonic() - tic}
