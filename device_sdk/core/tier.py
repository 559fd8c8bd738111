"""The tier core: what one tier decides for a batch, apart from how the batch reached it.

Every tier does the same on a batch of inputs (:func:`decide`): run its partition,
calibrate its exit, flag the inputs unlike its training data (never cached), let the
confident inputs exit, keep its own unsure exits in its cache, and look the others up in
the cache. What neither answers goes to the tier above; the
answer that comes back is learned (:func:`learn`), and when the tier above cannot be
reached the tier answers with its own exit, flagged degraded (:meth:`Decision.fallback`).
The last tier's exit answers everything.

Own exits are kept *before* the batch's lookups, so an input is looked up against every
answer given before it, including the confident ones of its own batch: a micro-batch
decides like the same inputs one at a time.

No transport, no threads: the device client, the gateway service and the cloud's inference
are I/O shells around this module. :class:`TierModels` is what each of them serves: the
current model version and, for a grace period, the one it replaced.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import NeuralCache
from edgecascade.device_sdk.core.novelty import UnknownRule
from edgecascade.device_sdk.core.policy import ExitPolicy, policy_from_spec, softmax
from edgecascade.device_sdk.model.bundle import TIERS, Bundle, Manifest, PartitionSpec
from edgecascade.device_sdk.model.hotswap import ServedModels
from edgecascade.device_sdk.model.overlay import SiteOverlay, apply_overlay
from edgecascade.device_sdk.model.runtime import PartitionRunner

logger = logging.getLogger(__name__)

#: the wire tier of each tier's exit answers and of its cache's answers
ANSWERING: dict[str, tuple[wire.Tier, wire.Tier | None]] = {
    "device": (wire.Tier.DEVICE, wire.Tier.DEVICE_CACHE),
    "gateway": (wire.Tier.GATEWAY, wire.Tier.GATEWAY_CACHE),
    "cloud": (wire.Tier.CLOUD, None),
}

#: builds a tier's cache for a model version it starts serving (None: no cache)
CacheFactory = Callable[[Bundle], NeuralCache | None]


@dataclass(frozen=True)
class TierModel:
    """What one tier loaded for one model version; replaced whole by a swap."""

    tier: str
    bundle: Bundle
    runner: PartitionRunner
    policy: ExitPolicy  # the manifest's exit rule for this tier (an explicit override wins over it)
    cache: NeuralCache | None = None
    unknown: UnknownRule | None = None  # the manifest's unknown-input rule; None: nothing is flagged
    overlay: SiteOverlay | None = None  # the site's own exit settings for this version; None: the manifest's

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        tier: str,
        *,
        num_threads: int = 1,
        cache: NeuralCache | None = None,
        overlay: SiteOverlay | None = None,
    ) -> TierModel:
        """Build the interpreter, exit policy and unknown-input rule of ``tier``'s partition
        (the bundle is verified); ``overlay`` replaces the manifest's exits when it is for this
        version, and is left out when it is not."""
        runner = PartitionRunner.from_bundle(bundle, tier, num_threads)
        if overlay is not None and not overlay.matches(bundle.manifest):
            overlay = None
        policy = policy_from_spec(apply_overlay(bundle.manifest, overlay).partition(tier).exit)
        return cls(tier, bundle, runner, policy, cache, UnknownRule.from_bundle(bundle, tier), overlay)

    def with_overlay(self, overlay: SiteOverlay | None) -> TierModel:
        """This model with ``overlay``'s exits (None: the manifest's); interpreter and cache are kept.

        An overlay that is not for this version is a BundleError.
        """
        spec = apply_overlay(self.bundle.manifest, overlay).partition(self.tier)
        return dataclasses.replace(self, overlay=overlay, policy=policy_from_spec(spec.exit))

    @property
    def version(self) -> int:
        return self.bundle.manifest.version

    @functools.cached_property
    def manifest(self) -> Manifest:
        """The manifest this tier runs: the bundle's, with the site overlay's exits if it has one."""
        return apply_overlay(self.bundle.manifest, self.overlay)

    @functools.cached_property
    def spec(self) -> PartitionSpec:
        """This tier's partition in the manifest (read on every batch, so looked up once)."""
        return self.manifest.partition(self.tier)

    @functools.cached_property
    def is_last(self) -> bool:
        """True on the last tier, whose exit answers everything."""
        return self.tier == self.bundle.manifest.partitions[-1].tier

    @functools.cached_property
    def cut_encoding(self) -> str:
        """How this version's previous tier encodes what this tier receives (read per request):
        cut features in the partitioned mode, the raw input in the models mode."""
        index = TIERS.index(self.tier)
        if index == 0:
            raise ValueError(f"the {self.tier} partition receives raw inputs, not cut features")
        return self.bundle.manifest.partition(TIERS[index - 1]).encoding


