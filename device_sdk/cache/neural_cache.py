"""Neural cache: answer an input from the answers given to similar inputs before.

Similar inputs recur at the edge (the same objects in front of the same camera), so a tier
keeps a cache of *embedding → answer* and answers a near-duplicate without running the
tiers above or sending anything. The hit rule follows FoggyCache's homogenised kNN: the
nearest cached entry must be close and the close neighbours must agree on its label.

:class:`NeuralCache` keeps the answers in numpy arrays indexed by *slot*, the slot of the
entry's key in its :class:`~.index.Index` (exact or HNSW, see :mod:`.index_choice`).
Slots ``0 .. len-1`` are always occupied, because eviction overwrites the victim's slot in
place. The file format is in :mod:`.cachefile`.
"""

from __future__ import annotations

import logging
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache.cachefile import CacheSnapshot, read_cache_file, write_cache_file
from edgecascade.device_sdk.cache.config import CacheConfig
from edgecascade.device_sdk.cache.entries import (
    TIER_CODES,
    TIER_LABELS,
    check_entries,
    eviction_order,
    next_victim,
    usable_rows,
)
from edgecascade.device_sdk.cache.index import IndexKind
from edgecascade.device_sdk.cache.index_choice import choose_index, new_index
from edgecascade.device_sdk.cache.similarity import Embedder, _decide
from edgecascade.device_sdk.errors import ConfigError, TensorSpecError

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = CacheConfig()


@dataclass(frozen=True)
class CacheHit:
    """A cached answer: the nearest entry's label, probabilities and origin, and the evidence."""

    label: int
    probabilities: np.ndarray
    source_tier: str  # which tier gave the cached answer: a wire.Tier label, e.g. "cloud"
    distance: float  # cosine distance to the nearest entry
    votes: int  # neighbours within tau that carry the label


