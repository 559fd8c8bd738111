"""Calibrate the neural caches on validation data and store the settings in the bundle.

For each caching tier (device: cut-1 features, gateway: cut-2 features) this

1. fits the key projection (:mod:`training.cache_embedding`) on training images and their
   near-duplicates, and writes it into the bundle (``<tier>.cache.npz``, hashed in the
   manifest);
2. sets ``keep_exits_below``: the confidence under which the tier keeps its own exit
   answers. It covers 99 % of the validation inputs that exited on the tier while a
   near-duplicate of theirs did not (more confident inputs have near-duplicates that exit);
3. stores half of the validation inputs as the cache would hold them (the answers of the
   tiers above for inputs that reach the cache, the tier's own answers under the bound)
   and queries with near-duplicates of that half that reach the cache, and with the
   unrelated other half. ``tau`` is the largest distance at which, for both kinds of
   query, the cache's answers are right (on the validation labels) at least
   ``target_ratio`` as often as the answers the tiers would have given instead.

Pure numpy over LiteRT outputs: exact k-NN, independent of HNSW's approximation. A tier
that too few validation inputs reach (the gateway, when its exit answers everything) gets
``tau`` 0 and no projection.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_sdk.bundle import (
    Bundle,
    CacheSpec,
    Manifest,
    atomic_write,
    load_bundle,
    sha256_file,
    write_manifest,
)
from device_sdk.policy import policy_from_spec
from device_sdk.runtime import ChainOutputs, run_partitions
from device_sdk.similarity import hit_rule
from training.augment import near_duplicates
from training.cache_embedding import DEFAULT_DIM, fit_embedder

logger = logging.getLogger(__name__)

CACHING_TIERS = ("device", "gateway")
MIN_CANDIDATES = 40
"""Fewest validation inputs reaching a tier's cache for its tau to be calibrated (half stored, half asked)."""
DEFAULT_TAUS = tuple(float(t) for t in np.round(np.linspace(0.0, 0.2, 81), 4))


FIT_SAMPLES = 12_000
"""Most training images (and as many near-duplicates) the key projection is fitted on."""
KEEP_COVERAGE = 0.99
"""Share of exited inputs with a non-exiting near-duplicate that ``keep_exits_below`` covers."""


@dataclass(frozen=True)
class TierView:
    """What one caching tier sees of a set of inputs."""

    features: np.ndarray  # the tier's cut features
    reaches: np.ndarray  # the input gets to this tier (bool)
    exits: np.ndarray  # ... and exits on it
    own: np.ndarray  # the tier's own answer
    confidence: np.ndarray  # its exit score (max probability)
    above: np.ndarray  # what the tiers above answer

    @property
    def consults_cache(self) -> np.ndarray:
        return self.reaches & ~self.exits

    def cached_answers(self, keep_below: float) -> tuple[np.ndarray, np.ndarray]:
        """Which inputs the cache would hold, and the answer it would hold for each."""
        kept_exits = self.reaches & self.exits & (self.confidence < keep_below)
        stored = self.consults_cache | kept_exits
        return stored, np.where(kept_exits, self.own, self.above)


def _tier_views(bundle: Bundle, outputs: ChainOutputs) -> dict[str, TierView]:
    """Per caching tier, from the outputs of the whole chain on some inputs."""
    manifest = bundle.manifest
    probs = outputs.probs
    exits = [
        policy_from_spec(manifest.partition(t).exit).should_exit(probs[i])
        for i, t in enumerate(CACHING_TIERS)
    ]
    above_gateway = probs[2].argmax(1)
    above_device = np.where(exits[1], probs[1].argmax(1), above_gateway)
    everything = np.ones(len(probs[0]), bool)
    reaches = (everything, ~exits[0])
    above = (above_device, above_gateway)
    return {
        tier: TierView(
            outputs.features[i],
            reaches[i],
            np.asarray(exits[i], bool),
            probs[i].argmax(1),
            probs[i].max(1),
            above[i],
        )
        for i, tier in enumerate(CACHING_TIERS)
    }


