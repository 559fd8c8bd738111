"""The Flower ServerApp beside the cloud: one collaborative training run, from served model to candidate.

The SuperLink starts it for each submitted run (``edgecascade federated start``); its run
config names the cloud's ``cloud.toml`` (``cloud-config``), whose ``[federated]`` section
says how rounds go and ``[retrain]``/``[registry]`` how the result is gated and shipped.

1. Load the served version (the registry's current release, else ``cloud.bundle``) and its
   Keras checkpoint: its weights are round 1's, so a site joining at any time is sent the
   current aggregate (a new site's first model is the federation's, not its own).
2. Run ``rounds`` rounds (:class:`~edgecascade.federation.coordinator.Coordinator`); every
   round's tally is written to the cloud database, where the API and
   ``edgecascade federated status`` show it.
3. Ask the sites to evaluate the last aggregate, then gate, export, sign and publish it
   (:mod:`edgecascade.federation.shipping`); with ``retrain.auto_promote`` promote and
   announce it. A rejected aggregate changes nothing served.

Any exception ends the run ``failed`` with the error in the database.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Strategy

from edgecascade.cloud_service.candidates import checkpoint_for
from edgecascade.cloud_service.config import CloudConfig, FederatedSettings, load_cloud_config
from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.cloud_service.registry import ModelRegistry
from edgecascade.cloud_service.store import open_engine
from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle
from edgecascade.federation import updates
from edgecascade.federation.coordinator import Accepted, Coordinator, RoundPlan
from edgecascade.federation.rounds import RoundRule, bytes_per_site
from edgecascade.federation.site_keys import load_public_keys

logger = logging.getLogger(__name__)

AGGREGATE = "aggregate.npz"  # the last round's weights, in each run's directory

app = ServerApp()


def make_strategy(settings: FederatedSettings) -> Strategy:
    """The Flower strategy ``[federated] strategy`` names (it only aggregates: rounds are ours)."""
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu)
    if settings.strategy == "trimmed_mean":
        return FedTrimmedAvg(beta=settings.trim_fraction)
    if settings.strategy == "median":
        return FedMedian()
    return FedAvg()


def served_bundle(config: CloudConfig) -> Bundle:
    """The version the cloud serves now: the registry's current release, else ``cloud.bundle``."""
    verify = config.cloud.verify_key
    if config.registry.models_dir is not None:
        registry = ModelRegistry(
            config.registry.models_dir, verify or _public(config), config.registry.signing_key
        )
        current = registry.current()
        if current is not None:
            return load_bundle(
                registry.release_dir(current.version, current.rollback_of), public_key=registry.public_key
            )
    return load_bundle(config.cloud.bundle, public_key=verify)


def _public(config: CloudConfig) -> Any:
    from edgecascade.device_sdk.model.signing import load_private_key

    assert config.registry.signing_key is not None  # CloudConfig checks one key is set
    return load_private_key(config.registry.signing_key).public_key()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = load_cloud_config(str(context.run_config["cloud-config"]))
    FederatedRun(grid, config, flower_run=context.run_id).run()


