"""How ``edgecascade federated status`` shows the cloud's records of runs and rounds: plain-text tables.

Pure functions over the API's JSON (``GET /v1/federated/runs`` and ``/v1/federated/runs/<id>``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

MAX_SHOWN = 60  # characters of a stage or a refusal list in a table cell


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
