"""Calibrate the neural caches' hit rule on validation data and store it in the manifest.

For each caching tier (device: cut-1 features, gateway: cut-2 features) this takes the
validation inputs that reach that tier's cache (they did not exit there), stores half of
them with the answer the tiers above would give, and queries with near-duplicates of the
stored half plus the other, unrelated half. The distance threshold ``tau`` is the largest
whose hits agree with the answer the tiers above would have given the query itself at
least ``target_precision`` of the time. Pure numpy over LiteRT outputs: exact k-NN, so the
calibration does not depend on HNSW's approximation.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from device_sdk.bundle import CacheSpec, Manifest, load_bundle, write_manifest
from device_sdk.cache import embed, hit_rule
from device_sdk.policy import softmax
from device_sdk.runtime import PartitionRunner
from training.augment import near_duplicates

logger = logging.getLogger(__name__)

CACHING_TIERS = ("device", "gateway")
DEFAULT_TAUS = tuple(float(t) for t in np.round(np.linspace(0.0, 0.2, 81), 4))


TierView = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tier_views(
    manifest: Manifest, runners: dict[str, PartitionRunner], images: np.ndarray
) -> dict[str, TierView]:
    """Per caching tier: (embedding, exits-here mask) and the cascade answer from above each tier."""
    x = manifest.input.normalise(images)
    probs, features = [], []
    for tier in ("device", "gateway", "cloud"):
        out = runners[tier].run(x)
        probs.append(softmax(out.logits, manifest.partition(tier).exit.temperature))
        if out.features is not None:
            features.append(out.features)
            x = out.features
    exits = [probs[i].max(1) >= manifest.partition(t).exit.threshold for i, t in enumerate(CACHING_TIERS)]
    # what the tiers above answer for an input that reaches each tier's cache
    above_gateway = probs[2].argmax(1)
    above_device = np.where(exits[1], probs[1].argmax(1), above_gateway)
    return {
        "device": (embed(features[0]), exits[0], above_device),
        "gateway": (embed(features[1]), exits[1], above_gateway),
    }


def precision_curve(
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    query_emb: np.ndarray,
    query_answers: np.ndarray,
    k: int,
    min_votes: int,
    taus: tuple[float, ...] = DEFAULT_TAUS,
) -> list[tuple[float, float, float]]:
    """``(tau, hit precision, hit rate)`` per candidate tau, with exact cosine k-NN."""
    distances = 1.0 - query_emb @ ref_emb.T
    order = np.argsort(distances, axis=1)[:, :k]
    nearest = np.take_along_axis(distances, order, axis=1)
    labels = ref_labels[order]
    curve = []
    for tau in taus:
        answers = [hit_rule(nearest[q], labels[q], tau, min_votes) for q in range(len(query_emb))]
        hit = np.array([a is not None for a in answers])
        correct = np.array([a == query_answers[q] for q, a in enumerate(answers) if a is not None])
        precision = float(correct.mean()) if hit.any() else 1.0
        curve.append((float(tau), precision, float(hit.mean())))
    return curve


def choose_tau(curve: list[tuple[float, float, float]], target_precision: float) -> tuple[float, float]:
    """The largest tau whose hit precision meets the target, with that precision."""
    good = [(tau, precision) for tau, precision, _ in curve if precision >= target_precision]
    return max(good) if good else (0.0, 1.0)


def calibrate_cache(
    bundle_dir: str | Path,
    images: np.ndarray,
    *,
    target_precision: float = 0.99,
    k: int = 3,
    min_votes: int = 2,
    seed: int = 0,
) -> Manifest:
    """Calibrate both caches on ``images`` (validation data, uint8) and rewrite the manifest."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    runners = {tier: PartitionRunner.from_bundle(bundle, tier) for tier in ("device", "gateway", "cloud")}
    rng = np.random.default_rng(seed)
    originals = _tier_views(manifest, runners, images)
    specs: dict[str, CacheSpec] = {}
    for tier in CACHING_TIERS:
        emb, exits_here, answers = originals[tier]
        candidates = np.flatnonzero(~exits_here)
        if tier == "gateway":  # only what the device did not answer reaches the gateway
            candidates = np.intersect1d(candidates, np.flatnonzero(~originals["device"][1]))
        rng.shuffle(candidates)
        ref, other = np.array_split(candidates, 2)
        repeats = _tier_views(manifest, runners, near_duplicates(images[ref], rng))[tier]
        query_emb = np.concatenate([repeats[0], emb[other]])
        query_answers = np.concatenate([repeats[2], answers[other]])
        curve = precision_curve(emb[ref], answers[ref], query_emb, query_answers, k, min_votes)
        tau, precision = choose_tau(curve, target_precision)
        hit_rate = dict((t, h) for t, _, h in curve)[tau]
        logger.info("%s cache: tau %.4f, precision %.4f, hit rate %.3f", tier, tau, precision, hit_rate)
        specs[tier] = CacheSpec(tau=tau, k=k, min_votes=min_votes, precision=round(precision, 6))
    partitions = tuple(dataclasses.replace(p, cache=specs.get(p.tier, p.cache)) for p in manifest.partitions)
    calibrated = dataclasses.replace(manifest, partitions=partitions)
    write_manifest(bundle.path, calibrated)
    return calibrated
