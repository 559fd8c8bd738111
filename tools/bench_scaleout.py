"""``edgecascade bench scaleout``: one gateway daemon against two in one share group.

Gateways scale out by subscribing to the devices' requests as one MQTT share group
(:mod:`edgecascade.edge_gateway.share`): the broker hands each request to one member. This
benchmark offers the same open-loop sweep (:func:`edgecascade.tools.bench_load.sweep`:
simulated devices publishing pre-sealed requests) first to one gateway, then to two, each
gateway its own process pinned to its own core (``taskset -c N``), started exactly as an
operator starts it. The bundle is a copy whose gateway exit threshold is 0, so every
request is answered by a gateway (none forwarded to the cloud).

The report gives, per setup, each step's numbers and the two headlines: the highest answer
rate whose p99 stays within the limit with none lost, and the highest answer rate at all
(saturation); and the ratio of two gateways to one. The broker, the cloud and the load
generators are not pinned: on a machine with as many cores as gateways they share those
cores, and the ratio shows it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.errors import TransportError

DEFAULT_RATES = (250, 500, 1000, 1500, 2000, 3000, 4000)
READY_LOG = "serving model"


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` to ``cpu`` (``taskset -a -c -p``); later threads inherit."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            continue


def gateway_env(stack: Any, name: str) -> dict[str, str]:
    """The ``EC_…`` settings of another gateway daemon for ``stack``'s site, named ``name``.

    The same payload key as the stack's gateway (so the same share group), its own gateway
    token, MQTT client id and working directory, no metrics listener.
    """
    from edgecascade.tools.stack import gateway_environment

    token = stack.tokens.create("gateway", name)[0]
    return {
        **gateway_environment(stack.pki, stack.broker, stack.bundle, stack.cloud_url, token),
        "EC_GATEWAY__GATEWAY_ID": name,
        "EC_METRICS__PORT": "0",
        **stack.gateway_env,
    }


def spawn_gateway(
    stack: Any, name: str, *, cpu: int | None = None, timeout: float = 60.0
) -> subprocess.Popen[bytes]:
    """Start another gateway daemon of ``stack``'s site (on core ``cpu``), once it serves.

    Its log is ``<workdir>/<name>.log``; stop it with SIGTERM (:func:`stop_gateway`).
    """
    home = stack.workdir / name
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "edgecascade.edge_gateway"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    log_path = stack.workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **gateway_env(stack, name)},
            cwd=home,
        )
    deadline = time.monotonic() + timeout
    while READY_LOG not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_gateway(process)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise TransportError(f"{name} did not start (exit code {process.returncode}):\n{tail}")
        time.sleep(0.05)
    return process


def stop_gateway(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM a gateway started by :func:`spawn_gateway` (SIGKILL after ``timeout``); its exit code."""
    from edgecascade.tools.stack import terminate

    return terminate(process, timeout, "the gateway")


def _headline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    from edgecascade.tools.bench_load import best_step

    best = best_step(steps)
    return {
        "answers_per_s": best["answers_per_s"] if best else 0.0,
        "p99_ms": best["p99_ms"] if best else None,
        "max_answers_per_s": max((s["answers_per_s"] for s in steps), default=0.0),
    }


def _run_setup(
    bundle: Path, workdir: Path, gateways: int, cpus: Sequence[int], load: dict[str, Any]
) -> dict[str, Any]:
    """The sweep against ``gateways`` daemons of one site, the i-th pinned to ``cpus[i]``."""
    from edgecascade.tools.bench_load import sweep
    from edgecascade.tools.stack import LocalStack

    with LocalStack(bundle, workdir) as stack:
        assert stack.broker.process is not None
        first = stack.processes["gateway"].pid
        pin(first, cpus[0])
        extra = [spawn_gateway(stack, f"gateway-{i + 1}", cpu=cpus[i]) for i in range(1, gateways)]
        try:
            pids = {"gateway-1": first, **{f"gateway-{i + 2}": p.pid for i, p in enumerate(extra)}}
            pids["broker"] = stack.broker.process.pid
            steps = sweep(stack.pki, stack.broker.host, stack.broker.port, bundle, pids=pids, **load)
        finally:
            for process in extra:
                stop_gateway(process)
    return {"gateways": gateways, "cpus": list(cpus[:gateways]), "steps": steps, **_headline(steps)}


