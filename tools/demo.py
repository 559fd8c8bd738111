"""``edgecascade demo``: train (or reuse) a model, run the whole stack here, report.

Streams the Fashion-MNIST test images one at a time through a real ``DeviceClient`` over a
real Mosquitto broker (TLS with client certificates and ACLs, payloads encrypted end to
end) to the gateway daemon and the cloud service, then prints the share answered by each
tier, the cascade's accuracy beside device-only and full-model accuracy measured in the
same run, bytes per input on each link, and latency per tier.

With ``serve_site`` (``--serve``) the stack then stays up in that directory, with an example
device provisioned there (:func:`write_device_site`) for ``examples/device_predict.py``,
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.device_config import load_device_config
from edgecascade.device_sdk.errors import BundleError, ConfigError
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.tools.report import Record, build_report, format_report, write_json, write_predictions
from edgecascade.tools.stack import LocalStack

logger = logging.getLogger(__name__)
DEVICE_ID = "demo-device-1"
EXAMPLE_DEVICE_ID = "example-device"  # the device the examples run as, on a served site
DEFAULT_SITE = Path("artifacts/demo-site")
SITE_FILE = "site.toml"  # what a device program needs to know: its id, keys, bundle, settings file
DEVICE_SETTINGS_FILE = "device.toml"  # the [mqtt] table load_device_config reads
_SITE_HEADER = "# written by `edgecascade demo --serve`"
SIGINT_GRACE = 5.0  # seconds the daemons get to stop on a Ctrl-C before they are sent SIGTERM


def ensure_model(model_dir: Path, *, retrain: bool = False, progress: bool = True) -> Bundle:
    """The bundle in ``model_dir``, trained with the quick preset first if missing or broken."""
    if not retrain:
        try:
            bundle = load_bundle(model_dir)
            print(f"reusing model {bundle.manifest.name} v{bundle.manifest.version} in {model_dir}")
            return bundle
        except BundleError as exc:
            print(f"no usable model in {model_dir} ({exc}); training one")
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.export import train_and_export

    started = time.perf_counter()
    train_and_export(TrainConfig.quick(), model_dir, progress=progress)
    print(f"trained and exported in {time.perf_counter() - started:.0f} s")
    return load_bundle(model_dir)


def local_accuracies(bundle: Bundle, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Device-only (exit 1) and full-model (exit 3) accuracy, chaining the partitions in LiteRT."""
    logits = run_partitions(bundle, x).logits
    return float(np.mean(logits[0].argmax(1) == y)), float(np.mean(logits[-1].argmax(1) == y))


def _wait_until_served(client: DeviceClient, x: np.ndarray, timeout: float = 30.0) -> None:
    """Send probes until the gateway answers, so start-up is not measured as degradation."""
    policy, client.policy = client.policy, NeverExit()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not client.predict(x).degraded:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not answer within {timeout:.0f} s")
    finally:
        client.policy = policy


# ---------------------------------------------------------------------------- served site
def prepare_site(site: Path) -> Path:
    """``site`` as an empty directory for a stack: new, empty, or left by an earlier ``--serve``.

    A directory an earlier ``--serve`` made (its ``site.toml`` says so) is cleared, unless
    its broker still answers; anything else that is not empty is refused.
    """
    marker = site / SITE_FILE
    if site.exists() and not site.is_dir():
        raise ConfigError(f"--site {site} is not a directory")
    if marker.is_file() and marker.read_text(errors="replace").startswith(_SITE_HEADER):
        port = _broker_port(site)
        if port is not None and _listening(port):
            raise ConfigError(
                f"a stack still serves {site} (its broker answers on port {port}); stop it first"
            )
        shutil.rmtree(site)
    elif site.is_dir() and any(site.iterdir()):
        raise ConfigError(
            f"--site {site} is not empty and was not made by `edgecascade demo --serve`; choose another"
        )
    site.mkdir(parents=True, exist_ok=True)
    return site


