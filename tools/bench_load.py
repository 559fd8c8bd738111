"""``edgecascade bench load``: the gateway daemon at its limit, against an echo responder's ceiling.

Devices are simulated, not run: a few generator processes (so the generator does not eat
the cores it measures) each hold MQTT v5 connections over TLS for some of the devices, one
per device with its own certificate, and publish pre-built requests already sealed with
that device's payload keys (random cut-1 features: the device partition is never run, so
every request is an offload). Arrivals are open-loop: each step publishes at a fixed rate
for ``seconds`` whatever the replies do, then waits ``drain`` seconds for the last replies.
A request's latency is from its publish to its reply (matched by correlation data).

Each sweep of rates runs three times against fresh services on this machine:

- ``echo``: a broker and a trivial responder (its own process, the gateway's certificate,
  subscribed to every device's requests) that publishes each request back as its reply:
  the ceiling of broker, TLS and generator with no work done;
- ``gateway``: :class:`~edgecascade.tools.stack.LocalStack` with a copy of the bundle whose
  gateway exit threshold is 0, so the gateway decrypts, checks, runs partition 2 and
  answers every request itself (sealed);
- ``forward``: the same with the threshold above 1, so the gateway runs partition 2 and
  forwards every request to the cloud over HTTPS.

Per step: the offered rate, answers per second, p50 and p99, lost (no reply within the
drain), error replies, and the CPU of the gateway (or responder) and the broker from
``/proc``. The headline is the highest answered rate whose p99 stays within ``p99_limit_ms``.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.tools.bench_load_clients import echo, generate
from edgecascade.tools.certs import Pki, init_pki, issue_device

DEFAULT_RATES = (250, 500, 1000, 1500, 2000, 3000)
P99_LIMIT_MS = 50.0
#: the gateway exit threshold of each gateway scenario: 0 answers everything, above 1 nothing
SCENARIOS = {"gateway": 0.0, "forward": 2.0}
_START_LEAD = 1.0  # seconds between "everyone ready" and the first publish


def bundle_with_gateway_threshold(bundle: Path, threshold: float, out: Path) -> Path:
    """A copy of ``bundle`` (manifest and the .tflite files) whose gateway exit has ``threshold``."""
    out.mkdir(parents=True, exist_ok=True)
    for path in bundle.iterdir():
        if path.suffix == ".tflite":
            shutil.copy2(path, out / path.name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for partition in manifest["partitions"]:
        if partition["tier"] == "gateway":
            partition["exit"]["threshold"] = threshold
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


# ------------------------------------------------------------------------------- measuring
def _process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (gunicorn's workers are the cloud's children)."""
    found = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            listed = children.read_text().split()
        except FileNotFoundError:  # the thread or process ended meanwhile
            continue
        for child in listed:
            found += _process_tree(int(child))
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and its live descendants (``/proc/<pid>/stat``)."""
    total = 0
    for member in _process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # it ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sweep(
    pki: Pki,
    host: str,
    port: int,
    bundle: Path,
    *,
    rates: Sequence[int],
    seconds: float,
    devices: int,
    processes: int,
    pids: dict[str, int],
    drain: float = 2.0,
) -> list[dict[str, Any]]:
    """Offer each rate in turn from ``processes`` generator processes; per-step numbers.

    ``pids``: the processes whose CPU is measured, the serving one first (its RSS too).
    """
    manifest = load_bundle(bundle, tiers=("device",)).manifest
    device_ids = [f"load-{i:03d}" for i in range(devices)]
    for device_id in device_ids:
        if not pki.device_dir(device_id).exists():
            issue_device(pki.root, device_id)
    context = multiprocessing.get_context("spawn")  # no paho threads or sockets inherited
    workers = []
    for index in range(processes):
        parent, child = context.Pipe()
        spec = {
            "index": index,
            "pki": str(pki.root),
            "host": host,
            "port": port,
            "devices": device_ids[index::processes],
            "rates": [rate / processes for rate in rates],
            "seconds": seconds,
            "drain": drain,
            "seed": index,
            "version": manifest.version,
            "shape": list(manifest.partition("gateway").input.shape),
            "encoding": manifest.partition("device").encoding,
        }
        process = context.Process(target=generate, args=(spec, child), name=f"load-{index}", daemon=True)
        process.start()
        workers.append((process, parent))
    try:
        for process, parent in workers:
            if not parent.poll(120):
                raise TimeoutError(f"generator {process.name} not ready within 120 s")
            parent.recv_bytes()
        start = time.time() + _START_LEAD
        for _, parent in workers:
            parent.send_bytes(repr(start).encode())
        usage = _watch(start, len(rates), seconds, drain, pids)
        outcomes = []
        for process, parent in workers:
            if not parent.poll(len(rates) * (seconds + drain) + 60):
                raise TimeoutError(f"generator {process.name} sent no results")
            outcomes.append(json.loads(parent.recv_bytes()))
    finally:
        for process, _ in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
    return [_step(rate, seconds, [o[i] for o in outcomes], usage[i]) for i, rate in enumerate(rates)]


def _watch(
    start: float, steps: int, seconds: float, drain: float, pids: dict[str, int]
) -> list[dict[str, Any]]:
    """Each process's CPU % over each step's sending window, and the first one's RSS (MB)."""
    usage = []
    for step in range(steps):
        begin = start + step * (seconds + drain)
        time.sleep(max(0.0, begin - time.time()))
        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(max(0.0, begin + seconds - time.time()))
        cpu = {
            name: round((_cpu_seconds(pid) - before[name]) / seconds * 100, 1) for name, pid in pids.items()
        }
        usage.append({"cpu_percent": cpu, "rss_mb": round(_rss_mb(next(iter(pids.values()))), 1)})
    return usage


