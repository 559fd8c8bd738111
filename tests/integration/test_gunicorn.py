"""The cloud under gunicorn, started as in production: HTTPS, a token, real inference, SIGTERM."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
import sqlalchemy as sa

from edgecascade.cloud_service.store import open_engine
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire import codec
from edgecascade.tools.bench_cloud import cloud_requests, server_command, start_server, stop_server
from edgecascade.tools.broker import free_port
from edgecascade.tools.certs import Pki
from edgecascade.training.data import Dataset

pytestmark = pytest.mark.integration


def cloud_answers(bundle_dir: Path, bodies: list[bytes]) -> list[int]:
    """The final exit's labels for request bodies, computed here without the server."""
    bundle = load_bundle(bundle_dir)
    encoding = bundle.manifest.partition("gateway").encoding
    x = np.stack([codec.decode_features(wire.envelope_from_bytes(b).body, encoding) for b in bodies])
    return [int(i) for i in PartitionRunner.from_bundle(bundle, "cloud").run(x).logits.argmax(1)]


def test_gunicorn_serves_inference_over_https_and_stops_cleanly_on_sigterm(
    tmp_path: Path, tiny_bundle: Path, pki: Pki, fmnist: Dataset
) -> None:
    state = tmp_path / "state"
    token = TokenStore(state / "tokens.db").create("gateway", "gateway")[0]
    config = tmp_path / "cloud.toml"
    config.write_text(
        "[cloud]\n"
        f'bundle = "{tiny_bundle}"\n'
        "port = 1\n"  # EC_CLOUD__PORT below wins, as every EC_CLOUD__* override does
        f'token_store = "{state / "tokens.db"}"\n'
        f'database_url = "sqlite:///{state / "cloud.db"}"\n'
        f'blob_dir = "{state / "blobs"}"\n'
        f'tls_cert = "{pki.broker_cert}"\n'
        f'tls_key = "{pki.broker_key}"\n'
    )
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {"EC_CLOUD_CONFIG": str(config), "EC_CLOUD__PORT": str(port)}
    server = start_server("gunicorn", env, port, log, workers=2, threads=2)
    try:
        url = f"https://127.0.0.1:{port}"
        bodies = cloud_requests(load_bundle(tiny_bundle), fmnist.x_test[:16])
        ca = str(pki.ca_cert)  # per request: REQUESTS_CA_BUNDLE would override a session's verify
        with requests.Session() as session:  # one keep-alive connection, as a gateway's link
            session.headers["Authorization"] = f"Bearer {token}"
            replies = [session.post(url + wire.ROUTE_INFER, data=b, timeout=10, verify=ca) for b in bodies]
        refused = requests.post(url + wire.ROUTE_INFER, data=bodies[0], timeout=10, verify=ca)
        assert [r.status_code for r in replies] == [200] * len(bodies)
        results = [wire.decode_result(wire.envelope_from_bytes(r.content).body) for r in replies]
        assert {r.tier for r in results} == {wire.Tier.CLOUD}
        assert [r.label for r in results] == cloud_answers(tiny_bundle, bodies)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    finally:
        code = stop_server(server)
    output = log.read_text()
    assert code == 0, output
    assert len(set(re.findall(r"cloud worker (\d+) ready", output))) == 2, output
    assert "Shutting down: Master" in output and "Traceback" not in output, output


def gunicorn_exit(env: dict[str, str], log: Path) -> int:
    """Run gunicorn until it stops by itself; its exit code (its output in ``log``)."""
    with open(log, "wb") as out:
        return subprocess.run(
            server_command("gunicorn", workers=1, threads=1),
            env=os.environ | env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        ).returncode


def test_a_bad_configuration_stops_gunicorn_before_any_worker_starts(tmp_path: Path) -> None:
    env = {"EC_CLOUD_CONFIG": str(tmp_path / "missing.toml"), "EC_CLOUD__PORT": str(free_port())}
    assert gunicorn_exit(env, tmp_path / "gunicorn.log") == 2
    output = (tmp_path / "gunicorn.log").read_text()
    assert "config file not found" in output and "Booting worker" not in output


def test_a_database_a_newer_release_migrated_stops_gunicorn(tmp_path: Path, tiny_bundle: Path) -> None:
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = open_engine(database)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    env = {
        "EC_CLOUD__BUNDLE": str(tiny_bundle),
        "EC_CLOUD__PORT": str(free_port()),
        "EC_CLOUD__TOKEN_STORE": str(tmp_path / "tokens.db"),
        "EC_CLOUD__DATABASE_URL": database,
        "EC_CLOUD__BLOB_DIR": str(tmp_path / "blobs"),
    }
    assert gunicorn_exit(env, tmp_path / "gunicorn.log") == 3  # "worker failed to boot"
    output = (tmp_path / "gunicorn.log").read_text()
    assert "schema is at revision 9999, which this release does not know" in output
