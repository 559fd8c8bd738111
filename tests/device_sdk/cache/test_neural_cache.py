"""NeuralCache with each index kind: lookups, inserts, LRU eviction, persistence, concurrency."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.cache import CacheConfig, NeuralCache
from edgecascade.device_sdk.cache.similarity import Embedder
from edgecascade.device_sdk.errors import ConfigError, TensorSpecError

from .cache_kit import CLASSES, DIM, KINDS, clusters, one_hot, unit


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Every behaviour below holds for both index kinds."""
    return str(request.param)


def config(kind: str, **settings: object) -> CacheConfig:
    return CacheConfig(index=kind, **settings)  # type: ignore[arg-type]


def filled(kind: str) -> NeuralCache:
    """A model-version-1 cache holding 80 entries of four clusters, all answered by the cloud."""
    cache = NeuralCache(DIM, config(kind, capacity=200, tau=0.05), model_version=1)
    x, y = clusters()
    for v, label in zip(x, y, strict=True):
        assert cache.insert(v, int(label), one_hot(int(label)), "cloud", 0.9)
    return cache


def answers(cache: NeuralCache, queries: np.ndarray) -> list[tuple[int, int, str] | None]:
    return [(h.label, h.votes, h.source_tier) if h else None for h in cache.lookup_batch(queries)]


# ------------------------------------------------------------------------------ basics
def test_insert_then_lookup_returns_the_cached_answer(kind: str) -> None:
    cache = filled(kind)
    assert cache.index_kind == kind and cache.metrics()["index"] == kind
    x, _ = clusters(n_per=3, seed=7)
    hits = cache.lookup_batch(x)
    assert [h.label if h else None for h in hits] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    hit = hits[4]
    assert hit is not None
    assert hit.source_tier == "cloud" and hit.votes == 3 and 0 <= hit.distance <= 0.05
    np.testing.assert_array_equal(hit.probabilities, one_hot(1))
    single = cache.lookup(x[4])
    assert single is not None and (single.label, single.votes) == (1, 3)
    assert cache.lookup(unit(99)) is None  # far from every cluster


def test_lookup_on_an_empty_cache_misses_and_counts(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind))
    assert cache.lookup_batch(np.stack([unit(1), unit(2)])) == [None, None]
    m = cache.metrics()
    assert (m["hits"], m["misses"], m["lookups"], m["size"]) == (0, 2, 2, 0)


def test_unusable_queries_are_misses_and_a_wrong_shape_raises(kind: str) -> None:
    cache = filled(kind)
    x, _ = clusters(n_per=1)
    queries = np.stack([x[0], np.zeros(DIM, np.float32), np.full(DIM, np.nan, np.float32), x[3]])
    assert [h.label if h else None for h in cache.lookup_batch(queries)] == [0, None, None, 3]
    with pytest.raises(TensorSpecError):
        cache.lookup(np.ones(DIM + 1, np.float32))


def test_knn_gives_raw_slots_and_distances(kind: str) -> None:
    cache = filled(kind)
    x, _ = clusters()
    slots, dists = cache.knn(x[[5, 45]], k=2)
    assert slots.dtype == np.int64 and slots.shape == dists.shape == (2, 2)
    assert slots[:, 0].tolist() == [5, 45]  # entries went into slots in insertion order
    np.testing.assert_allclose(dists[:, 0], 0.0, atol=1e-5)
    assert (dists[:, 1] >= dists[:, 0]).all()
    with pytest.raises(ValueError, match="holds 80"):
        cache.knn(x[:1], k=81)


