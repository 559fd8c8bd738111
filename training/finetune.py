"""Incremental fine-tuning on hard examples plus a replay sample of the original data.

Hard examples arrive as features at a cut (by default) or with their raw input (when the
app opted in). What can change depends on that:

- **features only** (the default): the device stage is frozen, only the stages after the
  cut learn. Cut-1 features train the gateway and cloud stages (exits 2 and 3), cut-2
  features the cloud stage (exit 3). Replay images go through the frozen device stage once,
  to cut-1 features in their wire encoding, exactly as a device would send them. Devices
  keep their partition, and the features they send stay valid for the new version.
- **raw inputs for every example** (and ``train_device``): all three stages learn, on raw
  replay images and raw hard examples.
- **the models mode**: what a device or a gateway sends up is the input itself, so every
  example is an input for all three models, and all three learn (the device model only
  with ``train_device``).

The replay sample (original training images with their true labels) keeps the model from
forgetting what it knew; hard examples are weighted by ``hard_weight``. Batch-norm layers
stay frozen (inference mode): a few hundred hard examples next to a replay sample are a
skewed mix whose batch statistics should not replace those of the original training, and
mixing cut-1 and cut-2 rows in one batch (the other input zero-filled and weighted 0) is
only harmless when zero rows cannot move the statistics.

:func:`finetune` changes the stages of the :class:`~edgecascade.training.train.TrainedModel` it is
given; load a fresh copy of the checkpoint for it. :func:`gate_scores` measures a model the
way the evaluation gate (:mod:`edgecascade.training.gate`) compares them. Hard examples come
as a :class:`~edgecascade.training.hard_examples.HardSet`.

**Added classes** (a model widened by :func:`edgecascade.training.incremental.widen`) change
nothing here: their labels index the widened heads, the replay sample keeps the old
classes, and the hard examples teach the new ones. Which exits learn them follows the rule
above: with raw inputs all three; with features only the stages after the cut, and the
device exit, frozen, keeps its new columns as :func:`~edgecascade.training.incremental.widen`
started them (the mean of the old), so it never answers an added class: it answers such an
input with an old class, or passes it up when no old class is confident enough (or its
unknown-input rule flags it), and the gateway and cloud exits, which did learn, answer it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from edgecascade.device_sdk.model.bundle import MODELS
from edgecascade.device_sdk.wire.codec import through_wire
from edgecascade.training.calibration import cascade_predictions, softmax
from edgecascade.training.distill import DistillationLoss, soft_targets
from edgecascade.training.gate import Scores, pooled_accuracy
from edgecascade.training.hard_examples import HardSet
from edgecascade.training.train import RAW_ENCODING, TrainedModel

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, int, float], None]
"""Called after each epoch with (epoch, epochs, loss)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run."""

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 3e-4
    hard_weight: float = 2.0
    train_device: bool = True  # allowed only when every hard example carries its raw input
    seed: int = 0
    # classes the model had before it was widened (None: it was not): the replay images are
    # then also taught the model's own answers on the old classes (see keep_old_answers)
    known_classes: int | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0


def trains_device(trained: TrainedModel, hard: HardSet, config: FinetuneConfig) -> bool:
    """Whether the device stage may learn: only from raw inputs, and only if every example has one
    (in the models mode every example is one)."""
    if trained.mode == MODELS:
        return config.train_device and len(hard) > 0
    return config.train_device and len(hard.raw_y) > 0 and len(hard.raw_y) == len(hard)


def freeze_batch_norm(models: list[keras.Model], frozen: bool) -> None:
    for model in models:
        for layer in model.layers:  # stage models are flat: no nested models
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = not frozen


def _run(stage: keras.Model, x: np.ndarray, batch_size: int = 1024) -> list[np.ndarray]:
    """A stage's outputs for ``x``, called directly in batches.

    ``Model.predict`` traces a new graph function for every new input shape, which costs
    more than the whole computation on the few thousand inputs fine-tuning evaluates.
    """
    chunks = [stage(x[i : i + batch_size], training=False) for i in range(0, len(x), batch_size)]
    if isinstance(chunks[0], list | tuple):
        return [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(chunks[0]))]
    return [np.concatenate([np.asarray(c) for c in chunks])]


def _cut1(trained: TrainedModel, raw: np.ndarray) -> np.ndarray:
    """Cut-1 features of raw images from the device stage, through their wire encoding."""
    if not len(raw):
        return np.zeros((0, *trained.device.outputs[1].shape[1:]), np.float32)
    _, features = _run(trained.device, trained.input_spec.normalise(raw))
    return through_wire(features, trained.config.model.cut1_encoding)


def _after_cut1(trained: TrainedModel, cut1: np.ndarray) -> list[np.ndarray]:
    """Exit-2 and exit-3 logits for cut-1 features, cut 2 through its wire encoding."""
    logits2, cut2 = _run(trained.gateway, cut1)
    (logits3,) = _run(trained.cloud, through_wire(cut2, trained.config.model.cut2_encoding))
    return [logits2, logits3]


def exit_logits(trained: TrainedModel, raw: np.ndarray) -> list[np.ndarray]:
    """Logits of the three exits for raw images, as deployed (what ``TrainedModel.exit_logits`` gives)."""
    if trained.mode == MODELS:
        return _models_logits(trained, trained.input_spec.normalise(raw))
    logits1, _ = _run(trained.device, trained.input_spec.normalise(raw))
    return [logits1, *_after_cut1(trained, _cut1(trained, raw))]


def _models_logits(trained: TrainedModel, x: np.ndarray) -> list[np.ndarray]:
    """The models mode: each whole model on normalised inputs as its tier receives them."""
    sent = through_wire(x, RAW_ENCODING)
    return [_run(trained.device, x)[0], _run(trained.gateway, sent)[0], _run(trained.cloud, sent)[0]]


def _as_inputs(trained: TrainedModel, hard: HardSet) -> tuple[np.ndarray, np.ndarray]:
    """Hard examples as normalised inputs, and their labels: the raw ones, and in the models mode
    both cuts' (which carry the input)."""
    x, y = [trained.input_spec.normalise(hard.raw)], [hard.raw_y]
    if trained.mode == MODELS:
        x, y = [*x, hard.cut1, hard.cut2], [*y, hard.cut1_y, hard.cut2_y]
    return np.concatenate(x).astype(np.float32), np.concatenate(y)


