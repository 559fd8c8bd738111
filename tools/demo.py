"""``edgecascade demo``: train (or reuse) a model, run the whole stack here, report.

Streams the Fashion-MNIST test images one at a time through a real ``DeviceClient`` over a
real Mosquitto broker (TLS with client certificates and ACLs, payloads encrypted end to
end) to the gateway daemon and the cloud service, then prints the share answered by each
tier, the cascade's accuracy beside device-only and full-model accuracy measured in the
same run, bytes per input on each link, and latency per tier.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import BundleError
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.tools.report import Record, build_report, format_report, write_json, write_predictions
from edgecascade.tools.stack import LocalStack

logger = logging.getLogger(__name__)
DEVICE_ID = "demo-device-1"


def ensure_model(model_dir: Path, *, retrain: bool = False, progress: bool = True) -> Bundle:
    """The bundle in ``model_dir``, trained with the quick preset first if missing or broken."""
    if not retrain:
        try:
            bundle = load_bundle(model_dir)
            print(f"reusing model {bundle.manifest.name} v{bundle.manifest.version} in {model_dir}")
            return bundle
        except BundleError as exc:
            print(f"no usable model in {model_dir} ({exc}); training one")
    from edgecascade.training.export import train_and_export
    from edgecascade.training.train import TrainConfig

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


def run_demo(
    model_dir: Path,
    *,
    limit: int | None = None,
    report_path: Path | None = None,
    predictions_path: Path | None = None,
    retrain: bool = False,
    progress: bool = True,
    caches: bool = False,
) -> dict[str, Any]:
    from tqdm import tqdm

    from edgecascade.training.data import load_fashion_mnist

    bundle = ensure_model(model_dir, retrain=retrain, progress=progress)
    data = load_fashion_mnist()
    x, y = data.x_test[:limit], data.y_test[:limit]
    device_only, cloud_only = local_accuracies(bundle, x, y)
    with tempfile.TemporaryDirectory(prefix="edgecascade-demo-") as workdir:
        gateway_env = {"EC_CACHE__ENABLED": "true" if caches else "false"}
        stack = LocalStack(bundle.path, Path(workdir), gateway_env=gateway_env).start()
        try:
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
                elapsed = time.perf_counter() - started
        finally:
            exit_codes = stack.stop()
    report = build_report(
        records,
        device_only=device_only,
        cloud_only=cloud_only,
        model={"name": bundle.manifest.name, "version": bundle.manifest.version},
        throughput_per_s=round(len(records) / elapsed, 1),
        exit_codes=exit_codes,
    )
    print(format_report(report))
    print(f"throughput: {report['throughput_per_s']:.0f} inputs/s (one at a time); exit codes {exit_codes}")
    if report_path:
        write_json(report_path, report)
        print(f"report written to {report_path}")
    if predictions_path:
        write_predictions(predictions_path, records)
        print(f"predictions written to {predictions_path}")
    return report