class NeuralCache:
    """Embedding → answer cache over a nearest-neighbour index, bounded by least-recently-used eviction.

    Every public method takes one lock (hnswlib is not safe for concurrent add and query).
    A use is an insert or a hit; the victim is the entry used longest ago, and among
    entries used at the same tick (one batch call is one tick) the least confident one.
    """

    def __init__(
        self,
        dim: int,
        config: CacheConfig = DEFAULT_CONFIG,
        model_version: int = 0,
        *,
        embedder: Embedder | None = None,
        keep_exits_below: float = 0.0,
    ) -> None:
        if not (isinstance(dim, int) and dim >= 1):
            raise ConfigError(f"cache dimension must be an integer >= 1, got {dim!r}")
        if embedder is not None and embedder.dim != dim:
            raise ConfigError(f"the embedder makes {embedder.dim}-d keys, the cache holds {dim}-d")
        self.dim = dim
        self.config = config
        self.embedder = embedder  # features -> keys, for the tier that owns the cache
        self.keep_exits_below = float(keep_exits_below)  # also keep own exits less confident than this
        self._model_version = int(model_version)
        self._index_kind: IndexKind = choose_index(config.index, config.capacity)
        self._lock = threading.RLock()
        self.load_error: str | None = None  # why load() started empty, or None
        self._counters: Counter[str] = Counter()
        self._lookup_ns = 0
        self._reset()

    def _reset(self) -> None:
        cap = self.config.capacity
        self._index = new_index(self._index_kind, self.dim, self.config)
        self._size = 0
        self._tick = 0
        self._labels = np.zeros(cap, np.int64)
        self._probs: np.ndarray | None = None  # (capacity, classes), allocated by the first insert
        self._tiers = np.zeros(cap, np.uint8)
        self._confidence = np.zeros(cap, np.float32)
        self._last_used = np.zeros(cap, np.int64)

    # -------------------------------------------------------------------------- properties
    @property
    def model_version(self) -> int:
        """The model version whose features this cache holds (answers of other versions are invalid)."""
        return self._model_version

    @property
    def index_kind(self) -> IndexKind:
        """The index this cache searches with: ``"exact"`` or ``"hnsw"``."""
        return self._index_kind

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._reset()

    def metrics(self) -> dict[str, Any]:
        """Counters for monitoring; ``hits + misses == lookups`` always holds."""
        with self._lock:
            lookups = self._counters["lookups"]
            return {
                **{k: self._counters[k] for k in ("hits", "misses", "lookups", "insertions", "evictions")},
                "rejected": self._counters["rejected"],
                "rejected_reasons": {
                    k.removeprefix("rejected_"): v
                    for k, v in self._counters.items()
                    if k.startswith("rejected_")
                },
                "size": self._size,
                "capacity": self.config.capacity,
                "index": self._index_kind,
                "lookup_time_us_total": self._lookup_ns / 1000,
                "lookup_time_us_mean": self._lookup_ns / 1000 / lookups if lookups else 0.0,
                "model_version": self._model_version,
                "load_error": self.load_error,
            }

    def embed(self, features: np.ndarray) -> np.ndarray:
        """The keys of cut features ``(n, H, W, C)`` (see :class:`.similarity.Embedder`)."""
        if self.embedder is None:
            raise ConfigError("this cache was made without an embedder; pass embeddings instead")
        return self.embedder(features)

    # -------------------------------------------------------------------------- lookups
    def lookup(self, embedding: np.ndarray) -> CacheHit | None:
        """The cached answer for one embedding, or None (see :func:`.similarity.hit_rule`)."""
        return self.lookup_batch(np.asarray(embedding)[None])[0]

    def lookup_batch(self, embeddings: np.ndarray) -> list[CacheHit | None]:
        """Cached answers for ``(n, dim)`` embeddings with one index query; None where missed.

        Rows holding NaN/inf or all zeros are misses. A wrong shape is a programming error
        and raises :class:`TensorSpecError`.
        """
        q = self._queries(embeddings)
        rows = usable_rows(q)
        results: list[CacheHit | None] = [None] * len(q)
        cfg = self.config
        with self._lock:
            started = time.perf_counter_ns()
            if self._size and len(rows):
                try:
                    ids, dists = self._index.search(
                        q if len(rows) == len(q) else q[list(rows)], min(cfg.k, self._size)
                    )
                except RuntimeError as exc:  # hnswlib found fewer than k: only if ef < k, which we prevent
                    logger.warning("cache query failed, treating as misses: %s", exc)
                else:
                    self._tick += 1
                    slots, distances = ids.tolist(), dists.tolist()
                    # item() per neighbour: numpy's fancy indexing costs more than the query's k reads
                    labels = [[self._labels.item(s) for s in row] for row in slots]
                    for j, i in enumerate(rows):
                        decided = _decide(distances[j], labels[j], cfg.tau, cfg.min_votes)
                        if decided is not None:
                            results[i] = self._hit(slots[j], distances[j][0], *decided)
            hits = sum(r is not None for r in results)
            self._counters["lookups"] += len(q)
            self._counters["hits"] += hits
            self._counters["misses"] += len(q) - hits
            self._lookup_ns += time.perf_counter_ns() - started
        return results

    def _hit(self, slots: list[int], distance: float, label: int, voters: list[int]) -> CacheHit:
        """The answer of the nearest entry; every voter counts as used now."""
        assert self._probs is not None
        for v in voters:
            self._last_used[slots[v]] = self._tick
        nearest = slots[0]
        return CacheHit(
            label=label,
            probabilities=self._probs[nearest].copy(),
            source_tier=TIER_LABELS[int(self._tiers[nearest])],
            distance=distance,
            votes=len(voters),
        )

    def knn(self, embeddings: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Raw nearest slots and cosine distances ``(n, k)`` (for benchmarks and diagnostics)."""
        q = self._queries(embeddings)
        with self._lock:
            if k > self._size:
                raise ValueError(f"k={k} but the cache holds {self._size} entries")
            return self._index.search(q, k)

    def _queries(self, embeddings: np.ndarray) -> np.ndarray:
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise TensorSpecError(f"expected embeddings of shape (n, {self.dim}), got {q.shape}")
        return q

    # -------------------------------------------------------------------------- inserts
    def insert(
        self,
        embedding: np.ndarray,
        label: int,
        probabilities: np.ndarray,
        source_tier: str,
        confidence: float,
    ) -> bool:
        """Remember an answer; False (and a ``rejected`` count) if the entry is unusable.

        Unusable: wrong dimension, NaN/inf or all-zero embedding, probabilities that are not
        finite, negative or of another class count than earlier entries, a label outside
        the classes, an unknown tier (any :class:`wire.Tier` label is accepted), NaN confidence.
        """
        mask = self.insert_batch(
            np.asarray(embedding)[None],
            np.asarray([label]),
            np.asarray(probabilities)[None],
            [source_tier],
            np.asarray([confidence]),
        )
        return bool(mask[0])

    def insert_batch(
        self,
        embeddings: np.ndarray,
        labels: np.ndarray,
        probabilities: np.ndarray,
        source_tiers: list[str],
        confidences: np.ndarray,
    ) -> np.ndarray:
        """Insert many entries with one index call; returns a bool mask of the accepted rows.

        All rows of one call share a tick. If more rows are valid than the capacity holds,
        the most confident rows are kept and the rest count as rejected ("over_capacity").
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        probs = np.asarray(probabilities, dtype=np.float32)
        labs = np.asarray(labels)
        conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
        capacity = self.config.capacity
        with self._lock:
            classes = None if self._probs is None else self._probs.shape[1]
            ok, failures = check_entries(emb, labs, probs, source_tiers, conf, self.dim, classes)
            for reason, count in failures.items():
                self._reject(reason, count)
                logger.debug("cache rejected %d entries: %s", count, reason)
            rows = np.flatnonzero(ok)
            if len(rows) > capacity:
                keep = rows[np.argsort(-conf[rows], kind="stable")[:capacity]]
                self._reject("over_capacity", len(rows) - len(keep))
                ok[:] = False
                ok[keep] = True
                rows = np.sort(keep)
            if len(rows) == 0:
                return ok
            if self._probs is None:
                self._probs = np.zeros((capacity, probs.shape[1]), np.float32)
            free = min(capacity - self._size, len(rows))
            victims = self._victims(len(rows) - free)
            slots = np.concatenate([np.arange(self._size, self._size + free), victims]).astype(np.int64)
            self._index.add(emb[rows] / np.linalg.norm(emb[rows], axis=1, keepdims=True), slots)
            self._tick += 1
            self._labels[slots] = labs[rows].astype(np.int64)
            self._probs[slots] = probs[rows]
            self._tiers[slots] = [TIER_CODES[source_tiers[i]] for i in rows]
            self._confidence[slots] = conf[rows]
            self._last_used[slots] = self._tick
            self._size += free
            self._counters["insertions"] += len(rows)
            self._counters["evictions"] += len(victims)
        return ok

    def _victims(self, count: int) -> np.ndarray:
        """The ``count`` entries an insert evicts (see :func:`.entries.eviction_order`)."""
        if count <= 0:  # room for every new entry: nothing to sort
            return np.zeros(0, np.int64)
        last_used, confidence = self._last_used[: self._size], self._confidence[: self._size]
        if count == 1:
            return np.array([next_victim(last_used, confidence)], np.int64)
        return eviction_order(last_used, confidence)[:count]

    def keep_exits(
        self, features: np.ndarray, probabilities: np.ndarray, exits: np.ndarray, source_tier: str
    ) -> int:
        """Insert the tier's own exit answers less confident than ``keep_exits_below``; how many.

        A near-duplicate of such an input may fall under the exit threshold and reach the
        cache, which then has the answer given to the original.
        """
        if self.keep_exits_below <= 0.0:  # keeps none: nothing to compute on the request path
            return 0
        probs = np.asarray(probabilities, dtype=np.float32)
        confidence = probs.max(axis=1) if probs.ndim == 2 and probs.size else np.zeros(0, np.float32)
        keep = np.flatnonzero(np.asarray(exits, bool) & (confidence < self.keep_exits_below))
        if not len(keep):
            return 0
        mask = self.insert_batch(
            self.embed(np.asarray(features)[keep]),
            probs[keep].argmax(axis=1),
            probs[keep],
            [source_tier] * len(keep),
            confidence[keep],
        )
        return int(mask.sum())

    def _reject(self, reason: str, count: int) -> None:
        self._counters["rejected"] += count
        self._counters[f"rejected_{reason}"] += count

    # -------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the cache to one file atomically: readers see the old file or the new one.

        Blocks lookups while the entries are copied out (and an HNSW graph serialised).
        Raises OSError if the disk fails; the previous file, if any, is then left untouched.
        """
        with self._lock:
            n = self._size
            snapshot = CacheSnapshot(
                dim=self.dim,
                model_version=self._model_version,
                tick=self._tick,
                index=self._index_kind,
                vectors=self._index.vectors(),
                labels=self._labels[:n].copy(),
                probabilities=(
                    self._probs[:n].copy() if self._probs is not None else np.zeros((0, 0), np.float32)
                ),
                tiers=self._tiers[:n].copy(),
                confidence=self._confidence[:n].copy(),
                last_used=self._last_used[:n].copy(),
                graph=self._index.graph(),
            )
        write_cache_file(path, snapshot)
        logger.debug("saved %d cache entries to %s", n, path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        dim: int,
        config: CacheConfig = DEFAULT_CONFIG,
        model_version: int = 0,
        *,
        embedder: Embedder | None = None,
        keep_exits_below: float = 0.0,
    ) -> NeuralCache:
        """The cache saved at ``path``; an empty one (with ``load_error`` set) if it is unusable.

        A missing, truncated or corrupt file, or one for another model version or dimension,
        never raises: it is logged (missing at info level, the rest as warnings) and the
        cache starts empty. If the file holds more entries than ``config.capacity``, the
        most recently used ones are kept. Either index kind reads files written by either.
        """
        cache = cls(dim, config, model_version, embedder=embedder, keep_exits_below=keep_exits_below)
        try:
            cache._restore(read_cache_file(path, dim, cache.model_version))
        except FileNotFoundError:
            cache.load_error = "missing"
            logger.info("no neural cache at %s; starting empty", path)
        except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as exc:
            cache._reset()
            cache.load_error = str(exc) or type(exc).__name__
            logger.warning("discarding neural cache %s and starting empty: %s", path, cache.load_error)
        return cache

    def _restore(self, saved: CacheSnapshot) -> None:
        """Fill this empty cache from a verified snapshot (its most recent entries if it is too big)."""
        saved = saved.most_recent(self.config.capacity)
        m = saved.count
        if m == 0:
            return
        self._index.restore(saved.vectors, saved.graph)
        self._probs = np.zeros((self.config.capacity, saved.probabilities.shape[1]), np.float32)
        self._labels[:m], self._probs[:m], self._tiers[:m] = saved.labels, saved.probabilities, saved.tiers
        self._confidence[:m], self._last_used[:m] = saved.confidence, saved.last_used
        self._size = m
        self._tick = max(saved.tick, int(saved.last_used.max()))
