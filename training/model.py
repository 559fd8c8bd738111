"""The multi-exit CNN, built as three composable Keras stage models.

Each stage is a functional model that runs on one tier and is exported to its own TFLite
partition: ``device`` (image → exit-1 logits + cut-1 features), ``gateway`` (cut-1 →
exit-2 logits + cut-2 features) and ``cloud`` (cut-2 → exit-3 logits). Stages output
LOGITS, never probabilities, so temperature scaling can be applied at run time. A joint
model chains them for training with one loss per exit.

What crosses a tier boundary is produced by :func:`cut_block` only. A cut whose encoding is
``1bit`` ends in :class:`BinarySign`: the next tier receives ±1, which the device sends as
one bit per value (seed 000's "binarised cut", trained with a straight-through
estimator). Other cuts end in ReLU and travel as float32, float16 or int8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
from keras import layers, ops

from edgecascade.device_sdk.wire.codec import Encoding

logger = logging.getLogger(__name__)

DEVICE, GATEWAY, CLOUD = "device", "gateway", "cloud"


_WHOLE_NUMBERS = (
    ("device_filters", 1),
    ("device_separable", 0),
    ("gateway_filters", 1),
    ("cloud_filters", 1),
    ("cut1_channels", 1),
    ("cut2_channels", 1),
    ("cloud_dense", 1),
    ("num_classes", 1),
)
"""ModelConfig fields (a number or a tuple of numbers) that must be integers, and their minimum."""


def is_whole(value: object, low: int) -> bool:
    """An int (not a bool) of at least ``low``: what a count in a config must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_fraction(value: object) -> bool:
    """A number in [0, 1): what a rate or share in a config must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1


@dataclass(frozen=True)
class ModelConfig:
    """Widths of the three stages and the shape of the two cuts."""

    input_shape: tuple[int, int, int] = (28, 28, 1)
    num_classes: int = 10
    device_filters: tuple[int, ...] = (32, 64)  # one conv+pool block each: 28x28 → 7x7
    device_separable: tuple[int, ...] = (0, 0)  # depthwise-separable blocks after each one's conv
    cut1_channels: int = 32  # 7x7x32 = 1568 values leave the device
    cut1_encoding: str = Encoding.BITS  # 1568 bits = 196 bytes
    gateway_filters: tuple[int, ...] = (96, 96)
    cut2_channels: int = 64  # 7x7x64 = 3136 int8 values leave the gateway (the few inputs it forwards)
    cut2_encoding: str = Encoding.INT8
    cut2_pool: bool = False  # True: pool cut 2 to 4x4 (6x fewer bytes, about half a point lower final exit)
    cloud_filters: tuple[int, ...] = (128, 128)
    cloud_dense: int = 256
    dropout: float = 0.3
    bn_momentum: float = 0.9  # Keras' 0.99 leaves moving statistics stale after short runs

    def __post_init__(self) -> None:
        """ValueError on a wrong setting, before any training time is spent."""
        for encoding in (self.cut1_encoding, self.cut2_encoding):
            Encoding(encoding)
        problems = []
        for name, low in _WHOLE_NUMBERS:
            value = getattr(self, name)
            if not all(is_whole(x, low) for x in (value if isinstance(value, tuple) else (value,))):
                problems.append(f"{name} must be whole numbers >= {low}, got {value!r}")
        for name, value in (("dropout", self.dropout), ("bn_momentum", self.bn_momentum)):
            if not is_fraction(value):
                problems.append(f"{name} must be a number in [0, 1), got {value!r}")
        if len(self.device_separable) != len(self.device_filters):
            problems.append(
                f"device_separable needs one count per device block ({len(self.device_filters)}), "
                f"got {self.device_separable}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A very small network for fast tests: cut 1 binarised like the default's, cut 2 pooled to 4x4."""
        return cls(
            device_filters=(8, 16),
            gateway_filters=(16, 16),
            cloud_filters=(24, 24),
            cloud_dense=32,
            dropout=0.1,
            cut1_channels=16,
            cut2_channels=16,
            cut2_pool=True,
        )


@dataclass(frozen=True)
class Stages:
    """The three stage models and the joint training model that chains them."""

    device: keras.Model
    gateway: keras.Model
    cloud: keras.Model
    joint: keras.Model

    def by_tier(self) -> dict[str, keras.Model]:
        return {DEVICE: self.device, GATEWAY: self.gateway, CLOUD: self.cloud}


def conv_block(
    x: keras.KerasTensor, filters: int, name: str, bn_momentum: float, kernel: int = 3
) -> keras.KerasTensor:
    """3x3 (or ``kernel``) conv, batch norm, ReLU: the unit every stage is built from."""
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def separable_block(x: keras.KerasTensor, filters: int, name: str, bn_momentum: float) -> keras.KerasTensor:
    """3x3 depthwise conv, BN, ReLU, then 1x1 conv, BN, ReLU (MobileNet's unit).

    About an eighth of a full 3x3 conv's multiply-adds at 64 channels, so the device stage
    gains depth at little latency: one after the 14x14 conv adds 0.02 ms and 7 KB (int8).
    """
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    return conv_block(x, filters, f"{name}_pw", bn_momentum, kernel=1)


def exit_head(x: keras.KerasTensor, num_classes: int, name: str, dropout: float) -> keras.KerasTensor:
    """An early exit's logits: flatten (keeps *where* things are, unlike global pooling), one linear layer."""
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.Dense(num_classes, name=f"{name}_logits")(x)


