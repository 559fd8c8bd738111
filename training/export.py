"""Export a trained model as a bundle: one LiteRT (``.tflite``) partition per tier + ``manifest.json``.

Tensor names in the manifest are read back from the converted models with the same LiteRT
interpreter the tiers use, so :class:`edgecascade.device_sdk.model.runtime.PartitionRunner` finds its
outputs by name. Logits and features are told apart by rank (2 vs 4), not by position,
because the converter does not promise an output order.

Crash safety: all three partitions are converted and inspected in memory first; only then
is the old manifest removed, each file written to a temp file, fsynced and renamed into
place, and the new manifest written last. A crash at any point leaves either the previous
bundle untouched, a directory without a manifest (refused by ``load_bundle``), or the
complete new bundle, never a manifest that names missing or half-written files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.novelty import KEY_SCORE
from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.files import atomic_write, sha256_file
from edgecascade.device_sdk.model.bundle import (
    MANIFEST,
    MODELS,
    PARTITIONED,
    PRECISIONS,
    TIERS,
    ExitSpec,
    Manifest,
    PartitionSpec,
    TensorSpec,
    load_bundle,
    sign_bundle,
    write_manifest,
)
from edgecascade.device_sdk.model.runtime import interpreter_class
from edgecascade.device_sdk.model.signing import PrivateKeySource
from edgecascade.training.calibration import softmax
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset, load_fashion_mnist
from edgecascade.training.large import LargeModel
from edgecascade.training.train import TrainedModel, train, training_split

logger = logging.getLogger(__name__)

DEFAULT_NAME = "fashion-mnist-3exit"
MODELS_NAME = "fashion-mnist-3models"


def convert_stage(model: Any, precision: str = "float32", representative: np.ndarray | None = None) -> bytes:
    """A Keras stage model as a TFLite flatbuffer with a dynamic batch dimension.

    ``precision``: ``float32``; ``float16`` (weights stored as float16, half the size);
    ``int8`` (post-training full-integer quantisation of weights and activations, ranges
    measured on ``representative`` inputs of the stage; inputs and outputs stay float32
    so the partition's interface does not change).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 conversion needs representative inputs")
        samples = np.asarray(representative, dtype=np.float32)
        converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(len(samples)))
    chatter = io.StringIO()  # Keras prints the traced signature to stdout; keep it out of CLI output
    try:
        with contextlib.redirect_stdout(chatter):
            content = bytes(converter.convert())
    except Exception as exc:  # the converter raises assorted TF/MLIR errors
        raise ModelError(f"cannot convert the {model.name} stage to TFLite: {exc}") from exc
    finally:
        logger.debug("converter output for %s:\n%s", model.name, chatter.getvalue())
    return content


def _spec(detail: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"][1:]),
        dtype=np.dtype(detail["dtype"]).name,
    )


def inspect_partition(
    content: bytes, tier: str, num_classes: int, cut: bool | None = None
) -> tuple[TensorSpec, TensorSpec, TensorSpec | None]:
    """``(input, logits, features)`` specs of a converted partition, as LiteRT reports them.

    ``cut``: whether the partition must output cut features (None: every tier but the last).
    """
    interp = interpreter_class()(model_content=content)
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1:
        raise ModelError(f"{tier} partition has {len(inputs)} inputs, expected 1")
    if int(inputs[0]["shape_signature"][0]) != -1:
        raise ModelError(f"{tier} partition has a fixed batch size; expected a dynamic batch")
    logits = [d for d in outputs if len(d["shape"]) == 2]
    features = [d for d in outputs if len(d["shape"]) == 4]
    want_features = int(tier != TIERS[-1] if cut is None else cut)
    if len(logits) != 1 or len(features) != want_features or len(outputs) != 1 + want_features:
        raise ModelError(
            f"{tier} partition outputs {[(d['name'], list(d['shape'])) for d in outputs]}: expected one "
            f"(batch, classes) logits tensor" + (" and one rank-4 features tensor" if want_features else "")
        )
    logits_spec = _spec(logits[0])
    if logits_spec.shape != (num_classes,):
        raise ModelError(f"{tier} logits shape {logits_spec.shape}, expected ({num_classes},)")
    return _spec(inputs[0]), logits_spec, _spec(features[0]) if features else None