@dataclass(frozen=True)
class Decision:
    """What a tier decided for one input: its own answer, or a question for the tier above."""

    tier: wire.Tier  # the tier's exit
    probs: np.ndarray  # calibrated exit probabilities: the tier's own best answer
    features: (
        np.ndarray | None
    )  # what the tier above receives: cut features or the input (None on the last tier)
    answer: wire.Result | None = None  # the exit's or the cache's answer; None: ask the tier above
    embedding: np.ndarray | None = None  # cache key of a miss, to learn the answer from above
    unknown: bool = False  # unlike the training data by the exit's calibrated rule: never cached

    def fallback(self) -> wire.Result:
        """The tier's own exit answer, flagged degraded: the tier above could not be asked."""
        return wire.Result(int(self.probs.argmax()), self.probs, self.tier, degraded=True)


def decide(model: TierModel, x: np.ndarray, policy: ExitPolicy | None = None) -> list[Decision]:
    """Run ``model``'s partition on the batch ``x`` and decide each input (exit, cache, or ask above).

    ``policy`` overrides the manifest's exit rule (``model.policy``), resolved for this model
    version (:meth:`ExitPolicy.resolve`: a filter that leaves its threshold to the manifest
    takes this version's). What goes up is the
    partition's cut features, or in the models mode the input ``x`` itself.
    """
    out = model.runner.run(x)
    probs = softmax(out.logits, model.spec.exit.temperature)
    labels = probs.argmax(axis=-1).tolist()
    features = x if model.manifest.forwards_input else out.features
    rule = model.unknown
    unknown = rule.flags(out.logits, features) if rule is not None else np.zeros(len(probs), dtype=bool)
    flags = unknown.tolist()
    exit_tier, cache_tier = ANSWERING[model.tier]
    if model.is_last or features is None:
        return [
            Decision(exit_tier, p, None, wire.Result(y, p, exit_tier), unknown=u)
            for p, y, u in zip(probs, labels, flags, strict=True)
        ]
    exits = (policy.resolve(model.spec.exit) if policy else model.policy).should_exit(probs)
    leaves = exits.tolist()
    decisions = [
        Decision(
            exit_tier,
            probs[i],
            features[i],
            wire.Result(labels[i], probs[i], exit_tier) if leave else None,
            unknown=flags[i],
        )
        for i, leave in enumerate(leaves)
    ]
    cache = model.cache
    if cache is None:
        return decisions
    cache.keep_exits(features, probs, exits & ~unknown, exit_tier.label)  # unknown inputs teach it nothing
    undecided = [i for i, leave in enumerate(leaves) if not leave and not flags[i]]
    if not undecided:
        return decisions
    keys = cache.embed(features[undecided])
    assert cache_tier is not None
    for i, key, hit in zip(undecided, keys, cache.lookup_batch(keys), strict=True):
        if hit is not None:
            answer = wire.Result(hit.label, hit.probabilities, cache_tier)
            decisions[i] = Decision(exit_tier, probs[i], features[i], answer)
        else:
            decisions[i] = Decision(exit_tier, probs[i], features[i], embedding=key)
    return decisions


def learn(model: TierModel, decision: Decision, result: wire.Result) -> bool:
    """Keep the answer the tiers above gave an input this tier's cache missed; False if not kept.

    Degraded answers are not kept: they are a lower tier's guess, not the tiers above's.
    """
    if model.cache is None or decision.embedding is None or result.degraded:
        return False
    confidence = float(result.probabilities.max())
    return model.cache.insert(
        decision.embedding, result.label, result.probabilities, result.tier.label, confidence
    )


