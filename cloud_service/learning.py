"""The learning loop's API: hard-example intake and listing, human labels, retraining jobs.

Routes and scopes::

    POST /v1/hard-examples             device or gateway   {"examples": [record, ...]}
    GET  /v1/hard-examples             admin   ?device_id=&model_version=&labelled=&since=&limit=&cursor=
    PUT  /v1/hard-examples/<id>/label  admin   {"label": <class index>} (a served or a named class)
    POST /v1/retrain                   admin   start a job now (202; 409 while one is active)
    GET  /v1/jobs                      admin   newest jobs first
    GET  /v1/jobs/<id>                 admin   state, progress, stage, numbers, last log lines

An upload is answered 200 with ``{"accepted", "duplicates", "rejected"}`` whenever the
batch as a whole could be read (per-record reasons in :mod:`edgecascade.cloud_service.intake`); 400 for
a body that is not such a batch, 413 for more than :data:`~edgecascade.device_sdk.learning.records.MAX_BATCH`
records or more than ``cloud.max_upload_bytes``. Accepted examples get their teacher label
from the served model (:mod:`edgecascade.cloud_service.teacher`); a human label overrides it.

The database and blob directory are opened on first use, so a cloud that never sees a
hard example creates neither.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, cast

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, Conflict, NotFound, RequestEntityTooLarge

from edgecascade.cloud_service import drift_events, validation
from edgecascade.cloud_service.auth import current_token, require_scope
from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.intake import VersionSpec, check_batch, claimed_ids
from edgecascade.cloud_service.jobs import JobRow, JobStore, read_log_tail
from edgecascade.cloud_service.scheduler import JobHook, Launcher, RetrainScheduler, spawn_job_process
from edgecascade.cloud_service.store import ExampleFilter, ExampleStore, decode_cursor, open_example_store
from edgecascade.cloud_service.teacher import Teacher
from edgecascade.cloud_service.unknown_groups import extended_classes
from edgecascade.device_sdk.learning.records import MAX_BATCH
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.wire import ROUTE_HARD_EXAMPLES

ROUTE_RETRAIN = "/v1/retrain"
ROUTE_JOBS = "/v1/jobs"
MAX_LIST = 1000  # largest page of a listing
LOG_LINES = 50  # log lines a job's status shows by default

BATCH_SCHEMA = {
    "type": "object",
    "required": ["examples"],
    "additionalProperties": False,
    "properties": {"examples": {"type": "array"}},
}
LABEL_SCHEMA = {
    "type": "object",
    "required": ["label"],
    "additionalProperties": False,
    "properties": {"label": {"type": "integer", "minimum": 0, "maximum": 65535}},  # a wire label: uint16
}

learning_api = Blueprint("learning", __name__)
_EXTENSION = "edgecascade.learning"


class Learning:
    """The app's learning-loop state: store, teacher and scheduler, each made on first use."""

    def __init__(self, config: CloudConfig, inference: Any, launcher: Launcher = spawn_job_process) -> None:
        self.config = config
        self.inference = inference  # the served model; a registry may swap its bundle
        self.launcher = launcher
        self._lock = threading.Lock()
        self._store: ExampleStore | None = None
        self._scheduler: RetrainScheduler | None = None
        self._teacher: Teacher | None = None
        self.on_job_succeeded: JobHook | None = None  # e.g. promote the candidate (retrain.auto_promote)

    @property
    def store(self) -> ExampleStore:
        with self._lock:
            if self._store is None:
                self._store = open_example_store(self.config.cloud.database_url, self.config.cloud.blob_dir)
            return self._store

    @property
    def scheduler(self) -> RetrainScheduler:
        store = self.store
        with self._lock:
            if self._scheduler is None:
                self._scheduler = RetrainScheduler(
                    JobStore(store.engine),
                    store,
                    self.config,
                    self.served_bundle,
                    self.launcher,
                    on_succeeded=self._job_succeeded,
                )
            return self._scheduler

    def _job_succeeded(self, job: JobRow) -> None:
        if self.on_job_succeeded is not None:
            self.on_job_succeeded(job)

    def served_bundle(self) -> Path:
        return Path(self.inference.bundle.path)

    def teacher(self) -> Teacher:
        """The teacher of the bundle served now (reloaded when the served version changes)."""
        bundle = self.inference.bundle
        with self._lock:
            if self._teacher is None or self._teacher.version != bundle.manifest.version:
                full = load_bundle(
                    bundle.path, tiers=("gateway", "cloud"), public_key=self.config.cloud.verify_key
                )
                self._teacher = Teacher(full)
            return self._teacher

    def versions(self) -> dict[int, VersionSpec]:
        """Versions served so far, the current one recorded first if it is new."""
        teacher = self.teacher()
        known = self.store.versions()
        if teacher.version not in known:
            self.store.record_version(teacher.spec)
            known[teacher.version] = teacher.spec
        return known

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()


def init_app(
    app: Flask, config: CloudConfig, inference: Any, launcher: Launcher = spawn_job_process
) -> Learning:
    """Register the routes; with ``retrain.interval_seconds`` set, start the schedule thread."""
    learning = Learning(config, inference, launcher)
    app.extensions[_EXTENSION] = learning
    app.register_blueprint(learning_api)
    if config.retrain.interval_seconds > 0:
        learning.scheduler.start()
    return learning