def keep_bound(original: TierView, duplicate: TierView, coverage: float = KEEP_COVERAGE) -> float:
    """The confidence under which own exit answers are kept (0 if no near-duplicate needs one)."""
    needed = original.reaches & original.exits & duplicate.consults_cache
    if not needed.any():
        return 0.0
    bound = float(np.quantile(original.confidence[needed], coverage, method="higher"))
    return min(1.0, math.ceil(bound * 100 + 1e-9) / 100)


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
    fit_images: np.ndarray | None = None,
    target_ratio: float = 0.99,
    k: int = 3,
    min_votes: int = 2,
    dim: int = DEFAULT_DIM,
    seed: int = 0,
) -> Manifest:
    """Calibrate both caches on validation ``images`` (uint8) and ``labels``; rewrite the manifest.

    The key projections are fitted on ``fit_images`` (training images; the validation
    images when None) and written into the bundle beside the manifest.
    """
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    rng = np.random.default_rng(seed)
    originals = _tier_views(bundle, run_partitions(bundle, images))
    duplicates = _tier_views(bundle, run_partitions(bundle, near_duplicates(images, rng)))
    fit = _fit_views(bundle, images if fit_images is None else fit_images, rng)
    half = rng.permutation(len(images))
    ref_half = np.zeros(len(images), bool)
    ref_half[half[: len(images) // 2]] = True
    specs: dict[str, CacheSpec] = {}
    for tier in CACHING_TIERS:
        orig, dup = originals[tier], duplicates[tier]
        candidates = int(orig.consults_cache.sum())
        if candidates < MIN_CANDIDATES:
            logger.warning(
                "%s cache: only %d validation inputs reach it, too few to calibrate; it will answer "
                "exact repeats only (tau 0)",
                tier,
                candidates,
            )
            specs[tier] = CacheSpec(tau=0.0, k=k, min_votes=min_votes)
            continue
        embedder = fit_embedder(*fit[tier], dim=dim)
        keep = keep_bound(orig, dup)
        stored, answers = orig.cached_answers(keep)
        ref = np.flatnonzero(stored & ref_half)
        asked = np.flatnonzero(dup.consults_cache & ref_half)
        other = np.flatnonzero(orig.consults_cache & ~ref_half)
        ref_emb = embedder(orig.features[ref])
        repeat_curve = accuracy_curve(
            ref_emb,
            answers[ref],
            embedder(dup.features[asked]),
            dup.above[asked],
            labels[asked],
            k,
            min_votes,
        )
        distinct_curve = accuracy_curve(
            ref_emb,
            answers[ref],
            embedder(orig.features[other]),
            orig.above[other],
            labels[other],
            k,
            min_votes,
        )
        rep, dis = choose_tau(repeat_curve, distinct_curve, target_ratio)
        logger.info(
            "%s cache: %d-d keys, keeps own exits below %.2f, tau %.4f; near-duplicates: %d of %d hit, "
            "accuracy %.3f vs %.3f; unrelated: %d of %d hit, accuracy %.3f vs %.3f",
            tier,
            embedder.dim,
            keep,
            rep.tau,
            rep.hits,
            len(asked),
            rep.cache_accuracy,
            rep.tier_accuracy,
            dis.hits,
            len(other),
            dis.cache_accuracy,
            dis.tier_accuracy,
        )
        name = f"{tier}.cache.npz"
        atomic_write(bundle.path / name, embedder.to_bytes())
        specs[tier] = CacheSpec(
            tau=rep.tau,
            k=k,
            min_votes=min_votes,
            accuracy_ratio=round(min(rep.ratio, dis.ratio), 6),
            hit_rate=round(rep.hit_rate, 6),
            embedding=name,
            embedding_sha256=sha256_file(bundle.path / name),
            keep_exits_below=keep,
        )
    partitions = tuple(dataclasses.replace(p, cache=specs.get(p.tier, p.cache)) for p in manifest.partitions)
    calibrated = dataclasses.replace(manifest, partitions=partitions)
    write_manifest(bundle.path, calibrated)
    return calibrated


def _fit_views(
    bundle: Bundle, images: np.ndarray, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per caching tier: cut features of (up to FIT_SAMPLES) images and of their near-duplicates."""
    if len(images) > FIT_SAMPLES:
        images = images[np.sort(rng.choice(len(images), FIT_SAMPLES, replace=False))]
    plain = run_partitions(bundle, images).features
    shifted = run_partitions(bundle, near_duplicates(images, rng)).features
    return {tier: (plain[i], shifted[i]) for i, tier in enumerate(CACHING_TIERS)}
