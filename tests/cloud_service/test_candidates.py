"""Publishing a candidate version: complete or absent, never overwriting, found by the next job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecascade.cloud_service import candidates
from edgecascade.cloud_service.candidates import (
    checkpoint_for,
    next_version,
    publish_candidate,
    published_versions,
)
from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import load_bundle
from tests.fake_bundle import make_bundle
from tests.learning_kit import tree_digest


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "built", version=3)


def test_a_candidate_is_published_with_its_numbers_and_checkpoint(tmp_path: Path, bundle: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "trained.json").write_text("{}")
    models = tmp_path / "models"
    target = publish_candidate(
        bundle,
        3,
        {"gate": {"promote": True}},
        models_dir=models,
        checkpoint_dir=checkpoint,
        extra={"job_id": 7},
    )
    assert target == models / "v3"
    assert load_bundle(target).manifest == load_bundle(bundle).manifest  # the registry's layout
    record = json.loads((target / "metrics.json").read_text())
    assert (record["version"], record["status"], record["job_id"]) == (3, "candidate", 7)
    assert record["metrics"] == {"gate": {"promote": True}}
    assert (target / "checkpoint" / "trained.json").is_file()
    assert published_versions(models) == [3] and next_version(models, current=1) == 4
    assert checkpoint_for(models, 3, Path("fallback")) == target / "checkpoint"
    assert checkpoint_for(models, 2, Path("fallback")) == Path("fallback")


def test_publishing_never_overwrites_and_refuses_a_wrong_version(tmp_path: Path, bundle: Path) -> None:
    models = tmp_path / "models"
    first = publish_candidate(bundle, 3, {"n": 1}, models_dir=models)
    before = tree_digest(first)
    with pytest.raises(ModelError, match="already exists"):
        publish_candidate(bundle, 3, {"n": 2}, models_dir=models)
    with pytest.raises(ModelError, match="holds version 3"):
        publish_candidate(bundle, 4, {}, models_dir=models)
    assert tree_digest(first) == before
    assert sorted(p.name for p in models.iterdir()) == ["v3"]


def test_a_failure_while_publishing_leaves_nothing_behind(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(candidates, "atomic_write", disk_full)  # after the bundle was copied
    models = tmp_path / "models"
    with pytest.raises(OSError, match="disk full"):
        publish_candidate(bundle, 3, {}, models_dir=models)
    assert list(models.iterdir()) == []  # no v3, no hidden staging directory


def test_retraining_and_the_registry_share_one_directory(tmp_path: Path) -> None:
    from edgecascade.cloud_service.config import CloudConfig, RegistrySettings, RetrainSettings
    from edgecascade.device_sdk.errors import ConfigError
    from edgecascade.device_sdk.model.signing import generate_signing_key

    key, _ = generate_signing_key(tmp_path / "keys")
    registry = RegistrySettings(models_dir=tmp_path / "models", signing_key=key)
    assert CloudConfig(registry=registry).models_dir == tmp_path / "models"
    assert CloudConfig(registry=registry).candidate_signing_key == key  # retrain has none: the registry's
    alone = RetrainSettings(models_dir=tmp_path / "alone")
    assert CloudConfig(retrain=alone).models_dir == tmp_path / "alone"
    with pytest.raises(ConfigError, match="must be the same directory"):
        CloudConfig(registry=registry, retrain=RetrainSettings(models_dir=tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="auto_promote needs the model registry"):
        CloudConfig(retrain=RetrainSettings(auto_promote=True))
    CloudConfig(registry=registry, retrain=RetrainSettings(auto_promote=True))  # consistent: accepted


def test_the_announced_url_uses_https_when_the_cloud_serves_tls(tmp_path: Path) -> None:
    from edgecascade.cloud_service.app import own_url
    from edgecascade.cloud_service.config import CloudConfig, CloudSettings

    for name in ("c.pem", "k.pem"):  # the settings check that the files exist, not what they hold
        (tmp_path / name).write_text("-")
    plain = CloudConfig(CloudSettings(host="10.0.0.5", port=8443))
    tls = CloudConfig(
        CloudSettings(host="10.0.0.5", port=8443, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    )
    assert own_url(plain) == "http://10.0.0.5:8443"
    assert own_url(tls) == "https://10.0.0.5:8443"
