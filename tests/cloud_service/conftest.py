"""The real cloud Flask app on a temporary token store, with a stand-in for partition 3.

Authentication, scopes, size limits and body validation happen before inference, so these
tests swap the LiteRT model for :class:`EchoInference` and need no trained bundle.
``database_url`` gives each test that takes it an empty database on SQLite and on a real
PostgreSQL (:mod:`tests.pg`, one cluster per session).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.counters import Counters


class EchoInference:
    """Answers every request with a one-class result, counting like :class:`CloudInference`."""

    def __init__(self) -> None:
        self.bundle = SimpleNamespace(manifest=SimpleNamespace(name="stub", version=1))
        self.counters = Counters()
        self.payloads: list[wire.Envelope] = []

    def infer(self, request: wire.Envelope) -> wire.Envelope:
        self.payloads.append(request)
        result = wire.Result(0, np.ones(1, np.float32), wire.Tier.CLOUD)
        return wire.Envelope(request.header.reply(wire.MessageType.RESULT), wire.encode_result(result))


@dataclass
class Cloud:
    app: Flask
    client: FlaskClient
    store: TokenStore
    settings: CloudSettings
    inference: EchoInference

    def token(self, scope: str, name: str = "test", **kwargs: Any) -> str:
        return self.store.create(scope, name, **kwargs)[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def envelope(device_id: str = "cam-01") -> bytes:
    header = wire.Header(wire.MessageType.INFER_REQUEST, device_id, 1)
    return wire.envelope_to_bytes(wire.Envelope(header, b"\x00" * 16))


@pytest.fixture
def make_cloud(tmp_path: Path) -> Callable[..., Cloud]:
    gateway_pub = tmp_path / "gateway-x25519.pub"
    gateway_pub.write_bytes(
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def make(**settings: Any) -> Cloud:
        values: dict[str, Any] = {
            "bundle": tmp_path / "unused",
            "max_body_bytes": 8192,
            "token_store": tmp_path / "state" / "tokens.db",
            "device_keyring": tmp_path / "state" / "device-keys",
            "gateway_public_key": gateway_pub,
        }
        values.update(settings)
        config = CloudConfig(CloudSettings(**values))
        inference = EchoInference()
        app = create_app(config, inference=inference)  # type: ignore[arg-type]
        store = app.extensions["edgecascade.tokens"]
        return Cloud(app, app.test_client(), store, config.cloud, inference)

    return make


@pytest.fixture
def cloud(make_cloud: Callable[..., Cloud]) -> Cloud:
    return make_cloud()
