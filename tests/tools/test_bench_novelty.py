"""``bench novelty``: its statistics, its stream, and one quick run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecascade.tools.bench_novelty import auroc, recall_at_fpr, split_known, stream
from edgecascade.tools.cli import main
from edgecascade.training.data import Dataset


def test_auroc_is_the_share_of_known_unknown_pairs_in_the_right_order() -> None:
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    pairs = (known[:, None] > unknown[None, :]).mean() + 0.5 * (known[:, None] == unknown[None, :]).mean()
    assert auroc(known, unknown) == pytest.approx(pairs)
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert recall_at_fpr(np.arange(100.0), np.array([-1.0, 3.0, 50.0])) == pytest.approx(2 / 3)


def test_the_held_out_classes_leave_training_and_come_back_at_their_share(fmnist: Dataset) -> None:
    known, unknown_x, unknown_y = split_known(fmnist, ("Bag", "Ankle boot"))
    assert known.classes == tuple(c for c in fmnist.classes if c not in ("Bag", "Ankle boot"))
    assert set(np.unique(known.y_train)) == set(range(8)) and set(np.unique(unknown_y)) == {8, 9}
    assert len(known.x_test) + len(unknown_x) == len(fmnist.x_test)
    streamed = stream(known, unknown_x, unknown_y, fmnist.classes, 0.1, seed=0)
    x, is_new = streamed.x, streamed.is_new
    assert len(x) == len(known.x_test) + is_new.sum() and is_new.mean() == pytest.approx(0.1, abs=0.001)
    assert set(streamed.names[is_new]) == {"Bag", "Ankle boot"}
    assert set(streamed.names[~is_new]) == set(known.classes)
    with pytest.raises(ValueError, match="no class"):
        split_known(fmnist, ("Hat",))


def test_a_quick_run_reports_every_exit_and_score_and_the_shipped_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "novelty.json"
    args = [
        "bench",
        "novelty",
        "--epochs",
        "1",
        "--subset",
        "3000",
        "--retrain-epochs",
        "1",
        "--replay-size",
        "2000",
        "--no-progress",
        "--report",
        str(report_path),
    ]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    unknown = report["unknown"]
    assert set(unknown["scores"]) == {"device", "gateway", "cloud"}
    # the device's cache keys are calibrated, so it ships the key-space rule
    assert set(unknown["scores"]["device"]) == {"energy", "max_logit", "max_prob", "mahalanobis"}
    assert unknown["rule"]["score"] == "mahalanobis" and "mahalanobis" not in unknown["scores"]["cloud"]
    assert 0.0 <= unknown["auroc"] <= 1.0 and 0.0 <= unknown["upload_precision"] <= 1.0
    assert unknown["known_flagged_share"] == pytest.approx(0.05, abs=0.03)  # calibrated on known inputs
    drift = report["drift"]
    assert drift["undrifted_inputs"] == 100_000 and drift["false_alarms_per_100k"] >= 0
    assert set(drift["shifts"]) == {"camera", "unknown_classes"}
    assert all(s["missed"] + (s["max_delay_inputs"] is not None) >= 1 for s in drift["shifts"].values())
    new = report["new_classes"]  # uploads reached the cloud, were grouped, and one job ran to its end
    by_class = new["uploads"]["by_class"]
    assert new["uploads"]["total"] == sum(by_class.values()) > 0
    assert by_class.get("Bag", 0) <= 50 and by_class.get("Ankle boot", 0) <= 50  # the labelling budget
    assert new["labelled"] == sum(g["size"] for g in new["groups"] if g["named"])
    assert new["job"]["state"] in ("succeeded", "rejected"), new["job"]
    if new["job"]["candidate_version"] is not None:
        known = report["classes"]["known"]
        assert new["classes"][: len(known)] == known and set(new["classes"][len(known) :]) <= {
            "Bag",
            "Ankle boot",
        }
        assert 0.0 <= new["new_classes_accuracy"] <= 1.0
    assert report["stream"]["unknown"] == pytest.approx(0.1 * report["stream"]["n"], abs=2)
    assert "AUROC" in capsys.readouterr().out
    assert main(["bench", "novelty", "--unknown-classes", "Hat", "--epochs", "1"]) == 2
