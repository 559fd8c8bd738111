from __future__ import annotations

from edgecascade import device_sdk
from tests.imports import heavy_imports


def test_importing_the_sdk_and_the_services_does_not_import_tensorflow() -> None:
    modules = ("edgecascade.device_sdk", "edgecascade.device_sdk.transport.mqtt")
    assert heavy_imports(*modules, "edgecascade.edge_gateway.daemon", "edgecascade.cloud_service") == []


def test_public_api_is_curated() -> None:
    assert sorted(device_sdk.__all__) == device_sdk.__all__
    for name in device_sdk.__all__:
        assert hasattr(device_sdk, name), name
