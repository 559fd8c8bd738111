"""Export signs bundles; a refused update leaves a running device model answering as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.client import DeviceClient
from edgecascade.device_sdk.errors import BundleError, RollbackError, SignatureError
from edgecascade.device_sdk.model.bundle import MANIFEST, load_bundle, load_verified_update, sign_bundle
from edgecascade.device_sdk.model.signing import SIGNATURE, generate_signing_key
from edgecascade.training import export
from edgecascade.training.data import Dataset
from edgecascade.training.train import TrainedModel


def test_signed_export_and_refused_updates_keep_the_running_model(
    tiny_trained: TrainedModel, tiny_bundle: Path, fmnist: Dataset, tmp_path: Path
) -> None:
    private, public = generate_signing_key(tmp_path / "keys")
    v2 = tmp_path / "v2"
    export.export_bundle(tiny_trained, v2, version=2, signing_key=private)
    assert (v2 / SIGNATURE).is_file()
    client = DeviceClient.from_bundle(v2, "signed-device", verify_key=public)  # offline: device answers only
    x = fmnist.x_test[:32]
    before = np.stack([p.probabilities for p in client.predict_batch(x)])

    tampered = tmp_path / "v3-tampered"
    shutil.copytree(v2, tampered)
    manifest = json.loads((tampered / MANIFEST).read_text())
    manifest["version"] = 3
    (tampered / MANIFEST).write_text(json.dumps(manifest))
    sign_bundle(tampered, private)
    data = bytearray((tampered / "device.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "device.tflite").write_bytes(bytes(data))
    refusals = {
        tampered: BundleError,  # a partition changed after signing
        tiny_bundle: SignatureError,  # never signed
    }
    older = tmp_path / "v1-signed"
    shutil.copytree(tiny_bundle, older)
    sign_bundle(older, private)
    refusals[older] = RollbackError  # signed, but older and not a rollback
    for update, error in refusals.items():
        with pytest.raises(error):
            load_verified_update(update, public, client.manifest.version, tiers=("device",))

    after = np.stack([p.probabilities for p in client.predict_batch(x)])
    np.testing.assert_array_equal(after, before)
    assert client.manifest.version == 2
    assert load_bundle(v2, public_key=public).manifest == client.manifest
    client.close()
