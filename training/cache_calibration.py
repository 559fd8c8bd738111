"""Calibrate the neural caches on validation data and store the settings in the bundle.

For each caching tier (device: cut-1 features, gateway: cut-2 features) this

1. fits the key projection (:mod:`edgecascade.training.cache_embedding`) on training images and their
   near-duplicates, and writes it into the bundle (``<tier>.cache.npz``, hashed in the
   manifest);
2. sets ``keep_exits_below``: the confidence under which the tier keeps its own exit
   answers. It covers 99 % of the validation inputs that exited on the tier while a
   near-duplicate of theirs did not (more confident inputs have near-duplicates that exit);
3. stores half of the validation inputs as the cache would hold them (the answers of the
   tiers above for inputs that reach the cache, the tier's own answers under the bound)
   and queries with near-duplicates of that half that reach the cache, and with the
   unrelated other half. Among the hit rules of ``HIT_RULES`` (k neighbours, votes) and
   candidate ``tau`` values, it keeps the one answering the most
   near-duplicates while the cache's answers stay precise (:class:`Precision`): on a
   stream with the expected share of repeats, right (on the validation labels) at least
   ``target_ratio`` as often as the tiers' answers they replace, and costing inputs that
   repeat nothing at most ``max_unrelated_loss`` of their answers.

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

from edgecascade.device_sdk.cache.similarity import hit_rule
from edgecascade.device_sdk.core.chain import ChainOutputs, run_partitions
from edgecascade.device_sdk.core.policy import policy_from_spec
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.files import atomic_write, sha256_file
from edgecascade.device_sdk.model.bundle import Bundle, CacheSpec, Manifest, load_bundle, write_manifest
from edgecascade.training.augment import near_duplicates
from edgecascade.training.cache_embedding import DEFAULT_DIM, fit_embedder

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
class HitRule:
    """The vote of a hit rule (see :func:`~.cache.similarity.hit_rule`); calibration adds its tau."""

    k: int
    min_votes: int


HIT_RULES = (HitRule(5, 3), HitRule(3, 2), HitRule(5, 2), HitRule(3, 1), HitRule(1, 1))
"""Rules the calibration compares, strictest first.