def bench_scaleout(
    bundle: Path,
    *,
    rates: Sequence[int] = DEFAULT_RATES,
    seconds: float = 3.0,
    devices: int = 16,
    processes: int = 2,
    drain: float = 2.0,
    cpus: Sequence[int] = (0, 1),
    workdir: Path | None = None,
) -> dict[str, Any]:
    """One gateway, then two in one share group, under the same sweep; the report."""
    from edgecascade.tools.bench_load import bundle_with_gateway_threshold

    if len(cpus) < 2:
        raise ValueError("two gateways need two cores to pin them to")
    load = {"rates": rates, "seconds": seconds, "devices": devices, "processes": processes, "drain": drain}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        root = Path(workdir or tmp)
        copy = bundle_with_gateway_threshold(bundle, 0.0, root / "bundle")
        one = _run_setup(copy, root / "one", 1, cpus, load)
        two = _run_setup(copy, root / "two", 2, cpus, load)
    ratio = round(two["answers_per_s"] / one["answers_per_s"], 2) if one["answers_per_s"] else None
    saturated = (
        round(two["max_answers_per_s"] / one["max_answers_per_s"], 2) if one["max_answers_per_s"] else None
    )
    return {
        "rates": list(rates),
        "seconds": seconds,
        "devices": devices,
        "processes": processes,
        "cores": os.cpu_count(),
        "one": one,
        "two": two,
        "ratio": ratio,
        "ratio_saturated": saturated,
    }


def format_scaleout_report(report: dict[str, Any]) -> str:
    """A table per setup, and the ratio."""
    lines = []
    for key in ("one", "two"):
        setup = report[key]
        lines.append(f"{setup['gateways']} gateway(s) on cores {setup['cpus']}:")
        lines.append("  offered/s  answers/s  p50 ms  p99 ms  lost  CPU %")
        for s in setup["steps"]:
            cpu = " ".join(f"{k} {v:.0f}" for k, v in s["cpu_percent"].items())
            p50 = f"{s['p50_ms']:.1f}" if s["p50_ms"] is not None else "-"
            p99 = f"{s['p99_ms']:.1f}" if s["p99_ms"] is not None else "-"
            rate, answers, lost = s["offered_per_s"], s["answers_per_s"], s["lost"]
            lines.append(f"  {rate:>9} {answers:>10.0f} {p50:>7} {p99:>7} {lost:>5}  {cpu}")
    one, two = report["one"], report["two"]
    lines.append(
        f"answers/s within the p99 limit: 1 gateway {one['answers_per_s']:.0f}, 2 gateways "
        f"{two['answers_per_s']:.0f} (x{report['ratio']}); saturated: {one['max_answers_per_s']:.0f} vs "
        f"{two['max_answers_per_s']:.0f} (x{report['ratio_saturated']}) on {report['cores']} cores"
    )
    return "\n".join(lines)


def _run(args: Any) -> int:
    from edgecascade.tools.report import print_report

    report = bench_scaleout(
        Path(args.model),
        rates=[int(r) for r in args.rates.split(",")],
        seconds=args.seconds,
        devices=args.devices,
        processes=args.processes,
        drain=args.drain,
        cpus=[int(c) for c in args.cpus.split(",")],
        workdir=Path(args.workdir) if args.workdir else None,
    )
    print_report(format_scaleout_report(report), report, args.report)
    return 0


def register(bench: Any, default_model: str) -> None:
    """Add ``scaleout`` to ``edgecascade bench``."""
    p = bench.add_parser("scaleout", help="answers/s of one gateway daemon vs two in one share group")
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument(
        "--rates", default=",".join(map(str, DEFAULT_RATES)), help="requests/s, stepped (%(default)s)"
    )
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per rate (default %(default)s)")
    p.add_argument("--devices", type=int, default=16, help="simulated devices (default %(default)s)")
    p.add_argument("--processes", type=int, default=2, help="generator processes (default %(default)s)")
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait for replies after each rate")
    p.add_argument("--cpus", default="0,1", help="the cores the gateways are pinned to (%(default)s)")
    p.add_argument(
        "--workdir", help="keep the services' state and logs here (default: a temporary directory)"
    )
    p.set_defaults(func=_run)
