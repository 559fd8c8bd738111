"""The cache package's public API is curated and importable without hnswlib."""

from __future__ import annotations

import subprocess
import sys

from edgecascade.device_sdk import cache


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
    code = "import sys, edgecascade.device_sdk.cache; print('hnswlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
