"""``edgecascade bench accuracy``: what the cascade costs and saves, in both inference modes.

One run measures a partitioned bundle (one multi-exit network cut in three) and a
models-mode bundle (three separate networks, each on the raw input) on the same images.
For each, every way of answering comes from the same LiteRT partitions: device-only (exit 1
answers everything), gateway-only (exit 2), cloud-only (the last model) and the cascade at
the manifest's calibrated thresholds. Bytes are the sizes of the real envelopes the tiers
would send (header + encoded features or input), and the baseline is the raw image
offloaded through the same envelope. Each tier's partition is timed on what it receives. A
sweep over the device threshold shows the trade between accuracy and the share of inputs
that leave the device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.chain import ChainOutputs, run_partitions
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import MODELS, MODES, PARTITIONED, Bundle, load_bundle
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire import codec
from edgecascade.training.calibration import cascade_predictions

logger = logging.getLogger(__name__)

DEVICE_ID = "bench-device-0001"  # a realistic id length: it is part of every envelope
TIERS = ("device", "gateway", "cloud")
SWEEP_GRID = (*np.round(np.arange(0.0, 0.96, 0.05), 2), 0.97, 0.98, 0.99, 0.995, 0.999, 1.01)
TIMED_IMAGES = 500
DEFAULT_MODELS_BUNDLE = Path("artifacts/models")
HOW_TO_TRAIN = {
    PARTITIONED: "`edgecascade train`",
    MODELS: "`edgecascade train --preset large` then `edgecascade train --preset models`",
}


def envelope_bytes(body: bytes) -> int:
    """Size of an INFER_REQUEST envelope from :data:`DEVICE_ID` carrying ``body``."""
    header = wire.Header(wire.MessageType.INFER_REQUEST, DEVICE_ID, 1)
    return len(wire.envelope_to_bytes(wire.Envelope(header, body)))


def link_bytes(bundle: Bundle, chain: ChainOutputs, raw: np.ndarray) -> dict[str, int]:
    """Bytes of one request on each link, and of offloading the raw image instead.

    ``chain.features`` are what each tier sends up in either mode: cut features, or in the
    models mode the (normalised) input, so one formula serves both.
    """
    device, gateway = bundle.manifest.partition("device"), bundle.manifest.partition("gateway")
    return {
        "device_gateway": envelope_bytes(codec.encode_features(chain.features[0][0], device.encoding)),
        "gateway_cloud": envelope_bytes(codec.encode_features(chain.features[1][0], gateway.encoding)),
        "raw": envelope_bytes(wire.encode_tensor(np.asarray(raw[0], dtype=np.uint8))),
    }


def run_summary(
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


def tier_inputs(bundle: Bundle, chain: ChainOutputs, raw: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` inputs each tier receives: the normalised image, then what came over the wire."""
    manifest = bundle.manifest
    return {
        "device": manifest.input.normalise(raw[:n]),
        "gateway": codec.through_wire(chain.features[0][:n], manifest.partition("device").encoding),
        "cloud": codec.through_wire(chain.features[1][:n], manifest.partition("gateway").encoding),
    }


def ms_per_image(bundle: Bundle, tier: str, inputs: np.ndarray) -> float:
    """Median time of ``tier``'s partition on one input (batch 1, one thread), in LiteRT."""
    runner = PartitionRunner.from_bundle(bundle, tier, num_threads=1)
    for i in range(min(50, len(inputs))):  # warm-up
        runner.run(inputs[i : i + 1])
    times = []
    for i in range(len(inputs)):
        start = time.perf_counter()
        runner.run(inputs[i : i + 1])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def latency_ms(
    bundle: Bundle, chain: ChainOutputs, raw: np.ndarray, share: dict[str, float]
) -> dict[str, float]:
    """Each tier's compute per input, and the cascade's mean given its ``share`` per tier.

    Every input runs the device partition, those past the device the gateway's too, those
    that reach the cloud all three; no network time is included.
    """
    inputs = tier_inputs(bundle, chain, raw, TIMED_IMAGES)
    ms = {tier: ms_per_image(bundle, tier, inputs[tier]) for tier in TIERS}
    past_device = share["gateway"] + share["cloud"]
    ms["cascade"] = ms["device"] + past_device * ms["gateway"] + share["cloud"] * ms["cloud"]
    return ms


