"""Predict Fashion-MNIST test images through a running stack, as a device application does.

Start a stack first with ``edgecascade demo --serve``: it provisions an example device and
writes its settings (``device.toml``, an ``[mqtt]`` table) and ``site.toml`` (device id,
keys directory, bundle) into its site directory, ``artifacts/demo-site`` by default.

    python examples/device_predict.py                 # 300 images, the first 8 shown
    python examples/device_predict.py -n 1000 --show 0 --site /path/to/site
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
from fashion_mnist import CLASSES, add_data_arguments, load_test_images

from edgecascade.device_sdk import (
    DeviceClient,
    EdgeCascadeError,
    MqttTransport,
    TransportError,
    load_device_config,
    load_device_crypto,
)


def predict(site: Path, images: np.ndarray, labels: np.ndarray, show: int) -> None:
    """Each image through the cascade as the site's example device; the first ``show`` printed."""
    facts = tomllib.loads((site / "site.toml").read_text())  # device_id, keys, bundle
    device_id = facts["device_id"]
    config = load_device_config(site / "device.toml")  # [mqtt]: broker, CA, client certificate; [offload]
    crypto = load_device_crypto(facts["keys"], device_id)  # payload keys shared with the gateways
    transport = MqttTransport(config.mqtt, device_id)
    tiers: Counter[str] = Counter()
    correct = 0
    policy = config.offload.build_policy()  # [offload]: by default the manifest's threshold
    with DeviceClient.from_bundle(
        facts["bundle"], device_id, transport, crypto=crypto, policy=policy
    ) as client:
        if not transport.connected:  # the client would answer alone, flagged degraded; say why instead
            raise TransportError(f"no broker at {config.mqtt.host}:{config.mqtt.port}; is the stack up?")
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            pred = client.predict(image)  # uint8 28x28 image
            tiers[pred.tier + (" (degraded)" if pred.degraded else "")] += 1
            correct += pred.label == label
            if i < show:
                print(
                    f"#{i}: {CLASSES[pred.label]:<11} p={pred.confidence:.2f} from {pred.tier:<12} "
                    f"{pred.latency_ms:6.1f} ms, {pred.bytes_sent} B sent (true: {CLASSES[label]})"
                )
    print(f"accuracy: {correct / len(labels):.3f} on {len(labels)} inputs")
    mix = ", ".join(f"{tier} {count}" for tier, count in tiers.most_common())
    print(f"tier mix: {mix} ({sum(tiers.values())} inputs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--site",
        type=Path,
        default=Path("artifacts/demo-site"),
        help="the directory `edgecascade demo --serve` keeps the stack in (default %(default)s)",
    )
    parser.add_argument(
        "--show", type=int, default=8, help="print the first N predictions (default %(default)s)"
    )
    add_data_arguments(parser, n=300)
    args = parser.parse_args(argv)
    if not (args.site / "site.toml").is_file():
        parser.error(f"no site.toml in {args.site}: start a stack with `edgecascade demo --serve` first")
    try:
        images, labels = load_test_images(args.data, args.n)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        predict(args.site, images, labels, args.show)
    except EdgeCascadeError as exc:
        print(f"device_predict: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
