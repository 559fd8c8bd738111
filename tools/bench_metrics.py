"""``edgecascade bench metrics``: what the metrics cost per request, on the gateway and on the cloud.

Every request the gateway and the cloud serve updates counters (which they always kept)
and, since they expose Prometheus metrics, latency histograms per stage. This measures
both request paths in one process with the histograms on and off, alternating the two
runs (in either order) so both see the same machine: the gateway's ``decide`` and ``forward`` on encrypted
requests (as ``edgecascade bench gateway``, against a cloud that answers at once), and
the cloud's ``POST /v1/infer`` through the real Flask app and its token check (Flask's
test client: no sockets). The difference of the best runs is the overhead per request (the
medians' difference is in the report too); it is at the edge of what the noise between
runs lets one see, so the report also gives the cost of one histogram update measured
alone, and the time one scrape takes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.edge_gateway.service import Forward, GatewayService
from edgecascade.tools.bench_cloud import cloud_requests
from edgecascade.tools.bench_gateway import EchoCloud, sealed_requests

DEVICE = "bench-device"


class Untimed(Counters):
    """Counters without latency histograms: the baseline the histograms' cost is measured against."""

    def observe(self, stage: str, seconds: float, n: int = 1) -> None:
        return None


def observe_cost(calls: int = 200_000) -> float:
    """Nanoseconds per :meth:`Counters.observe` call, measured alone."""
    counters = Counters()
    started = time.perf_counter()
    for i in range(calls):
        counters.observe("decode", (i % 100) * 1e-5)
    return (time.perf_counter() - started) / calls * 1e9


def _alternate(run: Callable[[], float], switch: Callable[[bool], None], runs: int) -> dict[str, Any]:
    """µs per request with and without histograms, runs alternating: the best run of each (as
    ``timeit`` reports, the least disturbed by other work on the machine) and the medians."""
    timings: dict[bool, list[float]] = {True: [], False: []}
    for i in range(runs):
        for timed in (True, False) if i % 2 == 0 else (False, True):  # neither always goes first
            switch(timed)
            timings[timed].append(run())
    switch(True)
    best = {timed: min(t) for timed, t in timings.items()}
    median = {timed: statistics.median(t) for timed, t in timings.items()}
    return {
        "us_per_request_with": round(best[True], 2),
        "us_per_request_without": round(best[False], 2),
        "overhead_us": round(best[True] - best[False], 2),
        "median_overhead_us": round(median[True] - median[False], 2),
        "runs_with": [round(t, 2) for t in timings[True]],
        "runs_without": [round(t, 2) for t in timings[False]],
    }


def _scrape_us(render: Callable[[], bytes], times: int = 50) -> tuple[float, int]:
    """µs per scrape, and the size of one in bytes."""
    body = render()
    started = time.perf_counter()
    for _ in range(times):
        render()
    return (time.perf_counter() - started) / times * 1e6, len(body)


def bench_gateway_metrics(
    bundle: Bundle, images: np.ndarray, *, batch: int = 32, runs: int = 7
) -> dict[str, Any]:
    """The gateway's request path (decide, then forward what it forwards) with and without histograms."""
    from prometheus_client import generate_latest  # the gateway's and cloud's extras, not the CLI's start-up

    from edgecascade.edge_gateway.health import HealthReport
    from edgecascade.edge_gateway.metrics import GatewayCollector, gateway_registry

    crypto, requests = sealed_requests(bundle, images)
    service = GatewayService(bundle, EchoCloud(len(bundle.manifest.classes)), crypto=crypto)

    def run() -> float:
        messages = requests()  # sealed outside the clock
        started = time.perf_counter()
        for start in range(0, len(messages), batch):
            for decision in service.decide(messages[start : start + batch]):
                if isinstance(decision, Forward):
                    service.forward(decision)
        return (time.perf_counter() - started) / len(messages) * 1e6

    counters = {True: service.counters, False: Untimed()}

    def switch(timed: bool) -> None:
        service.counters = counters[timed]

    run()  # the first calls pay for set-up
    report = {"n": len(images), "batch": batch, "runs": runs, **_alternate(run, switch, runs)}
    latencies = service.counters.latencies()
    served = service.counters["requests"]
    report["observations_per_request"] = round(sum(h.count for h in latencies.values()) / served, 2)

    def health() -> HealthReport:
        manifest = service.manifest
        return HealthReport(
            "bench",
            True,
            True,
            manifest.name,
            manifest.version,
            service.versions(),
            True,
            None,
            0,
            1,
            None,
            None,
        )

    registry = gateway_registry(GatewayCollector("bench", service, health))
    report["scrape_us"], report["scrape_bytes"] = (
        round(v, 1) for v in _scrape_us(lambda: generate_latest(registry))
    )
    return report


