"""Joint training of the multi-exit network, and the :class:`TrainedModel` it produces.

All three exits are trained together (weighted sum of per-exit cross-entropies on
logits), so the early stages learn features that serve both their own exit and the tiers
after them. On a held-out validation split each exit then gets a temperature and exits 1
and 2 a threshold on the configured confidence score
(:func:`edgecascade.training.calibration.calibrate`), so that by default the cascade loses
no accuracy against the full model on that split. The run's hyper-parameters are a
:class:`~edgecascade.training.config.TrainConfig`. A :class:`TrainedModel` can be saved and
loaded (:func:`load_trained`) so that training and export can run as separate steps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
from keras import layers
from tqdm.auto import tqdm

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import MODELS, PARTITIONED, DriftSpec, InputSpec, UnknownSpec
from edgecascade.device_sdk.wire.codec import through_wire
from edgecascade.training.calibration import NEVER_EXIT, accuracy_metrics, calibrate, cascade_metrics, softmax
from edgecascade.training.config import TrainConfig
from edgecascade.training.data import Dataset, split_validation
from edgecascade.training.distill import DistillationLoss, soft_targets, teacher_logits
from edgecascade.training.model import Stages, build_stages, chain, side_by_side

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "trained.json"
_TIERS = ("device", "gateway", "cloud")
RAW_ENCODING = "int8"
"""How the models mode sends the raw input up: int8 over the image's range, within half a grey level."""


