"""Test kit for the learning loop: the real cloud app on temporary state, and hard-example records.

Records are made the way a device makes them: its LiteRT partition runs on real images and
the cut-1 features are encoded as the manifest says.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient

from edgecascade.cloud_service.announce import Announcer
from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, RegistrySettings, RetrainSettings
from edgecascade.cloud_service.learning import Learning
from edgecascade.cloud_service.scheduler import Launcher, spawn_job_process
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire import codec


@dataclass
class RecordingLauncher:
    """Starts no process: remembers the spec files it was asked to run (jobs stay queued)."""

    specs: list[Path] = field(default_factory=list)

    def __call__(self, spec_path: Path, log_path: Path) -> subprocess.Popen[bytes] | None:
        self.specs.append(spec_path)
        log_path.write_text("job queued by a test launcher\n")
        return None


@dataclass
class LearningCloud:
    """The cloud app with its learning loop, and tokens of every scope."""

    app: Flask
    client: FlaskClient
    config: CloudConfig
    tokens: TokenStore
    served: Path  # this cloud's private copy of the served bundle

    @property
    def learning(self) -> Learning:
        learning: Learning = self.app.extensions["edgecascade.learning"]
        return learning

    def token(self, scope: str, name: str = "tests") -> str:
        return self.tokens.create(scope, name)[0]

    def auth(self, scope: str, name: str = "tests") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, name)}"}


def make_learning_cloud(
    tmp_path: Path,
    bundle: Path,
    launcher: Launcher | None = None,
    *,
    registry: RegistrySettings | None = None,
    announcer: Announcer | None = None,
    **retrain: Any,
) -> LearningCloud:
    """The real app serving a copy of ``bundle``, all state under ``tmp_path``.

    With ``registry`` the cloud serves from the model registry (which registers and
    promotes the copy as its first version) and retraining publishes into it.
    """
    served = tmp_path / "served"
    shutil.copytree(bundle, served)
    settings = CloudSettings(
        bundle=served,
        token_store=tmp_path / "state" / "tokens.db",
        device_keyring=tmp_path / "state" / "device-keys",
        database_url=f"sqlite:///{tmp_path / 'state' / 'cloud.db'}",
        blob_dir=tmp_path / "state" / "blobs",
        max_upload_bytes=256 * 1024,
    )
    defaults: dict[str, Any] = {
        "models_dir": None if registry is not None else tmp_path / "models",
        "jobs_dir": tmp_path / "jobs",
        "count_threshold": 0,
    }
    config = CloudConfig(
        settings, registry=registry or RegistrySettings(), retrain=RetrainSettings(**(defaults | retrain))
    )
    app = create_app(
        config, launcher=spawn_job_process if launcher is None else launcher, announcer=announcer
    )
    return LearningCloud(app, app.test_client(), config, app.extensions["edgecascade.tokens"], served)


def device_examples(
    bundle: Path, images: np.ndarray, device_id: str = "cam-01", version: int | None = None
) -> list[HardExample]:
    """Hard examples as the device partition of ``bundle`` produces them for ``images`` (cut 1: its
    features, or in the models mode the input)."""
    loaded = load_bundle(bundle)
    spec = loaded.manifest.partition("device")
    runner = PartitionRunner.from_bundle(loaded, "device")
    x = loaded.manifest.input.normalise(images)
    out = runner.run(x)
    sent = x if loaded.manifest.forwards_input else out.features
    assert sent is not None
    examples = []
    for i, (features, logits) in enumerate(zip(sent, out.logits, strict=True)):
        examples.append(
            HardExample(
                device_id=device_id,
                model_version=loaded.manifest.version if version is None else version,
                cut="cut1",
                encoding=spec.encoding,
                features=codec.encode_features(features, spec.encoding),
                reasons=("reached_cloud",),
                predicted=int(logits.argmax()),
                confidence=0.5,
                tier="cloud",
                created_at=1_700_000_000.0 + i,
            )
        )
    return examples


def with_raw(example: HardExample, image: np.ndarray) -> HardExample:
    """The same example with its raw input attached (as an app that opted in sends it)."""
    return replace(example, raw=wire.encode_tensor(np.asarray(image, dtype=np.uint8)))


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes: changes if anything under ``root`` does."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def wait_for_job(client: FlaskClient, headers: dict[str, str], job_id: int, timeout: float) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/<id>`` until the job ends; its last status."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json or {}
        if status["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)