class _EpochEnd(keras.callbacks.Callback):
    def __init__(self, epochs: int, report: EpochCallback | None) -> None:
        super().__init__()
        self._epochs, self._report = epochs, report

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._report is not None:
            self._report(epoch + 1, self._epochs, float((logs or {}).get("loss", float("nan"))))


def finetune(
    trained: TrainedModel,
    hard: HardSet,
    replay: tuple[np.ndarray, np.ndarray],
    config: FinetuneConfig,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune ``trained`` in place on ``hard`` plus ``replay`` (raw images, labels); returns a summary."""
    keras.utils.set_random_seed(config.seed)
    x_replay, y_replay = replay
    stages = [trained.device, trained.gateway, trained.cloud]
    device_learns = trains_device(trained, hard, config)
    loss: keras.losses.Loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trained.device.trainable = device_learns  # before freezing BN: this sets every layer of the stage
    freeze_batch_norm(stages, True)
    try:
        if device_learns or trained.mode == MODELS:  # every example reaches every exit as an input
            x_hard, y_hard = _as_inputs(trained, hard)
            x = np.concatenate([trained.input_spec.normalise(x_replay), x_hard])
            y = np.concatenate([y_replay, y_hard])
            w = np.concatenate([np.ones(len(y_replay)), np.full(len(y_hard), config.hard_weight)])
            model: keras.Model = trained.joint
            inputs: Any = x
            targets: list[np.ndarray] = [y, y, y]
            weights = [w, w, w]
            if config.known_classes is not None and config.known_classes < len(trained.classes):
                targets = keep_old_answers(_run(model, x), y, len(y_replay), config.known_classes)
                loss = DistillationLoss(config.distill_alpha, config.distill_temperature)
        else:
            model, inputs, targets, weights = _after_cut_problem(trained, hard, x_replay, y_replay, config)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=[loss] * len(targets))
        history = model.fit(
            inputs,
            targets,
            sample_weight=weights,
            batch_size=config.batch_size,
            epochs=config.epochs,
            shuffle=True,
            verbose=0,
            callbacks=[_EpochEnd(config.epochs, on_epoch)],
        )
    finally:
        trained.device.trainable = True
        freeze_batch_norm(stages, False)
    trained._joint = None  # rebuilt on next use, over the updated stages
    return {
        "stages": "device+gateway+cloud" if device_learns else "gateway+cloud",
        "replay": len(y_replay),
        "hard_raw": len(hard.raw_y),
        "hard_cut1": len(hard.cut1_y),
        "hard_cut2": len(hard.cut2_y),
        "loss": [float(v) for v in history.history.get("loss", [])],
    }


SHARP = 20.0
"""Logit margin of a target that is (almost) one class at the distillation temperatures used."""


def keep_old_answers(
    logits: list[np.ndarray], y: np.ndarray, replay_rows: int, known: int
) -> list[np.ndarray]:
    """Per exit, :class:`DistillationLoss` targets that keep a widened model's old answers.

    Class-incremental fine-tuning forgets: the added classes pull the old ones' decision
    boundaries (an added ``Ankle boot`` takes inputs from ``Sneaker`` and ``Sandal``). So the
    replay images (the first ``replay_rows``) are also taught the widened model's own
    logits before fine-tuning on the ``known`` old classes, exactly the old model's, with the
    added classes far below them (learning without forgetting, Li and Hoiem, 2016); the
    labelled examples' soft target is their label. ``logits``: each exit's, for every row.
    """
    width = logits[0].shape[1]
    one_hot = np.eye(width, dtype=np.float32)[y]
    targets = []
    for z in logits:
        teacher = SHARP * one_hot  # labelled examples: the label
        old = z[:replay_rows, :known]
        teacher[:replay_rows] = np.concatenate(
            [old, np.repeat(old.min(axis=1, keepdims=True) - SHARP, width - known, axis=1)], axis=1
        )
        targets.append(soft_targets(one_hot, teacher))
    return targets


def _after_cut_problem(
    trained: TrainedModel, hard: HardSet, x_replay: np.ndarray, y_replay: np.ndarray, config: FinetuneConfig
) -> tuple[keras.Model, Any, list[np.ndarray], list[np.ndarray]]:
    """The model, inputs, targets and weights to train the gateway and cloud stages only."""
    x1 = np.concatenate([_cut1(trained, x_replay), _cut1(trained, hard.raw), hard.cut1])
    y1 = np.concatenate([y_replay, hard.raw_y, hard.cut1_y])
    w1 = np.concatenate(
        [np.ones(len(y_replay)), np.full(len(hard.raw_y) + len(hard.cut1_y), config.hard_weight)]
    )
    cut1_in = keras.Input(shape=x1.shape[1:], name="cut1")
    logits2, cut2 = trained.gateway(cut1_in)
    logits3 = trained.cloud(cut2)
    if not len(hard.cut2_y):
        model = keras.Model(cut1_in, [logits2, logits3], name="after_cut1")
        return model, x1, [y1, y1], [w1, w1]
    # cut-2 examples reach only the cloud stage: a second input, rows of the other kind zero and weight 0
    n1, n2 = len(y1), len(hard.cut2_y)
    cut2_in = keras.Input(shape=hard.cut2.shape[1:], name="cut2")
    model = keras.Model([cut1_in, cut2_in], [logits2, logits3, trained.cloud(cut2_in)], name="after_cuts")
    inputs = [
        np.concatenate([x1, np.zeros((n2, *x1.shape[1:]), np.float32)]),
        np.concatenate([np.zeros((n1, *hard.cut2.shape[1:]), np.float32), hard.cut2]),
    ]
    y = np.concatenate([y1, hard.cut2_y])
    w_cut1 = np.concatenate([w1, np.zeros(n2)])
    w_cut2 = np.concatenate([np.zeros(n1), np.full(n2, config.hard_weight)])
    return model, inputs, [y, y, y], [w_cut1, w_cut1, w_cut2]


def _held_out_logits(trained: TrainedModel, hard: HardSet) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Per kind of held-out input: the logits of the exits it reaches (its cut and later), and labels.

    In the models mode every example is an input every model can answer."""
    if trained.mode == MODELS:
        x, y = _as_inputs(trained, hard)
        return [(_models_logits(trained, x), y)] if len(y) else []
    out: list[tuple[list[np.ndarray], np.ndarray]] = []
    if len(hard.raw_y):
        out.append((exit_logits(trained, hard.raw), hard.raw_y))
    if len(hard.cut1_y):
        out.append((_after_cut1(trained, hard.cut1), hard.cut1_y))
    if len(hard.cut2_y):
        out.append((_run(trained.cloud, hard.cut2), hard.cut2_y))
    return out


def hard_correct(trained: TrainedModel, hard: HardSet) -> list[np.ndarray]:
    """Right/wrong of every exit each held-out example reaches (its input's cut and later)."""
    return [z.argmax(1) == y for logits, y in _held_out_logits(trained, hard) for z in logits]


def _cascade_correct(trained: TrainedModel, logits: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Right/wrong of the cascade's answers from the last ``len(logits)`` exits, as deployed."""
    first = len(trained.thresholds) - len(logits)
    probs = [softmax(z, t) for z, t in zip(logits, trained.temperatures[first:], strict=True)]
    labels, _ = cascade_predictions(probs, trained.thresholds[first:], trained.config.exit_score)
    return np.asarray(labels == y)


def gate_scores(
    trained: TrainedModel, test: tuple[np.ndarray, np.ndarray], holdout: HardSet, known: int | None = None
) -> Scores:
    """Per-exit and cascade accuracy on the original test images, and the same on held-out hard examples.

    On the hard examples the exits are pooled over every (example, exit it reaches) pair and
    the cascade answers each example from its cut on. ``known`` (default: all of the model's)
    is how many classes both compared models have: held-out examples of later classes are
    measured apart (``new_classes``), and only when ``trained`` has those classes.
    """
    x_test, y_test = test
    logits = exit_logits(trained, x_test)
    old_part, added_part = holdout.by_class(len(trained.classes) if known is None else known)
    held = _held_out_logits(trained, old_part)
    cascade_new = [_cascade_correct(trained, z, y) for z, y in held]
    scores = Scores(
        original=tuple(float((z.argmax(1) == y_test).mean()) for z in logits),
        new=pooled_accuracy([z.argmax(1) == y for zs, y in held for z in zs]),
        n_original=len(y_test),
        n_new=len(old_part),
        cascade_original=float(_cascade_correct(trained, logits, y_test).mean()),
        cascade_new=pooled_accuracy(cascade_new),
        n_new_classes=len(added_part),
    )
    if not len(added_part) or len(trained.classes) <= int(max(_labels(added_part))):
        return scores  # no added classes held out, or a model without them: nothing to measure
    added = _held_out_logits(trained, added_part)
    return dataclasses.replace(
        scores,
        new_classes=pooled_accuracy([z.argmax(1) == y for zs, y in added for z in zs]),
        cascade_new_classes=pooled_accuracy([_cascade_correct(trained, z, y) for z, y in added]),
    )


def _labels(hard: HardSet) -> np.ndarray:
    return np.concatenate([hard.raw_y, hard.cut1_y, hard.cut2_y])
