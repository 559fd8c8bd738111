"""``edgecascade bench drift`` on the tiny model: the live loop end to end, and a report that adds up.

Small sizes and a lenient gate (the tiny model loses several points on 500 original test
images after one epoch on shifted data, and it is the loop that is under test here, not
the gate): the job must succeed, so the after phase runs on the promoted version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.tools.bench_drift import DriftOptions, bench_drift, format_drift_report, shift
from edgecascade.tools.cli import main

pytestmark = pytest.mark.integration

SMALL = DriftOptions(
    before=300,
    after=300,
    original=500,
    epochs=1,
    replay_size=256,
    test_size=500,
    val_size=300,
    min_holdout=1,
    min_gain=0.0,
    tolerance=30.0,
    site_min_examples=10,  # about 30 audited examples of 300 images
    progress=False,
)


def test_shift_is_deterministic_and_squeezes_the_range() -> None:
    images = np.array([[0, 128, 255]], dtype=np.uint8)
    assert shift(images).tolist() == [[60, 124, 188]]
    assert shift(images).dtype == np.uint8


def test_the_drift_bench_runs_the_loop_live_and_its_report_adds_up(
    tiny_model_dir: Path, fmnist: Any, tmp_path: Path
) -> None:
    x, y = fmnist.x_test, fmnist.y_test
    report = bench_drift(tiny_model_dir / "bundle", tiny_model_dir / "trained", x, y, SMALL, tmp_path)
    print("\n" + format_drift_report(report))

    assert report["job"]["state"] == "succeeded", report["job"]
    before, after = report["before"], report["after"]
    assert after["version"] == report["job"]["candidate_version"] > before["version"]
    assert before["shifted"]["model_versions"] == [before["version"]]
    assert after["shifted"]["model_versions"] == [after["version"]]
    for phase in (before, after):
        shifted = phase["shifted"]
        assert shifted["n"] == 300 and shifted["degraded"] == 0
        assert 0.0 <= shifted["accuracy"] <= 1.0 and 0.0 <= shifted["device_share"] <= 1.0
        assert sum(shifted["share"].values()) == pytest.approx(1.0)
        assert shifted["share"]["device"] == shifted["device_share"]
        # the live cascade answers what the same bundle answers offline (same partitions, same rule)
        assert shifted["accuracy"] == pytest.approx(shifted["offline"]["accuracy"], abs=0.02)
        assert shifted["device_share"] == pytest.approx(shifted["offline"]["device_share"], abs=0.02)
        assert 0.0 <= phase["original"]["accuracy"] <= 1.0
    assert report["hard_examples_lost"] == 0
    selected = before["shifted"]["hard_examples"]
    assert report["hard_examples_uploaded"] == report["hard_examples_selected"] == selected
    assert report["hard_examples_uploaded"] > 0
    examples = report["job"]["examples"]
    assert (
        examples["train"] + examples["holdout"] + examples["calibration"] >= report["hard_examples_uploaded"]
    )
    assert examples["calibration"] > 0  # audited examples with raw inputs set the new thresholds
    assert report["rollout_seconds"] > 0 and report["promotion_seconds"] < report["rollout_seconds"]
    assert report["job"]["seconds"] <= report["rollout_seconds"]
    registered = tmp_path / "stack" / "models" / f"v{after['version']}"
    assert (registered / "manifest.sig").is_file() and (registered / "checkpoint").is_dir()
    assert json.loads((registered / "metrics.json").read_text())["status"] == "promoted"  # auto-promoted
    assert "cascade" in report["job"]["gate"]["reason"]
    site = report["after_site_thresholds"]  # the site's own thresholds, on part B again
    assert site["overlay"]["version"] == after["version"] and site["overlay"]["site"] == "gateway"
    assert site["overlay"]["examples"] >= 10 and set(site["overlay"]["exits"]) == {"device", "gateway"}
    assert site["shifted"]["n"] == 300 and site["shifted"]["model_versions"] == [after["version"]]
    # the live device exits as the overlay's device threshold says (the offline cascade applies it too)
    live, offline = site["shifted"], site["shifted"]["offline"]
    assert live["device_share"] == pytest.approx(offline["device_share"], abs=0.02)
    assert site["original"] == after["original"]  # other sites keep the global manifest
    assert "shifted device share, site" in format_drift_report(report)


def test_the_cli_refuses_more_images_than_the_test_set_has(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="before \\+ after"):
        main(["bench", "drift", "--before", "9000", "--after", "2000", "--no-progress"])
