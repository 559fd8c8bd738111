"""Exact cosine search by brute force over a preallocated float32 matrix (numpy only).

Scores are matrix products over *blocks* of rows, each small enough that OpenBLAS runs it
on one thread (it threads a product of more than 2304 x 4 elements): a threaded product
waits for busy cores, and a device's cores are busy running its model. Measured on two
cores with 32-d keys at 100k entries while other jobs kept both busy (load 5.5): a median
of 13 ms per product when threaded, 0.3 ms in single-threaded blocks. The k best are then
picked by k passes of ``argmax``: for the small k of the hit rule that is several times
faster than ``argpartition`` (31 vs 100 µs at 10k entries). A batch of queries is scored
with one product per block and chunk of queries: up to 10k entries that costs a half to
two thirds of a single lookup per query. See :mod:`.index_choice` for where this beats HNSW.
"""

from __future__ import annotations

import numpy as np

from edgecascade.device_sdk.cache.index import Index

_BLAS_SINGLE_THREAD = 2304 * 4  # OpenBLAS runs a matrix-vector product this small on one thread
_GEMM_SINGLE_THREAD = 65536 * 4  # ... and a matrix-matrix product of this many multiply-adds
_SCORES_PER_CHUNK = 1 << 20  # scores of a batch handled at once (4 MiB)
_ARGMAX_K = 8  # up to this k, k argmax passes beat a partition


class ExactIndex(Index):
    """Brute-force exact search: recall 1, no build cost, query time linear in the entries."""

    kind = "exact"

    def __init__(self, dim: int, capacity: int) -> None:
        super().__init__(dim, capacity)
        self._block = max(1, (_BLAS_SINGLE_THREAD - 1) // dim)
        blocks = -(-capacity // self._block)
        self._blocks = np.zeros((blocks, self._block, dim), np.float32)
        self._matrix = self._blocks.reshape(blocks * self._block, dim)  # the same memory, by slot
        self._chunk = max(1, _GEMM_SINGLE_THREAD // (self._block * dim))  # queries per batched product

    def add(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        slots = np.asarray(slots, np.int64)
        self._check_slots(slots)
        if len(slots):
            self._matrix[slots] = vectors
            self._count = max(self._count, int(slots.max()) + 1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self._count
        if not 1 <= k <= n:
            raise ValueError(f"k={k} but the index holds {n} entries")
        blocks = self._blocks[: -(-n // self._block)]
        if len(queries) == 1:  # the device's case: skip the batch bookkeeping
            return _top_k_one((blocks @ queries[0]).reshape(-1)[:n], k)
        ids = np.empty((len(queries), k), np.int64)
        dists = np.empty((len(queries), k), np.float32)
        step = max(1, min(self._chunk, _SCORES_PER_CHUNK // n))
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            scores = np.matmul(chunk, blocks.transpose(0, 2, 1))  # (blocks, chunk, block)
            scores = scores.transpose(1, 0, 2).reshape(len(chunk), -1)[:, :n]
            ids[start : start + len(chunk)], dists[start : start + len(chunk)] = _top_k(scores, k)
        return ids, dists

    def vectors(self) -> np.ndarray:
        return self._matrix[: self._count].copy()


def _top_k_one(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest of one row of cosine similarities (overwritten), as slots and distances."""
    if k > _ARGMAX_K:
        return _top_k(scores[None], k)
    slots = np.empty((1, k), np.int64)
    dists = np.empty((1, k), np.float32)
    for j in range(k):
        i = int(scores.argmax())
        slots[0, j] = i
        dists[0, j] = 1.0 - scores[i]
        scores[i] = -np.inf
    return slots, dists


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k highest of cosine similarities ``(b, n)`` (overwritten), as slots and distances."""
    rows = np.arange(len(scores))
    if k <= _ARGMAX_K:
        slots = np.empty((len(scores), k), np.int64)
        best = np.empty((len(scores), k), np.float32)
        for j in range(k):
            i = scores.argmax(axis=1)
            slots[:, j] = i
            best[:, j] = scores[rows, i]
            scores[rows, i] = -np.inf
    else:
        part = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        slots = np.take_along_axis(part, order, axis=1).astype(np.int64)
        best = np.take_along_axis(part_scores, order, axis=1)
    return slots, (1.0 - best).astype(np.float32)
