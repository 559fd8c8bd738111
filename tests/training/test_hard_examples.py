"""Stored hard examples into training sets: what is used, as what, and in which slice (numpy only)."""

from __future__ import annotations

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire import codec
from edgecascade.training.hard_examples import HardExampleSplit, HardSet, StoredExample

SHAPES = {"raw": (28, 28, 1), "cut1": (7, 7, 4), "cut2": (4, 4, 8)}


def _id_at(position: float, tag: int = 0) -> str:
    """An example id (64 hex digits) whose position in [0, 1) is ``position``."""
    return f"{tag:056x}{int(position * 2**32):08x}"


def _example(
    position: float,
    *,
    tag: int = 0,
    label: int = 3,
    cut: str = "cut1",
    raw_shape: tuple[int, ...] | None = None,
    reasons: tuple[str, ...] = ("reached_cloud",),
    readable: bool = True,
    human: bool = True,
) -> StoredExample:
    features = np.full(SHAPES[cut], 0.5, np.float32)
    raw = None if raw_shape is None else wire.encode_tensor(np.full(raw_shape, 7, np.uint8))
    return StoredExample(
        example_id=_id_at(position, tag),
        cut=cut,
        encoding="float16",
        features=codec.encode_features(features, "float16"),
        raw=raw,
        label=label,
        reasons=reasons,
        features_readable=readable,
        human=human,
    )


def _split() -> HardExampleSplit:
    return HardExampleSplit(SHAPES, holdout_fraction=0.2, calibration_fraction=0.2)


def test_the_id_decides_the_slice_and_only_audited_raw_inputs_calibrate() -> None:
    split = _split()
    examples = [
        _example(0.1, tag=1, label=1),  # held out
        _example(0.3, tag=2, label=2, raw_shape=(28, 28, 1), reasons=("audit",)),  # calibrates
        _example(0.3, tag=3, label=3, reasons=("audit",)),  # audited but no raw input: trains
        _example(0.3, tag=4, label=4, raw_shape=(28, 28, 1)),  # raw but not audited: trains
        _example(0.9, tag=5, label=5, cut="cut2"),
    ]
    assert all(split.add(e) for e in examples)
    sets = split.sets()
    assert sets.counts() == {"train": 3, "holdout": 1, "calibration": 1, "skipped": 0, "unnamed": 0}
    assert sets.holdout.cut1_y.tolist() == [1]
    assert sets.calibration.raw_y.tolist() == [2] and sets.calibration.raw.dtype == np.uint8
    assert sets.train.cut1_y.tolist() == [3] and sets.train.raw_y.tolist() == [4]
    assert sets.train.cut2_y.tolist() == [5] and sets.train.cut2.shape == (1, 4, 4, 8)
    np.testing.assert_allclose(sets.train.cut1, 0.5)


def test_an_unknown_input_is_used_only_once_a_person_labelled_it() -> None:
    split = _split()
    assert not split.add(_example(0.9, tag=1, reasons=("unknown",), human=False))  # the teacher's guess
    assert not split.add(_example(0.1, tag=2, reasons=("low_margin", "unknown"), human=False))
    assert split.add(_example(0.9, tag=3, reasons=("unknown",), human=True, label=8))  # its group was named
    assert split.add(_example(0.9, tag=4, reasons=("reached_cloud",), human=False))  # teacher labels train
    sets = split.sets()
    assert sets.counts() == {"train": 2, "holdout": 0, "calibration": 0, "skipped": 0, "unnamed": 2}
    assert sorted(sets.train.cut1_y.tolist()) == [3, 8]


def test_a_raw_input_counts_only_in_the_served_input_shape() -> None:
    split = _split()
    assert split.add(_example(0.9, tag=1, raw_shape=(32, 32, 3)))  # wrong shape: its features train
    assert not split.add(_example(0.9, tag=2, raw_shape=(32, 32, 3), readable=False))
    assert split.add(_example(0.9, tag=3, raw_shape=(28, 28, 1), readable=False))  # raw is enough
    sets = split.sets()
    assert (len(sets.train.cut1_y), len(sets.train.raw_y), sets.skipped) == (1, 1, 1)


def test_unreadable_examples_are_skipped_and_counted() -> None:
    split = _split()
    assert not split.add(_example(0.9, tag=1, readable=False))  # another version's cut
    garbled = StoredExample(_id_at(0.9, 2), "cut1", "float16", b"\x00not a tensor", None, label=0)
    assert not split.add(garbled)
    wrong_encoding = StoredExample(
        _id_at(0.9, 3), "cut1", "int8", codec.encode_features(np.zeros(SHAPES["cut1"]), "float16"), None, 0
    )
    assert not split.add(wrong_encoding)
    split.skip(_id_at(0.9, 4), FileNotFoundError("blob gone"))
    sets = split.sets()
    assert sets.counts() == {"train": 0, "holdout": 0, "calibration": 0, "skipped": 4, "unnamed": 0}
    assert sets.train.raw.shape == (0, 28, 28, 1) and sets.train.cut2.shape == (0, 4, 4, 8)


def test_hard_set_uses_the_raw_input_when_an_item_has_one() -> None:
    features = np.ones(SHAPES["cut1"], np.float32)
    raw = np.zeros(SHAPES["raw"], np.uint8)
    hard = HardSet.build([("cut1", features, raw, 1), ("cut1", features, None, 2)], SHAPES)
    assert len(hard) == 2 and hard.raw_y.tolist() == [1] and hard.cut1_y.tolist() == [2]
    assert hard.cut1.dtype == np.float32 and hard.cut2.shape == (0, 4, 4, 8)
