"""The cache file: round trips, format-1 files, and files that must be refused."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.device_sdk.cache import CacheConfig, NeuralCache
from edgecascade.device_sdk.cache.cachefile import (
    FILE_FORMAT,
    CacheSnapshot,
    read_cache_file,
    write_cache_file,
)

from .cache_kit import CLASSES, DIM, KINDS, clusters, one_hot, units, write_format1


def snapshot(n: int = 6, graph: bytes | None = None) -> CacheSnapshot:
    labels = np.arange(n) % CLASSES
    return CacheSnapshot(
        dim=DIM,
        model_version=4,
        tick=n + 2,
        index="hnsw" if graph is not None else "exact",
        vectors=units(n),
        labels=labels.astype(np.int64),
        probabilities=np.eye(CLASSES, dtype=np.float32)[labels],
        tiers=np.full(n, 5, np.uint8),
        confidence=np.linspace(0.5, 1.0, n).astype(np.float32),
        last_used=np.arange(1, n + 1, dtype=np.int64),
        graph=graph,
    )


def header_of(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    (length,) = struct.unpack(">I", data[8:12])
    return dict(json.loads(data[12 : 12 + length]))


def write_raw(path: Path, arrays: dict[str, np.ndarray], **header: Any) -> None:
    """A cache file around any arrays, with a matching hash: only the content can be wrong."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    payload = buffer.getvalue()
    head = {"format": FILE_FORMAT, "dim": DIM, "model_version": 4, "count": len(arrays["labels"])}
    head |= {"num_classes": CLASSES, "tick": 1, "index": "exact", **header}
    head |= {"payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    text = json.dumps(head).encode()
    path.write_bytes(b"ECNCACHE" + struct.pack(">I", len(text)) + text + payload)


def arrays_of(s: CacheSnapshot) -> dict[str, np.ndarray]:
    names = ("vectors", "labels", "probabilities", "tiers", "confidence", "last_used")
    return {name: getattr(s, name) for name in names}


def test_a_snapshot_round_trips_with_its_header(tmp_path: Path) -> None:
    s = snapshot(graph=b"graph bytes")
    write_cache_file(tmp_path / "c", s)
    assert (tmp_path / "c").read_bytes()[:8] == b"ECNCACHE"
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o600
    head = header_of(tmp_path / "c")
    assert (head["format"], head["count"], head["num_classes"], head["index"]) == (2, 6, CLASSES, "hnsw")
    back = read_cache_file(tmp_path / "c", DIM, 4)
    assert (back.count, back.tick, back.index, back.graph) == (6, 8, "hnsw", b"graph bytes")
    for name, array in arrays_of(s).items():
        np.testing.assert_array_equal(getattr(back, name), array)


def test_an_exact_cache_saves_no_graph_and_an_hnsw_cache_does(tmp_path: Path) -> None:
    for kind in KINDS:
        cache = NeuralCache(DIM, CacheConfig(index=kind), model_version=4)  # type: ignore[arg-type]
        x, y = clusters(n_per=5)
        cache.insert_batch(x, y, np.eye(CLASSES, dtype=np.float32)[y], ["cloud"] * len(y), np.ones(len(y)))
        cache.save(tmp_path / kind)
        saved = read_cache_file(tmp_path / kind, DIM, 4)
        assert saved.index == kind and (saved.graph is not None) == (kind == "hnsw")
        np.testing.assert_allclose(saved.vectors, x, atol=1e-6)


def test_most_recent_keeps_the_newest_entries_and_drops_the_graph() -> None:
    s = snapshot(6, graph=b"g")
    assert s.most_recent(6) is s
    trimmed = s.most_recent(4)
    assert trimmed.count == 4 and trimmed.graph is None
    assert trimmed.last_used.tolist() == [3, 4, 5, 6]
    np.testing.assert_array_equal(trimmed.vectors, s.vectors[2:])


# ------------------------------------------------------------------------------ format 1
@pytest.mark.parametrize("kind", KINDS)
def test_a_format1_file_loads_into_either_index(tmp_path: Path, kind: str) -> None:
    x, y = clusters()
    write_format1(tmp_path / "old", x, y, model_version=1)
    cache = NeuralCache.load(tmp_path / "old", DIM, CacheConfig(capacity=200, tau=0.05, index=kind), 1)  # type: ignore[arg-type]
    assert cache.load_error is None and len(cache) == 80 and cache.index_kind == kind
    queries, expected = clusters(n_per=3, seed=5)
    hits = cache.lookup_batch(queries)
    assert [h.label if h else None for h in hits] == expected.tolist()
    assert all(h is not None and h.source_tier == "cloud" for h in hits)
    assert cache.insert(units(1)[0], 0, one_hot(0), "device", 0.9) and len(cache) == 81


def test_a_format1_file_trimmed_to_a_smaller_capacity(tmp_path: Path) -> None:
    x, y = clusters()
    write_format1(tmp_path / "old", x, y, model_version=1)
    cache = NeuralCache.load(tmp_path / "old", DIM, CacheConfig(capacity=20, tau=0.05, index="hnsw"), 1)
    assert len(cache) == 20 and cache.lookup(x[-1]) is not None and cache.lookup(x[0]) is None


def test_an_empty_format1_file_loads_empty(tmp_path: Path) -> None:
    write_format1(tmp_path / "old", np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), model_version=1)
    cache = NeuralCache.load(tmp_path / "old", DIM, model_version=1)
    assert cache.load_error is None and len(cache) == 0


