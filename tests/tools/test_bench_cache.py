"""Smoke test of the cache index benchmark on small synthetic clustered embeddings."""

from __future__ import annotations

import numpy as np

from edgecascade.tools.bench_cache import bench_index, format_cache_report


def test_bench_index_reports_latency_and_recall() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 32))
    x = (centres[rng.integers(10, size=1500)] + rng.normal(0, 0.3, (1500, 32))).astype(np.float32)
    result = bench_index(x, sizes=(2000,), queries=100)
    assert list(result) == ["2000"]
    r = result["2000"]
    assert {"p50_us", "p99_us", "recall_at_1", "bruteforce_p50_us", "speedup_vs_bruteforce", "source"} <= set(
        r
    )
    assert r["recall_at_1"] > 0.9
    assert 0 < r["p50_us"] <= r["p99_us"]
    assert r["speedup_vs_bruteforce"] > 0
    assert "jittered" in r["source"]  # 1400 real rows cannot fill 2000 entries


def test_cache_report_table_shows_each_size_and_the_stream() -> None:
    rng = np.random.default_rng(1)
    index = bench_index(rng.normal(size=(1200, 16)).astype(np.float32), sizes=(1000,), queries=100)
    stream = {
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
    table = format_cache_report({"index": index, "stream": stream}).splitlines()
    assert table[0].split()[:2] == ["entries", "dim"]
    assert table[1].split()[:2] == ["1000", "16"] and table[1].endswith("x")
    assert "92.5% of them answered" in table[2] and "40 cache answers (3 on non-repeats)" in table[3]
    assert "40.0% saved" in table[4]
    assert len(format_cache_report({"index": index}).splitlines()) == 2  # index only
