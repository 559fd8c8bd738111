"""The federated-training API: the runs of collaborative training and their rounds, read-only.

Routes and scopes (``admin``, like every operator route)::

    GET /v1/federated/runs              the newest runs first   ?limit= (1..1000, default 20)
    GET /v1/federated/runs/<id>         one run and its rounds, each with its whole tally

The server side of collaborative training writes the rows
(:class:`~edgecascade.cloud_service.federation_store.FederationStore`); this module only
reads them. The app's Prometheus registry also gets them, counted at scrape time once the
database exists: ``edgecascade_federated_runs{state}`` (gauge),
``edgecascade_federated_rounds_total{state}``,
``edgecascade_federated_updates_refused_total{reason}`` and
``edgecascade_federated_late_results_total`` (counters: rows are never removed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from flask import Blueprint, Flask, current_app, jsonify, request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from werkzeug.exceptions import BadRequest, NotFound

from edgecascade.cloud_service import validation
from edgecascade.cloud_service.auth import require_scope
from edgecascade.cloud_service.federation_store import ROUND_STATES, RUN_STATES, FederationStore
from edgecascade.cloud_service.learning import Learning
from edgecascade.cloud_service.store import database_exists

logger = logging.getLogger(__name__)

ROUTE_FEDERATED_RUNS = "/v1/federated/runs"
MAX_RUNS = 1000
DEFAULT_RUNS = 20

federation_api = Blueprint("federation", __name__)
_LEARNING = "edgecascade.learning"


def init_app(app: Flask) -> None:
    """Register the routes (after the learning loop, whose database holds the runs); with the app's
    metrics registry, the families counted from it."""
    app.register_blueprint(federation_api)
    registry = app.extensions.get("edgecascade.metrics")
    if registry is not None:
        registry.register(FederationCollector(app))


def _store() -> FederationStore:
    return FederationStore(cast(Learning, current_app.extensions[_LEARNING]).store.engine)


@federation_api.get(ROUTE_FEDERATED_RUNS)
@require_scope("admin")
def list_runs() -> Any:
    problems: list[str] = []
    limit = validation.query_arg(request.args, "limit", validation.bounded_int(1, MAX_RUNS), problems)
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    return jsonify(runs=_store().runs(limit or DEFAULT_RUNS))


@federation_api.get(f"{ROUTE_FEDERATED_RUNS}/<int:run_id>")
@require_scope("admin")
def show_run(run_id: int) -> Any:
    run = _store().run(run_id)
    if run is None:
        raise NotFound(f"no federated run {run_id}")
    return jsonify(run)


class FederationCollector(Collector):
    """Federated runs, rounds, refused updates and late results, read at scrape time once the
    database exists (a scrape never creates it)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        learning = self.app.extensions.get(_LEARNING)
        if learning is None or not database_exists(learning.config.cloud.database_url):
            return
        try:
            totals = FederationStore(learning.store.engine).totals()
        except Exception as exc:  # a scrape reports what it can; the database's trouble shows elsewhere
            logger.warning("cannot count federated runs: %s", exc)
            return
        runs = GaugeMetricFamily(
            "edgecascade_federated_runs", "Federated training runs, by state", labels=["state"]
        )
        for state in RUN_STATES:
            runs.add_metric([state], totals["runs"][state])
        yield runs
        rounds = CounterMetricFamily(
            "edgecascade_federated_rounds",
            "Federated rounds ended: completed (quorum reached) or short (timed out below quorum)",
            labels=["state"],
        )
        for state in ROUND_STATES:
            rounds.add_metric([state], totals["rounds"][state])
        yield rounds
        refused = CounterMetricFamily(
            "edgecascade_federated_updates_refused",
            "Sites' weight updates refused by the server, by reason",
            labels=["reason"],
        )
        for reason, n in totals["refused"].items():
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily(
            "edgecascade_federated_late_results",
            "Sites' results that arrived after their round had ended (dropped)",
            value=totals["late"],
        )
