"""Neural cache: answer an input from the answers given to similar inputs before.

Similar inputs recur at the edge (the same objects in front of the same camera), so a tier
keeps a cache of *embedding → answer* and answers a near-duplicate without running the
tiers above or sending anything. The hit rule follows FoggyCache's homogenised kNN: the
nearest cached entry must be close and the close neighbours must agree on its label.

* :mod:`edgecascade.device_sdk.cache.similarity` has the pure parts: an ``Embedder`` turns a tier's cut
  features into compact, L2-normalised keys, ``hit_rule`` decides over the k nearest.
* :class:`NeuralCache` is an hnswlib HNSW index (cosine space) plus per-entry values,
  bounded by LRU eviction, thread-safe, saved to and loaded from one file atomically.

The slot of an entry is its hnswlib label; values live in numpy arrays indexed by slot.
Slots ``0 .. len-1`` are always occupied, because eviction overwrites the victim's slot in
place (hnswlib updates an existing label's vector and repairs its links). We do not use
``mark_deleted`` + ``replace_deleted``: that takes *any* vacant slot, so replacing several
deleted labels in one ``add_items`` call can drop a label from hnswlib's lookup table.

File format (one file, replaced atomically with temp file + fsync + ``os.replace``)::

    offset  size  field
    0       8     magic b"ECNCACHE"
    8       4     header length n (uint32, big-endian)
    12      n     JSON header: format, dim, model_version, count, num_classes, tick,
                  payload_bytes, payload_sha256
    12+n    ...   payload: an uncompressed .npz of plain arrays (read with allow_pickle=False):
                  index (uint8, hnswlib save_index bytes), labels (int64),
                  probabilities (float32, count x classes), tiers (uint8, wire.Tier codes),
                  confidence (float32), last_used (int64 ticks)
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import math
import os
import struct
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache.similarity import _ZERO_NORM, Embedder, _decide
from edgecascade.device_sdk.errors import ConfigError, DependencyError, TensorSpecError
from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.model.bundle import Bundle

logger = logging.getLogger(__name__)

FILE_MAGIC = b"ECNCACHE"
FILE_FORMAT = 1
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024
_TIER_CODES = {t.label: int(t) for t in wire.Tier}
_TIER_LABELS = {code: label for label, code in _TIER_CODES.items()}


def _hnswlib() -> Any:
    """The hnswlib module, imported on first use so ``import edgecascade.device_sdk`` stays light."""
    try:
        return importlib.import_module("hnswlib")
    except ImportError:
        raise DependencyError("hnswlib", "device") from None


# ------------------------------------------------------------------------------ config, hit
@dataclass(frozen=True)
class CacheConfig:
    """Size, hit rule and HNSW parameters of a :class:`NeuralCache`.

    ``tau`` is a cosine distance (1 - cos); bundles carry a calibrated one. ``ef`` is
    hnswlib's search breadth (recall vs time), ``M`` its graph degree and
    ``ef_construction`` its build breadth. Measured on 32-d device keys of Fashion-MNIST
    at 100k entries: M=16 with ef=16/24/32/48 gives recall@1 0.983/0.993/0.996/0.998 at
    a raw query p50 of about 47/55/60/85 us; M=24 is a little faster to query but slower
    to insert, M=12 loses recall. ef_construction=100 halves the insert time of 200
    (110 vs 230 us, which every kept exit pays) at the same recall.
    """

    capacity: int = 10_000
    tau: float = 0.02
    k: int = 3
    min_votes: int = 2
    ef: int = 32
    M: int = 16
    ef_construction: int = 100

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.capacity, int) and self.capacity >= 1):
            problems.append(f"cache capacity must be an integer >= 1, got {self.capacity!r}")
        if not (isinstance(self.tau, int | float) and math.isfinite(self.tau) and 0 <= self.tau <= 2):
            problems.append(f"cache tau must be a cosine distance in [0, 2], got {self.tau!r}")
        if not (isinstance(self.k, int) and self.k >= 1):
            problems.append(f"cache k must be an integer >= 1, got {self.k!r}")
        if not (isinstance(self.min_votes, int) and 1 <= self.min_votes <= max(self.k, 1)):
            problems.append(f"cache min_votes must be in 1..k ({self.k!r}), got {self.min_votes!r}")
        if not (isinstance(self.ef, int) and self.ef >= 1):
            problems.append(f"cache ef must be an integer >= 1, got {self.ef!r}")
        if not (isinstance(self.M, int) and 2 <= self.M <= 100):
            problems.append(f"cache M must be an integer in 2..100, got {self.M!r}")
        if not (isinstance(self.ef_construction, int) and self.ef_construction >= 1):
            problems.append(f"cache ef_construction must be an integer >= 1, got {self.ef_construction!r}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CacheHit:
    """A cached answer: the nearest entry's label, probabilities and origin, and the evidence."""

    label: int
    probabilities: np.ndarray
    source_tier: str  # which tier gave the cached answer: a wire.Tier label, e.g. "cloud"
    distance: float  # cosine distance to the nearest entry
    votes: int  # neighbours within tau that carry the label


