"""Single-model classifiers: the large cloud model, and the small and medium models of the models mode.

In the models mode every tier runs a whole network on the raw input (not a slice of one
network on another tier's features): a small one on the device, a medium one on the
gateway, the large one in the cloud. Each is a VGG-style stack of 3x3 conv/BN/ReLU blocks,
each block ending in a 2x2 max-pool, then a dense layer and the logits. Like the partitioned
stages, they output LOGITS, never probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from edgecascade.training.model import conv_block, is_fraction, is_whole


@dataclass(frozen=True)
class ClassifierConfig:
    """The shape of one classifier: conv widths per pooled block, the dense layer, regularisation."""

    blocks: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128,))
    dense: int = 256
    dropout: float = 0.3
    bn_momentum: float = 0.9

    def __post_init__(self) -> None:
        """ValueError on a wrong setting, before any training time is spent."""
        problems = []
        if not self.blocks or not all(b and all(is_whole(f, 1) for f in b) for b in self.blocks):
            problems.append(f"blocks must be non-empty lists of whole numbers >= 1, got {self.blocks!r}")
        if not is_whole(self.dense, 1):
            problems.append(f"dense must be a whole number >= 1, got {self.dense!r}")
        for name in ("dropout", "bn_momentum"):
            if not is_fraction(getattr(self, name)):
                problems.append(f"{name} must be a number in [0, 1), got {getattr(self, name)!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def large(cls) -> ClassifierConfig:
        """The cloud's large model: 0.67 M parameters, about 27 M multiply-adds per image."""
        return cls()

    @classmethod
    def medium(cls) -> ClassifierConfig:
        """The gateway's model in the models mode: 28x28 and 14x14 blocks, no 7x7 one."""
        return cls(blocks=((32,), (64, 64)), dense=128)

    @classmethod
    def small(cls) -> ClassifierConfig:
        """The device's model in the models mode: three narrow blocks, about 80 KB in int8."""
        return cls(blocks=((16,), (32,), (64,)), dense=48, dropout=0.2)

    @classmethod
    def tiny(cls) -> ClassifierConfig:
        """Seconds to train, for tests."""
        return cls(blocks=((8,), (16,)), dense=32, dropout=0.1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": [list(b) for b in self.blocks],
            "dense": self.dense,
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; a wrong value is a ValueError, an unknown key a TypeError."""
        return cls(**{**data, "blocks": tuple(tuple(b) for b in data.get("blocks", cls.blocks))})


def build_classifier(
    config: ClassifierConfig, input_shape: tuple[int, ...], num_classes: int, name: str
) -> keras.Model:
    """Image → logits ``(classes,)``: the blocks, flatten, dense, dropout, logits."""
    inp = keras.Input(shape=input_shape, name="image")
    x = inp
    for i, block in enumerate(config.blocks, start=1):
        for j, filters in enumerate(block, start=1):
            x = conv_block(x, filters, f"{name}_b{i}c{j}", config.bn_momentum)
        x = layers.MaxPooling2D(2, padding="same", name=f"{name}_b{i}_pool")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dropout(config.dropout, name=f"{name}_dropout1")(x)
    x = layers.Dense(config.dense, activation="relu", name=f"{name}_dense")(x)
    x = layers.Dropout(config.dropout, name=f"{name}_dropout2")(x)
    logits = layers.Dense(num_classes, name=f"{name}_logits")(x)
    return keras.Model(inp, logits, name=name)
