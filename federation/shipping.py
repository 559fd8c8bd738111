"""From the last round's aggregate to a published candidate: the same gate, export and signing as retraining.

The gate (:mod:`edgecascade.training.gate`) compares the served model and the aggregate on
two things, with the ``[retrain]`` rule (``[federated]`` ``min_gain`` and ``tolerance``
replace its own when set, :func:`gate_rule`): the original test split, which the cloud holds (no
exit may drop more than ``tolerance`` points), and the sites' own held-out data, which it
never sees: there the sites measured both models (the served one as the first round's
``accuracy-before``, the aggregate in the final evaluation) and sent only their accuracies,
which stand in for the "new data" the gate asks to gain ``min_gain`` points on. A rejected
aggregate is left in the run's directory and nothing served changes. A passing one is
recalibrated (temperatures, thresholds, caches and unknown-input rules on the cloud's
validation split), exported as the next version, signed and published into the registry's
directory as a candidate, like a retraining job's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.cloud_service.candidates import next_version, publish_candidate
from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.retrain_job import original_data
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.training.gate import GateRule, decide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteScore:
    """A model's accuracy pooled over the exits and the sites' held-out examples."""

    accuracy: float
    examples: int


@dataclass(frozen=True)
class Shipped:
    """What became of an aggregate: ``published`` (with its version) or ``rejected``; the gate's numbers."""

    state: str
    gate: dict[str, Any]
    version: int | None = None


def gate_rule(config: CloudConfig) -> GateRule:
    """The gate an aggregate must pass: ``[retrain]``'s, with ``[federated]``'s thresholds where set."""
    retrain, federated = config.retrain, config.federated
    return GateRule(
        retrain.min_gain if federated.min_gain is None else federated.min_gain,
        retrain.tolerance if federated.tolerance is None else federated.tolerance,
        retrain.min_holdout,
    )


def ship(
    weights: Sequence[np.ndarray],
    *,
    config: CloudConfig,
    served: Bundle,
    checkpoint: Path,
    sites_current: SiteScore,
    sites_candidate: SiteScore,
    workdir: Path,
    extra: dict[str, Any],
) -> Shipped:
    """Gate the aggregate ``weights`` against the served model; export, sign and publish it when it passes."""
    from edgecascade.federation.local_training import set_model_weights
    from edgecascade.training import retrain
    from edgecascade.training.finetune import gate_scores
    from edgecascade.training.hard_examples import HardSet

    settings = config.retrain
    manifest = served.manifest
    current, candidate = retrain.load_for_finetuning(checkpoint, manifest)
    set_model_weights(candidate, weights)
    original = original_data(settings, current.config, known=len(manifest.classes))
    shape = tuple(current.input_spec.shape)
    none = HardSet.build([], {"raw": shape, "cut1": (1,), "cut2": (1,)})
    retrain.recalibrate(candidate, original.validation, none)

    def scores(model: Any, sites: SiteScore) -> Any:
        measured = gate_scores(model, original.test, none)
        return dataclasses.replace(measured, new=sites.accuracy, n_new=sites.examples, cascade_new=None)

    decision = decide(scores(current, sites_current), scores(candidate, sites_candidate), gate_rule(config))
    logger.info("gate: %s", decision.reason)
    gate = decision.to_json()
    if not decision.promote:
        return Shipped("rejected", gate)
    version = next_version(config.models_dir, manifest.version)
    out = workdir / "bundle"
    retrain.export_candidate(
        candidate,
        out,
        served,
        version,
        replay=original.replay,
        validation=original.validation,
        device_frozen=False,
        signing_key=config.candidate_signing_key,
    )
    candidate.save(workdir / "checkpoint")
    publish_candidate(
        out,
        version,
        {"gate": gate, "federated": extra},
        models_dir=config.models_dir,
        checkpoint_dir=workdir / "checkpoint",
        extra={"base_version": manifest.version, **extra},
    )
    logger.info("published the aggregate as candidate v%d", version)
    return Shipped("published", gate, version)
