"""Export a trained model as a bundle: one LiteRT (``.tflite``) partition per tier + ``manifest.json``.

Tensor names in the manifest are read back from the converted models with the same LiteRT
interpreter the tiers use, so :class:`device_sdk.runtime.PartitionRunner` finds its
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
import io
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from device_sdk.bundle import (
    MANIFEST,
    TIERS,
    ExitSpec,
    Manifest,
    PartitionSpec,
    TensorSpec,
    atomic_write,
    load_bundle,
    sha256_file,
    write_manifest,
)
from device_sdk.errors import ModelError
from device_sdk.runtime import interpreter_class, run_partitions
from device_sdk.signing import PrivateKeySource, sign_bundle
from training.calibration import softmax
from training.data import Dataset, load_fashion_mnist
from training.train import TrainConfig, TrainedModel, train

logger = logging.getLogger(__name__)

DEFAULT_NAME = "fashion-mnist-3exit"


def convert_stage(model: Any) -> bytes:
    """A Keras stage model as a float32 TFLite flatbuffer with a dynamic batch dimension."""
    chatter = io.StringIO()  # Keras prints the traced signature to stdout; keep it out of CLI output
    try:
        with contextlib.redirect_stdout(chatter):
            content = bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
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
    content: bytes, tier: str, num_classes: int
) -> tuple[TensorSpec, TensorSpec, TensorSpec | None]:
    """``(input, logits, features)`` specs of a converted partition, as LiteRT reports them."""
    interp = interpreter_class()(model_content=content)
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1:
        raise ModelError(f"{tier} partition has {len(inputs)} inputs, expected 1")
    if int(inputs[0]["shape_signature"][0]) != -1:
        raise ModelError(f"{tier} partition has a fixed batch size; expected a dynamic batch")
    logits = [d for d in outputs if len(d["shape"]) == 2]
    features = [d for d in outputs if len(d["shape"]) == 4]
    want_features = 0 if tier == TIERS[-1] else 1
    if len(logits) != 1 or len(features) != want_features or len(outputs) != 1 + want_features:
        raise ModelError(
            f"{tier} partition outputs {[(d['name'], list(d['shape'])) for d in outputs]}: expected one "
            f"(batch, classes) logits tensor" + (" and one rank-4 features tensor" if want_features else "")
        )
    logits_spec = _spec(logits[0])
    if logits_spec.shape != (num_classes,):
        raise ModelError(f"{tier} logits shape {logits_spec.shape}, expected ({num_classes},)")
    return _spec(inputs[0]), logits_spec, _spec(features[0]) if features else None


def export_bundle(
    trained: TrainedModel,
    out_dir: str | Path,
    name: str = DEFAULT_NAME,
    version: int = 1,
    classes: tuple[str, ...] | None = None,
    thresholds: tuple[float, float, float] | None = None,
    signing_key: PrivateKeySource | None = None,
) -> Manifest:
    """Convert the three stages to ``device/gateway/cloud.tflite`` in ``out_dir`` and write the manifest.

    With ``signing_key`` (the cloud's Ed25519 key or its PEM file) ``manifest.sig`` is written too.

    ``thresholds`` overrides the exit thresholds chosen in training (e.g. to trade accuracy
    for less traffic); the cascade metrics measured with the trained thresholds
    (``*_cascade_accuracy``, ``*_exit_share_*``) are then left out of the manifest.
    """
    out = Path(out_dir)
    classes = tuple(classes) if classes is not None else trained.classes
    metrics = dict(trained.metrics)
    if thresholds is None:
        thresholds = trained.thresholds
    else:
        if len(thresholds) != len(TIERS) or any(not t >= 0.0 for t in thresholds):
            raise ValueError(f"need {len(TIERS)} thresholds >= 0, got {thresholds}")
        metrics = {k: v for k, v in metrics.items() if "cascade" not in k and "exit_share" not in k}
    contents: dict[str, bytes] = {}
    specs: dict[str, tuple[TensorSpec, TensorSpec, TensorSpec | None]] = {}
    for tier in TIERS:
        contents[tier] = convert_stage(trained.stage(tier))
        specs[tier] = inspect_partition(contents[tier], tier, len(classes))
        logger.info("converted %s partition: %d bytes", tier, len(contents[tier]))
    for prev, nxt in itertools.pairwise(TIERS):
        features, next_input = specs[prev][2], specs[nxt][0]
        if features is None or features.shape != next_input.shape:
            raise ModelError(f"{prev} features {features} do not feed the {nxt} input {next_input}")
    if specs[TIERS[0]][0].shape != trained.input_spec.shape:
        raise ModelError(f"device input {specs[TIERS[0]][0].shape} != input spec {trained.input_spec.shape}")

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end there is no manifest
    _fsync_dir(out)
    partitions = []
    for tier, threshold in zip(TIERS, thresholds, strict=True):
        file = out / f"{tier}.tflite"
        atomic_write(file, contents[tier])
        tensor_in, logits, features = specs[tier]
        partitions.append(
            PartitionSpec(
                tier=tier,
                file=file.name,
                sha256=sha256_file(file),
                input=tensor_in,
                logits=logits,
                features=features,
                exit=ExitSpec(threshold=float(threshold), temperature=1.0, score="max_prob"),
            )
        )
    manifest = Manifest(
        name=name,
        version=version,
        classes=classes,
        input=trained.input_spec,
        partitions=tuple(partitions),
        metrics={k: float(v) for k, v in sorted(metrics.items())},
    )
    _fsync_dir(out)
    write_manifest(out, manifest)
    _fsync_dir(out)
    load_bundle(out)  # refuse to report success for a bundle the runtime would not accept
    if signing_key is not None:
        sign_bundle(out, signing_key)
    logger.info("exported %s v%d to %s", name, version, out)
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
    ``argmax_agreement`` (smallest share of samples, over the exits, whose predicted class
    is the same in both) and ``n``.
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
        agreement = min(agreement, float((p_lite.argmax(1) == p_keras.argmax(1)).mean()))
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
) -> Manifest:
    """Train on ``dataset`` (Fashion-MNIST when None) and export the bundle; the one call the CLI makes.

    With ``checkpoint_dir`` the Keras model is also saved there (for later fine-tuning). The
    neural caches' hit rule is calibrated on the validation split and stored in the manifest.
    """
    from training.cache_calibration import calibrate_cache
    from training.train import training_split

    data = dataset if dataset is not None else load_fashion_mnist()
    trained = train(train_config, data, progress=progress)
    if checkpoint_dir is not None:
        trained.save(checkpoint_dir)
    export_bundle(trained, out_dir, name=name, version=version, classes=data.classes)
    _, _, x_val, y_val = training_split(train_config, data)
    return calibrate_cache(out_dir, x_val, y_val)
