"""The retraining job: its process entry point, and retraining end to end on the tiny model.

The first tests drive :func:`main` with the model steps stubbed out: exit status, SIGTERM,
a job that is no longer queued. The others run real jobs: hard examples are training images
the tiny model gets wrong, uploaded as a device sends them (cut-1 features) and labelled by
a human with their true class. Those jobs fine-tune for one epoch with a small replay
sample, so each takes seconds plus TensorFlow's start-up.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.cloud_service import retrain_job, scheduler
from edgecascade.cloud_service.config import RetrainSettings
from edgecascade.cloud_service.intake import Checked, VersionSpec
from edgecascade.cloud_service.jobs import JobRow, JobSpec, JobStore
from edgecascade.cloud_service.store import open_engine, open_example_store
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.tools import cli
from edgecascade.training.data import Dataset
from tests.imports import heavy_imports
from tests.learning_kit import device_examples, make_learning_cloud, tree_digest, wait_for_job

FAST: dict[str, Any] = {
    "replay_size": 256,
    "epochs": 1,
    "batch_size": 32,
    "test_size": 500,
    "val_size": 300,
    "min_holdout": 1,
    "min_gain": 0.0,
    "tolerance": 5.0,
}


def test_the_web_process_and_the_scheduler_import_no_tensorflow() -> None:
    """Only the job's own process imports TensorFlow, and only once the job runs."""
    modules = ("app", "scheduler", "retrain_job")
    assert heavy_imports(*(f"edgecascade.cloud_service.{m}" for m in modules)) == []
    assert retrain_job.__name__ == scheduler.JOB_MODULE  # the module the scheduler starts


@pytest.fixture
def queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, JobStore, dict[int, Any]]:
    """A queued job's spec file and store; ``main`` gets no real signal handler or log setup."""
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    jobs = JobStore(open_engine(database))
    job = jobs.create("cli")
    assert job is not None
    directory = tmp_path / "jobs" / f"job-{job.id}"
    settings = RetrainSettings(models_dir=tmp_path / "models", jobs_dir=tmp_path / "jobs")
    spec = JobSpec(
        job.id, database, tmp_path / "blobs", tmp_path / "served", None, directory / "job.log", 0.0, settings
    )
    spec.write(directory / "spec.json")
    handlers: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.setdefault(signum, handler))
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    return directory / "spec.json", jobs, handlers