@dataclass
class TrainedModel:
    """The trained stages, their exit thresholds and what was measured about them."""

    device: keras.Model
    gateway: keras.Model
    cloud: keras.Model
    thresholds: tuple[float, float, float]
    metrics: dict[str, float]
    config: TrainConfig
    classes: tuple[str, ...]
    input_spec: InputSpec
    temperatures: tuple[float, float, float] = (1.0, 1.0, 1.0)
    train_seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)
    mode: str = PARTITIONED  # models: three whole networks, each on the raw input (bundle.MODES)
    unknown: tuple[UnknownSpec | None, ...] = (None, None, None)  # each exit's unknown-input rule
    drift: DriftSpec | None = None  # the device's drift reference on validation data
    _joint: keras.Model | None = field(default=None, init=False, repr=False, compare=False)

    def stage(self, tier: str) -> keras.Model:
        return {"device": self.device, "gateway": self.gateway, "cloud": self.cloud}[tier]

    @property
    def joint(self) -> keras.Model:
        """Image → three exits' logits, sharing the stages' weights (chained, or side by side
        in the models mode), built once."""
        if self._joint is None:
            join = side_by_side if self.mode == MODELS else chain
            self._joint = join(self.device, self.gateway, self.cloud)
        return self._joint

    @property
    def encodings(self) -> tuple[str, str]:
        """How what the device and the gateway send up travels: the cuts', or the raw input's."""
        if self.mode == MODELS:
            return RAW_ENCODING, RAW_ENCODING
        return self.config.model.cut1_encoding, self.config.model.cut2_encoding

    def exit_logits(self, raw: np.ndarray, batch_size: int = 1024) -> list[np.ndarray]:
        """Logits of the three exits for raw images, as deployed: what goes up through its wire encoding."""
        x = self.input_spec.normalise(raw)
        logits = []
        for tier, encoding in zip(_TIERS, (*self.encodings, None), strict=True):
            out = self.stage(tier).predict(x, batch_size=batch_size, verbose=0)
            if encoding is None:
                logits.append(np.asarray(out))
            elif self.mode == MODELS:
                logits.append(np.asarray(out))
                x = through_wire(x, encoding)
            else:
                logits.append(np.asarray(out[0]))
                x = through_wire(np.asarray(out[1]), encoding)
        return logits

    def exit_probs(self, raw: np.ndarray, batch_size: int = 1024) -> list[np.ndarray]:
        """Calibrated probabilities of the three exits (their temperatures applied) for raw images."""
        logits = self.exit_logits(raw, batch_size)
        return [softmax(z, t) for z, t in zip(logits, self.temperatures, strict=True)]

    def save(self, path: str | Path) -> Path:
        """Write the stages (``.keras``) and ``trained.json`` to the directory ``path``."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / CHECKPOINT_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
        for tier in _TIERS:
            self.stage(tier).save(root / f"{tier}.keras")
        meta = {
            "thresholds": list(self.thresholds),
            "temperatures": list(self.temperatures),
            "metrics": self.metrics,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "input": asdict(self.input_spec),
            "train_seconds": self.train_seconds,
            "history": self.history,
            "mode": self.mode,
            "unknown": [None if u is None else asdict(u) for u in self.unknown],
            "drift": None if self.drift is None else asdict(self.drift),
        }
        tmp = root / f".{CHECKPOINT_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(root / CHECKPOINT_FILE)  # written last: its presence means the checkpoint is complete
        return root


def load_trained(path: str | Path) -> TrainedModel:
    """A :class:`TrainedModel` saved with :meth:`TrainedModel.save`."""
    root = Path(path)
    try:
        meta = json.loads((root / CHECKPOINT_FILE).read_text())
        stages = {tier: keras.saving.load_model(root / f"{tier}.keras", compile=False) for tier in _TIERS}
    except FileNotFoundError as exc:
        raise ModelError(f"{root} is not a complete training checkpoint: {exc}") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ModelError(f"{root}: unreadable training checkpoint: {exc}") from None
    return TrainedModel(
        device=stages["device"],
        gateway=stages["gateway"],
        cloud=stages["cloud"],
        thresholds=tuple(float(t) for t in meta["thresholds"]),  # type: ignore[arg-type]
        temperatures=tuple(float(t) for t in meta.get("temperatures", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
        metrics={str(k): float(v) for k, v in meta["metrics"].items()},
        config=TrainConfig.from_dict(meta["config"]),
        classes=tuple(meta["classes"]),
        input_spec=InputSpec(
            shape=tuple(meta["input"]["shape"]), scale=meta["input"]["scale"], offset=meta["input"]["offset"]
        ),
        train_seconds=float(meta.get("train_seconds", 0.0)),
        history=meta.get("history", {}),
        mode=meta.get("mode", PARTITIONED),
        unknown=tuple(None if u is None else UnknownSpec(**u) for u in meta.get("unknown", (None,) * 3)),
        drift=DriftSpec(**meta["drift"]) if meta.get("drift") else None,
    )


class TqdmProgress(keras.callbacks.Callback):
    """One tqdm bar over all training steps of all epochs, showing the running loss."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self._epochs = epochs
        self._bar: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        steps = int(self.params.get("steps") or 0)
        self._bar = tqdm(total=steps * self._epochs or None, desc="training", unit="step", leave=True)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.set_description(f"epoch {epoch + 1}/{self._epochs}")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if logs and batch % 20 == 0 and "loss" in logs:
                self._bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def augmented(model: keras.Model, max_shift: int) -> keras.Model:
    """``model`` behind random horizontal flips and shifts (±``max_shift`` pixels), active only in training.

    Fashion-MNIST items are centred and mostly left-right symmetric, so these are label
    preserving; the model itself (and so the exported partitions) stays unchanged.
    """
    inp = keras.Input(shape=model.input_shape[1:], name="image")
    height, width = model.input_shape[1:3]
    x = layers.RandomFlip("horizontal", name="flip")(inp)
    if max_shift:
        fraction = (max_shift / height, max_shift / width)
        x = layers.RandomTranslation(*fraction, fill_mode="constant", name="shift")(x)
    outputs = model(x)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    exits = [layers.Identity(name=f"exit{i}")(t) for i, t in enumerate(outputs, start=1)]
    return keras.Model(inp, exits, name="augmented")  # named outputs: exit1_loss ... in the history


