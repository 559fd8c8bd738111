from __future__ import annotations

import subprocess
import sys

from edgecascade import device_sdk


def test_importing_the_sdk_does_not_import_tensorflow() -> None:
    code = (
        "import sys, edgecascade.device_sdk, edgecascade.device_sdk.transport.mqtt, "
        "edgecascade.edge_gateway.daemon, edgecascade.cloud_service; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_is_curated() -> None:
    assert sorted(device_sdk.__all__) == device_sdk.__all__
    for name in device_sdk.__all__:
        assert hasattr(device_sdk, name), name