def _learning() -> Learning:
    return cast(Learning, current_app.extensions[_EXTENSION])


def _count(key: str, n: int = 1) -> None:
    if n:
        current_app.extensions["edgecascade"].counters.add(key, n)


@learning_api.post(ROUTE_HARD_EXAMPLES)
@require_scope("device", "gateway")
def upload_examples() -> Any:
    learning = _learning()
    request.max_content_length = learning.config.cloud.max_upload_bytes
    records = validation.json_body(BATCH_SCHEMA)["examples"]
    if len(records) > MAX_BATCH:
        raise RequestEntityTooLarge(f"a batch holds at most {MAX_BATCH} examples, got {len(records)}")
    token = current_token()
    store = learning.store
    versions = learning.versions()
    verdict = check_batch(
        records,
        versions,
        token.name if token.scope == "device" else None,
        store.existing_ids(claimed_ids(records)),
    )
    labels = learning.teacher().labels(verdict.valid, versions) if verdict.valid else []
    accepted, raced = store.add(verdict.valid, labels, site=token.name)  # a gateway speaks for its site
    drift_events.record(store.engine, token.name, verdict.valid, accepted)
    duplicates = verdict.duplicates + raced
    _count("hard_examples_accepted", len(accepted))
    _count("hard_examples_duplicate", len(duplicates))
    for item in verdict.rejected:
        _count(f"hard_examples_rejected_{item['reason'].split(':')[0]}")
    if accepted:
        learning.scheduler.on_examples_added()
    return jsonify(accepted=accepted, duplicates=duplicates, rejected=verdict.rejected)


@learning_api.get(ROUTE_HARD_EXAMPLES)
@require_scope("admin")
def list_examples() -> Any:
    args = request.args
    problems: list[str] = []
    where = ExampleFilter(
        device_id=validation.query_arg(args, "device_id", _DEVICE_ID, problems),
        model_version=validation.query_arg(
            args, "model_version", validation.bounded_int(0, 2**32 - 1), problems
        ),
        labelled=validation.query_arg(args, "labelled", _boolean, problems),
        since=validation.query_arg(args, "since", validation.finite_float, problems),
    )
    limit = validation.query_arg(args, "limit", validation.bounded_int(1, MAX_LIST), problems)
    after = validation.query_arg(args, "cursor", page_cursor, problems)
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    rows, cursor = _learning().store.page(where, limit or 100, after)
    return jsonify(examples=[r.to_json() for r in rows], next_cursor=cursor)


@learning_api.put(f"{ROUTE_HARD_EXAMPLES}/<string(maxlength=64):example_id>/label")
@require_scope("admin")
def label_example(example_id: str) -> Any:
    label = validation.json_body(LABEL_SCHEMA)["label"]
    learning = _learning()
    row = learning.store.get(example_id)
    if row is None:
        raise NotFound(f"no hard example {example_id}")
    spec = learning.versions().get(row.model_version)
    known = len(extended_classes(learning.store.engine, learning.inference.bundle.manifest.classes))
    if spec is not None and label >= max(spec.num_classes, known):
        raise BadRequest(
            f"label {label} is not one of the {spec.num_classes} classes of version {spec.version} "
            f"nor of the {known} classes known now (served and named)"
        )
    updated = learning.store.set_human_label(example_id, label)
    if updated is None:
        raise NotFound(f"no hard example {example_id}")
    return jsonify(updated.to_json())


@learning_api.post(ROUTE_RETRAIN)
@require_scope("admin")
def retrain() -> Any:
    scheduler = _learning().scheduler
    job = scheduler.submit("api")
    if job is None:
        active = scheduler.jobs.active()
        raise Conflict(
            f"job {active.id if active else '?'} is already {active.state if active else 'active'}"
        )
    return jsonify(job.to_json()), 202


@learning_api.get(ROUTE_JOBS)
@require_scope("admin")
def list_jobs() -> Any:
    return jsonify(jobs=[j.to_json() for j in _learning().scheduler.jobs.recent()])


@learning_api.get(f"{ROUTE_JOBS}/<int:job_id>")
@require_scope("admin")
def job_status(job_id: int) -> Any:
    problems: list[str] = []
    lines = validation.query_arg(request.args, "log_lines", validation.bounded_int(0, 1000), problems)
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    job = _learning().scheduler.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return jsonify(
        job.to_json() | {"log": read_log_tail(job.log_path, LOG_LINES if lines is None else lines)}
    )


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError("expected true or false")


def page_cursor(value: str) -> tuple[float, str]:
    """A paging cursor this API returned: bounded, its time finite (ValueError otherwise)."""
    refused = ValueError("cursor is not one this API returned")
    if len(value) > 512:
        raise refused
    try:
        received_at, example_id = decode_cursor(value)
    except (ValueError, OverflowError):  # OverflowError: a number beyond a float
        raise refused from None
    if not math.isfinite(received_at) or not 0 < len(example_id) <= 64:
        raise refused
    return received_at, example_id


_DEVICE_ID = validation.bounded_text(64, r"[A-Za-z0-9_.-]+")