@keras.saving.register_keras_serializable(package="edgecascade")
class BinarySign(layers.Layer):
    """±1 by sign (0 counts as +1); in training, gradients pass straight through where |x| ≤ 1.

    The straight-through estimator (Bengio et al., 2013; as in BinaryNet) is
    ``clip(x, -1, 1) + stop_gradient(sign(x) - clip(x, -1, 1))``: the forward value is the
    sign, the backward one the hard-tanh's. Outside training the layer is the exact sign, so
    the exported partition outputs exactly ±1 and bit-packing loses nothing.
    """

    def call(self, x: keras.KerasTensor, training: bool | None = None) -> keras.KerasTensor:
        sign = ops.where(x >= 0, 1.0, -1.0)
        if not training:
            return sign
        clipped = ops.clip(x, -1.0, 1.0)
        return clipped + ops.stop_gradient(sign - clipped)


def cut_block(
    x: keras.KerasTensor, channels: int, encoding: str, name: str, bn_momentum: float
) -> keras.KerasTensor:
    """The tensor that travels to the next tier: a 1x1 conv to a few channels, BN, then ReLU or sign.

    Batch-normalised ReLU features quantise well to float16 or int8; a ``1bit`` cut ends in
    :class:`BinarySign` instead, BN having centred each channel on its learned threshold.
    """
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    if Encoding(encoding) is Encoding.BITS:
        return BinarySign(name=f"{name}_sign")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_device(config: ModelConfig) -> keras.Model:
    """Image (28,28,1) float32 → ``[logits (classes,), features (7,7,cut1)]``; cheap enough for a phone."""
    inp = keras.Input(shape=config.input_shape, name="image")
    x = inp
    for i, (filters, extra) in enumerate(zip(config.device_filters, config.device_separable, strict=True), 1):
        x = conv_block(x, filters, f"d{i}", config.bn_momentum)
        for j in range(1, extra + 1):
            x = separable_block(x, filters, f"d{i}s{j}", config.bn_momentum)
        x = layers.MaxPooling2D(2, name=f"d{i}_pool")(x)
    logits = exit_head(x, config.num_classes, "exit1", config.dropout)
    features = cut_block(x, config.cut1_channels, config.cut1_encoding, "cut1", config.bn_momentum)
    return keras.Model(inp, [logits, features], name=DEVICE)


def build_gateway(config: ModelConfig, cut1_shape: tuple[int, ...]) -> keras.Model:
    """Cut-1 features → ``[logits, features (4,4,cut2)]``."""
    inp = keras.Input(shape=cut1_shape, name="cut1")
    x = inp
    for i, filters in enumerate(config.gateway_filters, start=1):
        x = conv_block(x, filters, f"g{i}", config.bn_momentum)
    logits = exit_head(x, config.num_classes, "exit2", config.dropout)
    if config.cut2_pool:
        x = layers.MaxPooling2D(2, padding="same", name="g_pool")(x)
    features = cut_block(x, config.cut2_channels, config.cut2_encoding, "cut2", config.bn_momentum)
    return keras.Model(inp, [logits, features], name=GATEWAY)


def build_cloud(config: ModelConfig, cut2_shape: tuple[int, ...]) -> keras.Model:
    """Cut-2 features → logits; the strongest head."""
    inp = keras.Input(shape=cut2_shape, name="cut2")
    x = inp
    for i, filters in enumerate(config.cloud_filters, start=1):
        x = conv_block(x, filters, f"c{i}", config.bn_momentum)
        if i == 1 and x.shape[1] > 4:
            x = layers.MaxPooling2D(2, padding="same", name="c_pool")(x)
    x = layers.Flatten(name="c_flatten")(x)
    x = layers.Dense(config.cloud_dense, activation="relu", name="c_dense")(x)
    x = layers.Dropout(config.dropout, name="c_dropout")(x)
    logits = layers.Dense(config.num_classes, name="exit3_logits")(x)
    return keras.Model(inp, logits, name=CLOUD)


def chain(device: keras.Model, gateway: keras.Model, cloud: keras.Model) -> keras.Model:
    """The joint model: image → ``[exit1, exit2, exit3]`` logits, sharing the stages' weights."""
    inp = keras.Input(shape=device.input_shape[1:], name="image")
    logits1, cut1 = device(inp)
    logits2, cut2 = gateway(cut1)
    logits3 = cloud(cut2)
    outputs = [
        layers.Identity(name=f"exit{i}")(t) for i, t in enumerate((logits1, logits2, logits3), start=1)
    ]
    return keras.Model(inp, outputs, name="joint")


def side_by_side(device: keras.Model, gateway: keras.Model, cloud: keras.Model) -> keras.Model:
    """The models mode's joint model: image → each whole model's logits, the models side by side."""
    inp = keras.Input(shape=device.input_shape[1:], name="image")
    outputs = [
        layers.Identity(name=f"exit{i}")(m(inp)) for i, m in enumerate((device, gateway, cloud), start=1)
    ]
    return keras.Model(inp, outputs, name="joint")


def build_stages(config: ModelConfig) -> Stages:
    """Fresh, untrained stages for ``config``."""
    device = build_device(config)
    gateway = build_gateway(config, tuple(device.outputs[1].shape[1:]))
    cloud = build_cloud(config, tuple(gateway.outputs[1].shape[1:]))
    joint = chain(device, gateway, cloud)
    logger.debug(
        "built stages: device %d, gateway %d, cloud %d parameters",
        device.count_params(),
        gateway.count_params(),
        cloud.count_params(),
    )
    return Stages(device, gateway, cloud, joint)
