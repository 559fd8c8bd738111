"""Knowledge distillation: a trained teacher's soft targets for a student's exits (Hinton et al., 2015).

The large cloud model teaches the exits of the partitioned cascade and the small and medium
models of the models mode. The teacher's logits are computed once for the training images
(:func:`teacher_logits`) and travel beside the labels: a target row is the one-hot label
followed by the teacher's logits, so Keras' ``fit`` needs nothing else, and
:class:`DistillationLoss` splits the row again.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="edgecascade")
class DistillationLoss(keras.losses.Loss):
    """``(1 - alpha) * CE(label, student) + alpha * T² * CE(softmax(teacher / T), softmax(student / T))``.

    ``y_true`` is ``[one-hot | teacher logits]`` (twice the classes wide). The soft term is
    the cross-entropy to the teacher's softened distribution, which differs from the KL
    divergence only by the teacher's entropy, a constant: same gradients. ``T²`` keeps the
    soft term's gradients on the scale of the hard one's as ``T`` changes.
    """

    def __init__(
        self, alpha: float = 0.5, temperature: float = 4.0, label_smoothing: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        classes = ops.shape(y_pred)[-1]
        hard, teacher = y_true[:, :classes], y_true[:, classes:]
        ce = keras.losses.categorical_crossentropy(
            hard, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )
        t = self.temperature
        soft = ops.softmax(teacher / t, axis=-1)
        kd = -ops.sum(soft * ops.log_softmax(y_pred / t, axis=-1), axis=-1) * (t * t)
        return (1.0 - self.alpha) * ce + self.alpha * kd

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "alpha": self.alpha,
            "temperature": self.temperature,
            "label_smoothing": self.label_smoothing,
        }


def teacher_logits(teacher: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The teacher's logits for normalised inputs ``x`` (inference mode: no dropout)."""
    return np.asarray(teacher.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def soft_targets(one_hot: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
    """The target rows :class:`DistillationLoss` reads: labels, then the teacher's logits."""
    if logits is None:
        return one_hot
    if logits.shape != one_hot.shape:
        raise ValueError(f"teacher logits {logits.shape} do not match the targets {one_hot.shape}")
    return np.concatenate([one_hot, logits], axis=1).astype(np.float32)
