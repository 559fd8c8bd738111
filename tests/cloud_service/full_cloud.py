"""The real cloud app with every feature on: registry, learning loop, enrolment, tokens of every scope.

All state lives under one temporary directory; the served bundle is a signed copy of the
one given, registered and promoted as version 1, with a re-signed copy registered as
version 2 so promotion and rollback have something to do. Retraining jobs are recorded,
never run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flask import Flask

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, RegistrySettings, RetrainSettings
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle, write_manifest
from edgecascade.device_sdk.model.signing import generate_signing_key
from tests.learning_kit import RecordingLauncher

DEVICE = "cam-01"  # the name on device and enrolment tokens


@dataclass
class FullCloud:
    app: Flask
    tokens: TokenStore
    launcher: RecordingLauncher

    def token(self, scope: str, name: str = DEVICE, **kwargs: Any) -> str:
        return self.tokens.create(scope, name, **kwargs)[0]


def make_full_cloud(tmp_path: Path, bundle: Path, **create: Any) -> FullCloud:
    """The app on a signed copy of ``bundle``; ``create`` goes to ``create_app`` (e.g. ``inference=``)."""
    signing_key, verify_key = generate_signing_key(tmp_path / "keys")
    v1 = tmp_path / "src" / "v1"
    shutil.copytree(bundle, v1)
    sign_bundle(v1, signing_key)
    v2 = tmp_path / "src" / "v2"
    shutil.copytree(v1, v2)
    write_manifest(v2, replace(load_bundle(v1, tiers=()).manifest, version=2))
    sign_bundle(v2, signing_key)
    gateway_key = tmp_path / "gateway-x25519.pub"
    gateway_key.write_bytes(
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    state = tmp_path / "state"
    config = CloudConfig(
        CloudSettings(
            bundle=v1,
            verify_key=verify_key,
            token_store=state / "tokens.db",
            device_keyring=state / "device-keys",
            gateway_public_key=gateway_key,
            database_url=f"sqlite:///{state / 'cloud.db'}",
            blob_dir=state / "blobs",
            max_upload_bytes=256 * 1024,
        ),
        RegistrySettings(models_dir=tmp_path / "models", signing_key=signing_key),
        retrain=RetrainSettings(jobs_dir=tmp_path / "jobs", count_threshold=0, interval_seconds=0),
    )
    launcher = RecordingLauncher()
    app = create_app(config, launcher=launcher, **create)  # an empty registry: registers and promotes v1
    app.extensions["edgecascade.rollout"].registry.register(v2)
    return FullCloud(app, app.extensions["edgecascade.tokens"], launcher)
