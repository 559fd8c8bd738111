"""Hard examples into training sets: stored examples decoded and split for one retraining run.

Each labelled example comes as the cloud stored it (:class:`StoredExample`: the wire
bodies of its tensors, its cut, encoding, label and reasons). It is used as a raw input
when it carries one in the served model's input shape (the model recomputes its
features), else as features at its cut when the served partitions can read them (the
version that produced them has the served shape and encoding at that cut); otherwise, or
when a body does not decode, it is skipped.

Labels index the class list the job trains for: the served classes followed by any that
operators added (class-incremental learning, :mod:`edgecascade.training.incremental`); an
example whose label is beyond that list is skipped.

Where an example goes is a function of its id only
(:func:`~edgecascade.training.gate.id_position`), so it stays on the same side job after
job: below ``holdout_fraction`` the evaluation gate's held-out slice; the next
``calibration_fraction`` the calibration slice, but only *audited* examples with their raw
input (the audit sample is uniform over a node's inputs, while the other hard examples are
by construction where the exits struggled and would bias every threshold upwards; an
example in that range without both trains); everything else trains.

Numpy only: no TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import WireError
from edgecascade.device_sdk.wire import codec
from edgecascade.training.gate import id_position

logger = logging.getLogger(__name__)

Item = tuple[str, np.ndarray, np.ndarray | None, int]
"""``(cut, features, raw input or None, label)``: one example for :meth:`HardSet.build`."""

AUDIT = "audit"
"""The reason a device gives for an example of its uniform audit sample."""
UNKNOWN = "unknown"
"""The reason a node gives for an input its unknown-input rule flagged."""


@dataclass(frozen=True)
class HardSet:
    """Labelled hard examples by what they carry: raw inputs, cut-1 or cut-2 features."""

    raw: np.ndarray  # uint8 (n, H, W, C)
    raw_y: np.ndarray
    cut1: np.ndarray  # float32, as decoded from the wire
    cut1_y: np.ndarray
    cut2: np.ndarray
    cut2_y: np.ndarray

    def __len__(self) -> int:
        return len(self.raw_y) + len(self.cut1_y) + len(self.cut2_y)

    def by_class(self, known: int) -> tuple[HardSet, HardSet]:
        """The examples of the first ``known`` classes, and those of classes added after them."""
        parts: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
        for key in ("raw", "cut1", "cut2"):
            x, y = getattr(self, key), getattr(self, f"{key}_y")
            for part, keep in zip(parts, (y < known, y >= known), strict=True):
                part[key], part[f"{key}_y"] = x[keep], y[keep]
        return HardSet(**parts[0]), HardSet(**parts[1])

    @classmethod
    def build(cls, items: list[Item], shapes: Mapping[str, tuple[int, ...]]) -> HardSet:
        """From ``(cut, features, raw or None, label)`` items; ``shapes`` of ``raw``, ``cut1``, ``cut2``.

        An item with a raw input is used as raw (its features are recomputed by the model).
        """
        groups: dict[str, tuple[list[np.ndarray], list[int]]] = {k: ([], []) for k in ("raw", "cut1", "cut2")}
        for cut, features, raw, label in items:
            key, x = ("raw", raw) if raw is not None else (cut, features)
            groups[key][0].append(x)
            groups[key][1].append(label)
        arrays = {}
        for key, (xs, ys) in groups.items():
            dtype = np.uint8 if key == "raw" else np.float32
            arrays[key] = np.stack(xs).astype(dtype) if xs else np.zeros((0, *shapes[key]), dtype)
            arrays[f"{key}_y"] = np.asarray(ys, dtype=np.int64)
        return cls(**arrays)


@dataclass(frozen=True)
class StoredExample:
    """One labelled hard example as the cloud stored it."""

    example_id: str  # sha256 hex of its content: where it falls (id_position) follows from it
    cut: str  # cut1 or cut2
    encoding: str  # wire encoding of its features
    features: bytes  # tensor body of its features at ``cut``
    raw: bytes | None  # tensor body of its raw input, when the app opted in
    label: int  # human label, else the teacher's
    reasons: tuple[str, ...] = ()
    features_readable: bool = True  # False: made by a version whose cut differs from the served one
    human: bool = True  # the label is a person's, not the teacher's


@dataclass(frozen=True)
class HardExampleSets:
    """The three sets of one run, and how many stored examples could not be used."""

    train: HardSet
    holdout: HardSet  # the evaluation gate's slice
    calibration: HardSet  # audited raw inputs the thresholds are fitted on
    skipped: int = 0
    unnamed: int = 0  # unknown inputs no person labelled: left for an operator to name

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "holdout": len(self.holdout),
            "calibration": len(self.calibration),
            "skipped": self.skipped,
            "unnamed": self.unnamed,
        }


class HardExampleSplit:
    """Decodes stored examples one at a time (:meth:`add`) into the three sets (:meth:`sets`).

    ``shapes``: the served model's input shape (``raw``) and feature shapes (``cut1``, ``cut2``);
    ``num_classes``: how many classes the run trains for (labels at or beyond are skipped).
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        holdout_fraction: float,
        calibration_fraction: float,
        num_classes: int | None = None,
    ) -> None:
        self.shapes = shapes
        self.num_classes = num_classes
        self._holdout_end = holdout_fraction
        self._calibration_end = holdout_fraction + calibration_fraction
        self._items: dict[str, list[Item]] = {"train": [], "holdout": [], "calibration": []}
        self.skipped = 0
        self.unnamed = 0

    def add(self, example: StoredExample) -> bool:
        """Put ``example`` in its set; False (and counted as skipped) when the served model cannot use it.

        An input the unknown-input rule flagged is used only once a person labelled it (named
        its group, say): the teacher's label is the served model's guess at an input unlike
        anything it was taught, perhaps of a class it does not have (counted as ``unnamed``).
        """
        if UNKNOWN in example.reasons and not example.human:
            self.unnamed += 1
            return False
        if self.num_classes is not None and not 0 <= example.label < self.num_classes:
            self.skip(
                example.example_id, f"label {example.label} is not one of the {self.num_classes} classes"
            )
            return False
        try:
            raw = wire.decode_tensor(example.raw) if example.raw is not None else None
            if raw is not None and raw.shape != self.shapes["raw"]:
                raw = None
            if raw is None and not example.features_readable:
                self.skipped += 1  # features the served partitions cannot read
                return False
            features = codec.decode_features(example.features, example.encoding)
        except WireError as exc:
            self.skip(example.example_id, exc)
            return False
        item = (example.cut, features, raw, example.label)
        position = id_position(example.example_id)
        if position < self._holdout_end:
            self._items["holdout"].append(item)
        elif position < self._calibration_end and raw is not None and AUDIT in example.reasons:
            self._items["calibration"].append(item)
        else:
            self._items["train"].append(item)
        return True

    def skip(self, example_id: str, reason: object) -> None:
        """Count an example that could not be read at all (its stored tensors are gone, say)."""
        logger.warning("skipping hard example %s: %s", example_id, reason)
        self.skipped += 1

    def sets(self) -> HardExampleSets:
        built = {name: HardSet.build(items, self.shapes) for name, items in self._items.items()}
        return HardExampleSets(**built, skipped=self.skipped, unnamed=self.unnamed)
