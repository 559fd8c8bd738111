"""Candidate versions: what a successful retraining job hands over to the model registry.

Retraining and the registry share one directory (``registry.models_dir``; without a
registry, ``retrain.models_dir``) and one layout, the registry's
(:mod:`edgecascade.cloud_service.registry`)::

    <models_dir>/v<version>/manifest.json, manifest.sig, *.tflite   the signed bundle
    <models_dir>/v<version>/metrics.json   {"version", "status": "candidate", "metrics", ...}
    <models_dir>/v<version>/checkpoint/    its Keras checkpoint (the next fine-tune starts here)

So a published candidate *is* a registered version: ``GET /v1/models`` lists it at once,
and ``POST /v1/models/<version>/promote`` (or ``retrain.auto_promote``) serves and
announces it. Publishing never serves anything itself. Once the cloud serves version
``v``, retraining starts from ``<models_dir>/v<v>/checkpoint`` when it exists
(:func:`checkpoint_for`).

Publishing is atomic: everything is assembled in a hidden temporary directory beside the
target and renamed into place, so ``v<version>/`` is either absent or complete, and an
existing version is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.model.bundle import load_bundle

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CHECKPOINT = "checkpoint"
_VERSION_DIR = re.compile(r"^v(\d+)$")


def version_dir(models_dir: str | Path, version: int) -> Path:
    return Path(models_dir) / f"v{version}"


def published_versions(models_dir: str | Path) -> list[int]:
    """Versions with a directory under ``models_dir``, ascending."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    found = (_VERSION_DIR.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def next_version(models_dir: str | Path, current: int) -> int:
    """The version a new candidate gets: above the served one and above every published one."""
    return max([current, *published_versions(models_dir)]) + 1


def checkpoint_for(models_dir: str | Path, version: int, fallback: Path) -> Path:
    """The Keras checkpoint of ``version``: its published one if there is one, else ``fallback``."""
    published = version_dir(models_dir, version) / CHECKPOINT
    return published if published.is_dir() else fallback


def publish_candidate(
    bundle_dir: str | Path,
    version: int,
    metrics: dict[str, Any],
    *,
    models_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Copy a verified bundle (and its checkpoint) into ``<models_dir>/v<version>/`` as a candidate.

    ``metrics`` (the evaluation gate's numbers) and ``extra`` (e.g. the job id and base
    version) go into ``metrics.json``. Raises :class:`~edgecascade.device_sdk.errors.ModelError` when
    the bundle is not version ``version`` or the version directory already exists.
    """
    manifest = load_bundle(bundle_dir).manifest
    if manifest.version != version:
        raise ModelError(f"{bundle_dir} holds version {manifest.version}, not {version}")
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = version_dir(root, version)
    if target.exists():
        raise ModelError(f"{target} already exists; refusing to overwrite a published version")
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".v{version}-"))
    try:
        shutil.copytree(bundle_dir, staging, dirs_exist_ok=True)
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, staging / CHECKPOINT)
        record = {
            "version": version,
            "name": manifest.name,
            "status": "candidate",
            "published_at": time.time(),
            "metrics": metrics,
            **(extra or {}),
        }
        atomic_write(staging / METRICS_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)  # atomic; fails if another publisher got there first
        except OSError as exc:
            raise ModelError(f"cannot publish {target}: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("published candidate %s v%d at %s", manifest.name, version, target)
    return target