# ------------------------------------------------------------------------------ the cache
class NeuralCache:
    """Embedding → answer cache over an HNSW index, bounded by least-recently-used eviction.

    Every public method takes one lock (hnswlib is not safe for concurrent add and query).
    A use is an insert or a hit; the victim is the entry used longest ago, and among
    entries used at the same tick (one batch call is one tick) the least confident one.
    """

    def __init__(
        self,
        dim: int,
        config: CacheConfig = CacheConfig(),
        model_version: int = 0,
        *,
        embedder: Embedder | None = None,
        keep_exits_below: float = 0.0,
    ) -> None:
        if not (isinstance(dim, int) and dim >= 1):
            raise ConfigError(f"cache dimension must be an integer >= 1, got {dim!r}")
        if embedder is not None and embedder.dim != dim:
            raise ConfigError(f"the embedder makes {embedder.dim}-d keys, the cache holds {dim}-d")
        self._hnswlib = _hnswlib()
        self.dim = dim
        self.config = config
        self.embedder = embedder  # features -> keys, for the tier that owns the cache
        self.keep_exits_below = float(keep_exits_below)  # also keep own exits less confident than this
        self._model_version = int(model_version)
        self._lock = threading.RLock()
        self.load_error: str | None = None  # why load() started empty, or None
        self._counters: Counter[str] = Counter()
        self._lookup_ns = 0
        self._reset()

    def _reset(self) -> None:
        cap = self.config.capacity
        self._index = self._new_index()
        self._size = 0
        self._tick = 0
        self._labels = np.zeros(cap, np.int64)
        self._probs: np.ndarray | None = None  # (capacity, classes), allocated by the first insert
        self._tiers = np.zeros(cap, np.uint8)
        self._confidence = np.zeros(cap, np.float32)
        self._last_used = np.zeros(cap, np.int64)

    def _new_index(self) -> Any:
        index = self._hnswlib.Index(space="cosine", dim=self.dim)
        index.init_index(
            max_elements=self.config.capacity, M=self.config.M, ef_construction=self.config.ef_construction
        )
        index.set_ef(max(self.config.ef, self.config.k))
        return index

    # -------------------------------------------------------------------------- properties
    @property
    def model_version(self) -> int:
        """The model version whose features this cache holds (answers of other versions are invalid)."""
        return self._model_version

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
                "hits": self._counters["hits"],
                "misses": self._counters["misses"],
                "lookups": lookups,
                "insertions": self._counters["insertions"],
                "evictions": self._counters["evictions"],
                "rejected": self._counters["rejected"],
                "rejected_reasons": {
                    k.removeprefix("rejected_"): v
                    for k, v in self._counters.items()
                    if k.startswith("rejected_")
                },
                "size": self._size,
                "capacity": self.config.capacity,
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
        """The cached answer for one embedding, or None (see :func:`hit_rule`)."""
        return self.lookup_batch(np.asarray(embedding)[None])[0]

    def lookup_batch(self, embeddings: np.ndarray) -> list[CacheHit | None]:
        """Cached answers for ``(n, dim)`` embeddings with one index query; None where missed.

        Rows holding NaN/inf or all zeros are misses. A wrong shape is a programming error
        and raises :class:`TensorSpecError`.
        """
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise TensorSpecError(f"expected embeddings of shape (n, {self.dim}), got {q.shape}")
        rows = _usable_rows(q)
        results: list[CacheHit | None] = [None] * len(q)
        cfg = self.config
        with self._lock:
            started = time.perf_counter_ns()
            if self._size and len(rows):
                try:
                    ids, dists = self._index.knn_query(
                        q if len(rows) == len(q) else q[list(rows)], k=min(cfg.k, self._size), num_threads=1
                    )
                except RuntimeError as exc:  # fewer than k found: only if ef < k, which we prevent
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
            source_tier=_TIER_LABELS[int(self._tiers[nearest])],
            distance=distance,
            votes=len(voters),
        )

    def knn(self, embeddings: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Raw nearest slots and cosine distances ``(n, k)`` (for benchmarks and diagnostics)."""
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise TensorSpecError(f"expected embeddings of shape (n, {self.dim}), got {q.shape}")
        with self._lock:
            if k > self._size:
                raise ValueError(f"k={k} but the cache holds {self._size} entries")
            ids, dists = self._index.knn_query(q, k=k, num_threads=1)
        return ids.astype(np.int64), dists

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
        n = len(source_tiers)
        emb = np.asarray(embeddings, dtype=np.float32)
        probs = np.asarray(probabilities, dtype=np.float32)
        labs = np.asarray(labels)
        conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
        with self._lock:
            ok = self._validate(emb, labs, probs, source_tiers, conf, n)
            rows = np.flatnonzero(ok)
            if len(rows) > self.config.capacity:
                keep = rows[np.argsort(-conf[rows], kind="stable")[: self.config.capacity]]
                self._reject("over_capacity", len(rows) - len(keep))
                ok[:] = False
                ok[keep] = True
                rows = np.sort(keep)
            if len(rows) == 0:
                return ok
            if self._probs is None:
                self._probs = np.zeros((self.config.capacity, probs.shape[1]), np.float32)
            free = min(self.config.capacity - self._size, len(rows))
            new_slots = np.arange(self._size, self._size + free)
            victims = self._victims(len(rows) - free)
            slots = np.concatenate([new_slots, victims]).astype(np.int64)
            vecs = emb[rows] / np.linalg.norm(emb[rows], axis=1, keepdims=True)
            if free:
                self._index.add_items(vecs[:free], new_slots)
            if len(victims):  # in-place update of an existing label, one thread for safety
                self._index.add_items(vecs[free:], victims, num_threads=1)
            self._tick += 1
            self._labels[slots] = labs[rows].astype(np.int64)
            self._probs[slots] = probs[rows]
            self._tiers[slots] = [_TIER_CODES[source_tiers[i]] for i in rows]
            self._confidence[slots] = conf[rows]
            self._last_used[slots] = self._tick
            self._size += free
            self._counters["insertions"] += len(rows)
            self._counters["evictions"] += len(victims)
        return ok

    def _victims(self, count: int) -> np.ndarray:
        """The ``count`` entries to evict: least recently used first, then least confident."""
        if count <= 0:
            return np.zeros(0, np.int64)
        n = self._size
        if count == 1:  # the common case, O(n) without a full sort
            oldest = np.flatnonzero(self._last_used[:n] == self._last_used[:n].min())
            return oldest[[int(np.argmin(self._confidence[oldest]))]]
        order = np.lexsort((self._confidence[:n], self._last_used[:n]))
        return order[:count].astype(np.int64)

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

    def _validate(
        self,
        emb: np.ndarray,
        labs: np.ndarray,
        probs: np.ndarray,
        tiers: list[str],
        conf: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """Mask of insertable rows; counts each rejected row under its first reason."""
        if emb.shape != (n, self.dim) or labs.shape != (n,) or conf.shape != (n,) or probs.ndim != 2:
            self._reject("shape", n)
            return np.zeros(n, bool)
        classes = probs.shape[1] if self._probs is None else self._probs.shape[1]
        if probs.shape != (n, classes) or classes < 1:
            self._reject("probabilities", n)
            return np.zeros(n, bool)
        norms = np.linalg.norm(emb, axis=1)
        checks = (
            ("non_finite_embedding", np.isfinite(norms)),
            ("zero_embedding", norms > _ZERO_NORM),
            ("probabilities", np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1)),
            ("label", np.array([_is_label(x, classes) for x in labs], dtype=bool)),
            ("tier", np.array([t in _TIER_CODES for t in tiers], dtype=bool)),
            ("confidence", np.isfinite(conf)),
        )
        ok = np.ones(n, bool)
        for reason, passed in checks:
            failed = ok & ~passed
            if failed.any():
                self._reject(reason, int(failed.sum()))
                logger.debug("cache rejected %d entries: %s", int(failed.sum()), reason)
            ok &= passed
        return ok

    def _reject(self, reason: str, count: int) -> None:
        self._counters["rejected"] += count
        self._counters[f"rejected_{reason}"] += count

    # -------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the cache to one file atomically: readers see the old file or the new one.

        Blocks lookups while the index is serialised. Raises OSError if the disk fails; the
        previous file, if any, is then left untouched.
        """
        target = Path(path)
        with self._lock:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-index-")
            os.close(fd)
            try:
                self._index.save_index(tmp)
                index_bytes = Path(tmp).read_bytes()
            finally:
                Path(tmp).unlink(missing_ok=True)
            n = self._size
            classes = self._probs.shape[1] if self._probs is not None else 0
            arrays = {
                "index": np.frombuffer(index_bytes, np.uint8),
                "labels": self._labels[:n],
                "probabilities": (
                    self._probs[:n] if self._probs is not None else np.zeros((0, 0), np.float32)
                ),
                "tiers": self._tiers[:n],
                "confidence": self._confidence[:n],
                "last_used": self._last_used[:n],
            }
            tick = self._tick
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        payload = buffer.getvalue()
        header = {
            "format": FILE_FORMAT,
            "dim": self.dim,
            "model_version": self._model_version,
            "count": n,
            "num_classes": classes,
            "tick": tick,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = json.dumps(header, sort_keys=True).encode()
        atomic_write(target, FILE_MAGIC + _HEADER_LEN.pack(len(head)) + head + payload, mode=0o600)
        logger.debug("saved %d cache entries to %s", n, target)

    @classmethod
    def load(
        cls,
        path: str | Path,
        dim: int,
        config: CacheConfig = CacheConfig(),
        model_version: int = 0,
        *,
        embedder: Embedder | None = None,
        keep_exits_below: float = 0.0,
    ) -> NeuralCache:
        """The cache saved at ``path``; an empty one (with ``load_error`` set) if it is unusable.

        A missing, truncated or corrupt file, or one for another model version or dimension,
        never raises: it is logged (missing at info level, the rest as warnings) and the
        cache starts empty. If the file holds more entries than ``config.capacity``, the
        most recently used ones are kept.
        """
        cache = cls(dim, config, model_version, embedder=embedder, keep_exits_below=keep_exits_below)
        try:
            cache._load(Path(path))
        except FileNotFoundError:
            cache.load_error = "missing"
            logger.info("no neural cache at %s; starting empty", path)
        except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as exc:
            cache._reset()
            cache.load_error = str(exc) or type(exc).__name__
            logger.warning("discarding neural cache %s and starting empty: %s", path, cache.load_error)
        return cache

    def _load(self, path: Path) -> None:
        """Read and verify ``path`` into this (empty) cache; any problem raises ValueError or OSError."""
        data = path.read_bytes()
        if data[: len(FILE_MAGIC)] != FILE_MAGIC or len(data) < len(FILE_MAGIC) + _HEADER_LEN.size:
            raise ValueError("not a neural cache file")
        (head_len,) = _HEADER_LEN.unpack_from(data, len(FILE_MAGIC))
        start = len(FILE_MAGIC) + _HEADER_LEN.size
        if head_len > _MAX_HEADER or start + head_len > len(data):
            raise ValueError("truncated header")
        header = json.loads(data[start : start + head_len])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        payload = data[start + head_len :]
        if header.get("format") != FILE_FORMAT:
            raise ValueError(f"unsupported cache file format {header.get('format')!r}")
        if header.get("model_version") != self._model_version:
            raise ValueError(
                f"cache is for model version {header.get('model_version')}, not {self._model_version}"
            )
        if header.get("dim") != self.dim:
            raise ValueError(f"cache holds {header.get('dim')}-d embeddings, not {self.dim}-d")
        if len(payload) != header.get("payload_bytes"):
            raise ValueError(f"payload is {len(payload)} bytes, header says {header.get('payload_bytes')}")
        if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
            raise ValueError("payload does not match its sha256")
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        n, classes = int(header["count"]), int(header["num_classes"])
        labels, probs = arrays["labels"], arrays["probabilities"]
        tiers, conf, last = arrays["tiers"], arrays["confidence"], arrays["last_used"]
        if any(len(a) != n for a in (labels, probs, tiers, conf, last)) or (n and probs.shape[1] != classes):
            raise ValueError("value arrays do not match the header's count")
        if n == 0:
            return
        if not set(np.unique(tiers).tolist()) <= set(_TIER_LABELS):
            raise ValueError("unknown tier codes")
        keep = np.arange(n)
        if n > self.config.capacity:  # keep the most recently used entries
            keep = np.sort(np.lexsort((conf, last))[n - self.config.capacity :])
        fd, tmp = tempfile.mkstemp(prefix="ec-cache-index-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(arrays["index"].tobytes())
            saved = self._hnswlib.Index(space="cosine", dim=self.dim)
            saved.load_index(tmp, max_elements=n)
        finally:
            Path(tmp).unlink(missing_ok=True)
        if saved.get_current_count() != n or sorted(saved.get_ids_list()) != list(range(n)):
            raise ValueError("index entries do not match the values")
        if len(keep) == n and n <= self.config.capacity and saved.M == self.config.M:
            saved.resize_index(self.config.capacity)
            saved.set_ef(max(self.config.ef, self.config.k))
            self._index = saved
        else:  # capacity or M changed: rebuild from the stored vectors
            self._index.add_items(np.asarray(saved.get_items(keep), dtype=np.float32), np.arange(len(keep)))
        m = len(keep)
        self._probs = np.zeros((self.config.capacity, classes), np.float32)
        self._labels[:m], self._probs[:m], self._tiers[:m] = labels[keep], probs[keep], tiers[keep]
        self._confidence[:m], self._last_used[:m] = conf[keep], last[keep]
        self._size = m
        self._tick = max(int(header["tick"]), int(last.max()))


def open_cache(
    bundle: Bundle,
    tier: str,
    capacity: int = CacheConfig.capacity,
    path: str | Path | None = None,
    *,
    tau: float | None = None,
) -> NeuralCache:
    """The neural cache of ``tier`` for this bundle: loaded from ``path`` if given, else empty.

    Keys come from the tier's :func:`embedder`; the hit rule (tau, k, min_votes) and which
    own exits to keep from the manifest's calibrated cache settings when it has them;
    ``tau`` overrides the calibrated one.
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
    spec = bundle.manifest.partition(tier)
    if spec.features is None:
        raise ConfigError(f"the {tier} partition has no cut features to cache")
    if spec.cache is None or spec.cache.embedding is None:
        return Embedder.pooled(spec.features.shape)
    try:
        embedder = Embedder.from_bytes((bundle.path / spec.cache.embedding).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{tier} cache embedding {spec.cache.embedding}: {exc}") from None
    if embedder.feature_shape != spec.features.shape:
        raise ConfigError(
            f"{tier} cache embedding is for {embedder.feature_shape} features, "
            f"the partition makes {spec.features.shape}"
        )
    return embedder


def _usable_rows(q: np.ndarray) -> Sequence[int]:
    """Rows of ``q`` that are finite and not all zero (one row, the common case, checked cheaply)."""
    if len(q) == 1:
        sq = float(np.dot(q[0], q[0]))
        return range(1) if math.isfinite(sq) and sq > _ZERO_NORM * _ZERO_NORM else range(0)
    norms2 = np.einsum("ij,ij->i", q, q)
    usable = np.isfinite(norms2) & (norms2 > _ZERO_NORM * _ZERO_NORM)
    return range(len(q)) if usable.all() else np.flatnonzero(usable).tolist()


def _is_label(x: Any, classes: int) -> bool:
    """An integral class index in ``0 .. classes-1``."""
    try:
        value = int(x)
    except (TypeError, ValueError, OverflowError):
        return False
    return value == x and 0 <= value < classes
