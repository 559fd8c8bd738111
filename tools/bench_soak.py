"""``edgecascade bench soak``: many devices for minutes; nothing lost, nothing leaking.

The site runs as an operator runs it (:class:`~edgecascade.tools.stack.LocalStack`: the
broker, the cloud and the gateway daemon as processes, the bundle as exported, so some
requests go on to the cloud). The devices are light clients
(:func:`edgecascade.tools.bench_load.sweep`): a few processes, each holding the MQTT
connections of some of the devices and publishing requests sealed beforehand, at a steady
total rate. The run is cut into rounds of ``round_seconds`` (each round's requests are
sealed before it starts, so memory stays bounded); after a short warm-up round, the
gateway's resident memory and open file descriptors are read at the start, after every
round and at the end (``/proc``).

The report: requests sent and answered, lost (no reply within the drain, must be 0), error
replies, and the gateway's RSS and descriptors at the start and the end, with the RSS
growth in percent (the target is at most 10 %), and the series per round. The start is
taken after the warm-up, not at idle: the first requests fill buffers and pools once, which
is not a leak (the idle numbers are in the report too).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

RSS_GROWTH_TARGET = 10.0  # percent


def process_usage(pid: int) -> dict[str, float]:
    """Resident memory (MB) and open file descriptors of process ``pid``, from ``/proc``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return {"rss_mb": round(rss, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def bench_soak(
    bundle: Path,
    *,
    minutes: float = 10.0,
    devices: int = 100,
    rate: int = 100,
    processes: int = 4,
    round_seconds: float = 60.0,
    warmup_seconds: float = 10.0,
    drain: float = 3.0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Offer ``rate`` requests/s from ``devices`` devices for ``minutes``; the report."""
    from edgecascade.tools.bench_load import sweep
    from edgecascade.tools.stack import LocalStack

    rounds = max(1, math.ceil(minutes * 60 / round_seconds))
    seconds = minutes * 60 / rounds
    load: dict[str, Any] = {"devices": devices, "processes": processes, "drain": drain}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        root = Path(workdir or tmp)
        with LocalStack(bundle, root / "site") as stack:
            assert stack.broker.process is not None
            gateway = stack.processes["gateway"].pid
            pids = {
                "gateway": gateway,
                "broker": stack.broker.process.pid,
                "cloud": stack.processes["cloud"].pid,
            }

            def run(length: float) -> list[dict[str, Any]]:
                host, port = stack.broker.host, stack.broker.port
                return sweep(stack.pki, host, port, bundle, rates=[rate], seconds=length, pids=pids, **load)

            idle = process_usage(gateway)
            warmup = run(warmup_seconds)
            series = [process_usage(gateway)]
            steps = []
            for _ in range(rounds):
                steps.extend(run(seconds))
                series.append(process_usage(gateway))
    start, end = series[0], series[-1]
    per_round = processes * round(rate / processes * seconds)  # what the generators publish
    sent = rounds * per_round + processes * round(rate / processes * warmup_seconds)
    lost = sum(s["lost"] for s in steps) + sum(s["lost"] for s in warmup)
    return {
        "minutes": minutes,
        "devices": devices,
        "rate_per_s": rate,
        "processes": processes,
        "rounds": rounds,
        "round_seconds": round(seconds, 1),
        "sent": sent,
        "answered": sent - lost,
        "lost": lost,
        "errors": sum(s["errors"] for s in steps) + sum(s["errors"] for s in warmup),
        "p99_ms": max((s["p99_ms"] for s in steps if s["p99_ms"] is not None), default=None),
        "gateway": {
            "idle": idle,
            "start": start,
            "end": end,
            "rss_growth_percent": round((end["rss_mb"] - start["rss_mb"]) / start["rss_mb"] * 100, 2),
            "fd_growth": int(end["fds"] - start["fds"]),
            "series": series,
        },
        "rss_growth_target_percent": RSS_GROWTH_TARGET,
        "warmup": warmup,
        "steps": steps,
    }


def format_soak_report(report: dict[str, Any]) -> str:
    """The headline: lost, RSS and descriptors from start to end."""
    gw = report["gateway"]
    return (
        f"{report['devices']} devices at {report['rate_per_s']:.0f} requests/s for {report['minutes']} min "
        f"({report['rounds']} rounds): lost {report['lost']}, error replies {report['errors']}, "
        f"worst round p99 {report['p99_ms']} ms\n"
        f"gateway RSS {gw['start']['rss_mb']} -> {gw['end']['rss_mb']} MB "
        f"({gw['rss_growth_percent']:+.1f} %, target <= {report['rss_growth_target_percent']:.0f} %; "
        f"idle {gw['idle']['rss_mb']} MB); open descriptors {gw['start']['fds']} -> {gw['end']['fds']}"
    )


def _run(args: Any) -> int:
    from edgecascade.tools.report import print_report

    report = bench_soak(
        Path(args.model),
        minutes=args.minutes,
        devices=args.devices,
        rate=args.rate,
        processes=args.processes,
        round_seconds=args.round_seconds,
        warmup_seconds=args.warmup_seconds,
        drain=args.drain,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    print_report(format_soak_report(report), report, args.report)
    return 0 if report["lost"] == 0 else 1


def register(bench: Any, default_model: str) -> None:
    """Add ``soak`` to ``edgecascade bench``."""
    p = bench.add_parser(
        "soak", help="many devices for minutes: lost answers, gateway memory and descriptors"
    )
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--minutes", type=float, default=10.0, help="how long (default %(default)s)")
    p.add_argument("--devices", type=int, default=100, help="simulated devices (default %(default)s)")
    p.add_argument("--rate", type=int, default=100, help="requests/s over all devices (%(default)s)")
    p.add_argument("--processes", type=int, default=4, help="device processes (default %(default)s)")
    p.add_argument("--round-seconds", type=float, default=60.0, help="seconds per round (%(default)s)")
    p.add_argument(
        "--warmup-seconds", type=float, default=10.0, help="warm-up before the start (%(default)s)"
    )
    p.add_argument("--drain", type=float, default=3.0, help="seconds to wait for replies after each round")
    p.add_argument(
        "--workdir", help="keep the services' state and logs here (default: a temporary directory)"
    )
    p.set_defaults(func=_run)
