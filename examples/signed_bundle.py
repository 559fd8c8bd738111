"""Sign a model bundle and load it only if the signature verifies, as every tier can.

The cloud signs ``manifest.json`` with its Ed25519 key (``edgecascade sign``); the manifest
holds the sha256 of every partition file, so one signature covers the whole bundle. A node
given the public key (``DeviceClient.from_bundle(..., verify_key=...)``) refuses a bundle
that is unsigned, signed by another key, or changed after signing. This script signs a
copy of a bundle with a fresh key, loads it, then shows each of those refusals.

    python examples/signed_bundle.py --bundle artifacts/model
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgecascade.device_sdk import BundleError, DeviceClient, EdgeCascadeError, SignatureError
from edgecascade.device_sdk.model.bundle import sign_bundle
from edgecascade.device_sdk.model.signing import generate_signing_key


def lower_device_threshold(bundle: Path) -> None:
    """What an attacker might do: make the device answer everything itself."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for partition in manifest["partitions"]:
        if partition["file"] == "device.tflite":
            partition["exit"]["threshold"] = 0.0
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def replace_device_partition(bundle: Path) -> None:
    """Another model file under the signed manifest (one byte is enough)."""
    data = bytearray((bundle / "device.tflite").read_bytes())
    data[-1] ^= 0xFF
    (bundle / "device.tflite").write_bytes(bytes(data))


def refused(name: str, signed: Path, verify_key: Path, change: Callable[[Path], object], work: Path) -> bool:
    """Whether a changed copy of the signed bundle is refused; prints why."""
    copy = work / name.replace(" ", "-")
    shutil.copytree(signed, copy)
    change(copy)
    try:
        DeviceClient.from_bundle(copy, "signed-device", verify_key=verify_key).close()
    except (SignatureError, BundleError) as exc:
        print(f"{name}: refused ({type(exc).__name__}: {exc})")
        return True
    print(f"{name}: ACCEPTED, which it should not be", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", type=Path, default=Path("artifacts/model"), help="model bundle (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        parser.error(
            f"no manifest.json in {args.bundle}: train a model first (`make demo` or `edgecascade train`)"
        )
    with tempfile.TemporaryDirectory(prefix="signed-bundle-") as tmp:
        work = Path(tmp)
        try:
            key, verify_key = generate_signing_key(work / "cloud-keys")  # cloud-signing.key / .pub
            other_key, _ = generate_signing_key(work / "other-keys")
            signed = work / "signed"
            shutil.copytree(args.bundle, signed, ignore=shutil.ignore_patterns("manifest.sig"))
            sign_bundle(signed, key)  # what `edgecascade sign BUNDLE --key cloud-signing.key` does
            with DeviceClient.from_bundle(signed, "signed-device", verify_key=verify_key) as client:
                print(f"signed bundle verified: {client.manifest.name} v{client.manifest.version}")
            checks = [
                refused("unsigned", signed, verify_key, lambda b: (b / "manifest.sig").unlink(), work),
                refused(
                    "signed by another key", signed, verify_key, lambda b: sign_bundle(b, other_key), work
                ),
                refused("manifest changed", signed, verify_key, lower_device_threshold, work),
                refused("partition replaced", signed, verify_key, replace_device_partition, work),
            ]
        except EdgeCascadeError as exc:
            print(f"signed_bundle: {exc}", file=sys.stderr)
            return 1
    print(f"{sum(checks)} of {len(checks)} changed bundles refused")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
