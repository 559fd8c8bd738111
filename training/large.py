"""The large cloud model: one strong classifier, trained on its own (``edgecascade train --preset large``).

It serves two purposes: it is the cloud's model in the models mode (a small model on the
device, the large one in the cloud), and it is the teacher whose soft targets the
partitioned cascade's exits and the models mode's small and medium models learn from
(:mod:`edgecascade.training.distill`). A checkpoint is a directory with ``large.keras`` and
``large.json`` (settings, classes, input normalisation, temperature, measured accuracy).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import InputSpec
from edgecascade.training.calibration import fit_temperature
from edgecascade.training.classifier import ClassifierConfig, build_classifier
from edgecascade.training.config import fit_problems
from edgecascade.training.data import Dataset
from edgecascade.training.model import is_fraction
from edgecascade.training.train import fit, training_split

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "large.json"
MODEL_FILE = "large.keras"


@dataclass(frozen=True)
class LargeConfig:
    """How the large model is trained. ``LargeConfig()`` is the full preset (about 20 min on 2 cores)."""

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 3e-3
    val_fraction: float = 0.1
    train_subset: int | None = None
    seed: int = 0
    augment: bool = True
    max_shift: int = 2
    label_smoothing: float = 0.0
    mirror: bool = True  # answer with the mean logits of the image and its mirror image (twice the compute)
    model: ClassifierConfig = field(default_factory=ClassifierConfig.large)

    def __post_init__(self) -> None:
        """ValueError on a wrong setting, before any training time is spent."""
        problems = fit_problems(self)
        if not is_fraction(self.label_smoothing):
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def tiny(cls) -> LargeConfig:
        """Seconds, not minutes: a small network on 3000 images, for tests."""
        return cls(epochs=2, batch_size=64, train_subset=3000, model=ClassifierConfig.tiny())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LargeConfig:
        """Inverse of :meth:`to_dict`; a checkpoint written before ``mirror`` existed was not mirrored."""
        return cls(**{"mirror": False, **data, "model": ClassifierConfig.from_dict(data.get("model", {}))})


@dataclass
class LargeModel:
    """The trained large model, its calibration temperature and what was measured about it."""

    model: keras.Model
    config: LargeConfig
    classes: tuple[str, ...]
    input_spec: InputSpec
    temperature: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)

    def logits(self, raw: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Logits for raw images (normalised here)."""
        x = self.input_spec.normalise(raw)
        return np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)

    def save(self, path: str | Path) -> Path:
        """Write ``large.keras`` and ``large.json`` to the directory ``path`` (the JSON last)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / CHECKPOINT_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
        self.model.save(root / MODEL_FILE)
        meta = {
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "input": asdict(self.input_spec),
            "temperature": self.temperature,
            "metrics": self.metrics,
            "train_seconds": self.train_seconds,
            "history": self.history,
        }
        tmp = root / f".{CHECKPOINT_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(root / CHECKPOINT_FILE)
        return root


def load_large(path: str | Path) -> LargeModel:
    """A :class:`LargeModel` saved with :meth:`LargeModel.save`, or a ModelError saying why not."""
    root = Path(path)
    try:
        meta = json.loads((root / CHECKPOINT_FILE).read_text())
        model = keras.saving.load_model(root / MODEL_FILE, compile=False)
        config = LargeConfig.from_dict(meta["config"])
        spec = meta["input"]
        input_spec = InputSpec(tuple(spec["shape"]), float(spec["scale"]), float(spec["offset"]))
    except FileNotFoundError as exc:
        raise ModelError(
            f"{root} is not a large-model checkpoint (train one with --preset large): {exc}"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{root}: unreadable large-model checkpoint: {exc!r}") from None
    return LargeModel(
        model=model,
        config=config,
        classes=tuple(meta["classes"]),
        input_spec=input_spec,
        temperature=float(meta.get("temperature", 1.0)),
        metrics={str(k): float(v) for k, v in meta.get("metrics", {}).items()},
        train_seconds=float(meta.get("train_seconds", 0.0)),
        history=meta.get("history", {}),
    )


def train_large(config: LargeConfig, dataset: Dataset, progress: bool = True) -> LargeModel:
    """Train the large model; fit its temperature on the validation split; measure it on the test set."""
    start = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    input_spec = InputSpec(shape=dataset.input_shape)
    x_tr, y_tr, x_val, y_val = training_split(config, dataset)
    logger.info("training the large model on %d images, %d epochs", len(x_tr), config.epochs)
    model = build_classifier(config.model, dataset.input_shape, dataset.num_classes, "large")
    targets = keras.utils.to_categorical(y_tr, dataset.num_classes)
    history = fit(
        model,
        input_spec.normalise(x_tr),
        [targets],
        [keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)],
        config,
        progress=progress,
    )
    large = measure_large(
        LargeModel(model, config, dataset.classes, input_spec, history=history), dataset, x_val, y_val
    )
    large.train_seconds = time.monotonic() - start
    logger.info("large model trained in %.0f s: %s", large.train_seconds, large.metrics)
    return large


def measure_large(large: LargeModel, dataset: Dataset, x_val: np.ndarray, y_val: np.ndarray) -> LargeModel:
    """Mirror the trained network if the config says so, fit its temperature on the validation
    split and measure it on the test set (``test_accuracy``; ``test_accuracy_unmirrored`` too)."""
    metrics: dict[str, float] = {}
    if large.config.mirror:
        if len(dataset.x_test):
            single = large.logits(dataset.x_test).argmax(1)
            metrics["test_accuracy_unmirrored"] = float((single == dataset.y_test).mean())
        large.model = mirrored(large.model)
    if len(x_val):
        val_logits = large.logits(x_val)
        large.temperature = fit_temperature(val_logits, y_val)
        metrics["val_accuracy"] = float((val_logits.argmax(1) == y_val).mean())
    if len(dataset.x_test):
        metrics["test_accuracy"] = float((large.logits(dataset.x_test).argmax(1) == dataset.y_test).mean())
    large.metrics = metrics
    return large


@keras.saving.register_keras_serializable(package="edgecascade")
class HorizontalFlip(layers.Layer):
    """The image mirrored left to right (NHWC), in training and inference alike."""

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return ops.flip(x, axis=2)


def mirrored(model: keras.Model) -> keras.Model:
    """``model``'s logits averaged over the image and its mirror image (test-time augmentation).

    Fashion-MNIST items are mostly left-right symmetric, so both views are the same item;
    averaging them gains about 0.2 points for twice the compute, which the cloud can afford.
    The result is one graph, exported as one LiteRT partition like any other.
    """
    inp = keras.Input(shape=model.input_shape[1:], name="image")
    logits = layers.Average(name="mirror_mean")([model(inp), model(HorizontalFlip(name="mirror")(inp))])
    return keras.Model(inp, logits, name=f"{model.name}_mirrored")
