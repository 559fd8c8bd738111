"""The neural cache's file: one file, replaced atomically, verified on load, never unpickled.

Layout (written with temp file + fsync + ``os.replace``)::

    offset  size  field
    0       8     magic b"ECNCACHE"
    8       4     header length n (uint32, big-endian)
    12      n     JSON header: format, dim, model_version, count, num_classes, tick, index,
                  payload_bytes, payload_sha256
    12+n    ...   payload: an uncompressed .npz of plain arrays (read with allow_pickle=False)

Format 2 (written now) payload: ``vectors`` (float32, count x dim, unit rows, row i is
slot i), ``labels`` (int64), ``probabilities`` (float32, count x classes), ``tiers`` (uint8,
wire.Tier codes), ``confidence`` (float32), ``last_used`` (int64 ticks) and, when an HNSW
index wrote it (header ``index: "hnsw"``), ``hnsw_graph`` (uint8, hnswlib's save_index
bytes). The vectors let either index kind load any file: an exact index reads them as
they are, an HNSW index reuses the graph when there is one of its ``M`` and rebuilds
from the vectors otherwise. Keeping the graph costs file size but saves the rebuild
(32-d keys, ten classes, two shared cores; load = read, verify and fill a cache)::

    entries  written by  file     load into exact  load into hnsw
     10,000  exact        1.9 MB      0.01 s          0.27 s (rebuild)
     10,000  hnsw         4.7 MB      0.01 s          0.02 s
    100,000  exact       18.9 MB      0.04 s          5.3 s  (rebuild)
    100,000  hnsw        46.5 MB      0.10 s          0.18 s

Format 1 (older files) has no vectors: its ``index`` array is the hnswlib graph, from
which the vectors are read back, so it needs hnswlib; without it the file is refused
(the cache starts empty) with a message that names the extra to install. A format-1 file
of 100k entries (33.7 MB) loads in about 0.5 s into an exact index and 0.8 s into HNSW.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
from pathlib import Path

import numpy as np

from edgecascade.device_sdk.cache.entries import TIER_LABELS, eviction_order
from edgecascade.device_sdk.cache.hnsw_index import graph_vectors
from edgecascade.device_sdk.cache.index import IndexKind
from edgecascade.device_sdk.errors import DependencyError
from edgecascade.device_sdk.files import atomic_write

FILE_MAGIC = b"ECNCACHE"
FILE_FORMAT = 2
READABLE_FORMATS = (1, 2)
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024
_UNIT_TOLERANCE = 1e-3  # stored keys are unit vectors; anything else was not written by a cache


@dataclasses.dataclass(frozen=True, eq=False)
class CacheSnapshot:
    """The entries of a cache in slot order: keys, answers, recency, and the index that held them."""

    dim: int
    model_version: int
    tick: int
    index: IndexKind  # the kind of index that wrote the file
    vectors: np.ndarray  # (count, dim) float32 unit rows
    labels: np.ndarray  # (count,) int64
    probabilities: np.ndarray  # (count, classes) float32; (0, 0) when nothing was ever inserted
    tiers: np.ndarray  # (count,) uint8 wire.Tier codes
    confidence: np.ndarray  # (count,) float32
    last_used: np.ndarray  # (count,) int64 ticks
    graph: bytes | None = None  # hnswlib save_index bytes, if an HNSW index wrote the file

    @property
    def count(self) -> int:
        return len(self.labels)

    def most_recent(self, capacity: int) -> CacheSnapshot:
        """This snapshot if it fits ``capacity``, else its ``capacity`` most recently used entries.

        Dropping entries renumbers the slots, so the trimmed snapshot has no graph.
        """
        if self.count <= capacity:
            return self
        keep = np.sort(eviction_order(self.last_used, self.confidence)[self.count - capacity :])
        return dataclasses.replace(
            self,
            vectors=self.vectors[keep],
            labels=self.labels[keep],
            probabilities=self.probabilities[keep],
            tiers=self.tiers[keep],
            confidence=self.confidence[keep],
            last_used=self.last_used[keep],
            graph=None,
        )


def write_cache_file(path: str | Path, snapshot: CacheSnapshot) -> None:
    """Write ``snapshot`` to ``path`` atomically (owner-only); OSError leaves any old file intact."""
    s = snapshot
    arrays = {
        "vectors": s.vectors.astype(np.float32, copy=False),
        "labels": s.labels,
        "probabilities": s.probabilities,
        "tiers": s.tiers,
        "confidence": s.confidence,
        "last_used": s.last_used,
    }
    if s.graph is not None:
        arrays["hnsw_graph"] = np.frombuffer(s.graph, np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    payload = buffer.getvalue()
    header = {
        "format": FILE_FORMAT,
        "dim": s.dim,
        "model_version": s.model_version,
        "count": s.count,
        "num_classes": s.probabilities.shape[1] if s.count else 0,
        "tick": s.tick,
        "index": s.index,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header, sort_keys=True).encode()
    atomic_write(path, FILE_MAGIC + _HEADER_LEN.pack(len(head)) + head + payload, mode=0o600)


def read_cache_file(path: str | Path, dim: int, model_version: int) -> CacheSnapshot:
    """The verified snapshot at ``path``; ValueError (or OSError) says why it cannot be used."""
    data = Path(path).read_bytes()
    if data[: len(FILE_MAGIC)] != FILE_MAGIC or len(data) < len(FILE_MAGIC) + _HEADER_LEN.size:
        raise ValueError("not a neural cache file")
    (head_len,) = _HEADER_LEN.unpack_from(data, len(FILE_MAGIC))
    start = len(FILE_MAGIC) + _HEADER_LEN.size
    if head_len > _MAX_HEADER or start + head_len > len(data):
        raise ValueError("truncated header")
    header = json.loads(data[start : start + head_len])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    payload = data[start + head_len :]
    file_format = header.get("format")
    if file_format not in READABLE_FORMATS:
        raise ValueError(f"unsupported cache file format {file_format!r}")
    if header.get("model_version") != model_version:
        raise ValueError(f"cache is for model version {header.get('model_version')}, not {model_version}")
    if header.get("dim") != dim:
        raise ValueError(f"cache holds {header.get('dim')}-d embeddings, not {dim}-d")
    if len(payload) != header.get("payload_bytes"):
        raise ValueError(f"payload is {len(payload)} bytes, header says {header.get('payload_bytes')}")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ValueError("payload does not match its sha256")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    count, classes = int(header["count"]), int(header["num_classes"])
    graph: bytes | None
    if file_format == 1:
        graph = arrays["index"].tobytes()
        vectors = _format1_vectors(graph, dim, count)
        index: IndexKind = "hnsw"
    else:
        graph = arrays["hnsw_graph"].tobytes() if "hnsw_graph" in arrays else None
        vectors = arrays["vectors"]
        index = "hnsw" if header.get("index") == "hnsw" else "exact"
    snapshot = CacheSnapshot(
        dim=dim,
        model_version=model_version,
        tick=int(header["tick"]),
        index=index,
        vectors=vectors,
        labels=arrays["labels"],
        probabilities=arrays["probabilities"],
        tiers=arrays["tiers"],
        confidence=arrays["confidence"],
        last_used=arrays["last_used"],
        graph=graph,
    )
    _check(snapshot, count, classes)
    return snapshot


def _format1_vectors(graph: bytes, dim: int, count: int) -> np.ndarray:
    """The keys of a format-1 file, which only its hnswlib graph holds."""
    try:
        return graph_vectors(graph, dim, count)
    except DependencyError as exc:
        raise ValueError(f"a format-1 cache file needs hnswlib to be read: {exc}") from None


def _check(s: CacheSnapshot, count: int, classes: int) -> None:
    """ValueError unless the arrays agree with the header and with each other."""
    per_entry = (s.labels, s.probabilities, s.tiers, s.confidence, s.last_used, s.vectors)
    if any(len(a) != count for a in per_entry) or (count and s.probabilities.shape[1] != classes):
        raise ValueError("value arrays do not match the header's count")
    if s.vectors.dtype != np.float32 or s.vectors.shape != (count, s.dim):
        raise ValueError(f"keys must be float32 of shape ({count}, {s.dim}), got {s.vectors.shape}")
    if not count:
        return
    if not set(np.unique(s.tiers).tolist()) <= set(TIER_LABELS):
        raise ValueError("unknown tier codes")
    norms = np.linalg.norm(s.vectors, axis=1)
    if not (np.isfinite(norms).all() and np.abs(norms - 1).max() <= _UNIT_TOLERANCE):
        raise ValueError("stored keys are not unit vectors")
