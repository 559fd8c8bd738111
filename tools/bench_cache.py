"""Benchmark of the neural cache's index: lookup latency and recall@1 against exact search.

:func:`bench_index` builds a :class:`~edgecascade.device_sdk.cache.NeuralCache` of each size from given
embeddings, then times single lookups (one query at a time, as a device makes them) and an
exact numpy brute-force cosine search over the same entries, and measures how often the
HNSW nearest neighbour is the exact one. Pure: no printing, no files, no CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache import CacheConfig, NeuralCache

logger = logging.getLogger(__name__)

ENTRY_JITTER = 0.1  # per-row noise norm of synthetic entries: cosine distance ~ 0.005 to the original
QUERY_JITTER = 0.05  # per-row noise norm of queries: cosine distance ~ 0.001 to a held-out row
_TIE = 1e-6  # an HNSW answer as close as the exact nearest (to float precision) counts as correct
_BUILD_CHUNK = 10_000
DEFAULT_CONFIG = CacheConfig()


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _jitter(x: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Rows plus isotropic Gaussian noise of expected norm ``scale``, renormalised."""
    noise = rng.normal(0.0, scale / np.sqrt(x.shape[1]), x.shape).astype(np.float32)
    return _normalise(x + noise)


def _entries(pool: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """``size`` unit rows: the real ones first, then jittered copies of random real rows."""
    if size <= len(pool):
        return pool[rng.choice(len(pool), size, replace=False)], f"real ({size} rows)"
    extra = _jitter(pool[rng.integers(len(pool), size=size - len(pool))], ENTRY_JITTER, rng)
    return np.concatenate([pool, extra]), (
        f"real ({len(pool)} rows) + {size - len(pool)} jittered copies (noise norm {ENTRY_JITTER})"
    )


def _percentile_us(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=np.float64), q) / 1000)


def bench_index(
    embeddings: np.ndarray,
    sizes: tuple[int, ...] = (10_000, 100_000),
    queries: int = 1000,
    config: CacheConfig = DEFAULT_CONFIG,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per size: single-lookup p50/p99 (µs), brute-force p50, their ratio and recall@1.

    ``queries`` rows are held out of the index and perturbed slightly (noise norm
    ``QUERY_JITTER``) to make the queries; the rest fill the index, topped up with jittered
    copies when there are fewer rows than ``size`` (the ``"source"`` field says so). Entries
    are labelled round-robin over ten classes, because only the index is measured here.
    Recall@1 counts a query as found when HNSW's nearest is the exact nearest, or is as
    close to float precision (jittered copies can tie).
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(embeddings, dtype=np.float32)
    x = _normalise(x[np.linalg.norm(x, axis=1) > 0])
    if x.ndim != 2 or len(x) <= queries:
        raise ValueError(f"need more than {queries} non-zero embedding rows, got {x.shape}")
    order = rng.permutation(len(x))
    held_out, pool = x[order[:queries]], x[order[queries:]]
    q = _jitter(held_out, QUERY_JITTER, rng)
    results: dict[str, dict[str, Any]] = {}
    for size in sizes:
        entries, source = _entries(pool, size, rng)
        cache = NeuralCache(x.shape[1], _sized(config, size))
        started = time.perf_counter()
        for start in range(0, size, _BUILD_CHUNK):
            chunk = entries[start : start + _BUILD_CHUNK]
            labels = np.arange(start, start + len(chunk)) % 10
            probs = np.eye(10, dtype=np.float32)[labels]
            cache.insert_batch(chunk, labels, probs, ["cloud"] * len(chunk), np.ones(len(chunk)))
        build_s = time.perf_counter() - started

        lookup_ns: list[int] = []
        for row in q:
            t0 = time.perf_counter_ns()
            cache.lookup(row)
            lookup_ns.append(time.perf_counter_ns() - t0)
        _, hnsw_d = cache.knn(q, k=1)

        exact_ns: list[int] = []
        exact_d = np.empty(len(q), np.float32)
        for i, row in enumerate(q):
            t0 = time.perf_counter_ns()
            dist = 1.0 - entries @ row
            nearest = int(np.argmin(dist))
            exact_ns.append(time.perf_counter_ns() - t0)
            exact_d[i] = dist[nearest]
        found = hnsw_d[:, 0] <= exact_d + _TIE

        p50 = _percentile_us(lookup_ns, 50)
        brute = _percentile_us(exact_ns, 50)
        results[str(size)] = {
            "p50_us": p50,
            "p99_us": _percentile_us(lookup_ns, 99),
            "recall_at_1": float(found.mean()),
            "bruteforce_p50_us": brute,
            "speedup_vs_bruteforce": brute / p50 if p50 > 0 else float("inf"),
            "build_s": build_s,
            "dim": int(x.shape[1]),
            "queries": len(q),
            "source": source,
            "config": {"ef": config.ef, "M": config.M, "ef_construction": config.ef_construction},
        }
        logger.info("cache bench size %d: %s", size, results[str(size)])
    return results


def _sized(config: CacheConfig, size: int) -> CacheConfig:
    """``config`` with a capacity of at least ``size`` (so nothing is evicted while building)."""
    return dataclasses.replace(config, capacity=max(config.capacity, size))


def format_cache_report(report: dict[str, Any]) -> str:
    """A short table of the cache benchmark's report (``index`` and, if present, ``stream``)."""
    head = ("entries", "dim", "p50 µs", "p99 µs", "recall@1", "exact p50 µs", "speed-up")
    widths = (8, 5, 9, 9, 10, 14, 10)
    lines = ["".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    for size, r in report["index"].items():
        cells = (
            size,
            r["dim"],
            f"{r['p50_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['recall_at_1']:.3f}",
            f"{r['bruteforce_p50_us']:.1f}",
            f"{r['speedup_vs_bruteforce']:.1f}x",
        )
        lines.append("".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    s = report.get("stream")
    if s:
        rate = s["repeat_hit_rate"]
        answered = f"{rate:.1%} of them answered from it" if rate is not None else "none answered"
        off, on = "caches_off", "caches_on"
        lines += [
            f"stream of {s['n']} inputs, {s['repeat_share']:.1%} near-duplicates: "
            f"{s['repeats_reaching_cache']} repeats reached a cache, {answered}",
            f"  {sum(s['cache_answers'].values())} cache answers "
            f"({s['non_repeats']['cache_answers']} on non-repeats), accuracy "
            f"{s['cache_answer_accuracy']} vs {s['tier_answer_accuracy']} for the tiers' answers",
            f"  caches off -> on: accuracy {s['accuracy'][off]:.4f} -> {s['accuracy'][on]:.4f}, "
            f"link bytes/input {s['bytes_per_input'][off]} -> {s['bytes_per_input'][on]} "
            f"({s['bytes_saved_ratio']:.1%} saved), "
            f"latency {s['mean_latency_ms'][off]} -> {s['mean_latency_ms'][on]} ms",
        ]
    return "\n".join(lines)
