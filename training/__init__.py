"""EdgeCascade training: datasets, the multi-exit model, joint training, calibration, export.

The public API is re-exported here lazily (except ``train``, which is also the name of a
submodule: use ``from edgecascade.training.train import train``), so importing
``edgecascade.training.calibration`` or ``edgecascade.training.data`` does not pull in
TensorFlow; the first use of a Keras-backed name does.

Importing this package enables TensorFlow's oneDNN CPU kernels unless the environment
already says otherwise (``TF_ENABLE_ONEDNN_OPTS``): on AVX2 CPUs TensorFlow leaves them
off by default, and training this network is ~1.5x faster with them. It only has an
effect if TensorFlow has not been imported yet.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

_EXPORTS = {
    "Dataset": "edgecascade.training.data",
    "load_fashion_mnist": "edgecascade.training.data",
    "load_npz": "edgecascade.training.data",
    "split_validation": "edgecascade.training.data",
    "FASHION_MNIST_CLASSES": "edgecascade.training.data",
    "softmax": "edgecascade.training.calibration",
    "choose_threshold": "edgecascade.training.calibration",
    "NEVER_EXIT": "edgecascade.training.calibration",
    "ModelConfig": "edgecascade.training.model",
    "build_stages": "edgecascade.training.model",
    "TrainConfig": "edgecascade.training.config",
    "TrainedModel": "edgecascade.training.train",
    "load_trained": "edgecascade.training.train",
    "export_bundle": "edgecascade.training.export",
    "parity": "edgecascade.training.export",
    "train_and_export": "edgecascade.training.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
