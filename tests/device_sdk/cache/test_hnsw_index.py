"""HnswIndex: reusing a saved graph, rebuilding when it does not fit, and a missing hnswlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgecascade.device_sdk.cache import HnswIndex
from edgecascade.device_sdk.cache.hnsw_index import graph_vectors, hnswlib_installed, load_hnswlib
from edgecascade.device_sdk.errors import DependencyError

from .cache_kit import DIM, units


def filled(n: int = 50, M: int = 16) -> tuple[HnswIndex, np.ndarray]:
    index = HnswIndex(DIM, 100, M=M)
    x = units(n)
    index.add(x, np.arange(n))
    return index, x


def test_restore_reuses_a_graph_of_the_same_degree(monkeypatch: pytest.MonkeyPatch) -> None:
    saved, x = filled()
    restored = HnswIndex(DIM, 200)

    def no_rebuild(vectors: np.ndarray, slots: np.ndarray) -> None:
        raise AssertionError("the saved graph should have been loaded, not rebuilt")

    monkeypatch.setattr(restored, "add", no_rebuild)
    restored.restore(saved.vectors(), saved.graph())
    monkeypatch.undo()
    assert len(restored) == 50
    assert restored.search(x[:5], 1)[0].ravel().tolist() == [0, 1, 2, 3, 4]
    restored.add(units(150, seed=1), np.arange(50, 200))  # resized to the new capacity
    assert len(restored) == 200


def test_restore_rebuilds_from_the_vectors_when_the_degree_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    saved, x = filled(M=8)
    restored = HnswIndex(DIM, 100, M=16)
    calls: list[int] = []
    add = restored.add

    def counted_add(vectors: np.ndarray, slots: np.ndarray) -> None:
        calls.append(len(slots))
        add(vectors, slots)

    monkeypatch.setattr(restored, "add", counted_add)
    restored.restore(saved.vectors(), saved.graph())
    assert calls == [50]
    assert restored.search(x[:3], 1)[0].ravel().tolist() == [0, 1, 2]


def test_a_graph_that_does_not_match_the_values_is_refused() -> None:
    saved, _ = filled()
    with pytest.raises(ValueError, match="do not match"):
        HnswIndex(DIM, 100).restore(units(49), saved.graph())


def test_graph_vectors_reads_the_keys_back() -> None:
    saved, x = filled(20)
    np.testing.assert_allclose(graph_vectors(saved.graph(), DIM, 20), x, atol=1e-6)
    assert graph_vectors(b"", DIM, 0).shape == (0, DIM)


def test_without_hnswlib_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hnswlib_installed()
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # what importing an absent module does
    assert not hnswlib_installed()
    with pytest.raises(DependencyError, match=r"pip install 'edgecascade\[hnsw\]'"):
        load_hnswlib()
    with pytest.raises(DependencyError):
        HnswIndex(DIM, 10)
