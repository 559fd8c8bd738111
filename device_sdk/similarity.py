"""Similarity for the neural caches: embeddings of cut features and the hit rule.

Pure numpy decisions, apart from the cache's index and file I/O (``device_sdk.cache``):
:func:`embed` turns a tier's cut features into compact unit vectors, :func:`hit_rule` says
whether the nearest cached neighbours may answer.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from device_sdk.errors import TensorSpecError

_ZERO_NORM = 1e-12


# ------------------------------------------------------------------------------ embeddings
def embedding_dim(feature_shape: tuple[int, ...]) -> int:
    """Length of :func:`embed`'s output for cut features of shape ``(H, W, C)``."""
    if len(feature_shape) != 3 or min(feature_shape) < 1:
        raise TensorSpecError(f"cut features must have a shape (H, W, C), got {feature_shape}")
    h, w, c = feature_shape
    return math.ceil(h / 2) * math.ceil(w / 2) * c


def embed(features: np.ndarray) -> np.ndarray:
    """Cut features ``(n, H, W, C)`` → ``(n, d)`` float32 unit vectors (zeros for all-zero input).

    2x2 average pooling (odd edges padded; the mean is over the real cells only), then
    flatten and L2-normalise: 7x7x8 → 4x4x8 = 128-d on the device, 4x4x16 → 2x2x16 = 64-d
    on the gateway. Why: pooling quarters the size (smaller index, faster search) and
    averages away pixel noise and one-pixel shifts, while the 2x2 (or 4x4) grid keeps the
    coarse spatial layout that tells a trouser from a dress, which global pooling loses
    (on Fashion-MNIST a global-average embedding matched wrong labels far more often).
    Normalising makes cosine distance the dot product hnswlib computes.
    """
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 4 or min(f.shape[1:]) < 1:
        raise TensorSpecError(f"expected cut features of shape (n, H, W, C), got {f.shape}")
    n, h, w, c = f.shape
    ph, pw = h + h % 2, w + w % 2
    padded = np.zeros((n, ph, pw, c), np.float32)
    padded[:, :h, :w] = f
    cells = np.zeros((ph, pw), np.float32)
    cells[:h, :w] = 1.0
    sums = padded.reshape(n, ph // 2, 2, pw // 2, 2, c).sum(axis=(2, 4))
    counts = cells.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
    pooled = (sums / counts[None, :, :, None]).reshape(n, -1)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    out = np.zeros_like(pooled)
    np.divide(pooled, norms, out=out, where=norms > _ZERO_NORM)
    return out


# ------------------------------------------------------------------------------ hit rule
def hit_rule(distances: np.ndarray, labels: np.ndarray, tau: float, min_votes: int) -> int | None:
    """The cached label to answer with, or None: the FoggyCache-style hit decision.

    ``distances`` (cosine distance, 1 - cos) and ``labels`` are the k nearest neighbours,
    nearest first. Only neighbours *within tau* vote. A hit needs:

    1. the nearest is within ``tau``;
    2. its label has at least ``min_votes`` votes, or every neighbour within tau agrees
       with it (a lone close neighbour is trusted when nothing close contradicts it: a
       repeat of an input answered once is the cache's main use);
    3. no other label has as many votes (a hit never goes against the close majority).

    ``tau`` is calibrated per tier on validation data to a target hit precision, which
    accounts for lone-neighbour hits too.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1).tolist()
    lab = np.asarray(labels).reshape(-1).tolist()
    if len(d) != len(lab):
        return None
    decided = _decide(d, lab, tau, min_votes)
    return None if decided is None else decided[0]


def _decide(
    distances: list[float], labels: list[int], tau: float, min_votes: int
) -> tuple[int, list[int]] | None:
    """:func:`hit_rule` over plain lists (k is tiny, so Python beats numpy's per-call cost).

    Returns the label and the positions of the neighbours that voted for it.
    """
    if not distances or not distances[0] <= tau:  # also false for NaN
        return None
    label = labels[0]
    within = [i for i, d in enumerate(distances) if d <= tau]
    voters = [i for i in within if labels[i] == label]
    if len(voters) < min_votes and len(voters) < len(within):
        return None
    rivals = Counter(labels[i] for i in within if labels[i] != label)
    if rivals and max(rivals.values()) >= len(voters):
        return None
    return label, voters