def test_a_format1_file_without_hnswlib_starts_empty_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = clusters()
    write_format1(tmp_path / "old", x, y, model_version=1)
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    with caplog.at_level(logging.WARNING, logger="edgecascade.device_sdk.cache"):
        cache = NeuralCache.load(tmp_path / "old", DIM, CacheConfig(tau=0.05), model_version=1)
    assert cache.index_kind == "exact" and len(cache) == 0
    assert cache.load_error is not None and "format-1" in cache.load_error
    assert "pip install 'edgecascade[hnsw]'" in cache.load_error
    assert any("pip install" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ refused files
def test_a_new_file_needs_no_hnswlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hnsw = NeuralCache(DIM, CacheConfig(tau=0.05, index="hnsw"), model_version=4)
    x, y = clusters(n_per=5)
    hnsw.insert_batch(x, y, np.eye(CLASSES, dtype=np.float32)[y], ["cloud"] * len(y), np.ones(len(y)))
    hnsw.save(tmp_path / "c")
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    cache = NeuralCache.load(tmp_path / "c", DIM, CacheConfig(tau=0.05), model_version=4)
    assert cache.load_error is None and cache.index_kind == "exact" and len(cache) == 20
    assert [h.label if h else None for h in cache.lookup_batch(x)] == y.tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vectors": units(6) * 2}, "not unit vectors"),
        ({"vectors": units(6).astype(np.float64)}, "float32"),
        ({"vectors": units(5)}, "do not match the header"),
        ({"tiers": np.full(6, 99, np.uint8)}, "unknown tier"),
        ({"labels": np.arange(7)}, "do not match the header"),
    ],
)
def test_arrays_that_do_not_fit_are_refused(
    tmp_path: Path, change: dict[str, np.ndarray], message: str
) -> None:
    write_raw(tmp_path / "c", arrays_of(snapshot()) | change, count=6)
    with pytest.raises(ValueError, match=message):
        read_cache_file(tmp_path / "c", DIM, 4)
    cache = NeuralCache.load(tmp_path / "c", DIM, model_version=4)
    assert len(cache) == 0 and cache.load_error is not None and message in cache.load_error


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    arrays = arrays_of(snapshot()) | {"labels": np.array([object()] * 6, dtype=object)}
    write_raw(tmp_path / "c", arrays)
    cache = NeuralCache.load(tmp_path / "c", DIM, model_version=4)
    assert len(cache) == 0 and cache.load_error is not None and "pickle" in cache.load_error.lower()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"format": 3}, "unsupported cache file format 3"),
        ({"dim": DIM + 1}, "17-d"),
        ({"model_version": 5}, "version 5"),
    ],
)
def test_headers_for_other_formats_models_or_keys_are_refused(
    tmp_path: Path, header: dict[str, int], message: str
) -> None:
    write_raw(tmp_path / "c", arrays_of(snapshot()), **header)
    with pytest.raises(ValueError, match=message):
        read_cache_file(tmp_path / "c", DIM, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ECNCACHE\x00", "not a neural cache file"),
        (b"ECNCACHE" + struct.pack(">I", 500) + b"{}", "truncated header"),
        (b"ECNCACHE" + struct.pack(">I", 2) + b"[]", "not a JSON object"),
        (b"PK\x03\x04" + b"\x00" * 40, "not a neural cache file"),
    ],
)
def test_files_that_are_not_cache_files_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "c").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_cache_file(tmp_path / "c", DIM, 4)
