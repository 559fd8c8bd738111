"""The README's "Deploy a site" commands, run as written, make a site whose devices are served.

The commands are taken from the README's own text (the ``sh`` block after its deployment
marker) and run by ``bash -e`` in an empty directory, with three changes a reader would
make too: the tiny bundle is copied where ``edgecascade train`` would write one, and the
broker's and the cloud's ports are free ones. The broker, the cloud and the gateway are
the processes those commands start (Mosquitto from the written config, gunicorn serving
the cloud, ``edgecascade gateway``); a device set up from its key directory's
``device.toml`` then has its requests answered by the gateway and the cloud, none degraded.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from edgecascade.device_sdk import DeviceClient, MqttTransport, load_device_config, load_device_crypto
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.tools.broker import free_port, mosquitto_binary, wait_for_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- The deployment: tests/integration/test_deployment.py runs these commands as written. -->"
TRAIN = "edgecascade train --out site/model"
DEVICE = "cam-01"


def readme_commands() -> str:
    """The shell block after the README's deployment marker."""
    readme = (ROOT / "README.md").read_text()
    assert MARKER in readme, "the README lost its deployment marker"
    return readme.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


def script_for(commands: str, bundle: Path, broker_port: int, cloud_port: int) -> str:
    """The commands with the tiny bundle instead of training, free ports, and a final ``wait``."""
    lines = commands.splitlines()
    trains = [i for i, line in enumerate(lines) if line.startswith(TRAIN)]
    assert len(trains) == 1, "the deployment trains the bundle once, first"
    lines[trains[0]] = f"mkdir -p site && cp -r {bundle} site/model"
    script = "\n".join(lines).replace("8883", str(broker_port)).replace("8080", str(cloud_port))
    return script + "\nwait\n"


@dataclass
class Site:
    root: Path
    process: subprocess.Popen[bytes]
    log: Path
    broker_port: int
    cloud_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def deployed(tiny_bundle: Path) -> Iterator[Site]:
    """The README's commands running in a directory the broker's user may enter, then stopped."""
    commands = readme_commands()
    root = Path(tempfile.mkdtemp(prefix="edgecascade-site-"))  # pytest's are 0700: the broker's
    root.chmod(0o755)  # user (mosquitto, when started as root) could not read its files there
    broker_port, cloud_port = free_port(), free_port()
    (root / "deploy.sh").write_text(script_for(commands, tiny_bundle, broker_port, cloud_port))
    bin_dirs = [str(Path(sys.executable).parent), str(Path(mosquitto_binary()).parent)]
    env = {**os.environ, "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith("EC_")}  # only what the commands set
    log = root / "deploy.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-e", "deploy.sh"], cwd=root, env=env, stdout=out, stderr=out, start_new_session=True
        )
    site = Site(root, process, log, broker_port, cloud_port)
    try:
        yield site
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the script and the daemons it started: a clean stop
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _device(site: Site, keys: Path | None = None) -> DeviceClient:
    """The device as its own directory sets it up: device.toml, certificate and payload keys."""
    keys = keys or site.root / "site" / "pki" / "devices" / DEVICE
    config = load_device_config(keys / "device.toml", env={})
    transport = MqttTransport(config.mqtt, DEVICE)
    verify = site.root / "site" / "pki" / "cloud-signing.pub"
    return DeviceClient.from_bundle(
        site.root / "site" / "model",
        DEVICE,
        transport,
        crypto=load_device_crypto(keys, DEVICE),
        policy=NeverExit(),  # every input goes up: the gateway and the cloud answer
        verify_key=verify,
    )


def _served(client: DeviceClient, image: Any, timeout: float) -> None:
    """Wait until the gateway (just started) answers, not the device on its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.predict(image).degraded:
            return
        time.sleep(0.5)
    raise AssertionError("the gateway never answered")


def test_the_readme_deployment_serves_a_device(deployed: Site, fmnist: Any) -> None:
    for port in (deployed.broker_port, deployed.cloud_port):
        try:
            wait_for_port("127.0.0.1", port, 60, None)
        except Exception:
            pytest.fail(f"nothing listening on {port}; the commands said:\n{deployed.output()}")
        assert deployed.process.poll() is None, deployed.output()
    conf = (deployed.root / "site" / "broker" / "mosquitto.conf").read_text().splitlines()
    assert "user root" not in conf and "use_username_as_clientid true" in conf

    with _device(deployed) as client:
        _served(client, fmnist.x_test[0], timeout=30)
        predictions = client.predict_batch(fmnist.x_test[:40])
    degraded = [p.error for p in predictions if p.degraded]
    assert not degraded, f"{degraded[:3]}\n{deployed.output()}"
    tiers = {p.tier for p in predictions}
    assert tiers <= {"gateway", "cloud"} and "cloud" in tiers and "gateway" in tiers, tiers

    # a new payload key, enrolled through the cloud's API, is one the gateway then serves
    enrolled = _enrol_new_key(deployed)
    with _device(deployed, enrolled) as client:
        _served(client, fmnist.x_test[0], timeout=15)  # the gateway rescans its keys every 5 s at most
        again = client.predict_batch(fmnist.x_test[40:50])
    assert client.crypto is not None and client.crypto.key_id == 2
    assert not [p.error for p in again if p.degraded], deployed.output()


def _enrol_new_key(site: Site) -> Path:
    """A copy of the device's directory with a key generation 2 that only the cloud was told of."""
    keys = site.root / "site" / "pki" / "devices" / DEVICE
    copy = site.root / "device-copy"
    shutil.copytree(keys, copy)
    create = ["tokens", "create", "--scope", "enroll", "--name", DEVICE, "--config", "site/cloud.toml"]
    token = subprocess.run(
        [sys.executable, "-m", "edgecascade.tools.cli", *create],
        cwd=site.root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    private = x25519.X25519PrivateKey.generate()
    (copy / "x25519-k2.key").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    response = requests.post(
        f"https://127.0.0.1:{site.cloud_port}/v1/devices/enroll",
        json={"device_id": DEVICE, "public_key": base64.b64encode(public).decode(), "key_id": 2},
        headers={"Authorization": f"Bearer {token}"},
        verify=str(site.root / "site" / "pki" / "ca.pem"),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert (
        site.root / "site" / "pki" / "device-keys" / f"{DEVICE}.k2.pub"
    ).is_file()  # the gateways' keyring
    return copy
