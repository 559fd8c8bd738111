"""Neural cache: the pure hit rule, embeddings, LRU eviction, persistence and concurrency."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.cache import CacheConfig, NeuralCache, open_cache
from edgecascade.device_sdk.cache.similarity import Embedder, hit_rule
from edgecascade.device_sdk.errors import ConfigError, TensorSpecError
from edgecascade.device_sdk.model.bundle import (
    Bundle,
    CacheSpec,
    ExitSpec,
    InputSpec,
    Manifest,
    PartitionSpec,
    TensorSpec,
)

DIM = 16
CLASSES = 4


def clusters(n_per: int = 20, spread: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in CLASSES tight, well separated clusters, and their cluster labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM, dtype=np.float32)[:CLASSES] + 0.1
    labels = np.repeat(np.arange(CLASSES), n_per)
    x = centres[labels] + rng.normal(0, spread, (len(labels), DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def one_hot(label: int) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[label]


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


FILLED = CacheConfig(capacity=200, tau=0.05)


def filled() -> NeuralCache:
    """A model-version-1 cache holding 80 entries of four clusters, all answered by the cloud."""
    cache = NeuralCache(DIM, FILLED, model_version=1)
    x, y = clusters()
    for v, label in zip(x, y, strict=True):
        assert cache.insert(v, int(label), one_hot(int(label)), "cloud", 0.9)
    return cache


# ------------------------------------------------------------------------------ hit rule
def test_hit_rule_miss_when_nearest_is_too_far() -> None:
    assert hit_rule(np.array([0.05, 0.06, 0.07]), np.array([1, 1, 1]), tau=0.02, min_votes=2) is None


def test_hit_rule_miss_when_close_neighbours_disagree() -> None:
    assert hit_rule(np.array([0.001, 0.005, 0.01]), np.array([1, 2, 2]), tau=0.02, min_votes=2) is None


def test_hit_rule_hit_when_close_neighbours_agree() -> None:
    assert hit_rule(np.array([0.001, 0.005, 0.01]), np.array([3, 3, 2]), tau=0.02, min_votes=2) == 3


def test_hit_rule_neighbours_beyond_tau_do_not_vote() -> None:
    # far neighbours with another label do not count against the close one
    assert hit_rule(np.array([0.001, 0.5, 0.6]), np.array([3, 1, 1]), tau=0.02, min_votes=2) == 3
    # one close vote for 3, one close vote for 1: not enough votes and not unanimous
    assert hit_rule(np.array([0.001, 0.01, 0.6]), np.array([3, 1, 3]), tau=0.02, min_votes=2) is None


def test_hit_rule_needs_enough_neighbours_and_no_stronger_rival() -> None:
    assert hit_rule(np.array([0.001]), np.array([3]), tau=0.02, min_votes=2) == 3  # lone and unopposed
    # nearest's label has 2 votes but another label has 3 within tau
    d = np.array([0.001, 0.002, 0.003, 0.004, 0.005])
    assert hit_rule(d, np.array([1, 2, 2, 2, 1]), tau=0.02, min_votes=2) is None
    assert hit_rule(d, np.array([1, 2, 1, 2, 1]), tau=0.02, min_votes=2) == 1


def test_hit_rule_handles_empty_and_nan() -> None:
    assert hit_rule(np.array([]), np.array([]), tau=0.02, min_votes=1) is None
    assert hit_rule(np.array([np.nan, 0.0]), np.array([1, 1]), tau=0.02, min_votes=1) is None


def test_config_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig(capacity=0, tau=float("nan"), k=2, min_votes=3)
    assert len(info.value.problems) == 3


# ------------------------------------------------------------------------------ cache basics
def test_insert_then_lookup_returns_the_cached_answer() -> None:
    cache = filled()
    x, _ = clusters(n_per=3, seed=7)
    hits = cache.lookup_batch(x)
    assert all(h is not None for h in hits)
    assert [h.label for h in hits if h is not None] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    hit = hits[4]
    assert hit is not None
    assert hit.source_tier == "cloud" and hit.votes == 3 and 0 <= hit.distance <= 0.05
    np.testing.assert_array_equal(hit.probabilities, one_hot(1))
    assert cache.lookup(unit(99)) is None  # far from every cluster


def test_lookup_on_an_empty_cache_misses_and_counts() -> None:
    cache = NeuralCache(DIM)
    assert cache.lookup_batch(np.stack([unit(1), unit(2)])) == [None, None]
    m = cache.metrics()
    assert (m["hits"], m["misses"], m["lookups"], m["size"]) == (0, 2, 2, 0)


def test_lookup_rejects_a_wrong_dimension() -> None:
    with pytest.raises(TensorSpecError):
        filled().lookup(np.ones(DIM + 1, np.float32))


def test_insert_rejects_unusable_entries() -> None:
    cache = NeuralCache(DIM)
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


def test_clear_empties_the_cache() -> None:
    cache = filled()
    cache.clear()
    assert len(cache) == 0
    assert cache.lookup(clusters()[0][0]) is None


# ------------------------------------------------------------------------------ eviction
def test_eviction_is_least_recently_used_and_a_hit_refreshes() -> None:
    cache = NeuralCache(DIM, CacheConfig(capacity=4, tau=0.01, k=1, min_votes=1))
    vs = [unit(i) for i in range(6)]
    for i in range(4):
        assert cache.insert(vs[i], i % CLASSES, one_hot(i % CLASSES), "cloud", 0.9)
    assert cache.lookup(vs[0]) is not None  # entry 0 is now the most recently used
    assert cache.insert(vs[4], 0, one_hot(0), "cloud", 0.9)  # evicts entry 1, the oldest
    assert cache.lookup(vs[1]) is None
    assert all(cache.lookup(vs[i]) is not None for i in (0, 2, 3, 4))
    assert cache.insert(vs[5], 1, one_hot(1), "cloud", 0.9)  # the lookups above refreshed 0, 2, 3, 4
    assert len(cache) == 4 and cache.metrics()["evictions"] == 2


def test_eviction_ties_go_to_the_less_confident_entry() -> None:
    cache = NeuralCache(DIM, CacheConfig(capacity=3, tau=0.01, k=1, min_votes=1))
    vs = np.stack([unit(i) for i in range(4)])
    labels = np.array([0, 1, 2])
    ok = cache.insert_batch(
        vs[:3], labels, np.eye(CLASSES, dtype=np.float32)[labels], ["cloud"] * 3, np.array([0.9, 0.6, 0.8])
    )  # one call = one tick: all three tie on recency
    assert ok.all()
    assert cache.insert(vs[3], 3, one_hot(3), "gateway", 0.99)
    assert cache.lookup(vs[1]) is None  # the 0.6 entry went
    assert [h.label if h else None for h in cache.lookup_batch(vs[[0, 2, 3]])] == [0, 2, 3]


def test_evicted_slots_stay_searchable_after_many_replacements() -> None:
    cache = NeuralCache(DIM, CacheConfig(capacity=20, tau=0.001, k=1, min_votes=1))
    vs = [unit(i) for i in range(200)]
    for i, v in enumerate(vs):
        assert cache.insert(v, i % CLASSES, one_hot(i % CLASSES), "cloud", 0.9)
    hits = cache.lookup_batch(np.stack(vs[-20:]))
    assert [h.label if h else None for h in hits] == [i % CLASSES for i in range(180, 200)]
    assert len(cache) == 20 and cache.metrics()["evictions"] == 180


# ------------------------------------------------------------------------------ persistence
def test_save_and_load_give_identical_answers(tmp_path: Path) -> None:
    cache = filled()
    queries = np.concatenate([clusters(n_per=5, seed=3)[0], np.stack([unit(i) for i in range(5)])])
    before = cache.lookup_batch(queries)
    cache.save(tmp_path / "cache.bin")
    loaded = NeuralCache.load(tmp_path / "cache.bin", DIM, cache.config, model_version=1)
    assert loaded.load_error is None and len(loaded) == len(cache)
    after = loaded.lookup_batch(queries)
    assert [(h.label, h.votes, h.source_tier) if h else None for h in after] == [
        (h.label, h.votes, h.source_tier) if h else None for h in before
    ]
    assert sum(h is not None for h in after) == 20
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_load_keeps_the_most_recent_entries_when_capacity_shrinks(tmp_path: Path) -> None:
    cache = filled()
    cache.save(tmp_path / "cache.bin")
    small = NeuralCache.load(tmp_path / "cache.bin", DIM, CacheConfig(capacity=10, tau=0.05), model_version=1)
    assert small.load_error is None and len(small) == 10
    assert small.lookup(clusters()[0][-1]) is not None  # the last cluster was inserted last


@pytest.mark.parametrize(
    "damage",
    ["missing", "truncated", "flipped", "garbage", "other_version", "other_dim"],
)
def test_unusable_file_loads_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "cache.bin"
    dim, version = DIM, 1
    if damage != "missing":
        filled().save(path)
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
        cache = NeuralCache.load(path, dim, CacheConfig(tau=0.05), model_version=version)
    assert len(cache) == 0 and cache.load_error is not None
    assert cache.metrics()["load_error"] == cache.load_error
    expected = logging.INFO if damage == "missing" else logging.WARNING
    assert any(r.levelno == expected and "cache" in r.getMessage() for r in caplog.records)
    assert cache.insert(np.ones(dim, np.float32), 0, one_hot(0), "cloud", 0.9)  # still usable


def test_failed_save_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.bin"
    filled().save(path)
    old = path.read_bytes()
    bigger = filled()
    bigger.insert(unit(5), 0, one_hot(0), "cloud", 0.9)

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]
    assert len(NeuralCache.load(path, DIM, CacheConfig(tau=0.05), model_version=1)) == 80


def test_empty_cache_round_trips(tmp_path: Path) -> None:
    NeuralCache(DIM, model_version=3).save(tmp_path / "c")
    cache = NeuralCache.load(tmp_path / "c", DIM, model_version=3)
    assert cache.load_error is None and len(cache) == 0


# ------------------------------------------------------------------------------ concurrency
def test_concurrent_lookups_and_inserts() -> None:
    config = CacheConfig(capacity=50, tau=0.05)
    cache = NeuralCache(DIM, config)
    x, y = clusters(n_per=100)
    errors: list[BaseException] = []
    counts = {"lookups": 0, "inserts": 0}
    lock = threading.Lock()
    stop = time.monotonic() + 1.0

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
                assert len(cache) <= config.capacity
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
    assert m["insertions"] == counts["inserts"] > config.capacity
    assert m["size"] == len(cache) == config.capacity
    assert m["evictions"] == m["insertions"] - config.capacity
    assert m["lookup_time_us_mean"] > 0


# ------------------------------------------------------------------------------ repeats, factory
def test_the_cache_answers_a_repeated_input_after_one_insert() -> None:
    cache = NeuralCache(DIM, CacheConfig(tau=0.02))  # min_votes=2
    x, _ = clusters(n_per=1)
    for i, v in enumerate(x):
        cache.insert(v, i, one_hot(i), "cloud", 0.9)
    hit = cache.lookup(x[2])
    assert hit is not None and hit.label == 2 and hit.votes == 1


def _manifest(cache: CacheSpec | None) -> Manifest:
    def part(tier: str, shape: tuple[int, ...], features: tuple[int, ...] | None) -> PartitionSpec:
        return PartitionSpec(
            tier=tier,
            file=f"{tier}.tflite",
            sha256="0" * 64,
            input=TensorSpec("in", shape),
            logits=TensorSpec("logits", (CLASSES,)),
            exit=ExitSpec(0.9),
            features=TensorSpec("features", features) if features else None,
            cache=cache,
        )

    return Manifest(
        name="test",
        version=7,
        classes=tuple("abcd"),
        input=InputSpec((28, 28, 1)),
        partitions=(
            part("device", (28, 28, 1), (7, 7, 8)),
            part("gateway", (7, 7, 8), (4, 4, 16)),
            part("cloud", (4, 4, 16), None),
        ),
    )


def test_open_cache_takes_dimension_version_and_calibration_from_the_manifest(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, _manifest(CacheSpec(tau=0.031, k=5, min_votes=3, keep_exits_below=0.8)))
    device = open_cache(bundle, "device", 50)
    assert (device.dim, device.model_version, device.config.capacity) == (128, 7, 50)  # pooled keys
    assert (device.config.tau, device.config.k, device.config.min_votes) == (0.031, 5, 3)
    assert device.keep_exits_below == 0.8
    gateway = open_cache(bundle, "gateway", 50, tmp_path / "missing", tau=0.01)
    assert (gateway.dim, gateway.config.tau, gateway.load_error) == (64, 0.01, "missing")
    assert open_cache(Bundle(tmp_path, _manifest(None)), "device").config.tau == CacheConfig().tau
    with pytest.raises(ConfigError):
        open_cache(bundle, "cloud")


def test_open_cache_uses_the_bundles_key_projection(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    embedder = Embedder(
        rng.random(392, dtype=np.float32), rng.normal(size=(392, 12)).astype(np.float32), (7, 7, 8)
    )
    (tmp_path / "device.cache.npz").write_bytes(embedder.to_bytes())
    spec = CacheSpec(tau=0.05, embedding="device.cache.npz", embedding_sha256="0" * 64)
    cache = open_cache(Bundle(tmp_path, _manifest(spec)), "device", 10)
    assert cache.dim == 12
    features = rng.random((3, 7, 7, 8), dtype=np.float32)
    np.testing.assert_array_equal(cache.embed(features), embedder(features))
    (tmp_path / "device.cache.npz").write_bytes(b"garbage")
    with pytest.raises(ConfigError):
        open_cache(Bundle(tmp_path, _manifest(spec)), "device", 10)


def test_keep_exits_inserts_only_confident_enough_exits_below_the_bound() -> None:
    embedder = Embedder.pooled((2, 2, DIM))
    cache = NeuralCache(DIM, FILLED, embedder=embedder, keep_exits_below=0.9)
    features = np.random.default_rng(4).random((4, 2, 2, DIM), dtype=np.float32)
    probs = np.array(
        [[0.85, 0.15, 0, 0], [0.95, 0.05, 0, 0], [0.2, 0.7, 0.1, 0], [0.5, 0.5, 0, 0]], np.float32
    )
    exits = np.array([True, True, False, False])
    assert cache.keep_exits(features, probs, exits, "device") == 1  # only row 0: exited and below 0.9
    hit = cache.lookup(embedder(features[:1])[0])
    assert hit is not None and (hit.label, hit.source_tier) == (0, "device")
    assert NeuralCache(DIM, FILLED, embedder=embedder).keep_exits(features, probs, exits, "device") == 0
