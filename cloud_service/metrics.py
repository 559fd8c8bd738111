"""The cloud's Prometheus metrics: ``GET /metrics`` with an admin token, read at scrape time.

:class:`CloudCollector` turns the counters the API already keeps (those ``GET /v1/metrics``
returns as JSON) into ``edgecascade_cloud_*`` families, adds the stage histograms of
``POST /v1/infer``, the served model version, the retraining jobs by state and the drift
events by site (``edgecascade_drift_events_total{site}``; one ``GROUP BY`` on each table, only
once the learning loop's database exists: a scrape never creates it). Each app has its own
:class:`prometheus_client.CollectorRegistry`.

The route takes the ``admin`` scope like every other operator route (a Prometheus server
sends the token with ``authorization: {credentials_file: ...}``): the numbers name device
and model versions. Counters live in the process: under gunicorn each worker counts its
own requests, and a scrape sees the worker that answers it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from edgecascade.cloud_service import drift_events
from edgecascade.cloud_service.auth import require_scope
from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.jobs import STATES, retrain_jobs
from edgecascade.cloud_service.store import database_exists
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.metrics import CounterRule, counter_families, histogram_family

logger = logging.getLogger(__name__)
PREFIX = "edgecascade_cloud"
_EXTENSION = "edgecascade.metrics"
_ANSWERS = "Answers given, by the tier that gave them"
_BYTES = "Bytes of inference requests and replies"

RULES: tuple[CounterRule, ...] = (
    CounterRule("requests", f"{PREFIX}_requests", "Inference requests received"),
    CounterRule(r"answered_(?P<tier>\w+?)_degraded", f"{PREFIX}_answers", _ANSWERS, {"degraded": "true"}),
    CounterRule(r"answered_(?P<tier>\w+)", f"{PREFIX}_answers", _ANSWERS, {"degraded": "false"}),
    CounterRule(r"rejected_(?P<reason>\w+)", f"{PREFIX}_rejections", "Inference requests refused, by reason"),
    CounterRule(r"http_(?P<status>\d+)", f"{PREFIX}_http_errors", "Error answers of every route, by status"),
    CounterRule(r"bytes_(?P<direction>in|out)", f"{PREFIX}_link_bytes", _BYTES),
    CounterRule(
        r"hard_examples_(?P<outcome>accepted|duplicate)",
        f"{PREFIX}_hard_examples",
        "Uploaded hard examples stored or already held",
    ),
    CounterRule(
        r"hard_examples_rejected_(?P<reason>\w+)",
        f"{PREFIX}_hard_examples_rejected",
        "Uploaded hard examples refused, by reason",
    ),
    CounterRule("model_swaps", f"{PREFIX}_model_swaps", "Model versions swapped in"),
)


class CloudCollector(Collector):
    """Reads one cloud app's counters, model and jobs into Prometheus families at each scrape."""

    def __init__(self, app: Flask, config: CloudConfig) -> None:
        self.app = app
        self.config = config

    def collect(self) -> Iterator[Metric]:
        inference = self.app.extensions["edgecascade"]
        counters = inference.counters
        yield from counter_families(PREFIX, counters.snapshot(), RULES)
        yield histogram_family(
            f"{PREFIX}_stage_seconds", "Time per stage of POST /v1/infer", counters.latencies()
        )
        manifest = inference.bundle.manifest
        info = InfoMetricFamily(f"{PREFIX}_model", "The model the cloud serves")
        info.add_metric([], {"model": str(manifest.name), "version": str(manifest.version)})
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_model_version", "Model version served to new requests", value=manifest.version
        )
        jobs = self._jobs_by_state()
        if jobs is not None:
            family = GaugeMetricFamily(
                f"{PREFIX}_retrain_jobs", "Retraining jobs, by state", labels=["state"]
            )
            for state in STATES:
                family.add_metric([state], jobs.get(state, 0))
            yield family
        drifts = self._drift_events_by_site()
        if drifts is not None:
            events = CounterMetricFamily(
                "edgecascade_drift_events", "Drift alarms reported by devices, by site", labels=["site"]
            )
            for site, n in sorted(drifts.items()):
                events.add_metric([site], n)
            yield events

    def _drift_events_by_site(self) -> dict[str, int] | None:
        """Drift events per site, or None while the learning loop's database does not exist."""
        learning = self.app.extensions.get("edgecascade.learning")
        if learning is None or not database_exists(self.config.cloud.database_url):
            return None
        try:
            return drift_events.counts_by_site(learning.store.engine)
        except Exception as exc:  # a scrape reports what it can
            logger.warning("cannot count drift events: %s", exc)
            return None

    def _jobs_by_state(self) -> dict[str, int] | None:
        """Jobs per state, or None while the learning loop's database does not exist (or cannot be read)."""
        learning = self.app.extensions.get("edgecascade.learning")
        if learning is None or not database_exists(self.config.cloud.database_url):
            return None
        query = sa.select(retrain_jobs.c.state, sa.func.count()).group_by(retrain_jobs.c.state)
        try:
            with learning.store.engine.connect() as db:
                return {str(state): int(n) for state, n in db.execute(query)}
        except Exception as exc:  # a scrape reports what it can; the database's trouble shows elsewhere
            logger.warning("cannot count retraining jobs: %s", exc)
            return None


metrics_api = Blueprint("metrics", __name__)


def init_app(app: Flask, config: CloudConfig) -> CollectorRegistry:
    """Give ``app`` its own registry and the ``GET /metrics`` route."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CloudCollector(app, config))
    app.extensions[_EXTENSION] = registry
    app.register_blueprint(metrics_api)
    return registry


@metrics_api.get(wire.ROUTE_PROMETHEUS)
@require_scope("admin")
def prometheus() -> Any:
    registry: CollectorRegistry = current_app.extensions[_EXTENSION]
    return Response(generate_latest(registry), status=200, content_type=CONTENT_TYPE_LATEST)
