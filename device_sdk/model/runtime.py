"""Runs one model partition in the LiteRT interpreter.

The interpreter comes from ``ai_edge_litert`` (the maintained runtime), else
``tflite_runtime``, else ``tensorflow.lite``; the last is only imported when neither of
the others is installed, so a device never pays for TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.errors import DependencyError, ModelError, TensorSpecError
from edgecascade.device_sdk.model.bundle import Bundle, PartitionSpec

logger = logging.getLogger(__name__)

_RUNTIMES = (
    ("ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow.lite", "Interpreter"),
)


def interpreter_class() -> Any:
    """The first available LiteRT interpreter class."""
    for module, attr in _RUNTIMES:
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError:
            continue
    raise DependencyError("ai-edge-litert", "device")


@dataclass(frozen=True)
class PartitionOutput:
    """Exit logits ``(batch, classes)`` and, except on the last partition, cut features."""

    logits: np.ndarray
    features: np.ndarray | None


class PartitionRunner:
    """One partition's interpreter, resized on demand to the batch it is given.

    LiteRT interpreters are not thread-safe, so calls are serialised with a lock.
    """

    def __init__(self, model: str | Path | bytes, spec: PartitionSpec, num_threads: int = 1) -> None:
        """``model`` is a ``.tflite`` path or its content."""
        self.spec = spec
        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        path = "<bytes>" if isinstance(model, bytes) else model
        try:
            self._interp = interpreter_class()(**source, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load partition {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._input = self._interp.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self._interp.get_output_details()}
        try:
            self._logits = outputs[spec.logits.name]
            self._features = outputs[spec.features.name] if spec.features else None
        except KeyError as exc:
            raise ModelError(f"{path} has no output tensor {exc}; outputs are {sorted(outputs)}") from None
        self._batch = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle, tier: str, num_threads: int = 1) -> PartitionRunner:
        return cls(bundle.file(tier), bundle.manifest.partition(tier), num_threads)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input.shape

    def run(self, x: np.ndarray) -> PartitionOutput:
        """Run a batch ``(n, *input_shape)``; returns copies safe to keep."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.spec.input.shape or x.shape[0] < 1:
            raise TensorSpecError(
                f"{self.spec.tier} partition expects (n, {', '.join(map(str, self.spec.input.shape))}), "
                f"got {x.shape}"
            )
        with self._lock:
            if x.shape[0] != self._batch:
                self._interp.resize_tensor_input(self._input, list(x.shape), strict=False)
                self._interp.allocate_tensors()
                self._batch = x.shape[0]
            self._interp.set_tensor(self._input, np.ascontiguousarray(x))
            self._interp.invoke()
            logits = self._interp.get_tensor(self._logits).copy()
            features = self._interp.get_tensor(self._features).copy() if self._features is not None else None
        return PartitionOutput(logits, features)
