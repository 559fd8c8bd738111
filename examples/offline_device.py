"""A device with no transport: confident inputs answer at its own exit, the rest offline.

Runs the device partition of a bundle with ``DeviceClient(..., transport=None)``. Inputs the
exit policy finds confident get an ordinary answer from the device; the others still get
the device's best guess, flagged ``degraded`` with ``error == "offline"``: the application
always gets an answer and knows how far to trust it. Needs only
``pip install 'edgecascade[device]'`` (no TensorFlow, no broker).

    python examples/offline_device.py --bundle artifacts/model
    python examples/offline_device.py --bundle artifacts/model --threshold 0.9 --data mine.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from fashion_mnist import CLASSES, add_data_arguments, load_test_images

from edgecascade.device_sdk import DeviceClient, EdgeCascadeError, MaxProbExit, Prediction


def summarise(name: str, predictions: list[Prediction], labels: np.ndarray) -> None:
    if not predictions:
        print(f"{name}: 0 answers")
        return
    accuracy = np.mean([p.label == y for p, y in zip(predictions, labels, strict=True)])
    confidence = np.mean([p.confidence for p in predictions])
    print(f"{name}: {len(predictions)} answers, accuracy {accuracy:.3f}, mean confidence {confidence:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", type=Path, default=Path("artifacts/model"), help="model bundle (default %(default)s)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="answer on the device when its top probability reaches this (default: the manifest's exit)",
    )
    parser.add_argument(
        "--show", type=int, default=5, help="print the first N predictions (default %(default)s)"
    )
    add_data_arguments(parser, n=1000)
    args = parser.parse_args(argv)
    try:
        images, labels = load_test_images(args.data, args.n)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threshold is not None and not 0 < args.threshold <= 1:
        parser.error(f"--threshold is a probability in (0, 1], got {args.threshold}")
    policy = MaxProbExit(args.threshold) if args.threshold is not None else None
    try:
        with DeviceClient.from_bundle(args.bundle, "offline-device", transport=None, policy=policy) as client:
            predictions = client.predict_batch(images)  # one pass of the device partition
    except EdgeCascadeError as exc:
        print(f"offline_device: {exc}", file=sys.stderr)
        return 1
    for i, (pred, label) in enumerate(zip(predictions[: args.show], labels, strict=False)):
        state = f"degraded ({pred.error})" if pred.degraded else "confident"
        print(f"#{i}: {CLASSES[pred.label]:<11} p={pred.confidence:.2f} {state} (true: {CLASSES[label]})")
    exits = [i for i, p in enumerate(predictions) if not p.degraded]
    offline = [i for i, p in enumerate(predictions) if p.degraded]
    summarise("device exit", [predictions[i] for i in exits], labels[exits])
    summarise("degraded (offline)", [predictions[i] for i in offline], labels[offline])
    tiers = {p.tier for p in predictions}
    print(f"all {len(predictions)} answered on the device ({', '.join(sorted(tiers))}); nothing was sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
