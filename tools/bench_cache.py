"""Benchmark of the neural cache's indexes: exact vs HNSW lookup latency, recall@1, crossover.

:func:`bench_index` builds a :class:`~edgecascade.device_sdk.cache.NeuralCache` of each size
with each index kind from given embeddings, then times single lookups (one query at a
time, as a device makes them) and batched lookups through the cache, and measures how
often HNSW's nearest neighbour is the exact one. :func:`index_crossover` says from which
size HNSW is faster. Pure: no printing, no files, no CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache import CacheConfig, NeuralCache
from edgecascade.device_sdk.cache.hnsw_index import hnswlib_installed
from edgecascade.device_sdk.cache.index import IndexKind
from edgecascade.device_sdk.cache.index_choice import EXACT_MAX_CAPACITY, choose_index

logger = logging.getLogger(__name__)

ENTRY_JITTER = 0.1  # per-row noise norm of synthetic entries: cosine distance ~ 0.005 to the original
QUERY_JITTER = 0.05  # per-row noise norm of queries: cosine distance ~ 0.001 to a held-out row
BATCH = 32  # queries per lookup_batch call in the batched measurement
_TIE = 1e-6  # an HNSW answer as close as the exact nearest (to float precision) counts as correct
_BUILD_CHUNK = 10_000
_INSERTS = 200
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


def _build(entries: np.ndarray, config: CacheConfig, kind: IndexKind) -> tuple[NeuralCache, float]:
    """A cache of ``kind`` holding ``entries`` (labelled round-robin over ten classes), and its build time."""
    cache = NeuralCache(entries.shape[1], dataclasses.replace(config, index=kind))
    started = time.perf_counter()
    for start in range(0, len(entries), _BUILD_CHUNK):
        chunk = entries[start : start + _BUILD_CHUNK]
        labels = np.arange(start, start + len(chunk)) % 10
        probs = np.eye(10, dtype=np.float32)[labels]
        cache.insert_batch(chunk, labels, probs, ["cloud"] * len(chunk), np.ones(len(chunk)))
    return cache, time.perf_counter() - started


def _time_lookups(cache: NeuralCache, q: np.ndarray, batch: int) -> dict[str, float]:
    """Single-lookup p50/p99, the mean time per query of ``lookup_batch`` calls, insert p50 (µs).

    Inserts come last (they evict entries) and are timed on the first ``_INSERTS`` queries.
    """
    single: list[int] = []
    for row in q:
        t0 = time.perf_counter_ns()
        cache.lookup(row)
        single.append(time.perf_counter_ns() - t0)
    t0 = time.perf_counter_ns()
    for start in range(0, len(q), batch):
        cache.lookup_batch(q[start : start + batch])
    batched = (time.perf_counter_ns() - t0) / len(q) / 1000
    inserts: list[int] = []
    probs = np.eye(10, dtype=np.float32)
    for i, row in enumerate(q[:_INSERTS]):  # into a full cache: each evicts, as on a busy device
        t0 = time.perf_counter_ns()
        cache.insert(row, i % 10, probs[i % 10], "cloud", 0.5)
        inserts.append(time.perf_counter_ns() - t0)
    return {
        "p50_us": _percentile_us(single, 50),
        "p99_us": _percentile_us(single, 99),
        "batch_us_per_query": batched,
        "insert_p50_us": _percentile_us(inserts, 50),
    }


def bench_index(
    embeddings: np.ndarray,
    sizes: tuple[int, ...] = (10_000, 100_000),
    queries: int = 1000,
    config: CacheConfig = DEFAULT_CONFIG,
    seed: int = 0,
    batch: int = BATCH,
) -> dict[str, dict[str, Any]]:
    """Per size: the ``exact`` and ``hnsw`` index's lookup times, HNSW's recall@1, which is faster.

    ``queries`` rows are held out of the index and perturbed slightly (noise norm
    ``QUERY_JITTER``) to make the queries; the rest fill the index, topped up with jittered
    copies when there are fewer rows than ``size`` (the ``"source"`` field says so).
    Recall@1 counts a query as found when HNSW's nearest is the exact nearest, or is as
    close to float precision (jittered copies can tie).

    The top-level ``p50_us``, ``p99_us``, ``recall_at_1`` and ``build_s`` are HNSW's (the
    exact index's without hnswlib, which leaves ``hnsw`` None); ``bruteforce_p50_us`` is
    the exact index's p50 and ``speedup_vs_bruteforce`` their ratio.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(embeddings, dtype=np.float32)
    x = _normalise(x[np.linalg.norm(x, axis=1) > 0])
    if x.ndim != 2 or len(x) <= queries:
        raise ValueError(f"need more than {queries} non-zero embedding rows, got {x.shape}")
    order = rng.permutation(len(x))
    held_out, pool = x[order[:queries]], x[order[queries:]]
    q = _jitter(held_out, QUERY_JITTER, rng)
    with_hnsw = hnswlib_installed()
    results: dict[str, dict[str, Any]] = {}
    for size in sizes:
        entries, source = _entries(pool, size, rng)
        sized = dataclasses.replace(config, capacity=size)  # full once built: inserts evict
        cache, build_s = _build(entries, sized, "exact")
        exact_d = cache.knn(q, k=1)[1][:, 0]
        exact = {**_time_lookups(cache, q, batch), "build_s": build_s}
        hnsw: dict[str, float] | None = None
        if with_hnsw:
            cache, build_s = _build(entries, sized, "hnsw")
            found = cache.knn(q, k=1)[1][:, 0] <= exact_d + _TIE  # before inserts change the entries
            hnsw = {**_time_lookups(cache, q, batch), "build_s": build_s, "recall_at_1": float(found.mean())}
        shown = hnsw or {**exact, "recall_at_1": 1.0}
        results[str(size)] = {
            "p50_us": shown["p50_us"],
            "p99_us": shown["p99_us"],
            "recall_at_1": shown["recall_at_1"],
            "bruteforce_p50_us": exact["p50_us"],
            "speedup_vs_bruteforce": exact["p50_us"] / shown["p50_us"],
            "build_s": shown["build_s"],
            "exact": exact,
            "hnsw": hnsw,
            "faster": _faster(exact, hnsw, "p50_us"),
            "faster_batched": _faster(exact, hnsw, "batch_us_per_query"),
            "auto_index": choose_index("auto", size),
            "dim": int(x.shape[1]),
            "queries": len(q),
            "batch": batch,
            "source": source,
            "config": {
                "ef": config.ef,
                "M": config.M,
                "ef_construction": config.ef_construction,
                "exact_max_capacity": EXACT_MAX_CAPACITY,
            },
        }
        logger.info("cache bench size %d: %s", size, results[str(size)])
    return results


