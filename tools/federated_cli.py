"""``edgecascade federated``: collaborative training across the sites, from the command line.

::

    edgecascade federated status [RUN] --cloud URL --token-file F [--json]

``status`` reads the cloud's API with an admin token (``/v1/federated/runs``): without RUN
a table of the newest runs, with RUN that run and a table of its rounds. Each subcommand is
added by its own ``_add_<name>(sub)``. Exit status: 0 done, 1 the cloud refused or could
not be reached (its message is printed), 2 bad arguments or an unreadable token file.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from edgecascade.device_sdk.errors import EdgeCascadeError
from edgecascade.tools.unknown_cli import cloud_client

ROUTE = "/v1/federated/runs"  # the cloud's ROUTE_FEDERATED_RUNS (a client imports no cloud code)
LISTED_RUNS = 20
MAX_SHOWN = 60  # characters of a stage or a refusal list in a table cell


def register(sub: Any) -> None:
    """Add ``federated`` to the top-level subcommands."""
    p = sub.add_parser("federated", help="collaborative training across the sites: runs and their rounds")
    federated_sub = p.add_subparsers(dest="federated", required=True)
    _add_status(federated_sub)


def _cloud_options(p: argparse.ArgumentParser) -> None:
    """The options that reach the cloud's API with an admin token (as ``edgecascade unknown`` has them)."""
    p.add_argument("--cloud", required=True, metavar="URL", help="the cloud's URL")
    p.add_argument("--token-file", required=True, metavar="F", help="a file holding an admin token")
    p.add_argument("--ca-file", metavar="PEM", help="the CA of the cloud's HTTPS certificate")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default %(default)s)")


# ------------------------------------------------------------------------------ status
def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="the newest runs, or one run and its rounds",
        description="Without RUN, the newest runs: state, stage, rounds done of planned, the base and "
        "candidate model versions. With RUN, that run and each round: accepted of sampled sites, late "
        "ones, refused ones with their reasons, mean bytes moved per accepted site, seconds.",
    )
    p.add_argument("run", type=int, nargs="?", metavar="RUN", help="a run's id (default: list the runs)")
    p.add_argument("--json", action="store_true", help="print the cloud's answer as JSON instead")
    _cloud_options(p)
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    path = f"{ROUTE}?limit={LISTED_RUNS}" if args.run is None else f"{ROUTE}/{args.run}"
    with cloud_client(args) as http:
        try:
            answer = http.call_json("GET", path)
        except EdgeCascadeError as exc:
            what = "the runs" if args.run is None else f"run {args.run}"
            print(f"edgecascade: the cloud did not show {what}: {exc}")
            return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif args.run is None:
        print(runs_table(answer["runs"]) if answer["runs"] else "no federated runs yet")
    else:
        print(run_report(answer))
    return 0


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """One line per run: id, state, rounds done/planned, base → candidate version, strategy, stage."""
    rows = [
        [
            str(run["id"]),
            run["state"],
            f"{run['rounds_done']}/{run['rounds_planned']}",
            _versions(run),
            run["strategy"],
            _cut(run["stage"]),
        ]
        for run in runs
    ]
    return table(["run", "state", "rounds", "versions", "strategy", "stage"], rows, right=(0,))


def run_report(run: dict[str, Any]) -> str:
    """A run's summary lines, then a table of its rounds."""
    took = (run["finished"] or time.time()) - run["started"]
    lines = [
        f"run {run['id']}: {run['state']}, {run['strategy']}, {run['rounds_done']}/{run['rounds_planned']} "
        f"rounds, {_versions(run)}",
        f"  started {_when(run['started'])}, "
        + (f"finished after {took:.0f} s" if run["finished"] else f"running for {took:.0f} s"),
        f"  stage: {run['stage']}",
    ]
    if run["flower_run"] is not None:
        lines.append(f"  Flower run {run['flower_run']}")
    if run["gate"] is not None:
        lines.append(f"  gate: {json.dumps(run['gate'], sort_keys=True)}")
    if run["error"]:
        lines.append(f"  error: {run['error']}")
    if not run["rounds"]:
        lines.append("no round has ended yet")
        return "\n".join(lines)
    rows = [
        [
            str(r["server_round"]),
            r["state"],
            f"{r['accepted']}/{r['sampled']}",
            str(r["late"]),
            _refusals(r),
            _bytes(mean_bytes_per_site(r["tally"])),
            f"{r['seconds']:.1f}",
        ]
        for r in run["rounds"]
    ]
    headers = ["round", "state", "accepted", "late", "refused", "bytes/site", "seconds"]
    lines.append(table(headers, rows, right=(0, 2, 3, 5, 6)))
    return "\n".join(lines)


def mean_bytes_per_site(tally: dict[str, Any]) -> float | None:
    """Mean bytes moved per accepted site (its update in, the model out); None when none was accepted."""
    accepted = tally.get("accepted") or {}
    if not accepted:
        return None
    sent = sum(int(tally.get("bytes_in", {}).get(site, 0)) for site in accepted)
    return (sent + int(tally.get("bytes_out", 0)) * len(accepted)) / len(accepted)


def table(headers: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """Plain-text columns, two spaces apart; the columns in ``right`` aligned right."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        shown = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(shown).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _versions(run: dict[str, Any]) -> str:
    base, candidate = run["base_version"], run["candidate_version"]
    return f"{'-' if base is None else f'v{base}'} → {'-' if candidate is None else f'v{candidate}'}"


def _refusals(one_round: dict[str, Any]) -> str:
    refused = one_round["tally"].get("refused") or {}
    if not refused:
        return "0"
    return _cut(
        f"{len(refused)} (" + ", ".join(f"{site}: {why}" for site, why in sorted(refused.items())) + ")"
    )


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