def test_insert_rejects_unusable_entries(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind))
    v = unit(0)
    bad_embedding = v.copy()
    bad_embedding[3] = np.nan
    assert not cache.insert(bad_embedding, 0, one_hot(0), "cloud", 0.9)
    assert not cache.insert(np.full(DIM, np.inf, np.float32), 0, one_hot(0), "cloud", 0.9)
    assert not cache.insert(np.zeros(DIM, np.float32), 0, one_hot(0), "cloud", 0.9)
    assert not cache.insert(np.ones(DIM + 1, np.float32), 0, one_hot(0), "cloud", 0.9)
    assert not cache.insert(v, 0, np.array([np.nan, 0, 0, 1], np.float32), "cloud", 0.9)
    assert not cache.insert(v, 0, one_hot(0), "mars", 0.9)
    assert not cache.insert(v, CLASSES, one_hot(0), "cloud", 0.9)
    assert cache.insert(v, 0, one_hot(0), "gateway_cache", 0.9)  # every wire.Tier label is a source
    assert not cache.insert(v, 0, np.ones(CLASSES + 1, np.float32), "cloud", 0.9)  # other class count
    m = cache.metrics()
    assert (m["rejected"], m["insertions"], len(cache)) == (8, 1, 1)
    assert m["rejected_reasons"]["zero_embedding"] == 1


def test_an_oversized_batch_keeps_its_most_confident_rows(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind, capacity=2, tau=0.01, k=1, min_votes=1))
    vs = np.stack([unit(i) for i in range(3)])
    labels = np.array([0, 1, 2])
    probs = np.eye(CLASSES, dtype=np.float32)[labels]
    ok = cache.insert_batch(vs, labels, probs, ["cloud"] * 3, np.array([0.5, 0.9, 0.7]))
    assert ok.tolist() == [False, True, True]
    assert [h.label if h else None for h in cache.lookup_batch(vs)] == [None, 1, 2]
    assert cache.metrics()["rejected_reasons"] == {"over_capacity": 1}


def test_clear_empties_the_cache(kind: str) -> None:
    cache = filled(kind)
    cache.clear()
    assert len(cache) == 0
    assert cache.lookup(clusters()[0][0]) is None
    assert cache.insert(unit(1), 0, one_hot(0), "cloud", 0.9) and len(cache) == 1


# ------------------------------------------------------------------------------ eviction
def test_eviction_is_least_recently_used_and_a_hit_refreshes(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind, capacity=4, tau=0.01, k=1, min_votes=1))
    vs = [unit(i) for i in range(6)]
    for i in range(4):
        assert cache.insert(vs[i], i % CLASSES, one_hot(i % CLASSES), "cloud", 0.9)
    assert cache.lookup(vs[0]) is not None  # entry 0 is now the most recently used
    assert cache.insert(vs[4], 0, one_hot(0), "cloud", 0.9)  # evicts entry 1, the oldest
    assert cache.lookup(vs[1]) is None
    assert all(cache.lookup(vs[i]) is not None for i in (0, 2, 3, 4))
    assert cache.insert(vs[5], 1, one_hot(1), "cloud", 0.9)  # the lookups above refreshed 0, 2, 3, 4
    assert len(cache) == 4 and cache.metrics()["evictions"] == 2


def test_eviction_ties_go_to_the_less_confident_entry(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind, capacity=3, tau=0.01, k=1, min_votes=1))
    vs = np.stack([unit(i) for i in range(4)])
    labels = np.array([0, 1, 2])
    ok = cache.insert_batch(
        vs[:3], labels, np.eye(CLASSES, dtype=np.float32)[labels], ["cloud"] * 3, np.array([0.9, 0.6, 0.8])
    )  # one call = one tick: all three tie on recency
    assert ok.all()
    assert cache.insert(vs[3], 3, one_hot(3), "gateway", 0.99)
    assert cache.lookup(vs[1]) is None  # the 0.6 entry went
    assert [h.label if h else None for h in cache.lookup_batch(vs[[0, 2, 3]])] == [0, 2, 3]


def test_evicted_slots_stay_searchable_after_many_replacements(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind, capacity=20, tau=0.001, k=1, min_votes=1))
    vs = [unit(i) for i in range(200)]
    for i, v in enumerate(vs):
        assert cache.insert(v, i % CLASSES, one_hot(i % CLASSES), "cloud", 0.9)
    hits = cache.lookup_batch(np.stack(vs[-20:]))
    assert [h.label if h else None for h in hits] == [i % CLASSES for i in range(180, 200)]
    assert all(cache.lookup(v) is None for v in vs[:20])  # overwritten in place, not found any more
    assert len(cache) == 20 and cache.metrics()["evictions"] == 180