def _partition_spec(
    tier: str, content: bytes, num_classes: int, exit_spec: ExitSpec, encoding: str, precision: str, mode: str
) -> PartitionSpec:
    """The manifest entry of a converted partition (``file`` and ``sha256`` filled in when written)."""
    whole = mode == MODELS  # a whole model on the raw input: no cut, the input itself goes up
    tensor_in, logits, features = inspect_partition(content, tier, num_classes, cut=False if whole else None)
    sends_up = tier != TIERS[-1]
    return PartitionSpec(
        tier=tier,
        file=f"{tier}.tflite",
        sha256="",
        input=tensor_in,
        logits=logits,
        features=features,
        exit=exit_spec,
        encoding=encoding if sends_up else "float32",
        precision=precision,
    )


def export_bundle(
    trained: TrainedModel,
    out_dir: str | Path,
    name: str = DEFAULT_NAME,
    version: int = 1,
    classes: tuple[str, ...] | None = None,
    thresholds: tuple[float, float, float] | None = None,
    *,
    representative: np.ndarray | None = None,
    holdout: tuple[np.ndarray, np.ndarray] | None = None,
    precisions: dict[str, str] | None = None,
    signing_key: PrivateKeySource | None = None,
) -> Manifest:
    """Convert the three stages to ``device/gateway/cloud.tflite`` in ``out_dir`` and write the manifest.

    With ``signing_key`` (the cloud's Ed25519 key or its PEM file) ``manifest.sig`` is written too.

    ``thresholds`` overrides the exit thresholds chosen in training (e.g. to trade accuracy
    for less traffic); what was measured with the trained thresholds is then left out of the
    manifest: the cascade metrics (``*_cascade_accuracy``, ``*_exit_share_*``) and the drift
    reference (its device share would not be the device's).

    With ``representative`` raw training images and a labelled ``holdout`` (raw validation
    images, labels), every tier is also converted to float16 and int8, each variant's size
    and accuracy go into the manifest metrics (``variant_*``), and the precisions are
    chosen by :func:`edgecascade.training.variants.choose_precisions` unless ``precisions`` names them.
    Without them every partition is float32 (or as ``precisions`` says, given
    ``representative`` for int8).
    """
    from edgecascade.training.variants import build_variants, choose_precisions, stage_inputs, variant_metrics

    out = Path(out_dir)
    classes = tuple(classes) if classes is not None else trained.classes
    metrics = dict(trained.metrics)
    drift = trained.drift
    if thresholds is None:
        thresholds = trained.thresholds
    else:
        drift = None
        if len(thresholds) != len(TIERS) or any(not t >= 0.0 for t in thresholds):
            raise ValueError(f"need {len(TIERS)} thresholds >= 0, got {thresholds}")
        metrics = {k: v for k, v in metrics.items() if "cascade" not in k and "exit_share" not in k}
    wanted = dict.fromkeys(TIERS, "float32") | (precisions or {})
    if unknown := {t: p for t, p in wanted.items() if t not in TIERS or p not in PRECISIONS}:
        raise ValueError(f"unknown tiers or precisions {unknown}; known: {TIERS} x {PRECISIONS}")
    measure = representative is not None and holdout is not None
    to_convert = {(t, p) for t in TIERS for p in (PRECISIONS if measure else ("float32", wanted[t]))}
    rep_inputs = stage_inputs(trained, representative[:256]) if representative is not None else {}
    encodings = (*trained.encodings, "float32")
    exits = {
        tier: ExitSpec(threshold=float(t), temperature=float(temp), score=trained.config.exit_score)
        for tier, t, temp in zip(TIERS, thresholds, trained.temperatures, strict=True)
    }
    contents: dict[tuple[str, str], bytes] = {}
    specs: dict[tuple[str, str], PartitionSpec] = {}
    for tier, precision in sorted(to_convert):
        if precision == "int8" and tier not in rep_inputs:
            raise ValueError("an int8 partition needs representative training images")
        content = convert_stage(trained.stage(tier), precision, rep_inputs.get(tier))
        contents[tier, precision] = content
        specs[tier, precision] = _partition_spec(
            tier, content, len(classes), exits[tier], encodings[TIERS.index(tier)], precision, trained.mode
        )
        logger.info("converted %s partition (%s): %d bytes", tier, precision, len(content))
    if measure:
        assert holdout is not None
        variants = build_variants(trained, specs, contents, holdout)
        metrics |= variant_metrics(variants)
        wanted = choose_precisions(variants) | (precisions or {})
    for prev, nxt in itertools.pairwise(TIERS):
        features, next_input = specs[prev, wanted[prev]].features, specs[nxt, wanted[nxt]].input
        if trained.mode == MODELS:
            features = specs[prev, wanted[prev]].input
        if features is None or features.shape != next_input.shape:
            raise ModelError(f"{prev} features {features} do not feed the {nxt} input {next_input}")
    if specs[TIERS[0], wanted[TIERS[0]]].input.shape != trained.input_spec.shape:
        raise ModelError(f"device input does not match the input spec {trained.input_spec.shape}")

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end there is no manifest
    _fsync_dir(out)
    partitions = []
    for tier in TIERS:
        spec = specs[tier, wanted[tier]]
        file = out / spec.file
        atomic_write(file, contents[tier, wanted[tier]])
        rule = trained.unknown[TIERS.index(tier)]  # the exit's unknown-input rule
        reference = drift if tier == TIERS[0] else None  # the device's drift reference
        partitions.append(dataclasses.replace(spec, sha256=sha256_file(file), unknown=rule, drift=reference))
    manifest = Manifest(
        name=name,
        version=version,
        classes=classes,
        input=trained.input_spec,
        partitions=tuple(partitions),
        metrics={k: float(v) for k, v in sorted(metrics.items())},
        mode=trained.mode,
    )
    _fsync_dir(out)
    write_manifest(out, manifest)
    _fsync_dir(out)
    load_bundle(out)  # refuse to report success for a bundle the runtime would not accept
    if signing_key is not None:
        sign_bundle(out, signing_key)
    logger.info("exported %s v%d to %s (%s)", name, version, out, wanted)
    return manifest


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def parity(
    bundle_path: str | Path, trained: TrainedModel, x: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """How closely the chained LiteRT partitions reproduce the Keras model on raw images ``x``.

    Returns ``max_abs_diff_exit{1,2,3}`` (largest absolute difference of exit
    probabilities, with each exit's manifest temperature), their maximum ``max_abs_diff``,
    ``argmax_agreement_exit{1,2,3}`` (share of samples whose predicted class is the same in
    both), their minimum ``argmax_agreement``, and ``n``.
    """
    lite = run_partitions(load_bundle(bundle_path), x, batch_size)
    keras_logits = trained.exit_logits(x)
    result: dict[str, float] = {"n": float(len(x))}
    agreement = 1.0
    for i, (p_lite, k_logits, t) in enumerate(
        zip(lite.probs, keras_logits, lite.temperatures, strict=True), 1
    ):
        p_keras = softmax(k_logits, t)
        result[f"max_abs_diff_exit{i}"] = float(np.abs(p_lite - p_keras).max())
        result[f"argmax_agreement_exit{i}"] = float((p_lite.argmax(1) == p_keras.argmax(1)).mean())
        agreement = min(agreement, result[f"argmax_agreement_exit{i}"])
    result["max_abs_diff"] = max(result[f"max_abs_diff_exit{i}"] for i in (1, 2, 3))
    result["argmax_agreement"] = agreement
    return result


def train_and_export(
    train_config: TrainConfig,
    out_dir: str | Path,
    dataset: Dataset | None = None,
    version: int = 1,
    progress: bool = True,
    name: str = DEFAULT_NAME,
    checkpoint_dir: str | Path | None = None,
    *,
    large: LargeModel | None = None,
    mode: str = PARTITIONED,
) -> Manifest:
    """Train on ``dataset`` (Fashion-MNIST when None) and export the bundle; the one call the CLI makes.

    With ``checkpoint_dir`` the Keras model is also saved there (for later fine-tuning). The
    partitions' precisions are chosen, and the neural caches' hit rule calibrated, on the
    validation split; both are stored in the manifest. With ``large`` (the large model) the
    partitioned cascade's exits learn its soft targets; the models ``mode`` needs it, as the
    cloud's model and the small and medium models' teacher.
    """
    from edgecascade.training.cache_calibration import calibrate_cache
    from edgecascade.training.unknown_calibration import calibrate_unknown_keys

    data = dataset if dataset is not None else load_fashion_mnist()
    if mode == MODELS:
        if large is None:
            raise ModelError("the models mode needs the large model: train it with --preset large")
        from edgecascade.training.models_mode import train_models

        trained = train_models(train_config, data, large, progress=progress)
    else:
        trained = train(train_config, data, progress=progress, teacher=large.model if large else None)
    if checkpoint_dir is not None:
        trained.save(checkpoint_dir)
    x_train, y_train, x_val, y_val = training_split(train_config, data)
    export_bundle(
        trained,
        out_dir,
        name=name if mode != MODELS or name != DEFAULT_NAME else MODELS_NAME,
        version=version,
        classes=data.classes,
        representative=x_train,
        holdout=(x_val, y_val),
    )
    manifest = calibrate_cache(out_dir, x_val, y_val, fit_images=x_train)
    if train_config.unknown_score != KEY_SCORE:
        return manifest
    return calibrate_unknown_keys(out_dir, x_train, y_train, x_val, train_config.unknown_fpr)
