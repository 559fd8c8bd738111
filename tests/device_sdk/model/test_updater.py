"""ModelUpdater with an in-memory cloud: verify before install, refuse and retry, never downgrade.

The bundles hold random bytes in place of LiteRT partitions (:mod:`tests.fake_bundle`) and
``install`` only records what it was given: what is tested is which bundles get that far.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.announcement import Announcement, release_path
from edgecascade.device_sdk.model.bundle import MANIFEST, Bundle, load_bundle, sign_bundle, write_manifest
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.device_sdk.model.updater import ModelUpdater, UpdateSettings, installed_bundle
from edgecascade.device_sdk.transport.fetch import InMemoryFetcher
from tests.fake_bundle import make_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("keys"))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Cloud:
    """Release directories served by route, with a hook to corrupt what goes out."""

    def __init__(self) -> None:
        self.releases: dict[str, Path] = {}
        self.fetched: list[str] = []
        self.corrupt: set[str] = set()  # file names served with one byte flipped

    def add(self, path: Path, key: Path, version: int, rollback_of: int | None = None) -> Announcement:
        sign_bundle(path, key)
        self.releases[release_path(version, rollback_of)] = path
        sha = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
        return Announcement("test-model", version, sha, rollback_of=rollback_of, issued_at=time.time())

    def __call__(self, route: str) -> bytes | None:
        self.fetched.append(route)
        base, _, name = route.rpartition("/")
        if base not in self.releases or not (self.releases[base] / name).is_file():
            return None
        data = bytearray((self.releases[base] / name).read_bytes())
        if name in self.corrupt:
            data[len(data) // 2] ^= 0x01
        return bytes(data)


class Node:
    """A node running ``bundle``, following announcements through an updater."""

    def __init__(self, bundle: Path, cloud: Cloud, public: Path, state: Path) -> None:
        self.bundle = load_bundle(bundle, ("device",))
        self.installed: list[Bundle] = []
        settings = UpdateSettings(enabled=True, dir=state, retry_initial=0.05, retry_max=0.2)
        self.updater = ModelUpdater(
            settings,
            public_key=public,
            tiers=("device",),
            running=lambda: self.bundle.manifest,
            install=self.install,
            fetcher=InMemoryFetcher(cloud),
        )
        self.updater.start()

    def install(self, bundle: Bundle) -> None:
        self.installed.append(bundle)
        self.bundle = bundle


@pytest.fixture
def node_factory(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[Callable[[Path, Cloud], Node]]:
    nodes: list[Node] = []

    def make(bundle: Path, cloud: Cloud) -> Node:
        nodes.append(Node(bundle, cloud, keys[1], tmp_path / f"state-{len(nodes)}"))
        return nodes[-1]

    yield make
    for node in nodes:
        node.updater.stop()


def test_announced_release_is_verified_and_installed_with_only_its_tier(
    tmp_path: Path, keys: tuple[Path, Path], node_factory: Callable[[Path, Cloud], Node]
) -> None:
    cloud = Cloud()
    cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    v2 = cloud.add(make_bundle(tmp_path / "v2", version=2, seed=2), keys[0], 2)
    node = node_factory(tmp_path / "v1", cloud)
    assert node.updater.offer(v2.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.updater.counters["updates_installed"] == 1)
    assert node.bundle.manifest.version == 2
    assert [p.rpartition("/")[2] for p in cloud.fetched] == ["manifest.json", "manifest.sig", "device.tflite"]
    installed = node.installed[0]
    assert installed.path.parent == node.updater.dir and not (installed.path / "gateway.tflite").exists()
    assert node.updater.pending is None
    # a restarted node starts from it, unless the configured bundle is newer
    assert installed_bundle(node.updater.dir, keys[1], ("device",), 1).manifest.version == 2  # type: ignore[union-attr]
    assert installed_bundle(node.updater.dir, keys[1], ("device",), 3) is None


def test_corrupt_download_is_refused_and_retried_with_back_off(
    tmp_path: Path, keys: tuple[Path, Path], node_factory: Callable[[Path, Cloud], Node]
) -> None:
    cloud = Cloud()
    cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    v2 = cloud.add(make_bundle(tmp_path / "v2", version=2, seed=2), keys[0], 2)
    cloud.corrupt.add("device.tflite")
    node = node_factory(tmp_path / "v1", cloud)
    node.updater.offer(v2.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.updater.counters["update_failed_BundleError"] >= 3)
    assert node.bundle.manifest.version == 1 and not node.installed
    assert "does not match its sha256" in (node.updater.last_error or "")
    assert not [p for p in node.updater.dir.iterdir() if p.name != ".lock"]  # staging cleaned up
    cloud.corrupt.clear()
    assert wait_until(lambda: node.bundle.manifest.version == 2)
    assert wait_until(lambda: node.updater.last_error is None)


def test_foreign_signature_forged_announcement_and_wrong_manifest_are_refused(
    tmp_path: Path, keys: tuple[Path, Path], node_factory: Callable[[Path, Cloud], Node]
) -> None:
    other = generate_signing_key(tmp_path / "other")
    cloud = Cloud()
    cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    foreign = cloud.add(make_bundle(tmp_path / "v2", version=2), other[0], 2)  # signed by another key
    node = node_factory(tmp_path / "v1", cloud)
    assert not node.updater.offer(foreign.sign(other[0]).to_bytes())  # forged announcement: dropped
    assert node.updater.counters["announcement_rejected_SignatureError"] == 1 and not cloud.fetched
    node.updater.offer(foreign.sign(keys[0]).to_bytes())  # real announcement, foreign bundle
    assert wait_until(lambda: node.updater.counters["update_failed_SignatureError"] >= 2)
    assert not any(p.endswith(".tflite") for p in cloud.fetched)  # nothing fetched past the signature
    v3 = cloud.add(make_bundle(tmp_path / "v3", version=3), keys[0], 3)
    lying = Announcement("test-model", 3, "00" * 32).sign(keys[0])  # not v3's manifest
    node.updater.offer(lying.to_bytes())
    assert wait_until(lambda: node.updater.counters["update_failed_BundleError"] >= 1)
    assert "not the announced one" in (node.updater.last_error or "")
    node.updater.offer(v3.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.bundle.manifest.version == 3)
    assert [b.manifest.version for b in node.installed] == [3]


def test_older_version_is_refused_for_good_and_a_signed_rollback_accepted(
    tmp_path: Path, keys: tuple[Path, Path], node_factory: Callable[[Path, Cloud], Node]
) -> None:
    cloud = Cloud()
    old = cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    cloud.add(make_bundle(tmp_path / "v2", version=2, seed=2), keys[0], 2)
    node = node_factory(tmp_path / "v2", cloud)
    node.updater.offer(old.sign(keys[0]).to_bytes())  # e.g. a replayed announcement
    assert wait_until(lambda: node.updater.counters["update_failed_RollbackError"] == 1)
    fetched = len(cloud.fetched)
    time.sleep(0.4)  # longer than retry_max: a refusal by the version rule is not retried
    assert len(cloud.fetched) == fetched and node.bundle.manifest.version == 2
    rollback_dir = tmp_path / "v1-rollback"
    shutil.copytree(tmp_path / "v1", rollback_dir)
    write_manifest(rollback_dir, replace(load_bundle(rollback_dir).manifest, rollback_of=2))
    rollback = cloud.add(rollback_dir, keys[0], 1, rollback_of=2)
    node.updater.offer(rollback.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.bundle.manifest.version == 1)
    assert node.bundle.manifest.rollback_of == 2


def test_without_announcements_the_node_polls_the_current_release_and_verifies_it_the_same_way(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    other = generate_signing_key(tmp_path / "other")
    cloud = Cloud()
    cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    v2 = cloud.add(make_bundle(tmp_path / "v2", version=2, seed=2), keys[0], 2)
    answers: list[bytes | None] = [
        b"not json",
        json.dumps({"announcement": asdict(v2.sign(other[0]))}).encode(),
    ]

    def serve(route: str) -> bytes | None:
        if route == "/v1/models/current":
            return answers[0] if answers else json.dumps({"announcement": asdict(v2.sign(keys[0]))}).encode()
        return cloud(route)

    running = [load_bundle(tmp_path / "v1", ("device",))]
    updater = ModelUpdater(
        UpdateSettings(
            enabled=True, dir=tmp_path / "state", retry_initial=0.05, retry_max=0.2, poll_interval=0.05
        ),
        public_key=keys[1],
        tiers=("device",),
        running=lambda: running[-1].manifest,
        install=running.append,
        fetcher=InMemoryFetcher(serve),
    )
    updater.start()  # no subscriber: the checks are the only way it hears of v2
    try:
        assert wait_until(lambda: updater.counters["poll_failed_JSONDecodeError"] == 1)
        answers.pop(0)
        assert wait_until(lambda: updater.counters["announcement_rejected_SignatureError"] >= 1)
        assert running[-1].manifest.version == 1 and not any(r.endswith(".tflite") for r in cloud.fetched)
        answers.pop(0)
        assert wait_until(lambda: updater.counters["updates_installed"] == 1)
        assert running[-1].manifest.version == 2 and updater.counters["polls"] >= 2
        polls = updater.counters["polls"]
        assert wait_until(lambda: updater.counters["polls"] > polls + 2)  # keeps checking, installs once
        assert updater.counters["updates_installed"] == 1
    finally:
        updater.stop()


def test_poll_interval_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="poll_interval"):
        UpdateSettings(poll_interval=-1.0)


def with_classes(path: Path, classes: tuple[str, ...]) -> Path:
    """Give the fake bundle at ``path`` another class list (its logits as wide)."""
    manifest = load_bundle(path).manifest
    parts = tuple(replace(p, logits=replace(p.logits, shape=(len(classes),))) for p in manifest.partitions)
    write_manifest(path, replace(manifest, classes=classes, partitions=parts))
    return path


TEN = tuple(f"c{i}" for i in range(10))


@pytest.mark.parametrize(
    "classes",
    [TEN[:9], (*TEN[:9], "renamed"), (TEN[1], TEN[0], *TEN[2:], "new")],
    ids=["shrunk", "renamed", "reordered"],
)
def test_a_class_list_that_does_not_extend_the_running_one_is_refused_for_good(
    tmp_path: Path,
    keys: tuple[Path, Path],
    node_factory: Callable[[Path, Cloud], Node],
    classes: tuple[str, ...],
) -> None:
    cloud = Cloud()
    cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    v2 = cloud.add(with_classes(make_bundle(tmp_path / "v2", version=2, seed=2), classes), keys[0], 2)
    node = node_factory(tmp_path / "v1", cloud)
    node.updater.offer(v2.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.updater.counters["update_failed_ClassListError"] == 1)
    fetched = len(cloud.fetched)
    time.sleep(0.4)  # longer than retry_max: a signed class list will not change, so no retry
    assert len(cloud.fetched) == fetched and not any(p.endswith(".tflite") for p in cloud.fetched)
    assert node.bundle.manifest.version == 2 - 1 and not node.installed  # the old model is kept
    assert "does not begin with the running classes" in (node.updater.last_error or "")


def test_added_classes_are_installed_and_a_signed_rollback_may_drop_them_again(
    tmp_path: Path, keys: tuple[Path, Path], node_factory: Callable[[Path, Cloud], Node]
) -> None:
    cloud = Cloud()
    cloud.add(make_bundle(tmp_path / "v1"), keys[0], 1)
    grown = with_classes(make_bundle(tmp_path / "v2", version=2, seed=2), (*TEN, "new-a", "new-b"))
    v2 = cloud.add(grown, keys[0], 2)
    node = node_factory(tmp_path / "v1", cloud)
    node.updater.offer(v2.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.bundle.manifest.version == 2)
    assert node.bundle.manifest.classes == (*TEN, "new-a", "new-b")
    rollback_dir = tmp_path / "v1-rollback"
    shutil.copytree(tmp_path / "v1", rollback_dir)
    write_manifest(rollback_dir, replace(load_bundle(rollback_dir).manifest, rollback_of=2))
    rollback = cloud.add(rollback_dir, keys[0], 1, rollback_of=2)
    node.updater.offer(rollback.sign(keys[0]).to_bytes())
    assert wait_until(lambda: node.bundle.manifest.version == 1)
    assert node.bundle.manifest.classes == TEN and node.updater.counters["update_failed"] == 0
