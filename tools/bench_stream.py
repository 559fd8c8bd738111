"""The cache benchmark's stream: repeats of earlier inputs through the real cascade.

A stream of test images in which a share of inputs are near-duplicates (small shift, noise,
brightness change) of earlier ones runs twice through the whole stack (Mosquitto, gateway
and cloud daemons as processes, a ``DeviceClient`` over MQTT): once with both neural caches
off, once with both on. The two runs see the same inputs in the same order, so what the
caches answered is compared with what the tiers answered for the same inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient, Prediction
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.tools.stack import LocalStack
from edgecascade.training.augment import near_duplicates

CACHE_TIERS = ("device_cache", "gateway_cache")


def repeat_stream(
    images: np.ndarray, labels: np.ndarray, n: int, repeat_share: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` inputs where about ``repeat_share`` are near-duplicates of an earlier original.

    Returns images, labels, and a boolean mask marking the repeats.
    """
    if not 0 <= repeat_share < 1:
        raise ValueError("repeat_share must be in [0, 1)")
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    is_repeat = np.zeros(n, dtype=bool)
    next_original = 0
    for i in range(n):
        if picks and rng.random() < repeat_share:
            picks.append(picks[rng.integers(len(picks))])
            is_repeat[i] = True
        else:
            picks.append(next_original % len(images))
            next_original += 1
    index = np.array(picks)
    stream = images[index].copy()
    stream[is_repeat] = near_duplicates(images[index[is_repeat]], rng)
    return stream, labels[index], is_repeat


def _run(bundle_dir: Path, stream: np.ndarray, caches: bool, capacity: int) -> list[Prediction]:
    bundle = load_bundle(bundle_dir)
    env = {"EC_CACHE__ENABLED": "true" if caches else "false", "EC_CACHE__CAPACITY": str(capacity)}
    device_id = "bench-cache-on" if caches else "bench-cache-off"
    cache = open_cache(bundle, "device", capacity) if caches else None
    with (
        tempfile.TemporaryDirectory(prefix="edgecascade-bench-") as workdir,
        LocalStack(bundle.path, Path(workdir), gateway_env=env) as stack,
    ):
        mqtt, crypto = stack.device(device_id)
        transport = MqttTransport(mqtt, device_id)
        with DeviceClient(bundle, device_id, transport, cache=cache, crypto=crypto) as client:
            return [client.predict(x) for x in stream]


def bench_cache_stream(
    bundle_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n: int = 5000,
    repeat_share: float = 0.3,
    capacity: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the stream with caches off and on; hit rate, accuracy, bytes and latency saved."""
    stream, truth, is_repeat = repeat_stream(images, labels, n, repeat_share, seed)
    off = _run(bundle_dir, stream, caches=False, capacity=capacity)
    on = _run(bundle_dir, stream, caches=True, capacity=capacity)
    tier_on = np.array([p.tier for p in on])
    cached = np.isin(tier_on, CACHE_TIERS)
    reached_cache = is_repeat & (tier_on != "device")  # repeats that did not exit on the device
    label_on = np.array([p.label for p in on])
    label_off = np.array([p.label for p in off])

    def link_bytes(predictions: list[Prediction]) -> int:
        return sum(p.bytes_sent + p.bytes_upstream for p in predictions)

    bytes_off, bytes_on = link_bytes(off), link_bytes(on)

    def accuracy(labels: np.ndarray, where: np.ndarray) -> float | None:
        return round(float((labels[where] == truth[where]).mean()), 4) if where.any() else None

    unrelated = cached & ~is_repeat
    return {
        "n": n,
        "repeat_share": round(float(is_repeat.mean()), 4),
        "repeats_reaching_cache": int(reached_cache.sum()),
        "repeat_hit_rate": round(float(cached[reached_cache].mean()), 4) if reached_cache.any() else None,
        "cache_answers": {t: int((tier_on == t).sum()) for t in CACHE_TIERS},
        "cache_answer_accuracy": accuracy(label_on, cached),
        "tier_answer_accuracy": accuracy(label_off, cached),
        "non_repeats": {  # what the cache did to inputs that repeat nothing
            "cache_answers": int(unrelated.sum()),
            "cache_answer_accuracy": accuracy(label_on, unrelated),
            "tier_answer_accuracy": accuracy(label_off, unrelated),
        },
        "cache_vs_tier_agreement": round(float((label_on[cached] == label_off[cached]).mean()), 4)
        if cached.any()
        else None,
        "accuracy": {
            "caches_off": round(float((label_off == truth).mean()), 4),
            "caches_on": round(float((label_on == truth).mean()), 4),
        },
        "bytes_per_input": {"caches_off": round(bytes_off / n, 2), "caches_on": round(bytes_on / n, 2)},
        "bytes_saved_ratio": round(1 - bytes_on / bytes_off, 4) if bytes_off else 0.0,
        "mean_latency_ms": {
            "caches_off": round(float(np.mean([p.latency_ms for p in off])), 4),
            "caches_on": round(float(np.mean([p.latency_ms for p in on])), 4),
        },
        "degraded": {"caches_off": sum(p.degraded for p in off), "caches_on": sum(p.degraded for p in on)},
    }
