"""Incremental retraining, the model's side: the steps a retraining job runs between its I/O.

A job (the cloud runs one in its own process) takes the served bundle and the Keras
checkpoint it came from, and

1. loads the checkpoint twice, the current model and the candidate to fine-tune
   (:func:`load_for_finetuning`);
2. reads the labelled hard examples into training, held-out and calibration sets
   (:mod:`edgecascade.training.hard_examples`) and takes a replay sample, a validation
   subset and a test subset of the original data (:func:`original_slices`);
3. fine-tunes the candidate (:func:`edgecascade.training.finetune.finetune`), then fits its
   temperatures and thresholds again (:func:`recalibrate`) on the original validation subset
   plus the calibration slice: thresholds must hold on what the nodes see now, not only on
   what they saw before;
4. compares current and candidate in the evaluation gate (:func:`gate_candidate`);
5. exports a candidate that passed as a bundle for the served model's name and the
   candidate's classes (:func:`export_candidate`), its device partition the served one byte
   for byte when the device stage stayed frozen (:func:`reuse_device_partition`) and no
   class was added, its caches calibrated when the served model has caches, signed when a
   key is given.

**Classes added.** When operators named new classes the job passes the grown list (the
served classes followed by the new names) to :func:`load_for_finetuning`, which widens the
candidate (:mod:`edgecascade.training.incremental`); replay keeps the old classes, the hard
examples labelled with the new indices teach the new ones, and the gate measures the new
classes on the candidate alone.

The served bundle and the checkpoint are only read; everything is written under the
directory the caller names.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import (
    Bundle,
    Manifest,
    check_classes_grow,
    load_bundle,
    sign_bundle,
    write_manifest,
)
from edgecascade.device_sdk.model.signing import PrivateKeySource
from edgecascade.training.calibration import calibrate
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset
from edgecascade.training.export import export_bundle
from edgecascade.training.finetune import gate_scores
from edgecascade.training.gate import GateDecision, GateRule, decide
from edgecascade.training.hard_examples import HardSet
from edgecascade.training.incremental import widen
from edgecascade.training.train import TrainedModel, load_trained, training_split

logger = logging.getLogger(__name__)

Labelled = tuple[np.ndarray, np.ndarray]
"""Raw images (uint8) and their labels."""


@dataclass(frozen=True)
class OriginalSlices:
    """What a retraining run takes from the original data."""

    replay: Labelled  # from the training split: mixed into fine-tuning against forgetting
    validation: Labelled  # from the validation split: temperatures and thresholds are fitted on it
    test: Labelled  # from the test split: the gate compares exits on it


def load_for_finetuning(
    checkpoint: str | Path, served: Manifest, classes: Sequence[str] | None = None
) -> tuple[TrainedModel, TrainedModel]:
    """The current model and a second copy to fine-tune, both from ``checkpoint``.

    ``classes`` (default: the served ones) are what the candidate is trained for: the served
    classes followed by any operators added, for which the copy is widened
    (:func:`~edgecascade.training.incremental.widen`). Raises :class:`ModelError` when the
    checkpoint does not have the served model's classes, and
    :class:`~edgecascade.device_sdk.errors.ClassListError` when ``classes`` does not begin
    with them: growth is the one difference allowed.
    """
    classes = served.classes if classes is None else tuple(classes)
    added = check_classes_grow(served.classes, classes)
    current, candidate = load_trained(checkpoint), load_trained(checkpoint)
    if len(current.classes) != len(served.classes):
        raise ModelError(
            f"checkpoint {checkpoint} has {len(current.classes)} classes, "
            f"the served bundle {len(served.classes)}"
        )
    current = dataclasses.replace(current, classes=served.classes)  # the served names, as exported
    if added:
        candidate = widen(dataclasses.replace(candidate, classes=served.classes), classes)
    return current, candidate


def original_slices(
    data: Dataset,
    config: TrainConfig,
    *,
    replay_size: int,
    val_size: int,
    test_size: int,
    seed: int = 0,
    known: int | None = None,
) -> OriginalSlices:
    """A random replay sample of the training split ``config`` trained on, and the first
    ``val_size`` validation and ``test_size`` test images.

    With ``known`` (the number of classes the current model has) images of later classes
    are left out: the original data speaks for the classes the model was trained on.
    """
    x_train, y_train, x_val, y_val = training_split(config, data)
    x_test, y_test = data.x_test, data.y_test
    if known is not None:
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
            (x[y < known], y[y < known]) for x, y in ((x_train, y_train), (x_val, y_val), (x_test, y_test))
        )
    pick = np.sort(np.random.default_rng(seed).permutation(len(x_train))[:replay_size])
    return OriginalSlices(
        replay=(x_train[pick], y_train[pick]),
        validation=(x_val[:val_size], y_val[:val_size]),
        test=(x_test[:test_size], y_test[:test_size]),
    )


def recalibrate(candidate: TrainedModel, validation: Labelled, calibration: HardSet) -> dict[str, float]:
    """Fit the candidate's temperatures and thresholds on ``validation`` plus the calibration
    slice's raw inputs (the same accuracy rule as training); these become its metrics."""
    x_val, y_val = validation
    candidate.metrics = calibrate(
        candidate, np.concatenate([x_val, calibration.raw]), np.concatenate([y_val, calibration.raw_y])
    )
    return candidate.metrics


