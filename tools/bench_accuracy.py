"""``edgecascade bench accuracy``: what the cascade costs and saves against running the full model.

All modes are computed in one run from the same LiteRT partitions on the same images:
device-only (exit 1 answers everything), gateway-only (exit 2), cloud-only (the full
model, exit 3) and the cascade at the manifest's calibrated thresholds. Bytes are the sizes
of the real envelopes the tiers would send (header + encoded features), and the baseline
is the raw image offloaded through the same envelope. A sweep over the device threshold
shows the trade between accuracy and the share of inputs that never leave the device.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.chain import ChainOutputs, run_partitions
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire import codec
from edgecascade.training.calibration import cascade_predictions

logger = logging.getLogger(__name__)

DEVICE_ID = "bench-device-0001"  # a realistic id length: it is part of every envelope
TIERS = ("device", "gateway", "cloud")
SWEEP_GRID = (*np.round(np.arange(0.0, 0.96, 0.05), 2), 0.97, 0.98, 0.99, 0.995, 0.999, 1.01)


def envelope_bytes(body: bytes) -> int:
    """Size of an INFER_REQUEST envelope from :data:`DEVICE_ID` carrying ``body``."""
    header = wire.Header(wire.MessageType.INFER_REQUEST, DEVICE_ID, 1)
    return len(wire.envelope_to_bytes(wire.Envelope(header, body)))


def link_bytes(bundle: Bundle, chain: ChainOutputs, raw: np.ndarray) -> dict[str, int]:
    """Bytes of one request on each link, and of offloading the raw image instead."""
    device, gateway = bundle.manifest.partition("device"), bundle.manifest.partition("gateway")
    return {
        "device_gateway": envelope_bytes(codec.encode_features(chain.features[0][0], device.encoding)),
        "gateway_cloud": envelope_bytes(codec.encode_features(chain.features[1][0], gateway.encoding)),
        "raw": envelope_bytes(wire.encode_tensor(np.asarray(raw[0], dtype=np.uint8))),
    }


def mode_summary(
    labels: np.ndarray, taken: np.ndarray, y: np.ndarray, sizes: dict[str, int]
) -> dict[str, Any]:
    """Accuracy, share per tier and bytes per input on each link for one way of answering."""
    share = {tier: float((taken == i).mean()) for i, tier in enumerate(TIERS)}
    past_device, to_cloud = float((taken > 0).mean()), float((taken > 1).mean())
    return {
        "accuracy": float((labels == y).mean()),
        "share": share,
        "bytes_per_input": {
            "device_gateway": past_device * sizes["device_gateway"],
            "gateway_cloud": to_cloud * sizes["gateway_cloud"],
        },
    }


def device_ms_per_image(bundle: Bundle, raw: np.ndarray, n: int = 500) -> float:
    """Median time of the device partition on one image, one thread, in LiteRT."""
    runner = PartitionRunner.from_bundle(bundle, "device", num_threads=1)
    x = bundle.manifest.input.normalise(raw[:n])
    for i in range(min(50, len(x))):  # warm-up
        runner.run(x[i : i + 1])
    times = []
    for i in range(len(x)):
        start = time.perf_counter()
        runner.run(x[i : i + 1])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def sweep(
    probs: list[np.ndarray], thresholds: tuple[float, ...], score: str, y: np.ndarray, sizes: dict[str, int]
) -> list[dict[str, float]]:
    """Accuracy and device share as the device threshold moves (the gateway's stays calibrated)."""
    points = []
    for t in SWEEP_GRID:
        labels, taken = cascade_predictions(probs, (float(t), *thresholds[1:]), score)
        summary = mode_summary(labels, taken, y, sizes)
        points.append(
            {
                "device_threshold": float(t),
                "accuracy": summary["accuracy"],
                "device_share": summary["share"]["device"],
                "device_gateway_bytes": summary["bytes_per_input"]["device_gateway"],
            }
        )
    return points


def bench_accuracy(bundle: Bundle, raw: np.ndarray, y: np.ndarray, progress: bool = True) -> dict[str, Any]:
    """The accuracy benchmark of ``bundle`` on raw images ``raw`` with labels ``y``."""
    manifest = bundle.manifest
    chain = run_partitions(bundle, raw)
    probs = chain.probs
    thresholds = tuple(manifest.partition(t).exit.threshold for t in TIERS)
    score = manifest.partition("device").exit.score
    sizes = link_bytes(bundle, chain, raw)
    n = len(y)
    modes = {
        "device_only": mode_summary(probs[0].argmax(1), np.zeros(n, int), y, sizes),
        "gateway_only": mode_summary(probs[1].argmax(1), np.ones(n, int), y, sizes),
        "cloud_only": mode_summary(probs[2].argmax(1), np.full(n, 2), y, sizes),
        "cascade": mode_summary(*cascade_predictions(probs, thresholds, score), y, sizes),
    }
    main = modes["cascade"]
    device_gateway = main["bytes_per_input"]["device_gateway"]
    device = manifest.partition("device")
    return {
        "model": {"name": manifest.name, "version": manifest.version},
        "n": n,
        "accuracy": {mode: summary["accuracy"] for mode, summary in modes.items()},
        "share": main["share"],
        "bytes_per_input": main["bytes_per_input"],
        "modes": modes,
        "envelope_bytes": sizes,
        "bytes_ratio_vs_raw": sizes["raw"] / device_gateway if device_gateway else float("inf"),
        "thresholds": list(thresholds),
        "score": score,
        "encodings": {t: manifest.partition(t).encoding for t in TIERS[:-1]},
        "device_partition": {
            "bytes": bundle.file("device").stat().st_size,
            "precision": device.precision,
            "ms_per_image": device_ms_per_image(bundle, raw),
        },
        "sweep": sweep(probs, thresholds, score, y, sizes),
    }


def plot_sweep(report: dict[str, Any], path: Path) -> None:
    """Accuracy against device share over the sweep, the calibrated point and cloud-only marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["sweep"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([100 * p["device_share"] for p in points], [100 * p["accuracy"] for p in points], "o-", ms=3)
    ax.axhline(100 * report["accuracy"]["cloud_only"], color="gray", ls="--", label="cloud-only (full model)")
    ax.plot(
        100 * report["share"]["device"],
        100 * report["accuracy"]["cascade"],
        "r*",
        ms=12,
        label="calibrated thresholds",
    )
    ax.set_xlabel("inputs answered on the device (%)")
    ax.set_ylabel("cascade accuracy (%)")
    ax.set_title(f"{report['model']['name']} v{report['model']['version']}: device threshold sweep")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def format_accuracy_report(report: dict[str, Any]) -> str:
    """A short table: one row per mode, then the ratios that matter."""
    lines = [
        f"{report['n']} test images, thresholds {report['thresholds'][:2]} on {report['score']}",
        f"{'mode':<14}{'accuracy':>10}{'device':>9}{'gateway':>9}{'cloud':>9}"
        f"{'B dev->gw':>11}{'B gw->cl':>10}",
    ]
    for mode, s in report["modes"].items():
        share, b = s["share"], s["bytes_per_input"]
        lines.append(
            f"{mode:<14}{s['accuracy']:>10.2%}{share['device']:>9.1%}{share['gateway']:>9.1%}"
            f"{share['cloud']:>9.1%}{b['device_gateway']:>11.1f}{b['gateway_cloud']:>10.1f}"
        )
    dev = report["device_partition"]
    lines += [
        f"raw-image offload {report['envelope_bytes']['raw']} B per input; cascade sends "
        f"{report['bytes_ratio_vs_raw']:.1f}x fewer bytes device->gateway",
        f"device partition: {dev['precision']}, {dev['bytes'] / 1024:.1f} KB, "
        f"{dev['ms_per_image']:.3f} ms per image",
    ]
    return "\n".join(lines)
