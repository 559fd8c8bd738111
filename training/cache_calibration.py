"""Calibrate the neural caches' hit rule on validation data and store it in the manifest.

For each caching tier (device: cut-1 features, gateway: cut-2 features) this takes the
validation inputs that reach that tier's cache (they did not exit there), stores half of
them with the answer the tiers above would give, and queries with near-duplicates of the
stored half plus the other, unrelated half. The distance threshold ``tau`` is the largest
at which, for both kinds of query, the cache's answers are right (on the validation labels)
at least ``target_ratio`` as often as the answers the tiers would have given instead.
Pure numpy over LiteRT outputs: exact k-NN, independent of HNSW's approximation.

Measured on Fashion-MNIST: near-duplicates of hard inputs borrow their original's answer
safely, but unrelated inputs with a similar embedding do not (at a cosine distance of 0.05
cache answers were right 48 % of the time against 70 % for the tiers), so tau stays small.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_sdk.bundle import Bundle, CacheSpec, Manifest, load_bundle, write_manifest
from device_sdk.policy import policy_from_spec
from device_sdk.runtime import run_partitions
from device_sdk.similarity import embed, hit_rule
from training.augment import near_duplicates

logger = logging.getLogger(__name__)

CACHING_TIERS = ("device", "gateway")
MIN_CANDIDATES = 40
"""Fewest validation inputs reaching a tier's cache for its tau to be calibrated (half stored, half asked)."""
DEFAULT_TAUS = tuple(float(t) for t in np.round(np.linspace(0.0, 0.2, 81), 4))


TierView = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tier_views(bundle: Bundle, images: np.ndarray) -> dict[str, TierView]:
    """Per caching tier: (embedding, exits-here mask) and the cascade answer from above each tier."""
    manifest = bundle.manifest
    outputs = run_partitions(bundle, images)
    probs, features = outputs.probs, outputs.features
    exits = [
        policy_from_spec(manifest.partition(t).exit).should_exit(probs[i])
        for i, t in enumerate(CACHING_TIERS)
    ]
    # what the tiers above answer for an input that reaches each tier's cache
    above_gateway = probs[2].argmax(1)
    above_device = np.where(exits[1], probs[1].argmax(1), above_gateway)
    return {
        "device": (embed(features[0]), exits[0], above_device),
        "gateway": (embed(features[1]), exits[1], above_gateway),
    }


@dataclass(frozen=True)
class CurvePoint:
    """What a candidate tau does on the calibration queries."""

    tau: float
    hits: int
    hit_rate: float
    cache_accuracy: float  # accuracy of the cache's answers on the hits
    tier_accuracy: float  # accuracy of the answers the tiers would have given instead

    @property
    def ratio(self) -> float:
        return self.cache_accuracy / self.tier_accuracy if self.tier_accuracy else 1.0


def accuracy_curve(
    ref_emb: np.ndarray,
    ref_answers: np.ndarray,
    query_emb: np.ndarray,
    query_answers: np.ndarray,
    query_truth: np.ndarray,
    k: int,
    min_votes: int,
    taus: tuple[float, ...] = DEFAULT_TAUS,
) -> list[CurvePoint]:
    """Per candidate tau: hits, and cache vs tier accuracy on them (exact cosine k-NN)."""
    distances = 1.0 - query_emb @ ref_emb.T
    order = np.argsort(distances, axis=1)[:, :k]
    nearest = np.take_along_axis(distances, order, axis=1)
    labels = ref_answers[order]
    curve = []
    for tau in taus:
        answers = [hit_rule(nearest[q], labels[q], tau, min_votes) for q in range(len(query_emb))]
        hit = np.array([a is not None for a in answers])
        cached = np.array([a for a in answers if a is not None])
        truth = query_truth[hit]
        cache_acc = float((cached == truth).mean()) if hit.any() else 1.0
        tier_acc = float((query_answers[hit] == truth).mean()) if hit.any() else 1.0
        curve.append(CurvePoint(float(tau), int(hit.sum()), float(hit.mean()), cache_acc, tier_acc))
    return curve


def choose_tau(
    repeats: list[CurvePoint], distinct: list[CurvePoint], target_ratio: float, min_hits: int = 20
) -> tuple[CurvePoint, CurvePoint]:
    """The largest tau at which cache answers are ``target_ratio`` as accurate as the tiers'.

    Both kinds of queries must pass: near-duplicates of stored inputs (needing at least
    ``min_hits`` hits to be trusted) and unrelated inputs (any hit on them must be as
    accurate, since borrowing a similar input's answer is where a cache goes wrong). If no
    tau passes, the smallest one is returned (in practice only exact repeats then hit).
    """
    good = [
        (r, d)
        for r, d in zip(repeats, distinct, strict=True)
        if r.hits >= min_hits and r.ratio >= target_ratio and (d.hits == 0 or d.ratio >= target_ratio)
    ]
    return max(good, key=lambda pair: pair[0].tau) if good else (repeats[0], distinct[0])


def calibrate_cache(
    bundle_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    target_ratio: float = 0.99,
    k: int = 3,
    min_votes: int = 2,
    seed: int = 0,
) -> Manifest:
    """Calibrate both caches on validation ``images`` (uint8) and ``labels``; rewrite the manifest."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    rng = np.random.default_rng(seed)
    originals = _tier_views(bundle, images)
    specs: dict[str, CacheSpec] = {}
    for tier in CACHING_TIERS:
        emb, exits_here, answers = originals[tier]
        candidates = np.flatnonzero(~exits_here)
        if tier == "gateway":  # only what the device did not answer reaches the gateway
            candidates = np.intersect1d(candidates, np.flatnonzero(~originals["device"][1]))
        if len(candidates) < MIN_CANDIDATES:
            logger.warning(
                "%s cache: only %d validation inputs reach it, too few to calibrate; it will answer "
                "exact repeats only (tau 0)",
                tier,
                len(candidates),
            )
            specs[tier] = CacheSpec(tau=0.0, k=k, min_votes=min_votes)
            continue
        rng.shuffle(candidates)
        ref, other = np.array_split(candidates, 2)
        repeats = _tier_views(bundle, near_duplicates(images[ref], rng))[tier]
        repeat_curve = accuracy_curve(
            emb[ref], answers[ref], repeats[0], repeats[2], labels[ref], k, min_votes
        )
        distinct_curve = accuracy_curve(
            emb[ref], answers[ref], emb[other], answers[other], labels[other], k, min_votes
        )
        rep, dis = choose_tau(repeat_curve, distinct_curve, target_ratio)
        logger.info(
            "%s cache: tau %.4f; near-duplicates: %d hits, accuracy %.3f vs %.3f; unrelated: %d hits",
            tier,
            rep.tau,
            rep.hits,
            rep.cache_accuracy,
            rep.tier_accuracy,
            dis.hits,
        )
        specs[tier] = CacheSpec(
            tau=rep.tau,
            k=k,
            min_votes=min_votes,
            accuracy_ratio=round(rep.ratio, 6),
            hit_rate=round(rep.hit_rate, 6),
        )
    partitions = tuple(dataclasses.replace(p, cache=specs.get(p.tier, p.cache)) for p in manifest.partitions)
    calibrated = dataclasses.replace(manifest, partitions=partitions)
    write_manifest(bundle.path, calibrated)
    return calibrated
