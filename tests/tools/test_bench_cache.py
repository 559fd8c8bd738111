"""Smoke test of the cache index benchmark on small synthetic clustered embeddings."""

from __future__ import annotations

import numpy as np

from tools.bench_cache import bench_index


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
