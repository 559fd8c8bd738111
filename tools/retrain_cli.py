"""``edgecascade retrain``: run one retraining job now, in this process, from the cloud's config.

The job is recorded in the cloud's database like any other (trigger ``cli``), so the API
shows it at ``GET /v1/jobs/<id>`` while it runs, and no second job can start meanwhile.
Exit status: 0 when the job succeeded or the gate rejected the candidate, 1 when it failed
or another job is active, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``retrain`` subcommand to the ``edgecascade`` parser."""
    p = sub.add_parser(
        "retrain", help="fine-tune on the stored hard examples now; publish a candidate if it passes"
    )
    p.add_argument("--config", help="cloud.toml (settings may also come from EC_CLOUD__* and EC_RETRAIN__*)")
    p.set_defaults(func=retrain)


def retrain(args: argparse.Namespace) -> int:
    from cloud_service.config import load_cloud_config
    from cloud_service.jobs import JobStore
    from cloud_service.scheduler import RetrainScheduler
    from cloud_service.store import open_example_store
    from training.retrain_job import run_job

    config = load_cloud_config(args.config)
    examples = open_example_store(config.cloud.database_url, config.cloud.blob_dir)
    jobs = JobStore(examples.engine)
    jobs.reap_stale(config.retrain.stale_seconds)
    job = jobs.create("cli")
    if job is None:
        active = jobs.active()
        print(f"edgecascade: job {active.id if active else '?'} is already active; not starting another")
        return 1
    scheduler = RetrainScheduler(jobs, examples, config, lambda: config.cloud.bundle)
    spec, _ = scheduler.write_spec(job)
    print(f"retraining job {job.id}: log in {spec.log_path}")
    state = run_job(spec, log_file=True)  # progress lines also go to the console's log handler
    done = jobs.get(job.id)
    assert done is not None
    print(f"job {job.id} {state}")
    gate = (done.metrics or {}).get("gate", {})
    if gate:
        print(f"  gate: {gate.get('reason')}")
    if done.candidate_version is not None:
        where = config.models_dir / f"v{done.candidate_version}"
        print(f"  candidate v{done.candidate_version} registered in {where}")
        if config.registry.models_dir is not None:
            print(f"  promote it with POST /v1/models/{done.candidate_version}/promote")
    if done.error:
        print(f"  error: {done.error}")
    return 0 if state in ("succeeded", "rejected") else 1
