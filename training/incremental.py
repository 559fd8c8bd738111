"""Class-incremental learning: widen a trained model to classes operators added.

A label is an index into the class list, and the list only ever grows
(:func:`~edgecascade.device_sdk.model.bundle.check_classes_grow`). :func:`widen` gives a
:class:`~edgecascade.training.train.TrainedModel` ``k`` more outputs: every logits layer (each
exit head's final ``Dense``, by the ``*_logits`` naming every stage builder follows; in the
models mode each model's, nested models included) is rebuilt with ``N + k`` units, the old
kernel and bias copied into the first ``N`` columns. Everything else keeps its weights, names
and structure, so fine-tuning, calibration and export treat the widened model like any other.

**How the new columns start.** Each new column is the mean of the old columns (kernel and
bias), so a new class's logit starts as the mean of the old classes' logits for every
input: below the largest one unless all are equal, so the widened model gives every input
the same answer as before (neither dominant), yet close to a typical old class's logit, so
its probability and gradient are far from zero from the first step (not impossible). The
old logits are exactly the old model's. Several new classes start equal and part as soon
as their labels pull them apart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import check_classes_grow
from edgecascade.training.train import TrainedModel

logger = logging.getLogger(__name__)

LOGITS_SUFFIX = "_logits"
"""How every stage builder names a head's final Dense layer (:mod:`edgecascade.training.model`,
:mod:`edgecascade.training.classifier`)."""


def widen(trained: TrainedModel, classes: Sequence[str]) -> TrainedModel:
    """``trained`` with outputs for ``classes``, which must be its classes followed by new ones.

    Returns ``trained`` itself when nothing is added, else a new model (``trained`` is not
    changed) whose thresholds, temperatures and unknown-input rules are still the old ones:
    fit them again after fine-tuning. :class:`~edgecascade.device_sdk.errors.ClassListError`
    when ``classes`` shrinks, renames or reorders the model's.
    """
    added = check_classes_grow(trained.classes, classes)
    if not added:
        return trained
    old, new = len(trained.classes), len(classes)
    stages = [widen_model(trained.stage(tier), old, new) for tier in ("device", "gateway", "cloud")]
    config = dataclasses.replace(
        trained.config, model=dataclasses.replace(trained.config.model, num_classes=new)
    )
    logger.info("widened %d classes to %d: added %s", old, new, ", ".join(added))
    return dataclasses.replace(  # every other field (thresholds, temperatures, rules) as it was
        trained,
        device=stages[0],
        gateway=stages[1],
        cloud=stages[2],
        metrics=dict(trained.metrics),
        config=config,
        classes=tuple(classes),
        history=dict(trained.history),
    )


def widen_model(model: keras.Model, old: int, new: int) -> keras.Model:
    """A copy of the functional ``model`` whose ``*_logits`` Dense layers of ``old`` units have ``new``.

    Every layer keeps its name and weights; the widened layers keep their old columns and
    get new ones as the mean of the old (see the module docstring). A ModelError when the
    copy has no widened layer or its logits output is not ``new`` wide.
    """
    pairs: list[tuple[layers.Layer, layers.Layer]] = []
    widened: list[str] = []

    def clone(layer: layers.Layer) -> layers.Layer:
        if isinstance(layer, keras.Model):  # a nested model (a mirrored large model): widen it too
            inner = widen_model(layer, old, new)
            widened.append(layer.name)
            return inner
        config = layer.get_config()
        if isinstance(layer, layers.Dense) and layer.name.endswith(LOGITS_SUFFIX) and layer.units == old:
            config["units"] = new
            widened.append(layer.name)
        copy = type(layer).from_config(config)
        pairs.append((layer, copy))
        return copy

    wide = keras.models.clone_model(model, clone_function=clone)
    if not widened:
        raise ModelError(f"{model.name} has no {old}-unit '*{LOGITS_SUFFIX}' Dense layer to widen")
    for source, target in pairs:
        target.set_weights(
            [_widened(w, t.shape) for w, t in zip(source.get_weights(), target.weights, strict=True)]
        )
    logits = wide.outputs[0]
    if logits.shape[-1] != new:
        raise ModelError(f"{model.name}'s logits are {logits.shape[-1]} wide after widening, not {new}")
    return wide


def _widened(weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``weight`` (a Dense kernel ``(d, old)`` or bias ``(old,)``) grown along its last axis to ``shape``,
    the new columns the mean of the old; any other weight as it is."""
    if tuple(weight.shape) == tuple(shape):
        return weight
    extra = shape[-1] - weight.shape[-1]
    mean = weight.mean(axis=-1, keepdims=True)
    return np.concatenate([weight, np.repeat(mean, extra, axis=-1)], axis=-1).astype(weight.dtype)
