"""Shared fixtures: the real Fashion-MNIST data and a tiny trained, exported model bundle.

The tiny model takes ~15 s to train and export, so it is cached across test runs under
pytest's cache directory (``.pytest_cache/d/edgecascade/``), keyed on a hash of the
training sources, the tiny training config and the TensorFlow/Keras versions. A cached
entry is reused only if ``load_bundle`` still verifies it; ``pytest --cache-clear``
rebuilds it. Nothing here imports TensorFlow until a fixture that needs it is used, so
tests asserting that ``edgecascade.device_sdk`` stays TensorFlow-free are not disturbed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecascade.device_sdk.errors import BundleError, DatasetError
from edgecascade.device_sdk.model.bundle import load_bundle
from tests.pg import INSTALL as PG_INSTALL
from tests.pg import PostgresCluster, server_binaries

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
_KEY_SOURCES = (*sorted((_ROOT / "training").glob("*.py")), _ROOT / "device_sdk" / "model" / "bundle.py")


def _versions() -> str:
    found = []
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert"):
        try:
            found.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ",".join(found)


def _cache_key(config: Any) -> str:
    h = hashlib.sha256()
    for path in _KEY_SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(repr(config).encode())
    h.update(_versions().encode())
    return h.hexdigest()[:16]


def _usable(entry: Path) -> bool:
    if not (entry / "trained" / "trained.json").is_file():
        return False
    try:
        load_bundle(entry / "bundle")
    except BundleError:
        return False
    return True


def _traffic_mix_thresholds(probs: list[Any]) -> tuple[float, float, float]:
    """Thresholds that send about half the inputs past the device and a quarter on to the cloud.

    The tiny model is too weak for accuracy-preserving thresholds to mean much (its first
    exit is often as good as its last, so everything would stop on the device); the
    integration tests need every tier to see traffic instead.
    """
    import numpy as np

    conf1, conf2 = probs[0].max(axis=1), probs[1].max(axis=1)
    t1 = float(np.quantile(conf1, 0.5))
    t2 = float(np.quantile(conf2[conf1 < t1], 0.5))
    return round(t1, 4), round(t2, 4), 0.0


@pytest.fixture(scope="session")
def fmnist() -> Any:
    """The Fashion-MNIST :class:`~edgecascade.training.data.Dataset`
    (``make test`` installs the Debian package)."""
    from edgecascade.training.data import load_fashion_mnist

    try:
        return load_fashion_mnist()
    except DatasetError as exc:
        pytest.fail(str(exc))


def _cached_entry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str, config: Any
) -> tuple[Path, Path | None]:
    """``(entry, staging)``: the cache entry for ``kind`` and ``config``, and where to build it
    (None when the entry is usable as it is). Entries of ``kind`` for older sources are removed."""
    key = _cache_key(config)
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir("edgecascade") if cache is not None else tmp_path_factory.mktemp("edgecascade")
    entry = base / f"{kind}-{key}"
    if _usable(entry):
        return entry, None
    for old in base.glob(f"{kind}-*"):  # entries for older sources are dead weight
        shutil.rmtree(old, ignore_errors=True)
    staging = base / f".{kind}-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    return entry, staging


def _publish(staging: Path, entry: Path, start: float) -> Path:
    try:
        staging.rename(entry)  # atomic: a concurrent session either sees the whole entry or none
    except OSError:  # another session finished first: use its entry
        shutil.rmtree(staging, ignore_errors=True)
    print(f"\n[{entry.name}] trained and exported in {time.monotonic() - start:.1f} s")
    return entry


@pytest.fixture(scope="session")
def tiny_model_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fmnist: Any
) -> Path:
    """A directory with ``trained/`` (Keras checkpoint) and ``bundle/`` of the tiny model."""
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.export import export_bundle
    from edgecascade.training.train import train

    config = TrainConfig.tiny()
    entry, staging = _cached_entry(request, tmp_path_factory, "tiny", config)
    if staging is None:
        return entry
    start = time.monotonic()
    trained = train(config, fmnist, progress=False)
    trained.save(staging / "trained")
    thresholds = _traffic_mix_thresholds(trained.exit_probs(fmnist.x_train[:2000]))
    export_bundle(trained, staging / "bundle", name="fashion-mnist-tiny", version=1, thresholds=thresholds)
    return _publish(staging, entry, start)


@pytest.fixture(scope="session")
def tiny_models_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fmnist: Any
) -> Path:
    """``large/`` (a tiny large model), ``trained/`` and ``bundle/`` of a tiny models-mode bundle."""
    from edgecascade.training.classifier import ClassifierConfig
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.export import export_bundle
    from edgecascade.training.large import LargeConfig, train_large
    from edgecascade.training.models_mode import train_models

    config, large_config = TrainConfig.tiny(), LargeConfig.tiny()
    entry, staging = _cached_entry(request, tmp_path_factory, "tiny-models", (config, large_config))
    if staging is None:
        return entry
    start = time.monotonic()
    large = train_large(large_config, fmnist, progress=False)
    large.save(staging / "large")
    tiny = ClassifierConfig(blocks=((4,), (8,)), dense=16, dropout=0.1)
    trained = train_models(config, fmnist, large, small=tiny, medium=ClassifierConfig.tiny(), progress=False)
    trained.save(staging / "trained")
    thresholds = _traffic_mix_thresholds(trained.exit_probs(fmnist.x_train[:2000]))
    export_bundle(
        trained, staging / "bundle", name="fashion-mnist-tiny-models", version=1, thresholds=thresholds
    )
    return _publish(staging, entry, start)


@pytest.fixture(scope="session")
def tiny_models_bundle(tiny_models_dir: Path) -> Path:
    """A models-mode bundle (small, medium and large whole models), thresholds set for a traffic mix."""
    return tiny_models_dir / "bundle"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir: Path) -> Path:
    """Directory of a verified bundle (``manifest.json`` + three ``.tflite``) of a tiny Fashion-MNIST net.

    Its exit thresholds are set for a traffic mix, not accuracy: on Fashion-MNIST images
    about 50% answer on the device, 25% on the gateway and 25% in the cloud.
    """
    return tiny_model_dir / "bundle"


@pytest.fixture(scope="session")
def tiny_trained(tiny_model_dir: Path) -> Any:
    """The Keras :class:`edgecascade.training.train.TrainedModel` that ``tiny_bundle`` was exported from."""
    from edgecascade.training.train import load_trained

    return load_trained(tiny_model_dir / "trained")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL cluster for the session (about 1 s to start)."""
    binaries = server_binaries()
    if binaries is None:
        pytest.fail(f"PostgreSQL's server binaries are missing: {PG_INSTALL}")
    with PostgresCluster(binaries) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (a SQLAlchemy URL): an SQLite file, then a fresh one on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'cloud.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.database()
