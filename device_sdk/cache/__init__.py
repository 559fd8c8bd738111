"""Neural caches: answer an input from the answers given to near-duplicates before.

:class:`NeuralCache` (:mod:`.neural_cache`) keeps *embedding → answer* entries with an
LRU bound over an exact (numpy) or HNSW (hnswlib, the ``hnsw`` extra) index, chosen by
capacity (:mod:`.index_choice`), and saves them atomically (:mod:`.cachefile`);
:mod:`.similarity` has the pure parts (the key projection and the hit rule);
:func:`open_cache` (:mod:`.from_bundle`) builds a tier's cache from a bundle's calibrated
settings.
"""

from edgecascade.device_sdk.cache.config import CacheConfig
from edgecascade.device_sdk.cache.exact_index import ExactIndex
from edgecascade.device_sdk.cache.from_bundle import load_embedder, open_cache
from edgecascade.device_sdk.cache.hnsw_index import HnswIndex
from edgecascade.device_sdk.cache.index import Index
from edgecascade.device_sdk.cache.neural_cache import CacheHit, NeuralCache
from edgecascade.device_sdk.cache.similarity import Embedder, hit_rule

__all__ = [
    "CacheConfig",
    "CacheHit",
    "Embedder",
    "ExactIndex",
    "HnswIndex",
    "Index",
    "NeuralCache",
    "hit_rule",
    "load_embedder",
    "open_cache",
]
