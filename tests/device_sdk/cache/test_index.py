"""The Index contract, held by both implementations: slots, in-place overwrite, search, restore."""

from __future__ import annotations

import numpy as np
import pytest

from edgecascade.device_sdk.cache import ExactIndex, HnswIndex, Index

from .cache_kit import DIM, KINDS, units


def make(kind: str, capacity: int = 100) -> Index:
    return ExactIndex(DIM, capacity) if kind == "exact" else HnswIndex(DIM, capacity, ef=50)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_search_finds_the_nearest_slots_nearest_first(kind: str) -> None:
    index = make(kind)
    x = units(60)
    index.add(x, np.arange(60))
    assert len(index) == 60 and index.kind == kind
    ids, dists = index.search(x[[7, 33]], k=3)
    assert ids.dtype == np.int64 and dists.dtype == np.float32 and ids.shape == (2, 3)
    expected = np.argsort(-(x[[7, 33]] @ x.T), axis=1)[:, :3]
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(dists, 1 - np.take_along_axis(x[[7, 33]] @ x.T, expected, axis=1), atol=1e-5)
    one_ids, _ = index.search(x[7:8], k=1)
    assert one_ids.tolist() == [[7]]


def test_overwriting_a_slot_replaces_its_vector_in_place(kind: str) -> None:
    index = make(kind)
    x, y = units(20), units(3, seed=1)
    index.add(x, np.arange(20))
    index.add(y[:2], np.array([4, 20]))  # overwrite slot 4, append slot 20
    assert len(index) == 21
    assert index.search(y[:2], k=1)[0].tolist() == [[4], [20]]
    assert index.search(x[4:5], k=1)[0][0, 0] != 4  # the old vector of slot 4 is gone
    stored = index.vectors()
    np.testing.assert_allclose(stored[4], y[0], atol=1e-6)
    np.testing.assert_allclose(stored[:4], x[:4], atol=1e-6)


def test_search_needs_k_between_one_and_the_size(kind: str) -> None:
    index = make(kind)
    index.add(units(5), np.arange(5))
    for k in (0, 6):
        with pytest.raises(ValueError, match="holds 5"):
            index.search(units(1), k)


def test_vectors_are_a_copy_in_slot_order(kind: str) -> None:
    index = make(kind)
    assert index.vectors().shape == (0, DIM)
    x = units(10)
    index.add(x, np.arange(10))
    stored = index.vectors()
    np.testing.assert_allclose(stored, x, atol=1e-6)
    stored[:] = 0
    assert index.search(x[3:4], k=1)[0].tolist() == [[3]]


@pytest.mark.parametrize("saved_kind", KINDS)
def test_restore_fills_an_empty_index_from_another_ones_vectors_and_graph(kind: str, saved_kind: str) -> None:
    saved = make(saved_kind)
    x = units(40)
    saved.add(x, np.arange(40))
    restored = make(kind)
    restored.restore(saved.vectors(), saved.graph())
    assert len(restored) == 40
    q = units(5, seed=9)
    assert restored.search(q, k=2)[0].tolist() == saved.search(q, k=2)[0].tolist()
    restored.add(units(1, seed=3), np.array([40]))  # still room to grow to its capacity
    assert len(restored) == 41


def test_slots_must_stay_contiguous_and_within_capacity(kind: str) -> None:
    index = make(kind, capacity=3)
    x = units(4)
    with pytest.raises(ValueError, match="append from 0"):
        index.add(x[:1], np.array([1]))  # would leave slot 0 empty
    with pytest.raises(ValueError):
        index.add(x[:1], np.array([-1]))
    index.add(x[:3], np.arange(3))
    with pytest.raises(ValueError, match="up to 3"):
        index.add(x[3:], np.array([3]))  # beyond capacity
    index.add(x[3:], np.array([0]))
    assert len(index) == 3 and index.search(x[3:], 1)[0].tolist() == [[0]]
