"""open_cache and load_embedder: a tier's cache from a bundle's manifest and key projection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.cache import CacheConfig, open_cache
from edgecascade.device_sdk.cache.index_choice import EXACT_MAX_CAPACITY
from edgecascade.device_sdk.cache.similarity import Embedder
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import (
    Bundle,
    CacheSpec,
    ExitSpec,
    InputSpec,
    Manifest,
    PartitionSpec,
    TensorSpec,
)

from .cache_kit import CLASSES


def _manifest(cache: CacheSpec | None) -> Manifest:
    def part(tier: str, shape: tuple[int, ...], features: tuple[int, ...] | None) -> PartitionSpec:
        return PartitionSpec(
            tier=tier,
            file=f"{tier}.tflite",
            sha256="0" * 64,
            input=TensorSpec("in", shape),
            logits=TensorSpec("logits", (CLASSES,)),
            exit=ExitSpec(0.9),
            features=TensorSpec("features", features) if features else None,
            cache=cache,
        )

    return Manifest(
        name="test",
        version=7,
        classes=tuple("abcd"),
        input=InputSpec((28, 28, 1)),
        partitions=(
            part("device", (28, 28, 1), (7, 7, 8)),
            part("gateway", (7, 7, 8), (4, 4, 16)),
            part("cloud", (4, 4, 16), None),
        ),
    )


def test_open_cache_takes_dimension_version_and_calibration_from_the_manifest(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, _manifest(CacheSpec(tau=0.031, k=5, min_votes=3, keep_exits_below=0.8)))
    device = open_cache(bundle, "device", 50)
    assert (device.dim, device.model_version, device.config.capacity) == (128, 7, 50)  # pooled keys
    assert (device.config.tau, device.config.k, device.config.min_votes) == (0.031, 5, 3)
    assert device.keep_exits_below == 0.8
    gateway = open_cache(bundle, "gateway", 50, tmp_path / "missing", tau=0.01)
    assert (gateway.dim, gateway.config.tau, gateway.load_error) == (64, 0.01, "missing")
    assert open_cache(Bundle(tmp_path, _manifest(None)), "device").config.tau == CacheConfig().tau
    with pytest.raises(ConfigError):
        open_cache(bundle, "cloud")


def test_open_cache_chooses_the_index_by_capacity(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, _manifest(None))
    assert open_cache(bundle, "gateway", EXACT_MAX_CAPACITY).index_kind == "exact"
    assert open_cache(bundle, "gateway", EXACT_MAX_CAPACITY + 1).index_kind == "hnsw"


def test_open_cache_loads_a_saved_cache_of_the_same_model(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, _manifest(None))
    cache = open_cache(bundle, "gateway", 10)
    key = np.ones((1, 64), np.float32)
    assert cache.insert(key[0], 2, np.eye(CLASSES, dtype=np.float32)[2], "cloud", 0.9)
    cache.save(tmp_path / "gateway.cache")
    loaded = open_cache(bundle, "gateway", 10, tmp_path / "gateway.cache")
    assert loaded.load_error is None and len(loaded) == 1
    hit = loaded.lookup(key[0])
    assert hit is not None and hit.label == 2


def test_open_cache_uses_the_bundles_key_projection(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    embedder = Embedder(
        rng.random(392, dtype=np.float32), rng.normal(size=(392, 12)).astype(np.float32), (7, 7, 8)
    )
    (tmp_path / "device.cache.npz").write_bytes(embedder.to_bytes())
    spec = CacheSpec(tau=0.05, embedding="device.cache.npz", embedding_sha256="0" * 64)
    cache = open_cache(Bundle(tmp_path, _manifest(spec)), "device", 10)
    assert cache.dim == 12
    features = rng.random((3, 7, 7, 8), dtype=np.float32)
    np.testing.assert_array_equal(cache.embed(features), embedder(features))
    (tmp_path / "device.cache.npz").write_bytes(b"garbage")
    with pytest.raises(ConfigError):
        open_cache(Bundle(tmp_path, _manifest(spec)), "device", 10)


def test_an_embedding_for_other_features_is_refused(tmp_path: Path) -> None:
    other = Embedder.pooled((4, 4, 16))
    (tmp_path / "device.cache.npz").write_bytes(other.to_bytes())
    spec = CacheSpec(tau=0.05, embedding="device.cache.npz", embedding_sha256="0" * 64)
    with pytest.raises(ConfigError, match=r"\(4, 4, 16\) features"):
        open_cache(Bundle(tmp_path, _manifest(spec)), "device", 10)
