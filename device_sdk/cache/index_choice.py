"""Which index a cache uses: exact search up to a capacity, HNSW above it when installed.

Measured with ``bench_index`` (``edgecascade bench cache``) on two cores shared with other
jobs (load 1-2): 32-d device keys of the Fashion-MNIST model, 1000 held-out queries,
lookups through :class:`~.neural_cache.NeuralCache` (k=3), medians of six runs. µs;
"batch" is per query in ``lookup_batch`` calls of 32; "insert" is one insert into the
full cache (it evicts); HNSW with M=16, ef=32, ef_construction=100::

    entries  exact p50/p99  hnsw p50/p99  recall@1  batch exact/hnsw  insert exact/hnsw
      1,000      17 /  49      14 /  40     1.000         7 /  9          80 / 179
      2,000      15 /  37      16 /  53     1.000         8 / 12          70 / 265
      5,000      35 /  85      23 /  50     1.000        17 / 14         107 / 294
     10,000      54 / 122      24 /  69     0.998        37 / 18         114 / 370
     20,000      70 / 151      22 /  71     0.999        72 / 19          91 / 442
     50,000     229 / 369      33 / 100     0.996       404 / 26         118 / 572
    100,000     357 / 850      36 / 111     0.994       304 / 35         127 / 805

HNSW's lookups are faster from about 2-5k entries (batched from 5-10k), but an HNSW
insert costs 3-6x an exact one, and a cache inserts after most misses. Up to 20k entries
exact search stays within about 50 µs of HNSW per lookup (p99 within 80 µs), and it costs
less CPU per lookup-plus-insert unless over 85 % of lookups hit; it is exact, and needs
no compiled extra. From 50k on it is 7-10x slower per lookup (0.4-0.9 ms at p99), so
``"auto"`` switches at :data:`EXACT_MAX_CAPACITY` = 20,000 (the default capacity, 10k,
stays exact).
"""

from __future__ import annotations

import logging

from edgecascade.device_sdk.cache.config import CacheConfig
from edgecascade.device_sdk.cache.exact_index import ExactIndex
from edgecascade.device_sdk.cache.hnsw_index import HnswIndex, hnswlib_installed, load_hnswlib
from edgecascade.device_sdk.cache.index import Index, IndexChoice, IndexKind

logger = logging.getLogger(__name__)

EXACT_MAX_CAPACITY = 20_000  # "auto" uses exact search up to this capacity (see the measurements above)


def choose_index(choice: IndexChoice, capacity: int) -> IndexKind:
    """The index kind for ``choice`` at ``capacity``.

    ``"hnsw"`` without hnswlib raises :class:`DependencyError`; ``"auto"`` above
    :data:`EXACT_MAX_CAPACITY` without hnswlib falls back to exact search with a warning.
    """
    if choice == "exact":
        return "exact"
    if choice == "hnsw":
        load_hnswlib()
        return "hnsw"
    if capacity <= EXACT_MAX_CAPACITY:
        return "exact"
    if hnswlib_installed():
        return "hnsw"
    logger.warning(
        "a neural cache of %d entries uses exact search, which is slow at that size; "
        "pip install 'edgecascade[hnsw]' makes large caches faster",
        capacity,
    )
    return "exact"


def new_index(kind: IndexKind, dim: int, config: CacheConfig) -> Index:
    """An empty index of ``kind`` for ``config.capacity`` keys of ``dim`` dimensions."""
    if kind == "exact":
        return ExactIndex(dim, config.capacity)
    return HnswIndex(
        dim,
        config.capacity,
        M=config.M,
        ef_construction=config.ef_construction,
        ef=max(config.ef, config.k),
    )
