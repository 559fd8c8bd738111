"""A tier's neural cache from a model bundle: its key projection and calibrated hit rule."""

from __future__ import annotations

from pathlib import Path

from edgecascade.device_sdk.cache.config import CacheConfig
from edgecascade.device_sdk.cache.neural_cache import NeuralCache
from edgecascade.device_sdk.cache.similarity import Embedder
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import Bundle


def open_cache(
    bundle: Bundle,
    tier: str,
    capacity: int = CacheConfig.capacity,
    path: str | Path | None = None,
    *,
    tau: float | None = None,
) -> NeuralCache:
    """The neural cache of ``tier`` for this bundle: loaded from ``path`` if given, else empty.

    Keys come from the tier's :func:`load_embedder`; the hit rule (tau, k, min_votes) and
    which own exits to keep from the manifest's calibrated cache settings when it has them;
    ``tau`` overrides the calibrated one. The index is chosen by capacity (``"auto"``).
    """
    calibrated = bundle.manifest.partition(tier).cache
    embedder = load_embedder(bundle, tier)
    defaults = CacheConfig()
    config = CacheConfig(
        capacity=capacity,
        tau=tau if tau is not None else calibrated.tau if calibrated is not None else defaults.tau,
        k=calibrated.k if calibrated is not None else defaults.k,
        min_votes=calibrated.min_votes if calibrated is not None else defaults.min_votes,
    )
    keep = calibrated.keep_exits_below if calibrated is not None else 0.0
    if path is None:
        return NeuralCache(
            embedder.dim, config, bundle.manifest.version, embedder=embedder, keep_exits_below=keep
        )
    return NeuralCache.load(
        path, embedder.dim, config, bundle.manifest.version, embedder=embedder, keep_exits_below=keep
    )


def load_embedder(bundle: Bundle, tier: str) -> Embedder:
    """The key projection of ``tier``'s cache: the bundle's calibrated one, else 2x2 pooling.

    The file was checked against its sha256 in the manifest when the bundle was loaded;
    a file that does not parse raises :class:`ConfigError`.
    """
    spec, keyed = bundle.manifest.partition(tier), bundle.manifest.sent_up(tier)
    if keyed is None:
        raise ConfigError(f"the {tier} partition sends nothing up to cache")
    if spec.cache is None or spec.cache.embedding is None:
        return Embedder.pooled(keyed.shape)
    try:
        embedder = Embedder.from_bytes((bundle.path / spec.cache.embedding).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{tier} cache embedding {spec.cache.embedding}: {exc}") from None
    if embedder.feature_shape != keyed.shape:
        raise ConfigError(
            f"{tier} cache embedding is for {embedder.feature_shape} features, "
            f"the partition sends {keyed.shape}"
        )
    return embedder
