"""Cascade reports: the numbers a run produced, as a dict (JSON) and a short table.

Pure functions over the per-input records, so every number in a report can be recomputed
from the ``--predictions`` JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.client import Prediction

TIER_ORDER = ("device", "device_cache", "gateway", "gateway_cache", "cloud")


@dataclass(frozen=True)
class Record:
    """One input's outcome, as written to the predictions file."""

    index: int
    true_label: int
    predicted_label: int
    tier: str
    degraded: bool
    latency_ms: float
    bytes_device_gateway: int
    bytes_gateway_cloud: int

    @classmethod
    def of(cls, index: int, true_label: int, prediction: Prediction) -> Record:
        return cls(
            index,
            int(true_label),
            prediction.label,
            prediction.tier,
            prediction.degraded,
            round(prediction.latency_ms, 4),
            prediction.bytes_sent,
            prediction.bytes_upstream,
        )


def build_report(
    records: Sequence[Record], *, device_only: float, cloud_only: float, **extra: Any
) -> dict[str, Any]:
    """The report of a run: accuracy, share per tier, bytes per input, latency per tier."""
    n = len(records)
    if n == 0:
        raise ValueError("no records to report on")
    correct = sum(r.predicted_label == r.true_label for r in records)
    tiers = [t for t in TIER_ORDER if any(r.tier == t for r in records)]
    latency = {}
    for tier in tiers:
        values = np.array([r.latency_ms for r in records if r.tier == tier])
        latency[tier] = {
            "p50": round(float(np.percentile(values, 50)), 4),
            "p95": round(float(np.percentile(values, 95)), 4),
        }
    return {
        "n": n,
        "accuracy": {
            "cascade": round(correct / n, 6),
            "device_only": round(device_only, 6),
            "cloud_only": round(cloud_only, 6),
        },
        "share": {t: round(sum(r.tier == t for r in records) / n, 6) for t in tiers},
        "bytes_per_input": {
            "device_gateway": round(sum(r.bytes_device_gateway for r in records) / n, 3),
            "gateway_cloud": round(sum(r.bytes_gateway_cloud for r in records) / n, 3),
        },
        "latency_ms": latency,
        "degraded": sum(r.degraded for r in records),
        **extra,
    }


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable table of a report."""
    acc = report["accuracy"]
    lines = [
        f"inputs: {report['n']}    degraded answers: {report['degraded']}",
        f"accuracy: cascade {acc['cascade']:.2%}   device-only {acc['device_only']:.2%}   "
        f"cloud-only (full model) {acc['cloud_only']:.2%}",
        f"bytes per input: device->gateway {report['bytes_per_input']['device_gateway']:.1f}   "
        f"gateway->cloud {report['bytes_per_input']['gateway_cloud']:.1f}",
        "",
        f"{'tier':<14}{'share':>9}{'p50 ms':>10}{'p95 ms':>10}",
    ]
    for tier, share in report["share"].items():
        lat = report["latency_ms"][tier]
        lines.append(f"{tier:<14}{share:>9.2%}{lat['p50']:>10.3f}{lat['p95']:>10.3f}")
    return "\n".join(lines)


def write_predictions(path: Path, records: Iterable[Record]) -> None:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(asdict(record)) + "\n")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def print_report(text: str, report: dict[str, Any], path: str | Path | None) -> None:
    """Print a benchmark's table and, given ``path``, write its JSON report there."""
    print(text)
    if path:
        write_json(Path(path), report)
        print(f"report written to {path}")