class FederatedRun:
    """One run: rounds, evaluation, shipping, each step recorded (see the module docstring)."""

    def __init__(self, grid: Grid, config: CloudConfig, *, flower_run: int) -> None:
        self.grid, self.config, self.flower_run = grid, config, flower_run
        self.settings = config.federated
        self.store = FederationStore(open_engine(config.cloud.database_url))

    def run(self) -> None:
        settings = self.settings
        served = served_bundle(self.config)
        version = served.manifest.version
        run_id = self.store.start_run(
            strategy=settings.strategy,
            rounds=settings.rounds,
            base_version=version,
            flower_run=str(self.flower_run),
        )
        try:
            self._run(run_id, served)
        except Exception as exc:
            logger.exception("federated run %d failed", run_id)
            self.store.finish_run(run_id, state="failed", error=f"{type(exc).__name__}: {exc}")
            raise

    def _run(self, run_id: int, served: Bundle) -> None:
        from edgecascade.federation.local_training import model_weights
        from edgecascade.federation.shipping import SiteScore, ship
        from edgecascade.training.train import load_trained

        settings, manifest = self.settings, served.manifest
        self.store.set_stage(run_id, "loading the served model")
        checkpoint = checkpoint_for(self.config.models_dir, manifest.version, self.config.retrain.checkpoint)
        served_weights = model_weights(load_trained(checkpoint))
        weights = served_weights
        plan = RoundPlan(
            run=self.flower_run,
            model_version=manifest.version,
            compression=settings.compression,
            downlink=settings.downlink,
            train_config={
                "local-epochs": settings.local_epochs,
                "batch-size": settings.batch_size,
                "learning-rate": settings.learning_rate,
                "proximal-mu": settings.proximal_mu if settings.strategy == "fedprox" else 0.0,
            },
        )
        rule = RoundRule(
            timeout=settings.round_timeout, min_sites=settings.min_sites, min_fraction=settings.min_fraction
        )
        keys = load_public_keys(settings.site_keys)
        coordinator = Coordinator(self.grid, make_strategy(settings), rule, plan, keys)
        for server_round in range(1, settings.rounds + 1):
            self.store.set_stage(run_id, f"round {server_round}/{settings.rounds}")
            sent = updates.weights_digest(coordinator.sent(weights))
            weights, tally, accepted = coordinator.train_round(server_round, weights)
            before = _pooled_before(accepted)
            outcome = tally.state(rule, len(tally.sampled))
            record = tally.to_json() | {
                "bytes_per_site": bytes_per_site(tally),
                "accuracy_before": before,
                "model_sent": sent,  # what every site of the round was sent (a new site too)
                "models_received": {a.site: a.received for a in accepted},
            }
            self.store.record_round(run_id, record, state=outcome)
            logger.info(
                "round %d %s: %d accepted of %d, %d late, %.1f s",
                server_round,
                outcome,
                len(tally.accepted),
                len(tally.sampled),
                len(tally.late),
                tally.seconds,
            )
        self.store.set_stage(run_id, "evaluating the aggregate and the served model at the sites")
        final = coordinator.evaluate(weights, served_weights)
        self.store.set_stage(run_id, "gating the aggregate")
        workdir = Path(settings.workdir) / f"run-{run_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        save_weights(workdir / AGGREGATE, weights)  # kept whatever the gate says
        shipped = ship(
            weights,
            config=self.config,
            served=served,
            checkpoint=checkpoint,
            sites_current=SiteScore(final.baseline, final.examples),
            sites_candidate=SiteScore(final.accuracy, final.examples),
            workdir=workdir,
            extra={"federated_run": run_id, "sites": final.by_site},
        )
        state: str = shipped.state
        if shipped.version is not None and self.config.retrain.auto_promote:
            self.store.set_stage(run_id, f"promoting v{shipped.version}")
            state = self._promote(shipped.version)
        self.store.finish_run(run_id, state=state, candidate_version=shipped.version, gate=shipped.gate)

    def _promote(self, version: int) -> str:
        from edgecascade.cloud_service.app import open_registry, own_url
        from edgecascade.cloud_service.models_api import standalone_rollout

        rollout = standalone_rollout(self.config, open_registry(self.config))
        rollout.promote_candidate(version, own_url(self.config))
        return "promoted"


def save_weights(path: Path, weights: list[Any]) -> None:
    """The aggregate's arrays in order, as ``.npz`` (``arr_0`` …); read back with :func:`load_weights`."""
    atomic_write(path, _npz_bytes(weights))


def _npz_bytes(weights: list[Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    return buffer.getvalue()


def load_weights(path: Path) -> list[np.ndarray]:
    """Arrays saved by :func:`save_weights` (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _pooled_before(accepted: list[Accepted]) -> dict[str, float]:
    """The round's incoming model as the sites measured it before training, pooled."""
    examples = sum(a.holdout for a in accepted)
    if not examples:
        return {}
    return {"accuracy": sum(a.before * a.holdout for a in accepted) / examples, "examples": float(examples)}