def write_device_site(stack: LocalStack, device_id: str = EXAMPLE_DEVICE_ID) -> Path:
    """Provision ``device_id`` on a running stack and describe it in the stack's directory.

    Writes ``device.toml`` (the ``[mqtt]`` table :func:`load_device_config` reads) and
    ``site.toml`` (device id, keys directory, bundle, cloud URL); returns ``site.toml``'s path.
    Paths are absolute: ``site.toml`` is read with ``tomllib``, which resolves nothing, and a
    device program should run from anywhere.
    """
    mqtt, _ = stack.device(device_id)  # issues the certificate and payload keys on first use
    site = stack.workdir.resolve()
    keys = stack.pki.device_dir(device_id).resolve()  # cert, key, CA and payload keys, all in one place
    settings = site / DEVICE_SETTINGS_FILE
    _write_toml(
        settings,
        f"{_SITE_HEADER}: the example device's settings, read with load_device_config",
        {
            "mqtt": {
                "host": mqtt.host,
                "port": mqtt.port,
                "ca_file": keys / "ca.pem",
                "cert_file": keys / "cert.pem",
                "key_file": keys / "key.pem",
            }
        },
    )
    load_device_config(settings, env={})  # what we wrote must load (and its files exist)
    site_file = site / SITE_FILE
    _write_toml(
        site_file,
        f"{_SITE_HEADER}: what a device program needs to know about this site",
        {
            "device_id": device_id,
            "settings": settings,
            "keys": keys,
            "bundle": stack.bundle,
            "cloud_url": stack.cloud_url,
        },
    )
    return site_file


def serve(stack: LocalStack, site_file: Path) -> dict[str, int]:
    """Keep the stack up until SIGINT or SIGTERM (or one of its processes exits), then stop it.

    Returns the exit code of every process of the stack (gateway, cloud, broker). A Ctrl-C in
    a terminal reaches the daemons too (one process group): after SIGINT they get
    :data:`SIGINT_GRACE` seconds to stop on their own before they are sent SIGTERM.
    """
    stopping = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _print_serving(stack, site_file)
        while not stopping.wait(0.5):
            exited = [name for name, process in _processes(stack).items() if process.poll() is not None]
            if exited:
                print(f"{', '.join(exited)} exited on its own; stopping the stack", file=sys.stderr)
                break
    finally:
        if received[:1] == ["SIGINT"]:  # a terminal's Ctrl-C reached the daemons too: let them finish
            _wait_for_exit(stack, SIGINT_GRACE)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = {name: int(process.returncode) for name, process in _processes(stack).items()}
    why = f" on {received[0]}" if received else ""
    print(f"stack stopped{why}: " + ", ".join(f"{name} exit {code}" for name, code in codes.items()))
    return codes


def _wait_for_exit(stack: LocalStack, timeout: float) -> None:
    """Wait up to ``timeout`` s for the stack's processes to exit on their own.

    A signal that reaches a daemon while it is already exiting can kill it outright, and
    its exit code would then say it crashed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in _processes(stack).values()):
        time.sleep(0.05)


def _print_serving(stack: LocalStack, site_file: Path) -> None:
    site = site_file.parent
    facts = tomllib.loads(site_file.read_text())
    command = "python examples/device_predict.py"
    if site != DEFAULT_SITE.resolve():
        command += f" --site {site}"
    admin_token = stack.tokens.create("admin", "demo-dashboard")[0]
    print(
        f"\nstack is up in {site}: broker {stack.broker.host}:{stack.broker.port} (TLS), "
        f"cloud {stack.cloud_url}\n"
        f"example device {facts['device_id']!r}: settings {facts['settings']}, keys {facts['keys']}\n"
        f"dashboard {stack.cloud_url}/dashboard/ (admin token {admin_token}; the certificate is "
        f"the demo CA's), gateway metrics {stack.metrics_url}/metrics\n"
        f"run `{command}` to predict through it; Ctrl-C to stop",
        flush=True,
    )


def _processes(stack: LocalStack) -> dict[str, subprocess.Popen[bytes]]:
    """The stack's processes by name, the broker last (the order they stop in)."""
    found: dict[str, subprocess.Popen[bytes]] = {
        name: stack.processes[name] for name in ("gateway", "cloud") if name in stack.processes
    }
    if stack.broker.process is not None:
        found["broker"] = stack.broker.process
    return found


