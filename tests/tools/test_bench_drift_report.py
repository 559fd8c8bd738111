"""The drift benchmark's report pieces: the offline cascade under a site overlay, the table's site rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.overlay import SiteOverlay
from edgecascade.tools.bench_drift_report import format_drift_report, offline_cascade


def test_the_offline_cascade_takes_the_overlays_thresholds(tiny_bundle: Path, fmnist: Any) -> None:
    bundle = load_bundle(tiny_bundle)
    x, y = fmnist.x_test[:200], fmnist.y_test[:200]
    manifest = bundle.manifest
    plain = offline_cascade(bundle, x, y)
    everything = SiteOverlay(
        manifest.name,
        manifest.version,
        "site-a",
        {"device": dataclasses.replace(manifest.partition("device").exit, threshold=0.0)},
    )
    taken = offline_cascade(bundle, x, y, everything)
    assert 0 < plain["device_share"] < 1 and taken["device_share"] == 1.0
    device_only = float(np.mean(run_partitions(bundle, x).probs[0].argmax(1) == y))
    assert taken["accuracy"] == device_only


def phase(accuracy: float, device_share: float) -> dict[str, Any]:
    return {"accuracy": accuracy, "device_share": device_share, "bytes_per_input": {"device_gateway": 100.0}}


def report(**extra: Any) -> dict[str, Any]:
    return {
        "shift": {"contrast": 0.5, "offset": 60.0},
        "before": {"version": 1, "shifted": phase(0.43, 0.74), "original": phase(0.92, 0.93)},
        "after": {"version": 2, "shifted": phase(0.85, 0.80), "original": phase(0.918, 0.92)},
        "hard_examples_uploaded": 400,
        "hard_examples_lost": 0,
        "job": {"state": "succeeded", "seconds": 300.0},
        "rollout_seconds": 310.0,
        **extra,
    }


def test_the_table_shows_the_site_thresholds_against_the_before_phase() -> None:
    site = {
        "shifted": phase(0.86, 0.91),
        "overlay": {"exits": {"device": {"threshold": 0.6}, "gateway": {"threshold": 0.4}}, "examples": 210},
        "original": phase(0.918, 0.92),
    }
    text = format_drift_report(report(after_site_thresholds=site))
    assert "shifted device share, site" in text and "91.0%" in text and "+17.0 pt" in text
    assert "device 0.6, gateway 0.4" in text and "210 audited examples" in text
    assert "global manifest: 91.8%" in text
    missing = format_drift_report(report(site_thresholds_error="too few"))
    assert "site thresholds: none (too few)" in missing and "shifted device share, site" not in missing
