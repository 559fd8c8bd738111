"""The pure checks of cache entries and queries, and the eviction order."""

from __future__ import annotations

import numpy as np

from edgecascade.device_sdk.cache.entries import (
    check_entries,
    eviction_order,
    is_label,
    next_victim,
    usable_rows,
)

from .cache_kit import CLASSES, DIM, one_hot, units


def test_usable_rows_drop_non_finite_and_zero_rows() -> None:
    q = units(4)
    q[1] = 0.0
    q[2, 0] = np.nan
    assert list(usable_rows(q)) == [0, 3]
    assert list(usable_rows(q[:1])) == [0] and list(usable_rows(q[1:2])) == []
    assert list(usable_rows(units(3))) == [0, 1, 2]


def test_check_entries_counts_each_row_under_its_first_reason() -> None:
    emb = units(5)
    emb[0, 0] = np.inf
    emb[1] = 0.0
    labels = np.array([0, 1, CLASSES, 2, 3])
    probs = np.stack([one_hot(int(x) % CLASSES) for x in labels])
    tiers = ["cloud", "cloud", "cloud", "mars", "gateway"]
    ok, failures = check_entries(emb, labels, probs, tiers, np.ones(5), DIM, None)
    assert ok.tolist() == [False, False, False, False, True]
    assert failures == {"non_finite_embedding": 1, "zero_embedding": 1, "label": 1, "tier": 1}


def test_check_entries_refuses_whole_calls_of_the_wrong_shape_or_class_count() -> None:
    emb, labels, probs = units(2), np.array([0, 1]), np.stack([one_hot(0), one_hot(1)])
    ok, failures = check_entries(emb[:, :-1], labels, probs, ["cloud"] * 2, np.ones(2), DIM, None)
    assert not ok.any() and failures == {"shape": 2}
    ok, failures = check_entries(emb, labels, probs, ["cloud"] * 2, np.ones(2), DIM, CLASSES + 1)
    assert not ok.any() and failures == {"probabilities": 2}
    ok, failures = check_entries(emb, labels, probs, ["cloud"] * 2, np.array([0.5, np.nan]), DIM, CLASSES)
    assert ok.tolist() == [True, False] and failures == {"confidence": 1}


def test_eviction_order_is_oldest_first_then_least_confident() -> None:
    last_used = np.array([3, 1, 1, 2, 1])
    confidence = np.array([0.1, 0.9, 0.5, 0.2, 0.7], np.float32)
    assert eviction_order(last_used, confidence).tolist() == [2, 4, 1, 3, 0]
    assert next_victim(last_used, confidence) == 2


def test_labels_are_integral_class_indices() -> None:
    assert is_label(2, 3) and is_label(np.int64(0), 3) and is_label(2.0, 3)
    assert not any(is_label(x, 3) for x in (3, -1, 1.5, "a", None))
