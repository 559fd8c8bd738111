"""The hyper-parameters of one training run, and reading them from a TOML file.

:class:`TrainConfig` checks itself when made (one ``ValueError`` naming every wrong
setting), so a bad setting fails before any training time is spent; it round-trips
through JSON (:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`) because every
checkpoint records the config it was trained with. :func:`load_train_config` lays a TOML
file over a base config and reports what is wrong as a :class:`ConfigError`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from edgecascade.device_sdk.core.policy import SCORES
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import FAMILIARITY_SCORES
from edgecascade.training.model import ModelConfig, is_fraction, is_whole


def fit_problems(config: Any) -> list[str]:
    """What is wrong with the settings every training run has: epochs, batch size, shifts,
    learning rate and validation share (a TrainConfig's or a LargeConfig's)."""
    problems = [
        f"{name} must be a whole number >= {low}, got {getattr(config, name)!r}"
        for name, low in (("epochs", 1), ("batch_size", 1), ("max_shift", 0))
        if not is_whole(getattr(config, name), low)
    ]
    if not (isinstance(config.learning_rate, int | float) and config.learning_rate > 0):
        problems.append(f"learning_rate must be > 0, got {config.learning_rate!r}")
    if not is_fraction(config.val_fraction):
        problems.append(f"val_fraction must be in [0, 1), got {config.val_fraction!r}")
    return problems


def _per_exit(value: object, valid: Callable[[Any], bool]) -> bool:
    """A tuple of one valid value per exit: what loss weights and label smoothing must be."""
    return isinstance(value, tuple) and len(value) == 3 and all(map(valid, value))


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run. ``TrainConfig()`` is the full-quality preset."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 3e-3
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    val_fraction: float = 0.1
    train_subset: int | None = None  # use only this many training images (before the validation split)
    seed: int = 0
    max_loss: float = 0.0  # accuracy an early exit may lose vs the final exit on the samples it answers
    augment: bool = True  # random horizontal flips (and shifts, see max_shift), in training only
    max_shift: int = 0  # augmentation also shifts by up to this many pixels (0: flips only)
    label_smoothing: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per exit: target share spread evenly
    exit_score: str = "max_prob"  # confidence score the exits threshold: max_prob, margin or entropy
    exit_target: float | None = None  # accuracy an early exit must reach on what it answers (None: final's)
    distill_alpha: float = 0.5  # with a teacher: weight of its soft targets against the labels
    distill_temperature: float = 4.0  # with a teacher: softmax temperature of the soft targets
    unknown_score: str = "mahalanobis"  # each exit's unknown-input score (core.novelty), or "none"
    unknown_fpr: float = 0.05  # share of known validation inputs the unknown-input rule may flag
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        """ValueError on a wrong setting, before any training time is spent."""
        problems = fit_problems(self)
        if not (is_fraction(self.distill_alpha) or self.distill_alpha == 1):
            problems.append(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}")
        if not (isinstance(self.distill_temperature, int | float) and self.distill_temperature > 0):
            problems.append(f"distill_temperature must be > 0, got {self.distill_temperature!r}")
        if self.unknown_score not in (*FAMILIARITY_SCORES, "none"):
            known = ", ".join((*FAMILIARITY_SCORES, "none"))
            problems.append(f"unknown_score must be one of {known}, got {self.unknown_score!r}")
        if not (is_fraction(self.unknown_fpr) and self.unknown_fpr > 0):
            problems.append(f"unknown_fpr must be in (0, 1), got {self.unknown_fpr!r}")
        if not _per_exit(self.label_smoothing, is_fraction):
            problems.append(f"label_smoothing must be three numbers in [0, 1), got {self.label_smoothing!r}")
        if not _per_exit(self.loss_weights, lambda w: isinstance(w, int | float) and w >= 0):
            problems.append(f"loss_weights must be three numbers >= 0, got {self.loss_weights!r}")
        if self.exit_score not in SCORES:
            problems.append(f"exit_score must be one of {', '.join(SCORES)}, got {self.exit_score!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def quick(cls) -> TrainConfig:
        """A shorter run for the demo: same network, fewer epochs."""
        return cls(epochs=2)

    @classmethod
    def tiny(cls) -> TrainConfig:
        """Seconds, not minutes: a small network on 3000 images, for tests."""
        return cls(epochs=2, batch_size=64, train_subset=3000, model=ModelConfig.tiny())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists)."""
        model: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.get("model", {}).items()
        }
        top: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "model"
        }
        top.setdefault("max_shift", 2)  # checkpoints written before the setting existed were trained so
        if isinstance(top.get("label_smoothing"), int | float):  # one number: the same for every exit
            top["label_smoothing"] = (top["label_smoothing"],) * 3
        return cls(**top, model=ModelConfig(**model))


class _FileConfig(Protocol):
    """A training config that round-trips through a dict: TrainConfig or LargeConfig."""

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self: ...


FileConfig = TypeVar("FileConfig", bound=_FileConfig)


def load_train_config(path: str | Path, base: FileConfig) -> FileConfig:
    """``base`` with what a TOML file sets: top-level keys are the config's fields (a
    :class:`TrainConfig`'s, or a :class:`~edgecascade.training.large.LargeConfig`'s), a
    ``[model]`` table sets the fields of its ``model`` (the network's shape).

    Unknown keys, wrong types and unreadable files raise :class:`ConfigError`, naming the
    file, before any training time is spent.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    model = data.pop("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{path}: model must be a table")
    defaults = base.to_dict()
    unknown = [k for k in data if k not in defaults]
    unknown += [f"model.{k}" for k in model if k not in defaults["model"]]
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    merged = defaults | data
    merged["model"] = defaults["model"] | model
    try:
        return type(base).from_dict(merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