def answered(result: wire.Result) -> str:
    """The counter of an answer: ``answered_<tier>``, with ``_degraded`` when it is."""
    return f"answered_{result.tier.label}{'_degraded' if result.degraded else ''}"


class TierModels:
    """The model versions one tier serves: the current one and, for ``grace`` seconds, the one it replaced.

    Each version's :class:`TierModel` (interpreter, exit policy, cache from
    ``cache_factory``) is built by :meth:`swap` before it replaces the current one, on the
    caller's thread (an updater), so requests never wait for a load; a request resolves
    its model once (:meth:`get`) and finishes on it (:class:`ServedModels`).
    """

    def __init__(
        self,
        tier: str,
        bundle: Bundle,
        *,
        num_threads: int = 1,
        grace: float = 300.0,
        cache: NeuralCache | None = None,
        cache_factory: CacheFactory | None = None,
        overlay: SiteOverlay | None = None,
    ) -> None:
        self.tier = tier
        self.num_threads = num_threads
        self._cache_factory = cache_factory
        model = TierModel.load(bundle, tier, num_threads=num_threads, cache=cache, overlay=overlay)
        self._served = ServedModels(model, grace)

    @property
    def current(self) -> TierModel:
        """The model new requests use."""
        return self._served.current

    def get(self, version: int) -> TierModel | None:
        """The model serving ``version``: the current one, or a replaced one still in its grace."""
        return self._served.get(version)

    def previous(self) -> TierModel | None:
        """The most recently replaced model still in its grace period, if any."""
        return self._served.previous()

    def versions(self) -> tuple[int, ...]:
        """Versions answered right now: the current first, then those in grace."""
        return self._served.versions()

    def swap(self, bundle: Bundle, overlay: SiteOverlay | None = None) -> TierModel:
        """Serve ``bundle`` from now on; returns the model it replaced (servable during its grace).

        ``overlay`` applies when it is for the new version; the overlay of the replaced version
        is dropped (it was fitted on another model) until a new one comes (:meth:`use_overlay`).
        """
        cache = self._cache_factory(bundle) if self._cache_factory is not None else None
        model = TierModel.load(bundle, self.tier, num_threads=self.num_threads, cache=cache, overlay=overlay)
        old = self._served.swap(model)
        logger.info("%s now serves model v%d (replacing v%d)", self.tier, model.version, old.version)
        if old.overlay is not None and model.overlay is None:
            logger.info(
                "%s dropped site %s's overlay made for v%d: v%d uses its manifest's thresholds "
                "until an overlay for it arrives",
                self.tier,
                old.overlay.site,
                old.overlay.version,
                model.version,
            )
        return old

    def use_overlay(self, overlay: SiteOverlay | None) -> TierModel:
        """Serve the current version with ``overlay``'s exits (None: the manifest's) from the next
        request on; a BundleError if it is not for that version. Returns the model now current."""
        model = self._served.current.with_overlay(overlay)
        self._served.swap(model)  # the same version: nothing goes into grace
        return model


class ServesModels:
    """What every tier shows of the models it serves, read from its ``models``."""

    models: TierModels
    _policy: ExitPolicy | None = None  # an explicit exit policy outlives swaps; None: each manifest's own

    @property
    def policy(self) -> ExitPolicy:
        """The exit policy in force for the current model: the explicit one, else the manifest's."""
        current = self.models.current
        return self._policy.resolve(current.spec.exit) if self._policy else current.policy

    @policy.setter
    def policy(self, policy: ExitPolicy | None) -> None:
        self._policy = policy

    def use_overlay(self, overlay: SiteOverlay | None) -> None:
        """Use ``overlay``'s exit thresholds for the current model version (None: the manifest's);
        a BundleError if it was not made for that version."""
        self.models.use_overlay(overlay)

    @property
    def cache(self) -> NeuralCache | None:
        """The current model version's cache, if the tier has one."""
        return self.models.current.cache

    @property
    def bundle(self) -> Bundle:
        """The bundle of the current model version."""
        return self.models.current.bundle

    @property
    def manifest(self) -> Manifest:
        """The manifest of the current model version."""
        return self.models.current.manifest

    @property
    def version(self) -> int:
        """The current model version."""
        return self.models.current.version

    def versions(self) -> tuple[int, ...]:
        """Model versions answered right now, the current one first."""
        return self.models.versions()
