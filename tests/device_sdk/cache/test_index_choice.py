"""Which index a cache gets: by capacity, by request, and without hnswlib."""

from __future__ import annotations

import logging
import sys

import pytest

from edgecascade.device_sdk.cache import CacheConfig, HnswIndex, NeuralCache
from edgecascade.device_sdk.cache.index_choice import EXACT_MAX_CAPACITY, choose_index, new_index
from edgecascade.device_sdk.errors import DependencyError

from .cache_kit import DIM

INSTALL = "pip install 'edgecascade[hnsw]'"


@pytest.fixture
def no_hnswlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # what importing an absent module does


def test_auto_uses_exact_search_up_to_the_threshold_and_hnsw_above() -> None:
    assert choose_index("auto", 1) == "exact"
    assert choose_index("auto", EXACT_MAX_CAPACITY) == "exact"
    assert choose_index("auto", EXACT_MAX_CAPACITY + 1) == "hnsw"
    assert NeuralCache(DIM, CacheConfig(capacity=EXACT_MAX_CAPACITY + 1)).index_kind == "hnsw"
    assert NeuralCache(DIM, CacheConfig(capacity=100)).index_kind == "exact"


def test_an_explicit_choice_wins_over_the_capacity() -> None:
    assert choose_index("exact", 10 * EXACT_MAX_CAPACITY) == "exact"
    assert choose_index("hnsw", 10) == "hnsw"
    config = CacheConfig(capacity=10, index="hnsw", ef=2, k=5, min_votes=1)
    index = new_index("hnsw", DIM, config)
    assert isinstance(index, HnswIndex) and index.capacity == 10 and index.ef == 5  # ef is at least k
    assert new_index("exact", DIM, config).kind == "exact"


def test_without_hnswlib_a_large_cache_still_works_and_warns_once(
    no_hnswlib: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgecascade.device_sdk.cache"):
        cache = NeuralCache(DIM, CacheConfig(capacity=EXACT_MAX_CAPACITY + 1, tau=0.01, k=1, min_votes=1))
        cache.clear()  # a new index of the same kind, no second warning
    assert cache.index_kind == "exact"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and INSTALL in warnings[0]
    key = [1.0] + [0.0] * (DIM - 1)
    assert cache.insert(key, 1, [0.0, 1.0], "cloud", 0.9)  # type: ignore[arg-type]
    hit = cache.lookup(key)  # type: ignore[arg-type]
    assert hit is not None and hit.label == 1


def test_without_hnswlib_small_caches_do_not_warn(no_hnswlib: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgecascade.device_sdk.cache"):
        assert NeuralCache(DIM, CacheConfig(capacity=EXACT_MAX_CAPACITY)).index_kind == "exact"
    assert not caplog.records


def test_asking_for_hnsw_without_hnswlib_raises_with_the_install_line(no_hnswlib: None) -> None:
    with pytest.raises(DependencyError) as info:
        NeuralCache(DIM, CacheConfig(capacity=10, index="hnsw"))
    assert INSTALL in str(info.value) and info.value.extra == "hnsw"