def test_a_batch_into_a_full_cache_evicts_as_many_as_it_brings(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind, capacity=6, tau=0.001, k=1, min_votes=1))
    vs = np.stack([unit(i) for i in range(10)])
    labels = np.arange(10) % CLASSES
    probs = np.eye(CLASSES, dtype=np.float32)[labels]
    assert cache.insert_batch(vs[:5], labels[:5], probs[:5], ["cloud"] * 5, np.ones(5)).all()
    assert cache.insert_batch(
        vs[5:], labels[5:], probs[5:], ["cloud"] * 5, np.ones(5)
    ).all()  # 1 free, 4 evicted
    assert [h is not None for h in cache.lookup_batch(vs)] == [False] * 4 + [True] * 6
    assert cache.metrics()["evictions"] == 4


# ------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("loaded_kind", KINDS)
def test_save_and_load_give_identical_answers_whichever_index_loads(
    tmp_path: Path, kind: str, loaded_kind: str
) -> None:
    cache = filled(kind)
    queries = np.concatenate([clusters(n_per=5, seed=3)[0], np.stack([unit(i) for i in range(5)])])
    before = answers(cache, queries)
    cache.save(tmp_path / "cache.bin")
    loaded = NeuralCache.load(tmp_path / "cache.bin", DIM, config(loaded_kind, capacity=200, tau=0.05), 1)
    assert loaded.load_error is None and len(loaded) == len(cache) and loaded.index_kind == loaded_kind
    assert answers(loaded, queries) == before
    assert sum(a is not None for a in before) == 20
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_a_loaded_cache_keeps_its_recency_order(tmp_path: Path, kind: str) -> None:
    small = config(kind, capacity=3, tau=0.01, k=1, min_votes=1)
    cache = NeuralCache(DIM, small)
    vs = [unit(i) for i in range(5)]
    for i in range(3):
        cache.insert(vs[i], i, one_hot(i), "cloud", 0.9)
    assert cache.lookup(vs[0]) is not None  # entry 1 is now the oldest
    cache.save(tmp_path / "c")
    loaded = NeuralCache.load(tmp_path / "c", DIM, small)
    assert loaded.insert(vs[3], 3, one_hot(3), "cloud", 0.9)  # evicts entry 1, as the saved cache would
    assert [h is not None for h in loaded.lookup_batch(np.stack(vs[:4]))] == [True, False, True, True]


def test_load_keeps_the_most_recent_entries_when_capacity_shrinks(tmp_path: Path, kind: str) -> None:
    filled(kind).save(tmp_path / "cache.bin")
    small = NeuralCache.load(tmp_path / "cache.bin", DIM, config(kind, capacity=10, tau=0.05), 1)
    assert small.load_error is None and len(small) == 10
    x, _ = clusters()
    assert small.lookup(x[-1]) is not None  # the last cluster was inserted last
    assert small.lookup(x[0]) is None


@pytest.mark.parametrize(
    "damage", ["missing", "truncated", "flipped", "garbage", "other_version", "other_dim"]
)
def test_unusable_file_loads_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, damage: str
) -> None:
    path = tmp_path / "cache.bin"
    dim, version = DIM, 1
    if damage != "missing":
        filled(kind).save(path)
        data = path.read_bytes()
        if damage == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "flipped":
            path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
        elif damage == "garbage":
            path.write_bytes(os.urandom(1000))
        elif damage == "other_version":
            version = 2
        elif damage == "other_dim":
            dim = DIM * 2
    with caplog.at_level(logging.INFO, logger="edgecascade.device_sdk.cache"):
        cache = NeuralCache.load(path, dim, config(kind, tau=0.05), model_version=version)
    assert len(cache) == 0 and cache.load_error is not None
    assert cache.metrics()["load_error"] == cache.load_error
    expected = logging.INFO if damage == "missing" else logging.WARNING
    assert any(r.levelno == expected and "cache" in r.getMessage() for r in caplog.records)
    assert cache.insert(np.ones(dim, np.float32), 0, one_hot(0), "cloud", 0.9)  # still usable


