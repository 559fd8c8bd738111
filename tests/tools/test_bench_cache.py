"""The cache index benchmark on small synthetic clustered embeddings: both indexes, the crossover."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.cache.index_choice import EXACT_MAX_CAPACITY
from edgecascade.tools.bench_cache import bench_index, format_cache_report, index_crossover

STREAM = {
    "n": 500,
    "repeat_share": 0.3,
    "repeats_reaching_cache": 40,
    "repeat_hit_rate": 0.925,
    "cache_answers": {"device_cache": 37, "gateway_cache": 3},
    "non_repeats": {"cache_answers": 3},
    "cache_answer_accuracy": 0.7,
    "tier_answer_accuracy": 0.6,
    "accuracy": {"caches_off": 0.9, "caches_on": 0.91},
    "bytes_per_input": {"caches_off": 20.0, "caches_on": 12.0},
    "bytes_saved_ratio": 0.4,
    "mean_latency_ms": {"caches_off": 0.5, "caches_on": 0.4},
}


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 32))
    return (centres[rng.integers(10, size=n)] + rng.normal(0, 0.3, (n, 32))).astype(np.float32)


def test_bench_index_reports_latency_and_recall_of_both_indexes() -> None:
    result = bench_index(clustered(1500), sizes=(2000,), queries=100)
    assert list(result) == ["2000"]
    r = result["2000"]
    assert {"p50_us", "p99_us", "recall_at_1", "bruteforce_p50_us", "speedup_vs_bruteforce", "source"} <= set(
        r
    )
    assert r["recall_at_1"] > 0.9
    assert 0 < r["p50_us"] <= r["p99_us"]
    assert r["speedup_vs_bruteforce"] > 0
    assert "jittered" in r["source"]  # 1400 real rows cannot fill 2000 entries
    exact, hnsw = r["exact"], r["hnsw"]
    for timings in (exact, hnsw):
        assert 0 < timings["p50_us"] <= timings["p99_us"]
        assert timings["batch_us_per_query"] > 0 and timings["insert_p50_us"] > 0 and timings["build_s"] > 0
    assert r["p50_us"] == hnsw["p50_us"] and r["bruteforce_p50_us"] == exact["p50_us"]
    assert r["recall_at_1"] == hnsw["recall_at_1"]
    assert r["faster"] in ("exact", "hnsw") and r["faster_batched"] in ("exact", "hnsw")
    assert r["auto_index"] == "exact" and r["config"]["exact_max_capacity"] == EXACT_MAX_CAPACITY


def test_without_hnswlib_only_the_exact_index_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    r = bench_index(clustered(1200, seed=2), sizes=(1000,), queries=100)["1000"]
    assert r["hnsw"] is None and r["faster"] == r["faster_batched"] == "exact"
    assert r["p50_us"] == r["exact"]["p50_us"] and r["recall_at_1"] == 1.0
    table = format_cache_report({"index": {"1000": r}}).splitlines()
    assert table[1].split()[3] == "-" and "hnswlib is not installed" in table[2]


def row(faster: str, faster_batched: str) -> dict[str, Any]:
    return {"faster": faster, "faster_batched": faster_batched}


def test_the_crossover_is_where_hnsw_stays_faster() -> None:
    index = {
        "1000": row("exact", "exact"),
        "20000": row("hnsw", "exact"),
        "5000": row("hnsw", "exact"),
        "50000": row("hnsw", "hnsw"),
        "2000": row("exact", "hnsw"),  # a noisy small size does not count: exact wins again above it
    }
    crossover = index_crossover(index)
    assert crossover == {"single": 5000, "batched": 50000, "exact_max_capacity": EXACT_MAX_CAPACITY}
    assert index_crossover({"1000": row("exact", "exact")})["single"] is None


def test_cache_report_table_shows_each_size_the_crossover_and_the_stream() -> None:
    index = bench_index(np.random.default_rng(1).normal(size=(1200, 16)).astype(np.float32), (1000,), 100)
    table = format_cache_report({"index": index, "stream": STREAM}).splitlines()
    assert table[0].split()[:4] == ["entries", "dim", "exact", "p50"]
    assert table[1].split()[:2] == ["1000", "16"] and table[1].endswith("x")
    assert f"auto uses exact search up to {EXACT_MAX_CAPACITY} entries" in table[2]
    assert "HNSW is faster" in table[2] and "batches of 32" in table[2]
    assert "92.5% of them answered" in table[3] and "40 cache answers (3 on non-repeats)" in table[4]
    assert "40.0% saved" in table[5]
    assert len(format_cache_report({"index": index}).splitlines()) == 3  # index only