def gate_candidate(
    current: TrainedModel, candidate: TrainedModel, test: Labelled, holdout: HardSet, rule: GateRule
) -> GateDecision:
    """The gate's decision on both models measured alike; the candidate's metrics gain its test accuracies.

    When the candidate has more classes, the held-out examples of those are measured on it
    alone (see :mod:`edgecascade.training.gate`).
    """
    known = len(current.classes)
    decision = decide(
        gate_scores(current, test, holdout, known), gate_scores(candidate, test, holdout, known), rule
    )
    logger.info("gate: %s", decision.reason)
    candidate.metrics |= {f"test_accuracy_exit{i}": a for i, a in enumerate(decision.candidate.original, 1)}
    return decision


def export_candidate(
    candidate: TrainedModel,
    out: Path,
    served: Bundle,
    version: int,
    *,
    replay: Labelled,
    validation: Labelled,
    device_frozen: bool,
    examples: Labelled | None = None,
    signing_key: PrivateKeySource | None = None,
) -> Manifest:
    """Export ``candidate`` to ``out`` as version ``version`` of the served model.

    Same name and partition precisions as ``served``, the candidate's classes (the served
    ones, followed by any added). With ``device_frozen`` (the device stage did not learn) the
    served device partition is kept byte for byte, unless classes were added: its exit head
    then has new outputs, so it is exported again (the same frozen weights, the same cut-1
    features up to the precision's rounding). Caches
    are calibrated on ``validation`` (projections fitted on the replay images) when the
    served model has any, and so are key-space unknown-input rules (class statistics fitted
    on the replay images and the labelled raw ``examples``, which hold any added class); the
    bundle is signed last, after every manifest change.
    """
    manifest = served.manifest
    export_bundle(
        candidate,
        out,
        name=manifest.name,
        version=version,
        classes=candidate.classes,
        representative=replay[0],
        precisions={p.tier: p.precision for p in manifest.partitions},
    )
    grew = len(candidate.classes) > len(manifest.classes)
    if device_frozen and not grew:
        reuse_device_partition(out, served)
    elif device_frozen:
        logger.info("classes added: exporting the frozen device stage again for its wider exit head")
    if any(p.cache is not None for p in manifest.partitions):
        from edgecascade.training.cache_calibration import calibrate_cache

        calibrate_cache(out, *validation, fit_images=replay[0])
    keyed = [p.unknown for p in manifest.partitions if p.unknown is not None and p.unknown.statistics]
    if keyed:
        from edgecascade.training.unknown_calibration import calibrate_unknown_keys

        x_fit, y_fit = replay
        if examples is not None:
            x_fit, y_fit = np.concatenate([x_fit, examples[0]]), np.concatenate([y_fit, examples[1]])
        calibrate_unknown_keys(out, x_fit, y_fit, validation[0], keyed[0].known_fpr)
    if signing_key is not None:
        sign_bundle(out, signing_key)
    return load_bundle(out).manifest


def reuse_device_partition(out: Path, served: Bundle) -> Manifest:
    """Put the served device partition into the exported bundle ``out``, keeping the new exit settings.

    The device stage did not change, so devices keep their partition byte for byte and the
    cut-1 features they send stay exactly what the new gateway partition was trained on.
    """
    exported = load_bundle(out).manifest
    new_device, old_device = exported.partition("device"), served.manifest.partition("device")
    if new_device.file != old_device.file:
        (out / new_device.file).unlink()
    shutil.copyfile(served.file("device"), out / old_device.file)
    device = dataclasses.replace(
        old_device, exit=new_device.exit, unknown=new_device.unknown, drift=new_device.drift, cache=None
    )
    manifest = dataclasses.replace(exported, partitions=(device, *exported.partitions[1:]))
    write_manifest(out, manifest)
    return load_bundle(out).manifest
