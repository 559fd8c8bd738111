"""Training for the models mode: a small device model and a medium gateway model under the large one.

The large cloud model is trained first, on its own (:mod:`edgecascade.training.large`).
The small and medium models are then trained side by side on the same split, each learning
the labels and the large model's soft targets (:mod:`edgecascade.training.distill`); the
large model is the cloud tier as it is. The three are calibrated like the partitioned
cascade's exits (a temperature each, a threshold for the device and the gateway on the
validation split) and exported as a bundle whose manifest says ``mode = "models"``.
"""

from __future__ import annotations

import logging
import time

import keras

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import MODELS, InputSpec
from edgecascade.training.calibration import NEVER_EXIT
from edgecascade.training.classifier import ClassifierConfig, build_classifier
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset
from edgecascade.training.large import LargeModel
from edgecascade.training.train import (
    TrainedModel,
    calibrate_and_measure,
    exit_losses,
    exit_targets,
    fit,
    training_split,
)

logger = logging.getLogger(__name__)


def train_models(
    config: TrainConfig,
    dataset: Dataset,
    large: LargeModel,
    *,
    small: ClassifierConfig | None = None,
    medium: ClassifierConfig | None = None,
    distill: bool = True,
    progress: bool = True,
) -> TrainedModel:
    """Train the small (device) and medium (gateway) models below ``large``; a models-mode TrainedModel.

    ``config`` gives the epochs, optimiser, augmentation, split and distillation settings
    (its ``model`` table, the partitioned network's shape, is not used). With ``distill``
    both learn from the large model's soft targets.
    """
    start = time.monotonic()
    if large.classes != dataset.classes or large.input_spec.shape != dataset.input_shape:
        raise ModelError(
            f"the large model was trained on classes {large.classes} and inputs {large.input_spec.shape}, "
            f"this dataset has {dataset.classes} and {dataset.input_shape}"
        )
    split = (large.config.train_subset, large.config.val_fraction, large.config.seed)
    if split != (config.train_subset, config.val_fraction, config.seed):
        logger.warning(
            "the large model's validation split differs from this run's: the thresholds are then "
            "calibrated partly on images the large model trained on"
        )
    keras.utils.set_random_seed(config.seed)
    input_spec = InputSpec(shape=dataset.input_shape)
    x_tr, y_tr, x_val, y_val = training_split(config, dataset)
    shape, classes = dataset.input_shape, dataset.num_classes
    device = build_classifier(small or ClassifierConfig.small(), shape, classes, "device")
    gateway = build_classifier(medium or ClassifierConfig.medium(), shape, classes, "gateway")
    logger.info(
        "training the models mode's device (%d parameters) and gateway (%d) models on %d images",
        device.count_params(),
        gateway.count_params(),
        len(x_tr),
    )
    inp = keras.Input(shape=shape, name="image")
    pair = keras.Model(inp, [device(inp), gateway(inp)], name="small_and_medium")
    x_fit = input_spec.normalise(x_tr)
    targets = exit_targets(config, y_tr, classes, x_fit, large.model if distill else None)
    history = fit(
        pair,
        x_fit,
        [targets, targets],
        exit_losses(config, 2, distill),
        config,
        progress=progress,
    )
    trained = TrainedModel(
        device=device,
        gateway=gateway,
        cloud=large.model,
        thresholds=(NEVER_EXIT, NEVER_EXIT, 0.0),
        metrics={},
        config=config,
        classes=dataset.classes,
        input_spec=input_spec,
        history=history,
        mode=MODELS,
    )
    return calibrate_and_measure(trained, dataset, x_val, y_val, start)