def test_failed_save_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / "cache.bin"
    filled(kind).save(path)
    old = path.read_bytes()
    bigger = filled(kind)
    bigger.insert(unit(5), 0, one_hot(0), "cloud", 0.9)

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]
    assert len(NeuralCache.load(path, DIM, config(kind, tau=0.05), model_version=1)) == 80


def test_empty_cache_round_trips(tmp_path: Path, kind: str) -> None:
    NeuralCache(DIM, config(kind), model_version=3).save(tmp_path / "c")
    cache = NeuralCache.load(tmp_path / "c", DIM, config(kind), model_version=3)
    assert cache.load_error is None and len(cache) == 0
    assert cache.insert(unit(0), 1, one_hot(1), "cloud", 0.9) and cache.lookup(unit(0)) is not None


# ------------------------------------------------------------------------------ concurrency
def test_concurrent_lookups_and_inserts(kind: str) -> None:
    settings = config(kind, capacity=50, tau=0.05)
    cache = NeuralCache(DIM, settings)
    x, y = clusters(n_per=100)
    errors: list[BaseException] = []
    counts = {"lookups": 0, "inserts": 0}
    lock = threading.Lock()
    stop = time.monotonic() + 0.5

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        lookups = inserts = 0
        try:
            while time.monotonic() < stop:
                i = rng.integers(len(x), size=4)
                if rng.random() < 0.5:
                    cache.lookup_batch(x[i])
                    lookups += 4
                else:
                    inserts += cache.insert(x[i[0]], int(y[i[0]]), one_hot(int(y[i[0]])), "cloud", 0.9)
                assert len(cache) <= settings.capacity
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        with lock:
            counts["lookups"] += lookups
            counts["inserts"] += inserts

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m = cache.metrics()
    assert m["lookups"] == counts["lookups"] > 0
    assert m["hits"] + m["misses"] == m["lookups"]
    assert m["hits"] > 0
    assert m["insertions"] == counts["inserts"] > settings.capacity
    assert m["size"] == len(cache) == settings.capacity
    assert m["evictions"] == m["insertions"] - settings.capacity
    assert m["lookup_time_us_mean"] > 0


# ------------------------------------------------------------------------------ repeats, own exits
def test_the_cache_answers_a_repeated_input_after_one_insert(kind: str) -> None:
    cache = NeuralCache(DIM, config(kind, tau=0.02))  # min_votes=2
    x, _ = clusters(n_per=1)
    for i, v in enumerate(x):
        cache.insert(v, i, one_hot(i), "cloud", 0.9)
    hit = cache.lookup(x[2])
    assert hit is not None and hit.label == 2 and hit.votes == 1


def test_keep_exits_inserts_only_confident_enough_exits_below_the_bound(kind: str) -> None:
    embedder = Embedder.pooled((2, 2, DIM))
    settings = config(kind, capacity=200, tau=0.05)
    cache = NeuralCache(DIM, settings, embedder=embedder, keep_exits_below=0.9)
    features = np.random.default_rng(4).random((4, 2, 2, DIM), dtype=np.float32)
    probs = np.array(
        [[0.85, 0.15, 0, 0], [0.95, 0.05, 0, 0], [0.2, 0.7, 0.1, 0], [0.5, 0.5, 0, 0]], np.float32
    )
    exits = np.array([True, True, False, False])
    assert cache.keep_exits(features, probs, exits, "device") == 1  # only row 0: exited and below 0.9
    hit = cache.lookup(embedder(features[:1])[0])
    assert hit is not None and (hit.label, hit.source_tier) == (0, "device")
    assert NeuralCache(DIM, settings, embedder=embedder).keep_exits(features, probs, exits, "device") == 0


def test_embed_needs_an_embedder_of_the_caches_dimension() -> None:
    with pytest.raises(ConfigError, match="makes 2-d keys"):
        NeuralCache(DIM, embedder=Embedder.pooled((2, 2, 2)))
    with pytest.raises(ConfigError, match="without an embedder"):
        NeuralCache(DIM).embed(np.zeros((1, 2, 2, DIM), np.float32))
    with pytest.raises(ConfigError):
        NeuralCache(0)
