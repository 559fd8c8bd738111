"""Which cache entries and queries are usable: pure checks over numpy, no index, no lock."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache.similarity import _ZERO_NORM

TIER_CODES = {t.label: int(t) for t in wire.Tier}  # stored per entry as uint8
TIER_LABELS = {code: label for label, code in TIER_CODES.items()}


def usable_rows(q: np.ndarray) -> Sequence[int]:
    """Rows of ``q`` that are finite and not all zero (one row, the common case, checked cheaply)."""
    if len(q) == 1:
        sq = float(np.dot(q[0], q[0]))
        return range(1) if math.isfinite(sq) and sq > _ZERO_NORM * _ZERO_NORM else range(0)
    norms2 = np.einsum("ij,ij->i", q, q)
    usable = np.isfinite(norms2) & (norms2 > _ZERO_NORM * _ZERO_NORM)
    return range(len(q)) if usable.all() else np.flatnonzero(usable).tolist()


def check_entries(
    embeddings: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    tiers: list[str],
    confidences: np.ndarray,
    dim: int,
    classes: int | None,
) -> tuple[np.ndarray, Counter[str]]:
    """Mask of insertable rows, and how many rows failed per reason (each under its first).

    ``classes`` is the class count of the entries already cached, or None for the first.
    """
    n = len(tiers)
    emb, labs, probs, conf = embeddings, labels, probabilities, confidences
    if emb.shape != (n, dim) or labs.shape != (n,) or conf.shape != (n,) or probs.ndim != 2:
        return np.zeros(n, bool), Counter({"shape": n})
    classes = probs.shape[1] if classes is None else classes
    if probs.shape != (n, classes) or classes < 1:
        return np.zeros(n, bool), Counter({"probabilities": n})
    norms = np.linalg.norm(emb, axis=1)
    checks = (
        ("non_finite_embedding", np.isfinite(norms)),
        ("zero_embedding", norms > _ZERO_NORM),
        ("probabilities", np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1)),
        ("label", np.array([is_label(x, classes) for x in labs], dtype=bool)),
        ("tier", np.array([t in TIER_CODES for t in tiers], dtype=bool)),
        ("confidence", np.isfinite(conf)),
    )
    ok = np.ones(n, bool)
    failures: Counter[str] = Counter()
    for reason, passed in checks:
        failed = int((ok & ~passed).sum())
        if failed:
            failures[reason] = failed
        ok &= passed
    return ok, failures


def eviction_order(last_used: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Entries from the first to evict to the last: least recently used first, then least confident."""
    return np.lexsort((confidence, last_used)).astype(np.int64)


def next_victim(last_used: np.ndarray, confidence: np.ndarray) -> int:
    """``eviction_order(...)[0]`` in O(n) without a sort (an insert into a full cache needs only it)."""
    oldest = np.flatnonzero(last_used == last_used.min())
    return int(oldest[np.argmin(confidence[oldest])])


def is_label(x: Any, classes: int) -> bool:
    """An integral class index in ``0 .. classes-1``."""
    try:
        value = int(x)
    except (TypeError, ValueError, OverflowError):
        return False
    return value == x and 0 <= value < classes