class FitSettings(Protocol):
    """How a network is fitted (a TrainConfig's or a LargeConfig's settings)."""

    @property
    def epochs(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def learning_rate(self) -> float: ...

    @property
    def augment(self) -> bool: ...

    @property
    def max_shift(self) -> int: ...


def fit(
    model: keras.Model,
    x: np.ndarray,
    targets: list[np.ndarray],
    losses: list[keras.losses.Loss],
    settings: FitSettings,
    *,
    loss_weights: tuple[float, ...] | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train ``model`` (one output per target) with Adam on a cosine schedule; returns the history.

    With ``settings.augment`` the model trains behind flips and shifts of up to
    ``settings.max_shift`` pixels (:func:`augmented`).
    """
    epochs, batch_size = settings.epochs, settings.batch_size
    steps = max(1, -(-len(x) // batch_size)) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps=steps, alpha=0.02)
    fitted = augmented(model, settings.max_shift) if settings.augment else model
    fitted.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=losses,
        loss_weights=list(loss_weights) if loss_weights is not None else None,
    )
    history = fitted.fit(
        x,
        targets,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[TqdmProgress(epochs)] if progress else [],
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


class SplitSettings(Protocol):
    """What decides a run's training and validation split (a TrainConfig or a LargeConfig)."""

    @property
    def train_subset(self) -> int | None: ...

    @property
    def val_fraction(self) -> float: ...

    @property
    def seed(self) -> int: ...


def training_split(
    config: SplitSettings, dataset: Dataset
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_val, y_val)`` exactly as :func:`train` uses them for ``config``."""
    x, y = dataset.x_train, dataset.y_train
    if config.train_subset is not None and config.train_subset < len(x):
        pick = np.sort(np.random.default_rng(config.seed).permutation(len(x))[: config.train_subset])
        x, y = x[pick], y[pick]
    return split_validation(x, y, config.val_fraction, config.seed)


def train(
    config: TrainConfig, dataset: Dataset, progress: bool = True, teacher: keras.Model | None = None
) -> TrainedModel:
    """Train the three exits jointly, choose thresholds on validation data, measure on the test set.

    With a ``teacher`` (the large model: image → logits) every exit also learns its soft
    targets (:class:`~edgecascade.training.distill.DistillationLoss`).
    """
    start = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    input_spec = InputSpec(shape=dataset.input_shape)
    height, width, channels = dataset.input_shape
    model_config = replace(
        config.model, input_shape=(height, width, channels), num_classes=dataset.num_classes
    )
    config = replace(config, model=model_config)

    x_tr, y_tr, x_val, y_val = training_split(config, dataset)
    logger.info("training on %d images, validating on %d, %d epochs", len(x_tr), len(x_val), config.epochs)

    stages: Stages = build_stages(model_config)
    x_fit = input_spec.normalise(x_tr)
    targets = exit_targets(config, y_tr, model_config.num_classes, x_fit, teacher)
    history = fit(
        stages.joint,
        x_fit,
        [targets] * 3,
        exit_losses(config, 3, teacher is not None),
        config,
        loss_weights=config.loss_weights,
        progress=progress,
    )
    trained = TrainedModel(
        device=stages.device,
        gateway=stages.gateway,
        cloud=stages.cloud,
        thresholds=(NEVER_EXIT, NEVER_EXIT, 0.0),
        metrics={},
        config=config,
        classes=dataset.classes,
        input_spec=input_spec,
        history=history,
    )
    return calibrate_and_measure(trained, dataset, x_val, y_val, start)


def exit_losses(config: TrainConfig, exits: int, distill: bool) -> list[keras.losses.Loss]:
    """One loss per exit: cross-entropy on the labels, or with a teacher :class:`DistillationLoss`."""
    smoothing = config.label_smoothing[:exits]
    if distill:
        return [DistillationLoss(config.distill_alpha, config.distill_temperature, s) for s in smoothing]
    return [keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s) for s in smoothing]


def exit_targets(
    config: TrainConfig, y: np.ndarray, num_classes: int, x: np.ndarray, teacher: keras.Model | None
) -> np.ndarray:
    """Every exit's targets for normalised inputs ``x``: one-hot labels, the teacher's logits beside them."""
    targets = keras.utils.to_categorical(y, num_classes)
    if teacher is None:
        return targets
    logger.info(
        "distilling from a teacher (alpha %s, T %s)", config.distill_alpha, config.distill_temperature
    )
    return soft_targets(targets, teacher_logits(teacher, x))


def calibrate_and_measure(
    trained: TrainedModel, dataset: Dataset, x_val: np.ndarray, y_val: np.ndarray, start: float
) -> TrainedModel:
    """Temperatures and thresholds on the validation split; every exit and the cascade on the test set."""
    metrics = calibrate(trained, x_val, y_val) if len(x_val) else {}
    if not len(x_val):
        logger.warning("no validation data: early exits get threshold %s (never answer)", NEVER_EXIT)
    if len(dataset.x_test):
        test_probs = trained.exit_probs(dataset.x_test)
        metrics |= accuracy_metrics("test", test_probs, dataset.y_test)
        metrics |= cascade_metrics(
            "test", test_probs, dataset.y_test, trained.thresholds, trained.config.exit_score
        )
    trained.metrics = metrics
    trained.train_seconds = time.monotonic() - start
    logger.info(
        "trained in %.1f s; test accuracy per exit %s; thresholds %s",
        trained.train_seconds,
        [round(metrics.get(f"test_accuracy_exit{i}", float("nan")), 4) for i in (1, 2, 3)],
        trained.thresholds,
    )
    return trained