def sweep(
    probs: list[np.ndarray], thresholds: tuple[float, ...], score: str, y: np.ndarray, sizes: dict[str, int]
) -> list[dict[str, float]]:
    """Accuracy and device share as the device threshold moves (the gateway's stays calibrated)."""
    points = []
    for t in SWEEP_GRID:
        labels, taken = cascade_predictions(probs, (float(t), *thresholds[1:]), score)
        summary = run_summary(labels, taken, y, sizes)
        points.append(
            {
                "device_threshold": float(t),
                "accuracy": summary["accuracy"],
                "device_share": summary["share"]["device"],
                "device_gateway_bytes": summary["bytes_per_input"]["device_gateway"],
            }
        )
    return points


def bench_mode(bundle: Bundle, raw: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The accuracy benchmark of one bundle (one inference mode) on raw images ``raw`` with labels ``y``."""
    manifest = bundle.manifest
    chain = run_partitions(bundle, raw)
    probs = chain.probs
    thresholds = tuple(manifest.partition(t).exit.threshold for t in TIERS)
    score = manifest.partition("device").exit.score
    sizes = link_bytes(bundle, chain, raw)
    n = len(y)
    runs = {
        "device_only": run_summary(probs[0].argmax(1), np.zeros(n, int), y, sizes),
        "gateway_only": run_summary(probs[1].argmax(1), np.ones(n, int), y, sizes),
        "cloud_only": run_summary(probs[2].argmax(1), np.full(n, 2), y, sizes),
        "cascade": run_summary(*cascade_predictions(probs, thresholds, score), y, sizes),
    }
    main = runs["cascade"]
    device_gateway = main["bytes_per_input"]["device_gateway"]
    latency = latency_ms(bundle, chain, raw, main["share"])
    return {
        "mode": manifest.mode,
        "model": {"name": manifest.name, "version": manifest.version},
        "n": n,
        "accuracy": {run: summary["accuracy"] for run, summary in runs.items()},
        "share": main["share"],
        "bytes_per_input": main["bytes_per_input"],
        "runs": runs,
        "envelope_bytes": sizes,
        "bytes_ratio_vs_raw": sizes["raw"] / device_gateway if device_gateway else float("inf"),
        "raw_input_leaves_device": manifest.forwards_input,
        "thresholds": list(thresholds),
        "score": score,
        "encodings": {t: manifest.partition(t).encoding for t in TIERS[:-1]},
        "device_partition": {
            "bytes": bundle.file("device").stat().st_size,
            "precision": manifest.partition("device").precision,
            "ms_per_image": latency["device"],
        },
        "latency_ms": latency,
        "sweep": sweep(probs, thresholds, score, y, sizes),
    }


def check_modes(bundle: Bundle, other: Bundle | None) -> None:
    """Refuse two bundles of the same inference mode: the comparison needs one of each."""
    if other is not None and other.manifest.mode == bundle.manifest.mode:
        raise ConfigError(
            f"{bundle.path} and {other.path} are both {bundle.manifest.mode!r} bundles; "
            "compare one partitioned bundle with one models-mode bundle"
        )


def open_bundles(model: Path, models_bundle: Path | None) -> tuple[Bundle, Bundle | None, str | None]:
    """The bundle of ``--model``, the second one if there is one, and how to get it if not.

    An explicitly named second bundle must exist (:class:`ConfigError` otherwise); the
    default one (:data:`DEFAULT_MODELS_BUNDLE`) may be missing, and then only ``model`` is
    measured and the returned line says how to train the missing mode's bundle.
    """
    bundle = load_bundle(model)
    if models_bundle is not None and not models_bundle.exists():
        raise ConfigError(f"--models-bundle {models_bundle} does not exist")
    path = models_bundle or DEFAULT_MODELS_BUNDLE
    if not path.exists():
        missing = next(m for m in MODES if m != bundle.manifest.mode)
        hint = f"no {missing}-mode bundle at {path}, measuring {model} only"
        hint += f" (to make one: {HOW_TO_TRAIN[missing]})"
        return bundle, None, hint
    other = load_bundle(path)
    check_modes(bundle, other)
    return bundle, other, None


def bench_accuracy(
    bundle: Bundle, raw: np.ndarray, y: np.ndarray, other: Bundle | None = None
) -> dict[str, Any]:
    """``bundle``'s report at the top level (as before both modes existed), and under ``modes``
    each bundle's report keyed by its inference mode (``partitioned``, ``models``)."""
    check_modes(bundle, other)
    reports = {b.manifest.mode: bench_mode(b, raw, y) for b in (bundle, other) if b is not None}
    main = reports[bundle.manifest.mode]
    return {**main, "modes": {mode: reports[mode] for mode in MODES if mode in reports}}


def plot_sweep(report: dict[str, Any], path: Path) -> None:
    """Cascade accuracy against the share of inputs leaving the device, one curve per mode.

    Each curve is its mode's device-threshold sweep; a star marks its calibrated thresholds
    and a dashed line of the same colour its cloud-only accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for (mode, r), colour in zip(report["modes"].items(), ("tab:blue", "tab:orange"), strict=False):
        name = f"{mode} ({r['model']['name']} v{r['model']['version']})"
        points = r["sweep"]
        offload = [100 * (1 - p["device_share"]) for p in points]
        ax.plot(offload, [100 * p["accuracy"] for p in points], "o-", ms=3, color=colour, label=name)
        ax.axhline(
            100 * r["accuracy"]["cloud_only"], color=colour, ls="--", lw=1, label=f"{mode}: cloud-only"
        )
        ax.plot(
            100 * (1 - r["share"]["device"]),
            100 * r["accuracy"]["cascade"],
            "*",
            color=colour,
            mec="black",
            ms=13,
            label=f"{mode}: calibrated thresholds",
        )
    ax.set_xlabel("inputs leaving the device (%)")
    ax.set_ylabel("cascade accuracy (%)")
    ax.set_title("accuracy against offload share: device threshold sweep")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _bytes_line(r: dict[str, Any]) -> str:
    raw, ratio = r["envelope_bytes"]["raw"], r["bytes_ratio_vs_raw"]
    sent = r["bytes_per_input"]["device_gateway"]
    if not np.isfinite(ratio):
        return f"raw-image offload {raw} B per input; nothing leaves the device"
    than = f"{ratio:.1f}x fewer bytes" if ratio >= 1 else f"{1 / ratio:.1f}x more bytes"
    return f"raw-image offload {raw} B per input; the cascade sends {sent:.1f} B device->gateway ({than})"


def format_mode(r: dict[str, Any]) -> str:
    """One mode's block: a row per run, bytes against the raw image, the partitions' times."""
    lines = [
        f"{r['mode']}: {r['model']['name']} v{r['model']['version']}, {r['n']} test images, "
        f"thresholds {r['thresholds'][:2]} on {r['score']}",
        f"{'run':<14}{'accuracy':>10}{'device':>9}{'gateway':>9}{'cloud':>9}"
        f"{'B dev->gw':>11}{'B gw->cl':>10}",
    ]
    for run, s in r["runs"].items():
        share, b = s["share"], s["bytes_per_input"]
        lines.append(
            f"{run:<14}{s['accuracy']:>10.2%}{share['device']:>9.1%}{share['gateway']:>9.1%}"
            f"{share['cloud']:>9.1%}{b['device_gateway']:>11.1f}{b['gateway_cloud']:>10.1f}"
        )
    dev, ms = r["device_partition"], r["latency_ms"]
    lines += [
        _bytes_line(r),
        f"device partition: {dev['precision']}, {dev['bytes'] / 1024:.1f} KB",
        f"ms per image (LiteRT, 1 thread): device {ms['device']:.3f}, gateway {ms['gateway']:.3f}, "
        f"cloud {ms['cloud']:.3f}; cascade {ms['cascade']:.3f} (compute only)",
    ]
    return "\n".join(lines)


def format_comparison(modes: dict[str, dict[str, Any]]) -> str:
    """The modes side by side on what separates them."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("cascade accuracy", lambda r: f"{r['accuracy']['cascade']:.2%}"),
        ("cloud-only accuracy", lambda r: f"{r['accuracy']['cloud_only']:.2%}"),
        ("answered on the device", lambda r: f"{r['share']['device']:.1%}"),
        ("B device->gateway per input", lambda r: f"{r['bytes_per_input']['device_gateway']:.1f}"),
        ("raw input leaves the device", lambda r: "yes" if r["raw_input_leaves_device"] else "no"),
        ("device partition KB", lambda r: f"{r['device_partition']['bytes'] / 1024:.1f}"),
        ("device ms per image", lambda r: f"{r['latency_ms']['device']:.3f}"),
        ("cascade ms per input", lambda r: f"{r['latency_ms']['cascade']:.3f}"),
    ]
    lines = [f"{'':<30}" + "".join(f"{mode:>14}" for mode in modes)]
    lines += [f"{label:<30}" + "".join(f"{cell(r):>14}" for r in modes.values()) for label, cell in rows]
    return "\n".join(lines)


def format_accuracy_report(report: dict[str, Any]) -> str:
    """One block per inference mode, then (with both) the short side-by-side comparison."""
    modes = report["modes"]
    blocks = [format_mode(r) for r in modes.values()]
    if len(modes) > 1:
        blocks.append(format_comparison(modes))
    return "\n\n".join(blocks)
