"""The cache package's public API is curated and importable without hnswlib."""

from __future__ import annotations

from edgecascade.device_sdk import cache
from tests.imports import heavy_imports


def test_public_api_is_curated() -> None:
    assert sorted(cache.__all__) == cache.__all__
    assert {
        "CacheConfig",
        "CacheHit",
        "Embedder",
        "NeuralCache",
        "hit_rule",
        "load_embedder",
        "open_cache",
    } <= set(cache.__all__)
    for name in cache.__all__:
        assert hasattr(cache, name), name


def test_importing_the_cache_does_not_import_hnswlib() -> None:
    assert heavy_imports("edgecascade.device_sdk.cache") == []
