"""The nearest-neighbour index behind a neural cache: one ABC, one implementation per file.

An :class:`Index` holds unit vectors in numbered *slots* ``0 .. len-1`` and answers cosine
k-nearest-neighbour queries over them. The cache keeps its values in arrays indexed by the
same slots, so a slot must never move: eviction overwrites the victim's slot in place.

* :class:`~.exact_index.ExactIndex`: numpy brute force, exact, no compiler needed;
* :class:`~.hnsw_index.HnswIndex`: hnswlib's HNSW graph, approximate, fast for large caches
  (the ``hnsw`` extra);
* :mod:`.index_choice` picks one by capacity (measured there).

Implementations need no lock of their own: the cache calls them under its lock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

IndexKind = Literal["exact", "hnsw"]
IndexChoice = Literal["auto", "exact", "hnsw"]
INDEX_CHOICES: tuple[IndexChoice, ...] = ("auto", "exact", "hnsw")


class Index(ABC):
    """Unit vectors in fixed slots, searched by cosine distance (1 - cos)."""

    kind: ClassVar[IndexKind]

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.capacity = capacity
        self._count = 0  # occupied slots: 0 .. _count-1 (implementations keep it up to date)

    def __len__(self) -> int:
        """How many slots are occupied (always ``0 .. len-1``)."""
        return self._count

    @abstractmethod
    def add(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        """Store unit ``vectors`` ``(n, dim)`` at ``slots``.

        A slot below ``len`` is overwritten in place; the others must be ``len, len+1, …``
        (the next free slots), so slots stay contiguous.
        """

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest slots (int64) and cosine distances (float32), each ``(n, k)``, nearest first.

        Needs ``1 <= k <= len``; the queries are finite, non-zero float32 rows.
        """

    @abstractmethod
    def vectors(self) -> np.ndarray:
        """A copy of the stored vectors ``(len, dim)`` float32, row i in slot i (for saving)."""

    def _check_slots(self, slots: np.ndarray) -> None:
        """ValueError unless ``slots`` overwrite occupied slots or append right after them."""
        if not len(slots):
            return
        count, top = len(self), int(slots.max()) + 1
        if int(slots.min()) < 0 or top > self.capacity or top - count > int((slots >= count).sum()):
            raise ValueError(
                f"slots must overwrite 0..{count - 1} or append from {count} up to {self.capacity}"
            )

    def graph(self) -> bytes | None:
        """Search structure worth saving beside the vectors, or None if the vectors are all it needs."""
        return None

    def restore(self, vectors: np.ndarray, graph: bytes | None) -> None:
        """Fill this empty index with ``vectors`` in slots ``0 .. n-1``.

        ``graph`` is what :meth:`graph` of a saved index returned; an implementation may
        reuse one of its own kind instead of rebuilding, and ignores any other.
        """
        if len(vectors):
            self.add(vectors, np.arange(len(vectors)))
