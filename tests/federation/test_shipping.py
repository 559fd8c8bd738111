"""The aggregate's way out (:mod:`edgecascade.federation.shipping`), on the tiny model and a real registry."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.cloud_service.config import load_cloud_config
from edgecascade.cloud_service.registry import ModelRegistry
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.federation.local_training import model_weights
from edgecascade.federation.shipping import SiteScore, gate_rule, ship
from edgecascade.training.gate import GateRule
from edgecascade.training.train import load_trained


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_a_gated_out_aggregate_leaves_the_served_version_byte_identical(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    signing, verify = generate_signing_key(tmp_path / "keys")
    v1 = tmp_path / "v1"
    shutil.copytree(tiny_model_dir / "bundle", v1)
    sign_bundle(v1, signing)
    registry = ModelRegistry(tmp_path / "models", verify, signing)
    registry.adopt(v1)
    served = registry.current()
    assert served is not None
    before = _tree(tmp_path / "models")
    (tmp_path / "cloud.toml").write_text(
        f"""
[cloud]
bundle = "{v1}"
verify_key = "{verify}"
[registry]
models_dir = "{tmp_path / "models"}"
signing_key = "{signing}"
[retrain]
checkpoint = "{tiny_model_dir / "trained"}"
auto_promote = true
replay_size = 200
val_size = 300
test_size = 300
min_holdout = 1
min_gain = 5
"""
    )
    config = load_cloud_config(tmp_path / "cloud.toml")
    rng = np.random.default_rng(0)
    weights = [
        w + rng.normal(0, 0.01, w.shape).astype(w.dtype)
        for w in model_weights(load_trained(tiny_model_dir / "trained"))
    ]
    bundle: Any = load_bundle(registry.release_dir(served.version), public_key=verify)

    shipped = ship(
        weights,
        config=config,
        served=bundle,
        checkpoint=tiny_model_dir / "trained",
        sites_current=SiteScore(0.80, 400),
        sites_candidate=SiteScore(0.81, 400),  # +1 point: short of the 5 the gate asks
        workdir=tmp_path / "run",
        extra={"federated_run": 1},
    )

    assert shipped.state == "rejected" and shipped.version is None
    assert "gain +1.00" in shipped.gate["reason"]
    assert shipped.gate["current"]["new"] == 0.80 and shipped.gate["candidate"]["n_new"] == 400
    assert registry.current() == served
    assert _tree(tmp_path / "models") == before  # nothing served, registered or written changed


def test_the_gate_takes_federated_thresholds_where_set_and_retrains_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(
        "[retrain]\nmin_gain = 2\ntolerance = 0.5\nmin_holdout = 30\n[federated]\ntolerance = 3\n"
    )
    assert gate_rule(load_cloud_config(path, env={})) == GateRule(2.0, 3.0, 30)
    env = {"EC_FEDERATED__MIN_GAIN": "0.1"}
    assert gate_rule(load_cloud_config(path, env=env)) == GateRule(0.1, 3.0, 30)
    path.write_text("[retrain]\nmin_gain = 2\ntolerance = 0.5\n")
    assert gate_rule(load_cloud_config(path, env={})) == GateRule(2.0, 0.5, 20)
