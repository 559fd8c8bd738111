"""Test kit for the neural caches: clustered unit keys, one-hot answers, format-1 files."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tempfile
from pathlib import Path

import numpy as np

from edgecascade.device_sdk import wire

DIM = 16
CLASSES = 4
KINDS = ("exact", "hnsw")


def clusters(n_per: int = 20, spread: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in CLASSES tight, well separated clusters, and their cluster labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM, dtype=np.float32)[:CLASSES] + 0.1
    labels = np.repeat(np.arange(CLASSES), n_per)
    x = centres[labels] + rng.normal(0, spread, (len(labels), DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def one_hot(label: int) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[label]


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def units(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_format1(
    path: Path,
    vectors: np.ndarray,
    labels: np.ndarray,
    model_version: int = 1,
    *,
    tick: int | None = None,
    M: int = 16,
) -> None:
    """A cache file as format 1 wrote it: hnswlib's save_index bytes hold the keys, no vectors array."""
    import hnswlib

    n, dim = vectors.shape
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n + 20, M=M, ef_construction=100)  # a cache with room to spare
    if n:
        index.add_items(vectors, np.arange(n))
    with tempfile.TemporaryDirectory() as scratch:
        index.save_index(str(Path(scratch) / "index"))
        index_bytes = (Path(scratch) / "index").read_bytes()
    probabilities = np.eye(CLASSES, dtype=np.float32)[labels] if n else np.zeros((0, 0), np.float32)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        index=np.frombuffer(index_bytes, np.uint8),
        labels=labels.astype(np.int64),
        probabilities=probabilities,
        tiers=np.full(n, int(wire.Tier.CLOUD), np.uint8),
        confidence=np.full(n, 0.9, np.float32),
        last_used=np.arange(1, n + 1, dtype=np.int64),
    )
    payload = buffer.getvalue()
    header = {
        "format": 1,
        "dim": dim,
        "model_version": model_version,
        "count": n,
        "num_classes": CLASSES if n else 0,
        "tick": n if tick is None else tick,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(b"ECNCACHE" + struct.pack(">I", len(head)) + head + payload)