def _write_toml(path: Path, header: str, table: dict[str, Any]) -> None:
    """A flat TOML file: top-level keys, then one level of tables (all this module needs)."""
    lines = [header]
    for key, value in table.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for name, section in table.items():
        if isinstance(section, dict):
            lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in section.items())]
    path.write_text("\n".join(lines) + "\n")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _broker_port(site: Path) -> int | None:
    try:
        port = tomllib.loads((site / DEVICE_SETTINGS_FILE).read_text())["mqtt"]["port"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None
    return port if isinstance(port, int) else None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------- the run
def _stream(
    stack: LocalStack, bundle: Bundle, x: np.ndarray, y: np.ndarray, *, caches: bool, progress: bool
) -> tuple[list[Record], float]:
    """Each test image through a real device client, one at a time; the records and the time taken."""
    from tqdm import tqdm

    mqtt, crypto = stack.device(DEVICE_ID)
    transport = MqttTransport(mqtt, DEVICE_ID)
    cache = open_cache(bundle, "device") if caches else None
    with DeviceClient(bundle, DEVICE_ID, transport, cache=cache, crypto=crypto) as client:
        _wait_until_served(client, x[0])
        started = time.perf_counter()
        records = [
            Record.of(i, y[i], client.predict(x[i]))
            for i in tqdm(range(len(x)), desc="streaming", unit="img", disable=not progress)
        ]
        return records, time.perf_counter() - started


def run_demo(
    model_dir: Path,
    *,
    limit: int | None = None,
    report_path: Path | None = None,
    predictions_path: Path | None = None,
    retrain: bool = False,
    progress: bool = True,
    caches: bool = False,
    serve_site: Path | None = None,
) -> dict[str, Any]:
    """Run the demo and return its report; with ``serve_site`` keep serving afterwards (see module doc).

    When served, the report's ``exit_codes`` are those of the stack's processes once stopped.
    """
    from edgecascade.training.data import load_fashion_mnist

    bundle = ensure_model(model_dir, retrain=retrain, progress=progress)
    data = load_fashion_mnist()
    x, y = data.x_test[:limit], data.y_test[:limit]
    device_only, cloud_only = local_accuracies(bundle, x, y)
    gateway_env = {"EC_CACHE__ENABLED": "true" if caches else "false"}
    with contextlib.ExitStack() as scope:
        if serve_site is None:
            workdir = Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="edgecascade-demo-")))
        else:
            workdir = prepare_site(serve_site)
        stack = LocalStack(bundle.path, workdir, gateway_env=gateway_env).start()
        scope.callback(stack.stop)  # also on errors and Ctrl-C; stopping twice is harmless
        records, elapsed = _stream(stack, bundle, x, y, caches=caches, progress=progress)
        exit_codes = stack.stop() if serve_site is None else {}
        report = build_report(
            records,
            device_only=device_only,
            cloud_only=cloud_only,
            model={"name": bundle.manifest.name, "version": bundle.manifest.version},
            throughput_per_s=round(len(records) / elapsed, 1),
            exit_codes=exit_codes,
        )
        print(format_report(report))
        throughput = f"throughput: {report['throughput_per_s']:.0f} inputs/s (one at a time)"
        print(throughput if serve_site is not None else f"{throughput}; exit codes {exit_codes}")
        if report_path:
            write_json(report_path, report)
            print(f"report written to {report_path}")
        if predictions_path:
            write_predictions(predictions_path, records)
            print(f"predictions written to {predictions_path}")
        if serve_site is not None:
            report["exit_codes"] = serve(stack, write_device_site(stack))
            if report_path:
                write_json(report_path, report)  # now with the exit codes
    return report