A vote protects against borrowing the answer of a similar but different input, at the
price of vetoes: a near-duplicate whose original sits beside a cached input of another
label misses. Which matters more depends on the model and its keys, so it is measured.
"""


@dataclass(frozen=True)
class CurvePoint:
    """What a candidate hit rule does on one set of calibration queries."""

    tau: float
    queries: int
    hits: int
    cache_right: int  # hits whose cached answer is the true label
    tier_right: int  # hits where the tiers' own answer would have been right

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def cache_accuracy(self) -> float:
        return self.cache_right / self.hits if self.hits else 1.0

    @property
    def tier_accuracy(self) -> float:
        return self.tier_right / self.hits if self.hits else 1.0


def nearest(ref_emb: np.ndarray, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN: distances and indices ``(queries, k)`` of the nearest ``ref_emb`` rows."""
    distances = 1.0 - query_emb @ ref_emb.T
    k = min(k, distances.shape[1])
    order = np.argsort(distances, axis=1)[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def accuracy_curve(
    neighbours: tuple[np.ndarray, np.ndarray],
    ref_answers: np.ndarray,
    query_answers: np.ndarray,
    query_truth: np.ndarray,
    rule: HitRule,
    taus: tuple[float, ...] = DEFAULT_TAUS,
) -> list[CurvePoint]:
    """Per candidate tau: hits, and how often the cache and the tiers are right on them.

    ``neighbours`` is :func:`nearest`'s output for at least ``rule.k`` neighbours.
    """
    distances, order = neighbours
    nearest_d = distances[:, : rule.k]
    labels = ref_answers[order[:, : rule.k]]
    curve = []
    for tau in taus:
        answers = [hit_rule(nearest_d[q], labels[q], tau, rule.min_votes) for q in range(len(nearest_d))]
        hit = np.array([a is not None for a in answers], dtype=bool)
        cached = np.array([a for a in answers if a is not None], dtype=np.int64)
        truth = query_truth[hit]
        curve.append(
            CurvePoint(
                float(tau),
                len(answers),
                int(hit.sum()),
                int((cached == truth).sum()),
                int((query_answers[hit] == truth).sum()),
            )
        )
    return curve


@dataclass(frozen=True)
class Precision:
    """How precise the cache's answers must be for a rule and tau to qualify.

    ``target_ratio``: on the cache's answers to a stream with ``repeat_share`` of
    near-duplicates, their accuracy over that of the tiers' answers they replace (each
    query set weighed by its share of the stream).
    ``max_unrelated_loss``: answers the cache may make wrong among inputs that repeat
    nothing (as a share of those that consult it), so that a deployment with fewer repeats
    than expected is not paying for the others.
    """

    target_ratio: float = 0.99
    repeat_share: float = 0.3
    max_unrelated_loss: float = 0.02
    min_hits: int = 20  # near-duplicate hits needed to trust a point

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.repeat_share < 1:
            problems.append(f"repeat share must be in (0, 1), got {self.repeat_share}")
        if not self.target_ratio > 0:
            problems.append(f"target accuracy ratio must be > 0, got {self.target_ratio}")
        if not 0 <= self.max_unrelated_loss <= 1:
            problems.append(f"max unrelated loss must be in [0, 1], got {self.max_unrelated_loss}")
        if problems:
            raise ConfigError(problems)

    def pooled_ratio(self, repeats: CurvePoint, distinct: CurvePoint) -> float:
        """Cache over tier accuracy on all hits of a stream with ``repeat_share`` of repeats."""
        w_rep = self.repeat_share / max(repeats.queries, 1)
        w_dis = (1 - self.repeat_share) / max(distinct.queries, 1)
        tier = w_rep * repeats.tier_right + w_dis * distinct.tier_right
        return (w_rep * repeats.cache_right + w_dis * distinct.cache_right) / tier if tier else 1.0

    def holds(self, repeats: CurvePoint, distinct: CurvePoint) -> bool:
        """Whether a rule at some tau, giving these points, is precise enough."""
        lost = (distinct.tier_right - distinct.cache_right) / max(distinct.queries, 1)
        return (
            repeats.hits >= self.min_hits
            and self.pooled_ratio(repeats, distinct) >= self.target_ratio
            and lost <= self.max_unrelated_loss
        )


@dataclass(frozen=True)
class RuleChoice:
    """A rule with its calibrated tau and what it did on the two kinds of calibration query."""

    rule: HitRule
    repeats: CurvePoint
    distinct: CurvePoint


def choose_rule(
    ref_emb: np.ndarray,
    ref_answers: np.ndarray,
    repeats: tuple[np.ndarray, np.ndarray, np.ndarray],
    distinct: tuple[np.ndarray, np.ndarray, np.ndarray],
    precision: Precision = Precision(),
    rules: tuple[HitRule, ...] = HIT_RULES,
    taus: tuple[float, ...] = DEFAULT_TAUS,
) -> RuleChoice:
    """The rule and tau that answer the most near-duplicates while ``precision`` holds.

    ``repeats`` and ``distinct`` are ``(embeddings, tier answers, true labels)`` of the two
    kinds of query: near-duplicates of the stored inputs, and unrelated inputs. Ties go to
    fewer answers on unrelated inputs, then to the earlier rule. If nothing qualifies, the
    first rule at the smallest tau is returned (in practice only exact repeats then hit).
    """
    k_max = max(rule.k for rule in rules)
    rep_nn, dis_nn = nearest(ref_emb, repeats[0], k_max), nearest(ref_emb, distinct[0], k_max)
    best: RuleChoice | None = None
    for rule in rules:
        curves = zip(
            accuracy_curve(rep_nn, ref_answers, *repeats[1:], rule, taus),
            accuracy_curve(dis_nn, ref_answers, *distinct[1:], rule, taus),
            strict=True,
        )
        for rep, dis in curves:
            better = best is None or (rep.hits, -dis.hits) > (best.repeats.hits, -best.distinct.hits)
            if precision.holds(rep, dis) and better:
                best = RuleChoice(rule, rep, dis)
    if best is None:
        rule = rules[0]
        return RuleChoice(
            rule,
            accuracy_curve(rep_nn, ref_answers, *repeats[1:], rule, taus[:1])[0],
            accuracy_curve(dis_nn, ref_answers, *distinct[1:], rule, taus[:1])[0],
        )
    return best


def calibrate_cache(
    bundle_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    fit_images: np.ndarray | None = None,
    precision: Precision = Precision(),
    rules: tuple[HitRule, ...] = HIT_RULES,
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
            specs[tier] = CacheSpec(tau=0.0)
            continue
        embedder = fit_embedder(*fit[tier], dim=dim)
        keep = keep_bound(orig, dup)
        stored, answers = orig.cached_answers(keep)
        ref = np.flatnonzero(stored & ref_half)
        asked = np.flatnonzero(dup.consults_cache & ref_half)
        other = np.flatnonzero(orig.consults_cache & ~ref_half)
        choice = choose_rule(
            embedder(orig.features[ref]),
            answers[ref],
            (embedder(dup.features[asked]), dup.above[asked], labels[asked]),
            (embedder(orig.features[other]), orig.above[other], labels[other]),
            precision,
            rules,
        )
        rep, dis, rule = choice.repeats, choice.distinct, choice.rule
        logger.info(
            "%s cache: %d-d keys, keeps own exits below %.2f, %d-NN, %d votes, tau %.4f; "
            "near-duplicates: %d of %d hit, accuracy %.3f vs %.3f; unrelated: %d of %d hit, "
            "accuracy %.3f vs %.3f",
            tier,
            embedder.dim,
            keep,
            rule.k,
            rule.min_votes,
            rep.tau,
            rep.hits,
            rep.queries,
            rep.cache_accuracy,
            rep.tier_accuracy,
            dis.hits,
            dis.queries,
            dis.cache_accuracy,
            dis.tier_accuracy,
        )
        name = f"{tier}.cache.npz"
        atomic_write(bundle.path / name, embedder.to_bytes())
        specs[tier] = CacheSpec(
            tau=rep.tau,
            k=rule.k,
            min_votes=rule.min_votes,
            accuracy_ratio=round(precision.pooled_ratio(rep, dis), 6),
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