def bench_cloud_metrics(bundle: Bundle, images: np.ndarray, *, runs: int = 7) -> dict[str, Any]:
    """``POST /v1/infer`` through the real app (token check included) with and without histograms."""
    from edgecascade.cloud_service.app import create_app
    from edgecascade.cloud_service.config import CloudConfig, CloudSettings
    from edgecascade.cloud_service.inference import CloudInference

    bodies = cloud_requests(bundle, images)
    with tempfile.TemporaryDirectory() as state:
        settings = CloudSettings(
            bundle=Path(bundle.path),
            token_store=Path(state) / "tokens.db",
            database_url=f"sqlite:///{Path(state) / 'cloud.db'}",
        )
        inference = CloudInference(bundle)
        app = create_app(CloudConfig(settings), inference=inference)
        tokens = app.extensions["edgecascade.tokens"]
        gateway = {"Authorization": f"Bearer {tokens.create('gateway', 'bench')[0]}"}
        admin = {"Authorization": f"Bearer {tokens.create('admin', 'bench')[0]}"}
        client = app.test_client()

        def run() -> float:
            started = time.perf_counter()
            for body in bodies:
                reply = client.post(wire.ROUTE_INFER, data=body, headers=gateway)
                assert reply.status_code == 200, reply.get_data(as_text=True)
            return (time.perf_counter() - started) / len(bodies) * 1e6

        counters = {True: inference.counters, False: Untimed()}

        def switch(timed: bool) -> None:
            inference.counters = counters[timed]

        run()
        report = {"n": len(bodies), "runs": runs, **_alternate(run, switch, runs)}
        latencies = inference.counters.latencies()
        report["observations_per_request"] = round(
            sum(h.count for h in latencies.values()) / inference.counters["requests"], 2
        )
        scrape = lambda: client.get(wire.ROUTE_PROMETHEUS, headers=admin).get_data()  # noqa: E731
        report["scrape_us"], report["scrape_bytes"] = (round(v, 1) for v in _scrape_us(scrape))
    return report


def bench_metrics(bundle: Bundle, images: np.ndarray, *, runs: int = 7, batch: int = 32) -> dict[str, Any]:
    return {
        "observe_ns": round(observe_cost(), 1),
        "gateway": bench_gateway_metrics(bundle, images, batch=batch, runs=runs),
        "cloud": bench_cloud_metrics(bundle, images, runs=runs),
    }


def format_metrics_report(report: dict[str, Any]) -> str:
    rows = [("gateway request path", report["gateway"]), ("cloud POST /v1/infer", report["cloud"])]
    lines = [f"{'best run, per request':30} {'with':>10} {'without':>10} {'overhead':>10} {'scrape':>10}"]
    for name, r in rows:
        lines.append(
            f"{name:30} {r['us_per_request_with']:>7.1f} µs {r['us_per_request_without']:>7.1f} µs "
            f"{r['overhead_us']:>+7.2f} µs {r['scrape_us'] / 1000:>7.2f} ms"
        )
    ns = report["observe_ns"]
    per = {name: report[name]["observations_per_request"] for name in ("gateway", "cloud")}
    lines.append(
        f"one histogram update: {ns:.0f} ns; per request the gateway makes {per['gateway']:.1f} "
        f"(≈{per['gateway'] * ns / 1000:.2f} µs), "
        f"the cloud {per['cloud']:.1f} (≈{per['cloud'] * ns / 1000:.2f} µs)"
    )
    return "\n".join(lines)


def _run(args: Any) -> int:
    from edgecascade.device_sdk.model.bundle import load_bundle
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    images = load_fashion_mnist().x_test[: args.n]
    report = bench_metrics(load_bundle(args.model), images, runs=args.runs, batch=args.batch)
    print_report(format_metrics_report(report), report, args.report)
    return 0


def register(bench: Any, default_model: str) -> None:
    """Add ``metrics`` to ``edgecascade bench``."""
    p = bench.add_parser("metrics", help="what the Prometheus metrics cost per request, gateway and cloud")
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--n", type=int, default=1000, help="test images per run (default %(default)s)")
    p.add_argument("--runs", type=int, default=7, help="runs with and without, alternating (%(default)s)")
    p.add_argument("--batch", type=int, default=32, help="the gateway's micro-batch size")
    p.set_defaults(func=_run)