def _faster(exact: dict[str, float], hnsw: dict[str, float] | None, key: str) -> IndexKind:
    return "hnsw" if hnsw is not None and hnsw[key] < exact[key] else "exact"


def index_crossover(index: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    """The smallest measured size from which HNSW stays faster (None: never), single and batched."""
    rows = sorted(index.items(), key=lambda item: int(item[0]))

    def first_of_faster_tail(key: str) -> int | None:
        crossover = None
        for size, r in rows:
            if r[key] == "exact":
                crossover = None
            elif crossover is None:
                crossover = int(size)
        return crossover

    return {
        "single": first_of_faster_tail("faster"),
        "batched": first_of_faster_tail("faster_batched"),
        "exact_max_capacity": EXACT_MAX_CAPACITY,
    }


def format_cache_report(report: dict[str, Any]) -> str:
    """A short table of the cache benchmark's report (``index`` and, if present, ``stream``)."""
    head = (
        "entries",
        "dim",
        "exact p50",
        "hnsw p50",
        "hnsw p99",
        "recall@1",
        "exact/q",
        "hnsw/q",
        "speed-up",
    )
    widths = (8, 5, 11, 10, 10, 10, 9, 9, 10)
    lines = ["".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    for size, r in report["index"].items():
        hnsw = r["hnsw"] or {}
        cells = (
            size,
            r["dim"],
            f"{r['exact']['p50_us']:.1f}",
            f"{hnsw['p50_us']:.1f}" if hnsw else "-",
            f"{hnsw['p99_us']:.1f}" if hnsw else "-",
            f"{hnsw['recall_at_1']:.3f}" if hnsw else "-",
            f"{r['exact']['batch_us_per_query']:.1f}",
            f"{hnsw['batch_us_per_query']:.1f}" if hnsw else "-",
            f"{r['speedup_vs_bruteforce']:.1f}x",
        )
        lines.append("".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    lines.append(_crossover_line(index_crossover(report["index"]), next(iter(report["index"].values()))))
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


def _crossover_line(crossover: dict[str, int | None], any_row: dict[str, Any]) -> str:
    """One sentence under the table: from which size HNSW wins, and what "auto" picks."""
    if any_row["hnsw"] is None:
        return "µs per lookup; hnswlib is not installed, so only the exact index was measured"

    def where(size: int | None) -> str:
        return f"from {size} entries" if size is not None else "at no measured size"

    return (
        f"µs per lookup (/q: per query in batches of {any_row['batch']}); HNSW is faster "
        f"{where(crossover['single'])} single, {where(crossover['batched'])} batched; "
        f"auto uses exact search up to {crossover['exact_max_capacity']} entries"
    )
