"""The model registry and its routes: atomic promotion, signed rollbacks, scoped downloads.

Bundles hold random bytes in place of LiteRT partitions (:mod:`tests.fake_bundle`) and the
cloud's inference is a stand-in that records swaps: what is tested is the registry's
bookkeeping, signatures and HTTP contract.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgecascade.cloud_service.announce import InMemoryAnnouncer
from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, RegistrySettings
from edgecascade.cloud_service.registry import POINTER, ModelRegistry
from edgecascade.device_sdk.errors import RegistryError, RollbackError, SignatureError
from edgecascade.device_sdk.model.announcement import Announcement
from edgecascade.device_sdk.model.bundle import (
    MANIFEST,
    Bundle,
    load_bundle,
    load_verified_update,
    sign_bundle,
)
from edgecascade.device_sdk.model.signing import SIGNATURE, generate_signing_key
from tests.cloud_service.conftest import EchoInference, bearer
from tests.fake_bundle import make_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def registry(tmp_path: Path, keys: tuple[Path, Path]) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models", keys[1], keys[0])
    for version in (1, 2, 3):
        registry.register(make_bundle(tmp_path / f"src-{version}", version=version, seed=version))
    return registry


def test_register_signs_copies_and_refuses_duplicates_and_foreign_bundles(
    registry: ModelRegistry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    assert registry.versions() == [1, 2, 3] and registry.current() is None
    assert not (tmp_path / "src-1" / SIGNATURE).exists()  # the source is left alone
    load_bundle(registry.bundle_dir(1), public_key=keys[1])  # the copy is signed by the cloud
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(tmp_path / "src-1")
    other = generate_signing_key(tmp_path / "other")
    foreign = make_bundle(tmp_path / "foreign", version=4)
    sign_bundle(foreign, other[0])
    with pytest.raises(SignatureError, match="signed with key"):
        registry.register(foreign)
    assert registry.versions() == [1, 2, 3]  # nothing half-registered
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".register")]
    registry.register(make_bundle(tmp_path / "src-5", version=5), metrics={"accuracy": 0.91})
    entry = {e["version"]: e for e in registry.listing()}[5]
    assert entry["metrics"] == {"accuracy": 0.91} and entry["signed"] and not entry["current"]


def test_server_processes_starting_together_adopt_the_first_bundle_once(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """gunicorn's workers open an empty registry at once: none may fail, one v1 is made current."""
    source = make_bundle(tmp_path / "src", version=1)
    root = tmp_path / "models"
    start = threading.Barrier(4)

    def adopt() -> Any:
        registry = ModelRegistry(root, keys[1], keys[0])  # each worker's own registry object
        start.wait()
        return registry.adopt(source)

    with ThreadPoolExecutor(4) as pool:  # flock serialises threads too: each opens the lock file
        releases = list(pool.map(lambda _: adopt(), range(4)))
    assert {r.version for r in releases} == {1}
    registry = ModelRegistry(root, keys[1], keys[0])
    assert registry.versions() == [1] and registry.current() == releases[0]
    shutil.rmtree(source)  # later starts never read the bundle again
    assert registry.adopt(source) == releases[0]


def test_promote_and_rollback_move_one_atomic_pointer(
    registry: ModelRegistry, keys: tuple[Path, Path]
) -> None:
    with pytest.raises(RegistryError) as missing:
        registry.promote(9)
    assert missing.value.status == 404
    registry.promote(1)
    second = registry.promote(2)
    assert (second.version, second.rollback_of, second.history) == (2, None, (1, 2))
    pointer = json.loads((registry.root / POINTER).read_text())
    assert pointer["version"] == 2 and pointer["manifest_sha256"] == _sha(registry.bundle_dir(2) / MANIFEST)
    assert registry.promote(2) == second  # promoting the current version changes nothing
    back = registry.rollback()
    assert (back.version, back.rollback_of, back.history, back.highest) == (1, 2, (1,), 2)
    rollback_dir = registry.release_dir(1, 2)
    # the rollback release is signed and passes where the plain v1 is refused
    assert load_verified_update(rollback_dir, keys[1], 2).manifest.rollback_of == 2
    with pytest.raises(RollbackError):
        load_verified_update(registry.bundle_dir(1), keys[1], 2)
    assert back.manifest_sha256 == _sha(rollback_dir / MANIFEST)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    registry.promote(3)
    again = registry.promote(2)  # an older version, promoted: a rollback from the highest ever
    assert (again.version, again.rollback_of, again.history) == (2, 3, (1, 3, 2))
    assert registry.rollback().version == 3 and registry.current().rollback_of is None  # type: ignore[union-attr]
    assert not [p.name for p in registry.root.iterdir() if p.name.startswith(".current")]


