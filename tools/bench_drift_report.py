"""The drift benchmark's numbers: a live phase summed up, the offline cascade, the printed table."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecascade.device_sdk.client import Prediction
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.overlay import SiteOverlay, apply_overlay
from edgecascade.training.calibration import cascade_predictions


def offline_cascade(
    bundle: Bundle, x: np.ndarray, y: np.ndarray, overlay: SiteOverlay | None = None
) -> dict[str, float]:
    """Cascade accuracy and device share of ``bundle`` at its manifest's thresholds (with a site
    ``overlay``: the overlay's), in-process."""
    manifest = apply_overlay(bundle.manifest, overlay)
    probs = run_partitions(bundle, x).probs  # temperatures: the manifest's (an overlay keeps them)
    thresholds = tuple(p.exit.threshold for p in manifest.partitions)
    score = manifest.partitions[0].exit.score
    labels, taken = cascade_predictions(probs, thresholds, score)
    return {"accuracy": float(np.mean(labels == y)), "device_share": float(np.mean(taken == 0))}


def phase_summary(predictions: list[Prediction], y: np.ndarray) -> dict[str, Any]:
    """Live numbers of one phase."""
    labels = np.array([p.label for p in predictions])
    tiers = [p.tier for p in predictions]
    n = max(len(predictions), 1)
    return {
        "n": len(predictions),
        "accuracy": float(np.mean(labels == y)),
        "device_share": tiers.count("device") / n,
        "share": {t: tiers.count(t) / n for t in ("device", "gateway", "cloud")},
        "degraded": sum(p.degraded for p in predictions),
        "bytes_per_input": {
            "device_gateway": sum(p.bytes_sent for p in predictions) / n,
            "gateway_cloud": sum(p.bytes_upstream for p in predictions) / n,
        },
        "model_versions": sorted({p.model_version for p in predictions}),
        "hard_examples": sum(p.hard_example is not None for p in predictions),
    }


def format_drift_report(report: dict[str, Any]) -> str:
    """A short before → after table."""
    rows = []
    for name, key in (
        ("shifted accuracy", ("shifted", "accuracy")),
        ("shifted device share", ("shifted", "device_share")),
        ("original accuracy (offline)", ("original", "accuracy")),
        ("original device share (offline)", ("original", "device_share")),
    ):
        old, new = (report[p][key[0]][key[1]] for p in ("before", "after"))
        rows.append(f"{name:<32} {old:>8.1%} {new:>8.1%} {100 * (new - old):+7.1f} pt")
    site = report.get("after_site_thresholds")
    if site is not None:
        for label, field in (
            ("shifted accuracy, site", "accuracy"),
            ("shifted device share, site", "device_share"),
        ):
            old, new = report["before"]["shifted"][field], site["shifted"][field]
            rows.append(f"{label:<32} {old:>8.1%} {new:>8.1%} {100 * (new - old):+7.1f} pt")
    bytes_old, bytes_new = (
        report[p]["shifted"]["bytes_per_input"]["device_gateway"] for p in ("before", "after")
    )
    rows.append(f"{'bytes/input device->gateway':<32} {bytes_old:>8.0f} {bytes_new:>8.0f}")
    rollout = report["rollout_seconds"]
    if site is not None:
        exits = ", ".join(f"{t} {s['threshold']:g}" for t, s in sorted(site["overlay"]["exits"].items()))
        rows.append(
            f"site thresholds ({exits}) fitted on {site['overlay']['examples']} audited examples; "
            f"original accuracy keeps the global manifest: {site['original']['accuracy']:.1%}"
        )
    elif "site_thresholds_error" in report:
        rows.append(f"site thresholds: none ({report['site_thresholds_error']})")
    lines = [
        f"drift benchmark: shift contrast x{report['shift']['contrast']} + {report['shift']['offset']:.0f}",
        f"{'':<32} {'v' + str(report['before']['version']):>8} {'v' + str(report['after']['version']):>8}",
        *rows,
        f"hard examples: {report['hard_examples_uploaded']} uploaded, {report['hard_examples_lost']} lost; "
        f"job {report['job']['state']} in {report['job']['seconds']:.0f} s; "
        f"rollout {'-' if rollout is None else f'{rollout:.1f} s'} from the trigger",
    ]
    return "\n".join(lines)
