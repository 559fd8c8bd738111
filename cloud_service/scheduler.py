"""When retraining starts, and starting it: triggers, the job process, and its watcher.

Three triggers create a job (:class:`~edgecascade.cloud_service.jobs.JobStore` refuses a second active
one): ``count_threshold`` hard examples received since the last job
(:meth:`RetrainScheduler.on_examples_added`, called after each upload), a schedule of
``interval_seconds`` when at least one new example arrived (:meth:`RetrainScheduler.tick`,
run by a background thread), and the API or CLI (:meth:`RetrainScheduler.submit`).

A job runs in its own process, ``python -m edgecascade.cloud_service.retrain_job <spec.json>``, in a new
session so that it outlives a restarted web worker and never shares TensorFlow with it
(the cloud API does not import TensorFlow at all). A watcher thread waits for the process
and marks the job ``failed`` if it ended without reporting an outcome (a crash, a kill,
an out-of-memory); a job whose process is gone with its watcher (the worker restarted)
is failed once its heartbeat is older than ``stale_seconds``. When a job's process ends
with the job ``succeeded``, the watcher hands the job to ``on_succeeded`` (the app wires
the registry's promotion there when ``retrain.auto_promote`` is set).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.jobs import JobRow, JobSpec, JobStore, job_dir
from edgecascade.cloud_service.store import ExampleStore

logger = logging.getLogger(__name__)

JOB_MODULE = "edgecascade.cloud_service.retrain_job"
Launcher = Callable[[Path, Path], "subprocess.Popen[bytes] | None"]
"""Starts the job process for a spec file, its output appended to a log file."""
JobHook = Callable[[JobRow], None]


def spawn_job_process(spec_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the job module on ``spec_path`` in its own session, output to ``log_path``.

    The child imports the same installed package as this process.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise OSError("TensorFlow is not installed: pip install 'edgecascade[train]'")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", JOB_MODULE, str(spec_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``signal SIGKILL`` for a process's return code."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class RetrainScheduler:
    """Creates retraining jobs on the configured triggers and starts their processes."""

    def __init__(
        self,
        jobs: JobStore,
        examples: ExampleStore,
        config: CloudConfig,
        current_bundle: Callable[[], Path],
        launcher: Launcher = spawn_job_process,
        on_succeeded: JobHook | None = None,
    ) -> None:
        """``current_bundle`` says which bundle the cloud serves now (the version to beat)."""
        self.jobs = jobs
        self.examples = examples
        self.config = config
        self.settings = config.retrain
        self.current_bundle = current_bundle
        self.launcher = launcher
        self.on_succeeded = on_succeeded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------------- triggers
    def submit(self, trigger: str) -> JobRow | None:
        """Create a job and start its process; None when a job is already queued or running."""
        self.jobs.reap_stale(self.settings.stale_seconds)
        job = self.jobs.create(trigger)
        if job is None:
            return None
        spec, spec_path = self.write_spec(job)
        logger.info("retraining job %d queued (%s trigger)", job.id, trigger)
        try:
            process = self.launcher(spec_path, spec.log_path)
        except OSError as exc:
            logger.error("cannot start retraining job %d: %s", job.id, exc)
            self.jobs.finish(job.id, "failed", error=f"cannot start the job process: {exc}")
        else:
            if process is not None:
                with self._lock:
                    self.processes[job.id] = process
                threading.Thread(
                    target=self._watch, args=(job.id, process), name=f"retrain-watch-{job.id}", daemon=True
                ).start()
        return self.jobs.get(job.id)

    def write_spec(self, job: JobRow) -> tuple[JobSpec, Path]:
        """Write the job's ``spec.json`` (and note its log file in the row)."""
        directory = job_dir(self.settings.jobs_dir, job.id)
        spec = JobSpec(
            job_id=job.id,
            database_url=self.config.cloud.database_url,
            blob_dir=self.config.cloud.blob_dir,
            bundle=self.current_bundle(),
            verify_key=self.config.cloud.verify_key,
            log_path=directory / "job.log",
            examples_until=job.examples_until,
            retrain=replace(  # one directory with the registry; candidates signed for it
                self.settings,
                models_dir=self.config.models_dir,
                signing_key=self.config.candidate_signing_key,
            ),
        )
        spec.write(directory / "spec.json")
        self.jobs.set_log_path(job.id, spec.log_path)
        return spec, directory / "spec.json"

    def on_examples_added(self) -> JobRow | None:
        """The count trigger: start a job once enough examples arrived since the last one."""
        threshold = self.settings.count_threshold
        if threshold <= 0 or self.jobs.active() is not None:
            return None
        if self.examples.count_received_after(self.jobs.last_watermark()) < threshold:
            return None
        return self.submit("count")

    def tick(self, now: float | None = None) -> JobRow | None:
        """One scheduler step: fail dead jobs, then start one if the interval passed and there is new data."""
        now = time.time() if now is None else now
        self.jobs.reap_stale(self.settings.stale_seconds, now)
        interval = self.settings.interval_seconds
        if interval <= 0 or self.jobs.active() is not None:
            return None
        latest = self.jobs.latest()
        if latest is not None and now - latest.created_at < interval:
            return None
        if self.examples.count_received_after(self.jobs.last_watermark()) == 0:
            return None
        return self.submit("schedule")

    # ------------------------------------------------------------------ background work
    def start(self) -> None:
        """Run :meth:`tick` in a daemon thread (only when a schedule is configured)."""
        if self.settings.interval_seconds <= 0 or self._thread is not None:
            return
        period = min(self.settings.interval_seconds, 60.0)

        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.tick()
                except Exception:  # a database hiccup must not end the schedule
                    logger.exception("retraining scheduler tick failed")

        self._thread = threading.Thread(target=loop, name="retrain-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self, job_id: int, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            self.processes.pop(job_id, None)
        if self.jobs.finish(job_id, "failed", error=f"the job process ended with {describe_exit(code)}"):
            logger.error("retraining job %d died (%s)", job_id, describe_exit(code))
            return
        logger.info("retraining job %d process exited (%s)", job_id, describe_exit(code))
        job = self.jobs.get(job_id)
        if job is not None and job.state == "succeeded" and self.on_succeeded is not None:
            try:
                self.on_succeeded(job)
            except Exception:  # the candidate stays registered; an operator may promote it
                logger.exception("handling succeeded retraining job %d failed", job_id)