def test_metrics_json_says_whether_a_version_is_a_candidate_promoted_or_rolled_back(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.register(
        make_bundle(tmp_path / "src-4", version=4), metrics={"status": "candidate", "gain": 3.0}
    )
    registry.register(make_bundle(tmp_path / "src-5", version=5), metrics={"status": "candidate"})

    def status(version: int) -> Any:
        return registry.metrics(version).get("status")

    registry.promote(4)
    assert (status(4), status(5)) == ("promoted", "candidate")
    assert registry.metrics(4)["gain"] == 3.0 and registry.metrics(4)["promoted_at"] > 0
    registry.promote(5)
    assert (status(4), status(5)) == ("promoted", "promoted")
    registry.rollback()
    assert (status(4), status(5)) == ("promoted", "rolled_back")
    assert registry.metrics(5)["rolled_back_at"] >= registry.metrics(5)["promoted_at"]
    registry.promote(5)  # back to v5 after the rollback: promoted again
    assert status(5) == "promoted"
    assert "status" not in registry.metrics(1)  # a version without metrics.json gets none


def test_a_version_whose_classes_do_not_extend_the_current_ones_is_refused(
    registry: ModelRegistry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from tests.device_sdk.model.test_updater import TEN, with_classes

    registry.promote(3)
    for version, classes in ((4, TEN[:9]), (5, (TEN[1], TEN[0], *TEN[2:]))):  # shrunk, reordered
        bundle = with_classes(make_bundle(tmp_path / f"src-{version}", version=version), classes)
        with pytest.raises(RegistryError, match="does not begin with the running classes") as info:
            registry.register(bundle)
        assert info.value.status == 409 and version not in registry.versions()
    grown = with_classes(make_bundle(tmp_path / "src-6", version=6), (*TEN, "new"))
    assert registry.register(grown) == 6 and registry.promote(6).version == 6
    assert registry.rollback().version == 3  # back to the classes v6 grew from: allowed
    registry.promote(6)
    shrunk = with_classes(make_bundle(tmp_path / "src-7", version=7), TEN)
    sign_bundle(shrunk, keys[0])
    shutil.copytree(shrunk, registry.root / "v7")  # written straight into the directory, as a job does
    with pytest.raises(RegistryError, match="does not begin with the running classes"):
        registry.promote(7)  # checked again when released
    current = registry.current()
    assert current is not None and current.version == 6


def test_a_candidate_that_does_not_verify_is_never_promoted(registry: ModelRegistry) -> None:
    registry.promote(1)
    tflite = registry.bundle_dir(2) / "gateway.tflite"
    tflite.write_bytes(tflite.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match="does not verify"):
        registry.promote(2)
    assert registry.current().version == 1  # type: ignore[union-attr]


class SwappingEcho(EchoInference):
    """The stand-in inference, recording swaps."""

    def __init__(self) -> None:
        super().__init__()
        self.refresh = None
        self.swapped: list[int] = []

    def swap(self, bundle: Bundle) -> None:
        self.swapped.append(bundle.manifest.version)
        self.bundle = bundle  # type: ignore[assignment]


def _app(registry: ModelRegistry, tmp_path: Path, keys: tuple[Path, Path]) -> tuple[Any, Any, Any]:
    config = CloudConfig(
        CloudSettings(bundle=tmp_path / "unused", token_store=tmp_path / "tokens.db", verify_key=keys[1]),
        RegistrySettings(models_dir=registry.root, signing_key=keys[0], public_url="https://cloud.example"),
    )
    announcer, inference = InMemoryAnnouncer(), SwappingEcho()
    app = create_app(config, inference=inference, announcer=announcer)  # type: ignore[arg-type]
    return app, announcer, inference


def test_routes_scope_downloads_and_announce_promotions(
    registry: ModelRegistry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    registry.promote(1)
    app, announcer, inference = _app(registry, tmp_path, keys)
    store = app.extensions["edgecascade.tokens"]
    device, gateway, admin, enroll = (
        store.create(s, "cam-01")[0] for s in ("device", "gateway", "admin", "enroll")
    )
    http = app.test_client()

    listing = http.get("/v1/models", headers=bearer(device)).get_json()
    assert [m["version"] for m in listing["models"]] == [1, 2, 3] and listing["current"]["version"] == 1
    assert [m["current"] for m in listing["models"]] == [True, False, False]
    assert http.get("/v1/models", headers=bearer(enroll)).status_code == 403
    assert http.get("/v1/models").status_code == 401

    manifest = http.get("/v1/models/2/manifest.json", headers=bearer(device))
    assert manifest.status_code == 200 and manifest.data == (registry.bundle_dir(2) / MANIFEST).read_bytes()
    assert http.get("/v1/models/2/device.tflite", headers=bearer(device)).status_code == 200
    assert http.get("/v1/models/2/gateway.tflite", headers=bearer(device)).status_code == 403
    assert http.get("/v1/models/2/gateway.tflite", headers=bearer(gateway)).status_code == 200
    assert http.get("/v1/models/2/cloud.tflite", headers=bearer(gateway)).status_code == 403
    assert http.get("/v1/models/2/metrics.json", headers=bearer(admin)).status_code == 404
    assert http.get("/v1/models/7/manifest.json", headers=bearer(device)).status_code == 404

    assert http.post("/v1/models/2/promote", headers=bearer(gateway)).status_code == 403
    promoted = http.post("/v1/models/2/promote", headers=bearer(admin))
    assert promoted.status_code == 200 and promoted.get_json()["announced"] is True
    assert inference.swapped == [2]  # the cloud swapped before announcing
    (announcement,) = announcer.published
    announcement.verify(keys[1])
    assert announcement.url == "https://cloud.example/v1/models/2"
    assert announcement.manifest_sha256 == hashlib.sha256(manifest.data).hexdigest()

    rolled = http.post("/v1/models/rollback", headers=bearer(admin)).get_json()
    assert rolled["current"]["rollback_of"] == 2 and inference.swapped == [2, 1]
    latest = announcer.published[-1]
    assert (latest.version, latest.rollback_of) == (1, 2)
    files = http.get("/v1/models/1/rollback-of/2/manifest.json", headers=bearer(gateway))
    assert json.loads(files.data)["rollback_of"] == 2
    assert hashlib.sha256(files.data).hexdigest() == latest.manifest_sha256
    current = http.get("/v1/models/current", headers=bearer(device)).get_json()
    assert Announcement(**current["announcement"]).release == "v1-rollback-of-2"
    conflict = http.post("/v1/models/rollback", headers=bearer(admin))
    assert conflict.status_code == 409 and "nothing to roll back" in conflict.get_json()["message"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
