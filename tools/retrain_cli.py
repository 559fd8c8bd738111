"""``edgecascade retrain``: run one retraining job now, in this process, from the cloud's config.

The job is recorded in the cloud's database like any other (trigger ``cli``), so the API
shows it at ``GET /v1/jobs/<id>`` while it runs, and no second job can start meanwhile.
With a model registry the job fine-tunes the registry's current release, and with
``retrain.auto_promote`` a candidate that passed the gate is promoted and announced here,
as the cloud does for the jobs it starts; the cloud's server processes switch to it within
``registry.check_interval``. Exit status: 0 when the job succeeded (and, with
``auto_promote``, its candidate was promoted) or the gate rejected the candidate, 1 when
it failed, its promotion failed or another job is active, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecascade.device_sdk.errors import EdgeCascadeError

if TYPE_CHECKING:
    from edgecascade.cloud_service.config import CloudConfig
    from edgecascade.cloud_service.registry import ModelRegistry


def register(sub: Any) -> None:
    """Add the ``retrain`` subcommand to the ``edgecascade`` parser."""
    p = sub.add_parser(
        "retrain", help="fine-tune on the stored hard examples now; publish a candidate if it passes"
    )
    p.add_argument("--config", help="cloud.toml (settings may also come from EC_CLOUD__* and EC_RETRAIN__*)")
    p.set_defaults(func=retrain)


def retrain(args: argparse.Namespace) -> int:
    from edgecascade.cloud_service.app import open_registry
    from edgecascade.cloud_service.config import load_cloud_config
    from edgecascade.cloud_service.jobs import JobStore
    from edgecascade.cloud_service.retrain_job import run_job
    from edgecascade.cloud_service.scheduler import RetrainScheduler
    from edgecascade.cloud_service.store import open_example_store

    config = load_cloud_config(args.config)
    registry = open_registry(config) if config.registry.models_dir is not None else None

    def served_bundle() -> Path:
        current = registry.current() if registry is not None else None
        if registry is None or current is None:
            return config.cloud.bundle
        return registry.release_dir(current.version, current.rollback_of)

    examples = open_example_store(config.cloud.database_url, config.cloud.blob_dir)
    jobs = JobStore(examples.engine)
    jobs.reap_stale(config.retrain.stale_seconds)
    job = jobs.create("cli")
    if job is None:
        active = jobs.active()
        print(f"edgecascade: job {active.id if active else '?'} is already active; not starting another")
        return 1
    scheduler = RetrainScheduler(jobs, examples, config, served_bundle)
    spec, _ = scheduler.write_spec(job)
    print(f"retraining job {job.id}: log in {spec.log_path}")
    state = run_job(spec, log_file=True)  # progress lines also go to the console's log handler
    done = jobs.get(job.id)
    assert done is not None
    print(f"job {job.id} {state}")
    gate = (done.metrics or {}).get("gate", {})
    if gate:
        print(f"  gate: {gate.get('reason')}")
    if done.error:
        print(f"  error: {done.error}")
    if done.candidate_version is None:
        return 0 if state in ("succeeded", "rejected") else 1
    version = done.candidate_version
    print(f"  candidate v{version} registered in {config.models_dir / f'v{version}'}")
    if registry is None:
        return 0
    if not config.retrain.auto_promote:
        print(f"  promote it with POST /v1/models/{version}/promote (retrain.auto_promote is off)")
        return 0
    return _promote(config, registry, version)


def _promote(config: CloudConfig, registry: ModelRegistry, version: int) -> int:
    """Promote and announce ``version`` as the cloud's ``auto_promote`` does; 1 if that failed."""
    from edgecascade.cloud_service.app import own_url
    from edgecascade.cloud_service.models_api import standalone_rollout

    rollout = standalone_rollout(config, registry)
    try:
        result = rollout.promote_candidate(version, own_url(config))
    except EdgeCascadeError as exc:
        print(f"  promotion of v{version} failed: {exc}; it stays registered")
        return 1
    if result["announced"]:
        print(f"  promoted v{version} and announced it")
    elif result["error"]:
        print(f"  promoted v{version}, but the announcement failed: {result['error']}")
    else:
        print(f"  promoted v{version} (registry.announce is off: nodes learn of it when they check)")
    return 0
