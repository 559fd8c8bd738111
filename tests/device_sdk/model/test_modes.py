"""The manifest's inference mode: partitioned (cut features go up) or models (the raw input goes up)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import BundleError
from edgecascade.device_sdk.model.bundle import MANIFEST, MODELS, PARTITIONED, load_bundle
from tests.fake_bundle import make_bundle


def rewrite(bundle: Path, change) -> Path:
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    (bundle / MANIFEST).write_text(json.dumps(data))
    return bundle


def as_models_mode(data: dict) -> None:
    """Every partition a whole model on the raw input, the input what goes up."""
    data["mode"] = MODELS
    for part in data["partitions"]:
        part["input"]["shape"] = [28, 28, 1]
        part["features"] = None
        part["encoding"] = "int8" if part["tier"] != "cloud" else "float32"


def test_a_partitioned_manifest_keeps_its_exact_bytes(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    text = (bundle / MANIFEST).read_text()
    manifest = load_bundle(bundle).manifest
    assert manifest.mode == PARTITIONED and not manifest.forwards_input
    assert "mode" not in json.loads(text) and manifest.to_json() == text  # signed bytes of old bundles hold


def test_a_models_mode_manifest_round_trips(tmp_path: Path) -> None:
    bundle = rewrite(make_bundle(tmp_path / "b"), as_models_mode)
    manifest = load_bundle(bundle).manifest
    assert manifest.mode == MODELS and manifest.forwards_input
    assert all(p.features is None and p.input.shape == (28, 28, 1) for p in manifest.partitions)
    assert json.loads(manifest.to_json())["mode"] == MODELS


def test_a_bundle_of_a_mode_this_node_does_not_support_is_refused_at_load(tmp_path: Path) -> None:
    bundle = rewrite(make_bundle(tmp_path / "b"), lambda d: d.update(mode="ensemble"))
    with pytest.raises(BundleError, match=r"unknown mode 'ensemble' \(known: partitioned, models\)"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    "breaks",
    [
        pytest.param(
            lambda d: d["partitions"][1].update(features={"name": "f", "shape": [7, 7, 8]}), id="a-cut"
        ),
        pytest.param(lambda d: d["partitions"][2]["input"].update(shape=[7, 7, 8]), id="not-the-raw-input"),
    ],
)
def test_a_models_mode_manifest_whose_models_do_not_take_the_raw_input_is_refused(
    tmp_path: Path, breaks
) -> None:
    def change(data: dict) -> None:
        as_models_mode(data)
        breaks(data)

    with pytest.raises(BundleError, match="must take the raw input"):
        load_bundle(rewrite(make_bundle(tmp_path / "b"), change))


def test_a_partitioned_manifest_without_cut_features_is_still_refused(tmp_path: Path) -> None:
    bundle = rewrite(make_bundle(tmp_path / "b"), lambda d: d["partitions"][0].update(features=None))
    with pytest.raises(BundleError, match="features do not match"):
        load_bundle(bundle)
