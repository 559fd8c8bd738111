"""Neural caches: answer an input from the answers given to near-duplicates before.

:class:`NeuralCache` (:mod:`.neural_cache`) keeps *embedding → answer* entries with an
LRU bound and saves them atomically; :mod:`.similarity` has the pure parts (the key
projection and the hit rule); :func:`open_cache` builds a tier's cache from a bundle's
calibrated settings.
"""

from edgecascade.device_sdk.cache.neural_cache import (
    CacheConfig,
    CacheHit,
    NeuralCache,
    load_embedder,
    open_cache,
)
from edgecascade.device_sdk.cache.similarity import Embedder, hit_rule

__all__ = ["CacheConfig", "CacheHit", "Embedder", "NeuralCache", "hit_rule", "load_embedder", "open_cache"]