def test_a_rejected_job_exits_0_with_its_stages_reported(
    queued: tuple[Path, JobStore, dict[int, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path, jobs, _ = queued
    seen: list[JobRow | None] = []
    stage = "fine-tuning: epoch 1/2, loss 0.5000"

    def steps(self: Any) -> retrain_job.Outcome:
        self.report(0.5, stage)
        seen.append(jobs.get(self.spec.job_id))
        return retrain_job.Outcome("rejected", {"gate": {"promote": False}}, base_version=4)

    monkeypatch.setattr(retrain_job._Retrain, "run", steps)
    assert retrain_job.main([str(spec_path)]) == 0
    running = seen[0]
    assert running is not None and (running.state, running.progress, running.stage) == ("running", 0.5, stage)
    job = jobs.get(1)
    assert job is not None and (job.state, job.progress, job.base_version) == ("rejected", 1.0, 4)
    assert job.metrics == {"gate": {"promote": False}} and job.pid == os.getpid()


def test_sigterm_fails_the_job_cleans_its_directory_and_ends_the_process(
    queued: tuple[Path, JobStore, dict[int, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path, jobs, handlers = queued

    def until_terminated(self: Any) -> None:
        (self.workdir / "bundle").mkdir(parents=True)  # half-built candidate
        handlers[signal.SIGTERM](int(signal.SIGTERM), None)

    monkeypatch.setattr(retrain_job._Retrain, "run", until_terminated)
    with pytest.raises(SystemExit, match=f"terminated by signal {int(signal.SIGTERM)}"):
        retrain_job.main([str(spec_path)])
    job = jobs.get(1)
    assert job is not None and job.state == "failed"
    assert job.error == f"SystemExit: terminated by signal {int(signal.SIGTERM)}"
    assert not (spec_path.parent / "candidate").exists()


def test_a_job_that_is_no_longer_queued_is_not_run_and_exits_1(
    queued: tuple[Path, JobStore, dict[int, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path, jobs, _ = queued
    assert jobs.finish(1, "failed", error="stopped by an operator")
    ran: list[Any] = []
    monkeypatch.setattr(retrain_job._Retrain, "run", lambda self: ran.append(self))
    assert retrain_job.main([str(spec_path)]) == 1
    job = jobs.get(1)
    assert ran == [] and job is not None and job.error == "stopped by an operator"


@pytest.fixture(scope="module")
def hard(tiny_bundle: Path, fmnist: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """40 training images whose final-exit answer is wrong, with their true labels."""
    x, y = fmnist.x_train[50000:51500], fmnist.y_train[50000:51500]
    wrong = run_partitions(load_bundle(tiny_bundle), x).probs[2].argmax(1) != y
    assert wrong.sum() >= 40
    return x[wrong][:40], y[wrong][:40]


@pytest.fixture(scope="module")
def wrong_many(tiny_bundle: Path, fmnist: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """150 training images whose final-exit answer is wrong: enough for a candidate to learn them."""
    x, y = fmnist.x_train[50000:53000], fmnist.y_train[50000:53000]
    wrong = run_partitions(load_bundle(tiny_bundle), x).probs[2].argmax(1) != y
    assert wrong.sum() >= 150
    return x[wrong][:150], y[wrong][:150]


def test_a_job_runs_in_its_own_process_and_reports_through_the_api(
    tmp_path: Path, tiny_model_dir: Path, hard: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = hard
    lc = make_learning_cloud(
        tmp_path, tiny_model_dir / "bundle", checkpoint=tiny_model_dir / "trained", **FAST
    )
    served, checkpoint = tree_digest(lc.served), tree_digest(tiny_model_dir / "trained")
    examples = device_examples(lc.served, x)
    response = lc.client.post(
        "/v1/hard-examples", json={"examples": [e.to_json() for e in examples]}, headers=lc.auth("gateway")
    )
    assert len(response.json["accepted"]) == 40
    admin = lc.auth("admin")
    for example, label in zip(examples, y, strict=True):
        url = f"/v1/hard-examples/{example.example_id}/label"
        assert lc.client.put(url, json={"label": int(label)}, headers=admin).status_code == 200

    start = time.monotonic()
    job = lc.client.post("/v1/retrain", headers=admin).json
    seen = {job["state"]}
    status = wait_for_job(lc.client, admin, job["id"], timeout=300)
    seen.add(status["state"])
    seconds = time.monotonic() - start
    print(f"\n[retrain] tiny model, 1 epoch, 256 replay: {status['state']} in {seconds:.1f} s")

    assert status["state"] in ("succeeded", "rejected"), status
    assert status["progress"] == 1.0 and status["error"] is None
    metrics = status["metrics"]
    assert metrics["examples"]["train"] + metrics["examples"]["holdout"] == 40
    assert metrics["examples"]["holdout"] > 0 and metrics["finetune"]["stages"] == "gateway+cloud"
    decision = metrics["gate"]
    assert decision["current"]["n_new"] == metrics["examples"]["holdout"]
    assert len(decision["current"]["original"]) == len(decision["candidate"]["original"]) == 3
    assert decision["current"]["n_original"] == 500
    for model in ("current", "candidate"):  # the deployed cascade is measured on both sets too
        assert (
            0.0 <= decision[model]["cascade_original"] <= 1.0 and 0.0 <= decision[model]["cascade_new"] <= 1.0
        )
    assert set(decision["cascade_drop_points"]) == {"original", "new"}
    assert decision["promote"] is (status["state"] == "succeeded")
    assert any("fine-tuning: epoch 1/1" in line for line in status["log"])
    candidate = lc.config.models_dir / "v2"
    if status["state"] == "succeeded":
        assert status["candidate_version"] == 2
        bundle = load_bundle(candidate)
        assert bundle.manifest.version == 2 and bundle.manifest.name == load_bundle(lc.served).manifest.name
        assert (candidate / "device.tflite").read_bytes() == (lc.served / "device.tflite").read_bytes()
        assert (candidate / "checkpoint" / "trained.json").is_file()
        record = json.loads((candidate / "metrics.json").read_text())
        assert record["status"] == "candidate" and record["metrics"]["gate"]["promote"] is True
    else:
        assert not candidate.exists() and status["candidate_version"] is None
    assert tree_digest(lc.served) == served and tree_digest(tiny_model_dir / "trained") == checkpoint
    assert not (lc.config.retrain.jobs_dir / f"job-{job['id']}" / "candidate").exists()


def test_a_killed_job_is_failed_and_the_served_version_stays(
    tmp_path: Path, tiny_model_dir: Path, hard: tuple[np.ndarray, np.ndarray]
) -> None:
    lc = make_learning_cloud(
        tmp_path, tiny_model_dir / "bundle", checkpoint=tiny_model_dir / "trained", **FAST
    )
    served = tree_digest(lc.served)
    examples = device_examples(lc.served, hard[0][:10])
    lc.client.post(
        "/v1/hard-examples", json={"examples": [e.to_json() for e in examples]}, headers=lc.auth("gateway")
    )
    admin = lc.auth("admin")
    job_id = lc.client.post("/v1/retrain", headers=admin).json["id"]
    deadline = time.monotonic() + 60
    while lc.client.get(f"/v1/jobs/{job_id}", headers=admin).json["state"] == "queued":
        assert time.monotonic() < deadline, "the job process never reported itself running"
        time.sleep(0.1)
    process = lc.learning.scheduler.processes[job_id]  # started by this test, through the API
    os.kill(process.pid, signal.SIGKILL)
    status = wait_for_job(lc.client, admin, job_id, timeout=30)
    assert status["state"] == "failed" and status["error"] == "the job process ended with signal SIGKILL"
    assert tree_digest(lc.served) == served
    assert not (lc.config.models_dir / "v2").exists()
    assert lc.learning.scheduler.jobs.active() is None  # a new job may start


def test_edgecascade_retrain_that_crashes_fails_the_job_and_leaves_no_trace(
    tmp_path: Path,
    tiny_model_dir: Path,
    hard: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    for file in (tiny_model_dir / "bundle").iterdir():
        (served_dir / file.name).write_bytes(file.read_bytes())
    database = f"sqlite:///{tmp_path / 'state' / 'cloud.db'}"
    config = tmp_path / "cloud.toml"
    retrain = FAST | {
        "checkpoint": str(tiny_model_dir / "trained"),
        "models_dir": str(tmp_path / "models"),
        "jobs_dir": str(tmp_path / "jobs"),
    }
    config.write_text(
        f'[cloud]\nbundle = "{served_dir}"\ndatabase_url = "{database}"\nblob_dir = "{tmp_path / "blobs"}"\n'
        f'token_store = "{tmp_path / "state" / "tokens.db"}"\n[retrain]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in retrain.items())
    )
    store = open_example_store(database, tmp_path / "blobs")
    manifest = load_bundle(served_dir).manifest
    store.record_version(VersionSpec.from_manifest(manifest))
    examples = device_examples(served_dir, hard[0])
    checked = [Checked(e, codec.decode_features(e.features, e.encoding)) for e in examples]
    store.add(checked, [int(label) for label in hard[1]])
    served = tree_digest(served_dir)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("injected: out of memory while fine-tuning")

    monkeypatch.setattr("edgecascade.training.finetune.finetune", crash)
    assert cli.main(["retrain", "--config", str(config)]) == 1

    job = JobStore(store.engine).get(1)
    assert job is not None and job.state == "failed"
    assert job.error == "MemoryError: injected: out of memory while fine-tuning"
    assert job.candidate_version is None and job.finished_at is not None
    assert "job 1 failed" in capsys.readouterr().out
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
    assert not (tmp_path / "jobs" / "job-1" / "candidate").exists()
    assert tree_digest(served_dir) == served
    log = (tmp_path / "jobs" / "job-1" / "job.log").read_text()
    assert "[ 15%] fine-tuning" in log and "injected: out of memory" in log


@pytest.mark.parametrize("auto_promote", [False, True], ids=["registered", "auto-promoted"])
def test_a_succeeded_job_registers_its_candidate_and_auto_promote_serves_it(
    tmp_path: Path,
    tiny_model_dir: Path,
    wrong_many: tuple[np.ndarray, np.ndarray],
    auto_promote: bool,
) -> None:
    from edgecascade.cloud_service.announce import InMemoryAnnouncer
    from edgecascade.cloud_service.config import RegistrySettings
    from edgecascade.device_sdk.model.signing import generate_signing_key

    signing_key, _ = generate_signing_key(tmp_path / "keys")
    announcer = InMemoryAnnouncer()
    lc = make_learning_cloud(
        tmp_path,
        tiny_model_dir / "bundle",
        checkpoint=tiny_model_dir / "trained",
        registry=RegistrySettings(models_dir=tmp_path / "registry", signing_key=signing_key),
        announcer=announcer,
        auto_promote=auto_promote,
        **(FAST | {"epochs": 2, "hard_weight": 4.0}),
    )
    x, y = wrong_many
    examples = device_examples(lc.served, x)
    gateway, admin = lc.auth("gateway"), lc.auth("admin")
    lc.client.post("/v1/hard-examples", json={"examples": [e.to_json() for e in examples]}, headers=gateway)
    for example, label in zip(examples, y, strict=True):
        lc.client.put(
            f"/v1/hard-examples/{example.example_id}/label", json={"label": int(label)}, headers=admin
        )

    job = lc.client.post("/v1/retrain", headers=admin).json
    status = wait_for_job(lc.client, admin, job["id"], timeout=300)
    assert status["state"] == "succeeded", status
    assert status["candidate_version"] == 2
    assert (tmp_path / "registry" / "v2" / "checkpoint" / "trained.json").is_file()  # the next job's start
    deadline = time.monotonic() + 30  # the watcher promotes once the job process has exited
    while True:
        listing = lc.client.get("/v1/models", headers=admin).json
        entries = {m["version"]: m for m in listing["models"]}
        status_2 = entries.get(2, {}).get("metrics", {}).get("status")
        promoted = listing["current"]["version"] == 2 and status_2 == "promoted"
        if not auto_promote or promoted or time.monotonic() > deadline:  # the status follows the pointer
            break
        time.sleep(0.2)
    assert sorted(entries) == [1, 2] and entries[2]["signed"]
    status = "promoted" if auto_promote else "candidate"
    assert entries[2]["metrics"]["status"] == status and entries[2]["metrics"]["job_id"] == job["id"]
    if auto_promote:
        assert listing["current"]["version"] == 2 and entries[2]["current"]
        assert [a.version for a in announcer.published] == [2]
        assert lc.client.get("/healthz").json["version"] == 2  # the cloud serves it
        assert lc.learning.served_bundle() == tmp_path / "registry" / "v2"  # the next job's base
    else:
        assert listing["current"]["version"] == 1 and announcer.published == []
        promoted = lc.client.post("/v1/models/2/promote", headers=admin)
        assert promoted.status_code == 200 and promoted.json["current"]["version"] == 2
        entries = {m["version"]: m for m in lc.client.get("/v1/models", headers=admin).json["models"]}
        assert entries[2]["metrics"]["status"] == "promoted"


def test_a_models_mode_job_fine_tunes_all_three_models_on_the_inputs_devices_sent(
    tmp_path: Path, tiny_models_dir: Path, fmnist: Dataset
) -> None:
    """In the models mode an uploaded example is the input itself: every model learns from it."""
    x, y = fmnist.x_train[50000:50120], fmnist.y_train[50000:50120]
    lc = make_learning_cloud(
        tmp_path, tiny_models_dir / "bundle", checkpoint=tiny_models_dir / "trained", **(FAST | {"epochs": 2})
    )
    examples = device_examples(lc.served, x)
    response = lc.client.post(
        "/v1/hard-examples", json={"examples": [e.to_json() for e in examples]}, headers=lc.auth("gateway")
    )
    assert len(response.json["accepted"]) == 120, response.json
    admin = lc.auth("admin")
    for example, label in zip(examples, y, strict=True):
        url = f"/v1/hard-examples/{example.example_id}/label"
        assert lc.client.put(url, json={"label": int(label)}, headers=admin).status_code == 200

    job = lc.client.post("/v1/retrain", headers=admin).json
    status = wait_for_job(lc.client, admin, job["id"], timeout=300)
    assert status["state"] in ("succeeded", "rejected"), status
    metrics = status["metrics"]
    assert metrics["finetune"]["stages"] == "device+gateway+cloud"
    assert metrics["finetune"]["hard_cut1"] == metrics["examples"]["train"] > 0
    assert metrics["gate"]["current"]["n_new"] == metrics["examples"]["holdout"] > 0
    if status["state"] == "succeeded":
        candidate = load_bundle(lc.config.models_dir / "v2")
        assert candidate.manifest.mode == "models" and candidate.manifest.version == 2
        assert (lc.config.models_dir / "v2" / "device.tflite").read_bytes() != (
            lc.served / "device.tflite"
        ).read_bytes()  # the device model learned too, and devices get it with the rollout
