"""Retraining jobs without training: rows, triggers, the process watcher, routes and settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecascade.cloud_service.config import RetrainSettings, load_cloud_config
from edgecascade.cloud_service.jobs import JobSpec, JobStore
from edgecascade.cloud_service.store import open_engine
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.training.data import Dataset
from tests.learning_kit import (
    LearningCloud,
    RecordingLauncher,
    device_examples,
    make_learning_cloud,
    wait_for_job,
)


@pytest.fixture
def launcher() -> RecordingLauncher:
    return RecordingLauncher()


@pytest.fixture
def lc(tmp_path: Path, tiny_bundle: Path, launcher: RecordingLauncher) -> LearningCloud:
    return make_learning_cloud(tmp_path, tiny_bundle, launcher, count_threshold=3, interval_seconds=0)


@pytest.fixture(scope="module")
def examples(tiny_bundle: Path, fmnist: Dataset) -> list[HardExample]:
    return device_examples(tiny_bundle, fmnist.x_test[100:110])


def upload(lc: LearningCloud, examples: list[HardExample]) -> list[str]:
    response = lc.client.post(
        "/v1/hard-examples", json={"examples": [e.to_json() for e in examples]}, headers=lc.auth("gateway")
    )
    accepted: list[str] = response.json["accepted"]
    return accepted


def test_one_active_job_at_a_time_and_stale_jobs_are_failed(lc: LearningCloud) -> None:
    jobs = lc.learning.scheduler.jobs
    first = jobs.create("api")
    assert first is not None and first.state == "queued"
    assert jobs.create("schedule") is None  # the unique active slot refuses a second one
    assert jobs.start(first.id, pid=4242) and not jobs.start(first.id, pid=4243)
    jobs.report(first.id, 0.5, "fine-tuning: epoch 1/2")
    running = jobs.get(first.id)
    assert running is not None and (running.state, running.progress, running.pid) == ("running", 0.5, 4242)
    assert jobs.reap_stale(stale_seconds=600) == []
    assert jobs.reap_stale(stale_seconds=600, now=running.heartbeat_at + 601) == [first.id]  # type: ignore[operator]
    dead = jobs.get(first.id)
    assert dead is not None and dead.state == "failed" and "presumed dead" in (dead.error or "")
    second = jobs.create("api")
    assert second is not None and second.id > first.id
    assert jobs.finish(second.id, "rejected", metrics={"gate": {"promote": False}})
    assert not jobs.finish(second.id, "failed")  # an ended job stays as it ended
    done = jobs.get(second.id)
    assert done is not None and (done.state, done.progress, done.metrics) == (
        "rejected",
        1.0,
        {"gate": {"promote": False}},
    )


def test_count_trigger_starts_one_job_per_threshold(
    lc: LearningCloud, launcher: RecordingLauncher, examples: list[HardExample]
) -> None:
    jobs = lc.learning.scheduler.jobs
    upload(lc, examples[:2])
    assert jobs.active() is None and launcher.specs == []
    upload(lc, examples[2:4])  # 4 new examples >= 3
    job = jobs.active()
    assert job is not None and job.trigger == "count" and len(launcher.specs) == 1
    spec = JobSpec.read(launcher.specs[0])
    assert (spec.job_id, spec.bundle, spec.retrain.count_threshold) == (job.id, lc.served, 3)
    assert launcher.specs[0].stat().st_mode & 0o077 == 0  # the spec may hold a database password
    upload(lc, examples[4:8])  # a job is active: no second one
    assert len(launcher.specs) == 1
    jobs.finish(job.id, "rejected")
    upload(lc, examples[8:9])  # 4 arrived during job 1, 1 now: 5 after its watermark
    second = jobs.active()
    assert second is not None and second.id == job.id + 1 and len(launcher.specs) == 2
    jobs.finish(second.id, "rejected")
    upload(lc, examples[9:10])  # counting restarts at job 2's watermark
    assert jobs.active() is None and len(launcher.specs) == 2


def test_schedule_needs_the_interval_and_new_examples(
    tmp_path: Path, tiny_bundle: Path, examples: list[HardExample]
) -> None:
    launcher = RecordingLauncher()
    lc = make_learning_cloud(tmp_path, tiny_bundle, launcher, interval_seconds=3600)
    scheduler = lc.learning.scheduler
    assert scheduler.tick() is None  # nothing new
    upload(lc, examples[:1])
    job = scheduler.tick()
    assert job is not None and job.trigger == "schedule"
    scheduler.jobs.finish(job.id, "rejected")
    upload(lc, examples[1:2])
    assert scheduler.tick(now=job.created_at + 60) is None  # too soon
    later = scheduler.tick(now=job.created_at + 3601)
    assert later is not None and later.trigger == "schedule"
    lc.learning.close()


def test_a_job_process_that_dies_is_failed_by_its_watcher(tmp_path: Path, tiny_bundle: Path) -> None:
    def crashing(spec_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])

    lc = make_learning_cloud(tmp_path, tiny_bundle, crashing)
    job = lc.learning.scheduler.submit("api")
    assert job is not None
    status = wait_for_job(lc.client, lc.auth("admin"), job.id, timeout=10)
    assert status["state"] == "failed" and status["error"] == "the job process ended with exit code 3"


def test_a_launcher_that_cannot_start_fails_the_job(tmp_path: Path, tiny_bundle: Path) -> None:
    def broken(spec_path: Path, log_path: Path) -> None:
        raise OSError("no such interpreter")

    lc = make_learning_cloud(tmp_path, tiny_bundle, broken)
    job = lc.learning.scheduler.submit("api")
    assert job is not None and job.state == "failed" and "no such interpreter" in (job.error or "")
    assert lc.learning.scheduler.jobs.active() is None


def test_retrain_and_job_routes(lc: LearningCloud, launcher: RecordingLauncher) -> None:
    admin = lc.auth("admin")
    response = lc.client.post("/v1/retrain", headers=admin)
    assert response.status_code == 202
    job = response.json
    assert (job["state"], job["trigger"], job["progress"]) == ("queued", "api", 0.0)
    assert lc.client.post("/v1/retrain", headers=admin).status_code == 409
    status = lc.client.get(f"/v1/jobs/{job['id']}", headers=admin).json
    assert status["log"] == ["job queued by a test launcher"]
    assert lc.client.get(f"/v1/jobs/{job['id']}?log_lines=0", headers=admin).json["log"] == []
    assert [j["id"] for j in lc.client.get("/v1/jobs", headers=admin).json["jobs"]] == [job["id"]]
    assert lc.client.get("/v1/jobs/999", headers=admin).status_code == 404
    assert lc.client.get(f"/v1/jobs/{job['id']}?log_lines=x", headers=admin).status_code == 400
    for scope in ("gateway", "device"):
        assert lc.client.post("/v1/retrain", headers=lc.auth(scope)).status_code == 403
        assert lc.client.get(f"/v1/jobs/{job['id']}", headers=lc.auth(scope)).status_code == 403


def test_settings_come_from_toml_and_environment_and_are_checked(tmp_path: Path) -> None:
    toml = tmp_path / "cloud.toml"
    toml.write_text('[cloud]\ndatabase_url = "sqlite:///db/cloud.db"\n[retrain]\nreplay_size = 100\n')
    config = load_cloud_config(
        toml,
        env={
            "EC_RETRAIN__COUNT_THRESHOLD": "25",
            "EC_CLOUD__BLOB_DIR": "blobs",
            "EC_RETRAIN__TOLERANCE": "1.5",
        },
    )
    in_file_dir = f"sqlite:///{tmp_path.resolve() / 'db' / 'cloud.db'}"  # relative to cloud.toml
    assert config.cloud.database_url == in_file_dir and config.cloud.blob_dir == Path("blobs")
    assert (config.retrain.replay_size, config.retrain.count_threshold, config.retrain.tolerance) == (
        100,
        25,
        1.5,
    )
    with pytest.raises(ConfigError) as caught:
        RetrainSettings(epochs=0, holdout_fraction=1.5, min_gain=-1)
    assert len(caught.value.problems) == 3
    with pytest.raises(ConfigError, match="calibration_fraction >= 1: nothing would train"):
        RetrainSettings(holdout_fraction=0.5, calibration_fraction=0.5)
    with pytest.raises(ConfigError, match="database_url"):
        load_cloud_config(env={"EC_CLOUD__DATABASE_URL": "cloud.db"})
    spec = JobSpec(1, "sqlite:///x.db", Path("b"), Path("m"), None, Path("l"), 1.0, config.retrain)
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_another_worker_on_the_same_database_cannot_start_a_second_job(lc: LearningCloud) -> None:
    job = lc.learning.scheduler.jobs.create("cli")
    assert job is not None
    other_worker = JobStore(open_engine(lc.config.cloud.database_url))  # its own engine and connections
    assert other_worker.active() == job
    assert other_worker.create("api") is None
    assert other_worker.finish(job.id, "failed", error="stopped by a test")
    assert lc.learning.scheduler.jobs.create("api") is not None
