"""Similarity for the neural caches: cache keys from cut features, and the hit rule.

Pure numpy decisions, apart from the cache's index and file I/O (``edgecascade.device_sdk.cache``):
an :class:`Embedder` turns a tier's cut features into compact unit vectors (the cache
keys), :func:`hit_rule` says whether the nearest cached neighbours may answer.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections import Counter
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.errors import TensorSpecError

_ZERO_NORM = 1e-12
EMBEDDING_FORMAT = 1


# ------------------------------------------------------------------------------ embeddings
@dataclass(frozen=True, eq=False)
class Embedder:
    """Cut features ``(n, H, W, C)`` → cache keys ``(n, d)``: flatten, centre, project, normalise.

    The key is ``normalise((flatten(features) - mean) @ projection)``, the only embedding
    path: devices, gateways, calibration and benchmarks all call an Embedder.

    * **Which projection.** A calibrated bundle ships one per caching tier
      (``<tier>.cache.npz``, hashed in the manifest): a *near-duplicate discriminant*
      (``edgecascade.training.cache_embedding``) fitted on training images and their near-duplicates
      (1-2 px shifts, sensor noise, brightness). Its 32 directions keep what varies between
      different inputs and drop what varies between an input and its near-duplicates.
      Why: cut 1 is a 1-bit map; a one-pixel shift flips ~15 % of its bits, so a fixed
      pooling (2x2 average, 512-d) put a shifted copy as far from its original as an
      unrelated input (median cosine distance 0.21 vs 0.27). The projection brings shifted
      copies to a median 0.01 while unrelated inputs stay at ~0.1, and a 32-d continuous
      key makes HNSW search fast and its recall high.
    * **Without one** (bundles calibrated before projections existed, tests):
      :meth:`pooled`, 2x2 average pooling written as a projection matrix.

    Normalising makes cosine distance the dot product hnswlib computes; all-zero rows stay
    zero (the cache treats them as misses).
    """

    mean: np.ndarray  # (D,) float32, D = H * W * C
    projection: np.ndarray  # (D, d) float32
    feature_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if len(self.feature_shape) != 3 or min(self.feature_shape) < 1:
            raise TensorSpecError(f"cut features must have a shape (H, W, C), got {self.feature_shape}")
        size = math.prod(self.feature_shape)
        if self.mean.shape != (size,) or self.projection.ndim != 2 or self.projection.shape[0] != size:
            raise TensorSpecError(
                f"an embedding for {self.feature_shape} features needs a ({size},) mean and a "
                f"({size}, d) projection, got {self.mean.shape} and {self.projection.shape}"
            )
        if self.projection.shape[1] < 1:
            raise TensorSpecError("an embedding needs at least one dimension")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.projection).all()):
            raise TensorSpecError("embedding mean and projection must be finite")

    @property
    def dim(self) -> int:
        """Length of the cache keys."""
        return int(self.projection.shape[1])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """``(n, H, W, C)`` features → ``(n, d)`` float32 unit vectors (zeros for all-zero keys)."""
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 4 or f.shape[1:] != self.feature_shape:
            raise TensorSpecError(f"expected cut features of shape (n, {self.feature_shape}), got {f.shape}")
        z = (f.reshape(len(f), -1) - self.mean) @ self.projection
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        out = np.zeros_like(z)
        np.divide(z, norms, out=out, where=norms > _ZERO_NORM)
        return out

    @classmethod
    def pooled(cls, feature_shape: tuple[int, ...]) -> Embedder:
        """2x2 average pooling (odd edges: the mean over the real cells) as a projection.

        7x7x8 → 4x4x8 = 128-d; 4x4x16 → 2x2x16 = 64-d. No centring, so features that are
        all zero give an all-zero key.
        """
        if len(feature_shape) != 3 or min(feature_shape) < 1:
            raise TensorSpecError(f"cut features must have a shape (H, W, C), got {feature_shape}")
        h, w, c = (int(x) for x in feature_shape)
        ph, pw = math.ceil(h / 2), math.ceil(w / 2)
        projection = np.zeros((h, w, c, ph, pw, c), np.float32)
        for y in range(h):
            for x in range(w):
                cells = min(2, h - 2 * (y // 2)) * min(2, w - 2 * (x // 2))
                projection[y, x, np.arange(c), y // 2, x // 2, np.arange(c)] = 1.0 / cells
        return cls(np.zeros(h * w * c, np.float32), projection.reshape(h * w * c, ph * pw * c), (h, w, c))

    # -------------------------------------------------------------------------- file
    def to_bytes(self) -> bytes:
        """An uncompressed ``.npz`` of plain float32 arrays (no pickles)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(EMBEDDING_FORMAT, np.int64),
            feature_shape=np.array(self.feature_shape, np.int64),
            mean=self.mean.astype(np.float32),
            projection=self.projection.astype(np.float32),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Embedder:
        """Parse :meth:`to_bytes` output; anything else raises ValueError (never unpickles)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            if int(arrays["format"]) != EMBEDDING_FORMAT:
                raise ValueError(f"unsupported embedding format {int(arrays['format'])}")
            shape = tuple(int(x) for x in arrays["feature_shape"])
            mean, projection = arrays["mean"], arrays["projection"]
            if mean.dtype != np.float32 or projection.dtype != np.float32 or len(shape) != 3:
                raise ValueError("embedding arrays must be float32 and the feature shape (H, W, C)")
            return cls(mean, projection, (shape[0], shape[1], shape[2]))
        except (KeyError, OSError, EOFError, TypeError, TensorSpecError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a cache embedding file: {exc}") from None


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
    if len(voters) < len(within):  # some close neighbour disagrees: does a rival label outvote it?
        rivals = Counter(labels[i] for i in within if labels[i] != label)
        if max(rivals.values()) >= len(voters):
            return None
    return label, voters
