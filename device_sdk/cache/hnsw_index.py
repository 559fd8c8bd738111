"""Approximate cosine search with hnswlib's HNSW graph (the ``hnsw`` extra, built from source).

hnswlib is imported when an index is made, never at ``import edgecascade.device_sdk``, so
devices that install from wheels only never need it.

The slot of an entry is its hnswlib label. Eviction overwrites the victim's label in place
(hnswlib updates the vector and repairs its links). We do not use ``mark_deleted`` +
``replace_deleted``: that takes *any* vacant slot, so replacing several deleted labels in
one ``add_items`` call can drop a label from hnswlib's lookup table.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache.index import Index
from edgecascade.device_sdk.errors import DependencyError


def load_hnswlib() -> Any:
    """The hnswlib module, or a DependencyError with the ``pip install`` line of the extra."""
    try:
        return importlib.import_module("hnswlib")
    except ImportError:
        raise DependencyError("hnswlib", "hnsw") from None


def hnswlib_installed() -> bool:
    """Whether :func:`load_hnswlib` would succeed."""
    try:
        load_hnswlib()
    except DependencyError:
        return False
    return True


class HnswIndex(Index):
    """hnswlib's HNSW graph in cosine space; ``M``, ``ef_construction`` and ``ef`` as hnswlib's."""

    kind = "hnsw"

    def __init__(
        self, dim: int, capacity: int, *, M: int = 16, ef_construction: int = 100, ef: int = 32
    ) -> None:
        super().__init__(dim, capacity)
        self._hnswlib = load_hnswlib()
        self.M = M
        self.ef = ef
        self._graph = self._hnswlib.Index(space="cosine", dim=dim)
        self._graph.init_index(max_elements=capacity, M=M, ef_construction=ef_construction)
        self._graph.set_ef(ef)

    def add(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        slots = np.asarray(slots, np.int64)
        self._check_slots(slots)
        fresh = slots >= self._count
        if fresh.any():
            self._graph.add_items(vectors[fresh], slots[fresh])
        if not fresh.all():  # in-place update of existing labels, one thread for safety
            self._graph.add_items(vectors[~fresh], slots[~fresh], num_threads=1)
        self._count = int(self._graph.get_current_count())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 1 <= k <= self._count:
            raise ValueError(f"k={k} but the index holds {self._count} entries")
        ids, dists = self._graph.knn_query(queries, k=k, num_threads=1)
        return ids.astype(np.int64), dists

    def vectors(self) -> np.ndarray:
        if not self._count:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._graph.get_items(np.arange(self._count)), dtype=np.float32)

    def graph(self) -> bytes:
        """hnswlib's ``save_index`` bytes: loading them is much faster than rebuilding the graph."""
        with _scratch_file() as path:
            self._graph.save_index(str(path))
            return path.read_bytes()

    def restore(self, vectors: np.ndarray, graph: bytes | None) -> None:
        """Reuse a saved graph of the same ``M`` holding exactly these entries; otherwise rebuild."""
        if graph is not None:
            saved = _load_graph(self._hnswlib, graph, self.dim, len(vectors))
            if saved.M == self.M and len(vectors) <= self.capacity:
                saved.resize_index(self.capacity)
                saved.set_ef(self.ef)
                self._graph, self._count = saved, len(vectors)
                return
        super().restore(vectors, None)


def graph_vectors(graph: bytes, dim: int, count: int) -> np.ndarray:
    """The ``(count, dim)`` unit vectors of a saved graph (cache files of format 1 hold only that)."""
    if not count:
        return np.zeros((0, dim), np.float32)
    saved = _load_graph(load_hnswlib(), graph, dim, count)
    return np.asarray(saved.get_items(np.arange(count)), dtype=np.float32)


def _load_graph(hnswlib: Any, graph: bytes, dim: int, count: int) -> Any:
    """An hnswlib index parsed from ``save_index`` bytes; ValueError unless it holds labels 0..count-1."""
    saved = hnswlib.Index(space="cosine", dim=dim)
    with _scratch_file() as path:
        path.write_bytes(graph)
        saved.load_index(str(path), max_elements=count)
    if saved.get_current_count() != count or sorted(saved.get_ids_list()) != list(range(count)):
        raise ValueError("the saved index's entries do not match the values")
    return saved


@contextmanager
def _scratch_file() -> Iterator[Path]:
    """A temporary file path for hnswlib, which saves and loads only by file name."""
    fd, name = tempfile.mkstemp(prefix="ec-cache-index-")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