def _step(rate: int, seconds: float, parts: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    """One step's numbers over every generator process."""
    latencies = np.array([ms for part in parts for ms in part["latencies_ms"]], dtype=np.float64)
    sent = sum(part["sent"] for part in parts)
    first = min(part["first_sent"] for part in parts)
    span = max(max(part["last_reply"] for part in parts) - first, seconds)
    sending = max(max(part["last_sent"] for part in parts) - first, 1e-9)
    return {
        "offered_per_s": rate,
        "sent_per_s": round((sent - 1) / sending, 1) if sent > 1 else float(sent),
        "answers_per_s": round(len(latencies) / span, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        "lost": sent - len(latencies),
        "errors": sum(part["errors"] for part in parts),
        "cpu_percent": {
            **usage["cpu_percent"],
            "generators": round(sum(p["cpu_seconds"] for p in parts) / max(sending, 1e-9) * 100, 1),
        },
        "rss_mb": usage["rss_mb"],
    }


def best_step(steps: list[dict[str, Any]], p99_limit_ms: float = P99_LIMIT_MS) -> dict[str, Any] | None:
    """The step with the most answers per second among those with p99 within the limit and none lost."""
    good = [s for s in steps if s["p99_ms"] is not None and s["p99_ms"] <= p99_limit_ms and s["lost"] == 0]
    return max(good, key=lambda s: s["answers_per_s"], default=None)


# ------------------------------------------------------------------------------- scenarios
def _echo_steps(workdir: Path, bundle: Path, **load: Any) -> list[dict[str, Any]]:
    """The sweep against a broker and the echo responder."""
    from edgecascade.tools.broker import Mosquitto

    pki = init_pki(workdir / "pki")
    with Mosquitto(workdir / "broker", pki) as broker:
        assert broker.process is not None
        parent, child = multiprocessing.get_context("spawn").Pipe()
        responder = multiprocessing.get_context("spawn").Process(
            target=echo, args=(str(pki.root), broker.host, broker.port, child), name="echo", daemon=True
        )
        responder.start()
        try:
            if not parent.poll(60):
                raise TimeoutError("the echo responder did not connect within 60 s")
            parent.recv_bytes()
            pids = {"echo": responder.pid or 0, "broker": broker.process.pid}
            return sweep(pki, broker.host, broker.port, bundle, pids=pids, **load)
        finally:
            parent.send_bytes(b"stop")
            responder.join(10)
            if responder.is_alive():
                responder.kill()


def _stack_steps(
    workdir: Path, bundle: Path, threshold: float, gateway_env: dict[str, str], **load: Any
) -> dict[str, Any]:
    """The sweep against broker, cloud and gateway daemons, the gateway's exit at ``threshold``."""
    from edgecascade.tools.stack import LocalStack

    copy = bundle_with_gateway_threshold(bundle, threshold, workdir / "bundle")
    stack = LocalStack(copy, workdir / "stack", gateway_env=gateway_env)
    with stack:
        assert stack.broker.process is not None
        pids = {
            "gateway": stack.processes["gateway"].pid,
            "broker": stack.broker.process.pid,
            "cloud": stack.processes["cloud"].pid,
        }
        steps = sweep(stack.pki, stack.broker.host, stack.broker.port, copy, pids=pids, **load)
    return {
        "gateway_threshold": threshold,
        "steps": steps,
        "gateway_counters": _final_counters(stack.log("gateway")),
    }


def _final_counters(log: str) -> dict[str, int]:
    """The counters the gateway logs when it stops (what it served, dropped and refused)."""
    marker = "gateway stopped; counters: "
    lines = [line for line in log.splitlines() if marker in line]
    if not lines:
        return {}
    try:
        counters = ast.literal_eval(lines[-1].split(marker, 1)[1])  # a dict of literals, never code
    except (ValueError, SyntaxError):
        return {}
    return counters if isinstance(counters, dict) else {}


def bench_load(
    bundle: Path,
    *,
    rates: Sequence[int] = DEFAULT_RATES,
    seconds: float = 3.0,
    devices: int = 16,
    processes: int = 2,
    scenarios: Sequence[str] = tuple(SCENARIOS),
    drain: float = 2.0,
    workdir: Path | None = None,
    gateway_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The echo ceiling and each gateway scenario, each swept over ``rates``; the report.

    ``gateway_env``: ``EC_…`` settings for the gateway daemons (e.g. ``EC_GATEWAY__MAX_BATCH``).
    """
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    load = {"rates": rates, "seconds": seconds, "devices": devices, "processes": processes, "drain": drain}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(workdir or tmp)
        report: dict[str, Any] = {
            "rates": list(rates),
            "seconds": seconds,
            "devices": devices,
            "processes": processes,
            "p99_limit_ms": P99_LIMIT_MS,
            "gateway_env": dict(gateway_env or {}),
            "echo": {"steps": _echo_steps(root / "echo", bundle, **load)},
        }
        for name in scenarios:
            report[name] = _stack_steps(root / name, bundle, SCENARIOS[name], dict(gateway_env or {}), **load)
    echo = best_step(report["echo"]["steps"])
    head = "gateway" if "gateway" in report else next(iter(scenarios), None)
    best = best_step(report[head]["steps"]) if head is not None else None
    lost = sum(s["lost"] for s in report[head]["steps"]) if head is not None else 0
    ceiling = echo["answers_per_s"] if echo else 0.0
    report.update(
        {
            "offloads_per_s": best["answers_per_s"] if best else 0.0,
            "p50_ms": best["p50_ms"] if best else None,
            "p99_ms": best["p99_ms"] if best else None,
            "ceiling_echo_per_s": ceiling,
            "ratio_to_ceiling": round(best["answers_per_s"] / ceiling, 3) if best and ceiling else None,
            "lost": lost,
            "cpu_percent": best["cpu_percent"].get(head) if best and head else None,
            "rss_mb": max((s["rss_mb"] for s in report[head]["steps"]), default=None) if head else None,
        }
    )
    return report


def format_load_report(report: dict[str, Any]) -> str:
    """A table per scenario, and the headline."""
    lines = []
    for name in ("echo", *SCENARIOS):
        if name not in report:
            continue
        lines.append(f"{name}: offered/s  sent/s  answers/s  p50 ms  p99 ms  lost  errors  CPU %")
        for s in report[name]["steps"]:
            cpu = " ".join(f"{k} {v:.0f}" for k, v in s["cpu_percent"].items())
            p50 = f"{s['p50_ms']:.1f}" if s["p50_ms"] is not None else "-"
            p99 = f"{s['p99_ms']:.1f}" if s["p99_ms"] is not None else "-"
            lines.append(
                f"  {s['offered_per_s']:>9} {s['sent_per_s']:>7.0f} {s['answers_per_s']:>10.0f} "
                f"{p50:>7} {p99:>7} {s['lost']:>5} {s['errors']:>7}  {cpu}"
            )
    ratio = report["ratio_to_ceiling"]
    lines.append(
        f"gateway: {report['offloads_per_s']:.0f} offloads/s at p99 <= {report['p99_limit_ms']:.0f} ms "
        f"(p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms); echo ceiling "
        f"{report['ceiling_echo_per_s']:.0f}/s; ratio {ratio if ratio is not None else '-'}; "
        f"lost {report['lost']}; CPU {report['cpu_percent']} %, RSS {report['rss_mb']} MB"
    )
    return "\n".join(lines)


def _run(args: Any) -> int:
    from edgecascade.tools.report import print_report

    report = bench_load(
        Path(args.model),
        rates=[int(r) for r in args.rates.split(",")],
        seconds=args.seconds,
        devices=args.devices,
        processes=args.processes,
        scenarios=[s for s in args.scenarios.split(",") if s],
        drain=args.drain,
        workdir=Path(args.workdir) if args.workdir else None,
        gateway_env=dict(item.split("=", 1) for item in args.gateway_env),
    )
    print_report(format_load_report(report), report, args.report)
    return 0


def register(bench: Any, default_model: str) -> None:
    """Add ``load`` to ``edgecascade bench``."""
    p = bench.add_parser("load", help="the gateway daemon under open-loop load, against an echo ceiling")
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per rate (default %(default)s)")
    p.add_argument(
        "--rates", default=",".join(map(str, DEFAULT_RATES)), help="requests/s, stepped (%(default)s)"
    )
    p.add_argument("--devices", type=int, default=16, help="simulated devices (default %(default)s)")
    p.add_argument("--processes", type=int, default=2, help="generator processes (default %(default)s)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="gateway rows besides echo (%(default)s)")
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait for replies after each rate")
    p.add_argument(
        "--workdir", help="keep the services' state and logs here (default: a temporary directory)"
    )
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        type=_setting,
        metavar="EC_SECTION__KEY=VALUE",
        help="a gateway setting for the run, repeatable",
    )
    p.set_defaults(func=_run)


def _setting(text: str) -> str:
    """An ``EC_…=value`` argument, checked when it is parsed."""
    import argparse

    if not text.startswith("EC_") or "=" not in text:
        raise argparse.ArgumentTypeError(f"expected EC_SECTION__KEY=VALUE, got {text!r}")
    return text
