"""The model registry: signed bundle versions on disk, one current release, atomic promotion.

Layout of ``models_dir`` (retraining jobs may write candidates there directly)::

    v1/ v2/ ...            a registered version: manifest.json, manifest.sig, *.tflite,
                           and metrics.json (held-out metrics of the candidate, any JSON object)
    rollbacks/v1-rollback-of-2/
                           a signed rollback release: v1's partitions (hard links) with a
                           manifest saying ``"rollback_of": 2``
    current                which release is current, as JSON; replaced atomically
    .lock                  serialises writers across server processes (flock)

A *release* is what nodes are told to run. Promoting a version at or above every version
ever promoted releases its bundle as it is. Promoting an older one (which is what
:meth:`ModelRegistry.rollback` does with the previous version) releases a copy whose
manifest is re-signed with ``rollback_of`` set to the highest version ever promoted: nodes
refuse an older version unless its signed manifest says it may replace theirs
(:func:`~edgecascade.device_sdk.model.signing.load_verified_update`), and a node that missed an earlier
rollback still runs something up to that highest version.

A version's classes must be the current release's followed by zero or more new ones
(:func:`~edgecascade.device_sdk.model.bundle.check_classes_grow`), checked when it is registered and
again when it is released; a rollback may only go back to a version whose classes the
current release's extend. Labels are indices into the class list: a shrunk or reordered
list would change what every stored label and cached answer means.

``current`` is written to a temporary file, fsynced and renamed over the old one (then
the directory is fsynced), so a reader in any process sees the old or the new release,
never a mixture, and a crash leaves one of them. Every bundle is verified with the
cloud's public key when registered and again when promoted.

A version's ``metrics.json``, when it has one, also says what the version is: ``"status"``
is ``candidate`` until it is first released, then ``promoted`` (``promoted_at``: when it
last was), or ``rolled_back`` (``rolled_back_at``) once a rollback replaced it while it was
current. The listing's ``current`` flag says which version runs now.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.errors import BundleError, ClassListError, RegistryError
from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.model.announcement import release_name
from edgecascade.device_sdk.model.bundle import (
    MANIFEST,
    Bundle,
    Manifest,
    check_classes_grow,
    load_bundle,
    sign_bundle,
    write_manifest,
)
from edgecascade.device_sdk.model.signing import SIGNATURE, PrivateKeySource, PublicKeySource, load_public_key

logger = logging.getLogger(__name__)

POINTER = "current"
METRICS = "metrics.json"
ROLLBACKS = "rollbacks"
HISTORY = 50  # promotions remembered for rollback
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,9})$")


@dataclass(frozen=True)
class Release:
    """The current release: which version, whether it is a rollback, and how it got there."""

    version: int
    name: str
    manifest_sha256: str
    rollback_of: int | None = None
    highest: int = 0  # the highest version ever promoted
    history: tuple[int, ...] = ()  # promoted versions, oldest first, this one last
    promoted_at: float = 0.0

    @property
    def release(self) -> str:
        return release_name(self.version, self.rollback_of)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = list(self.history)
        return data


class ModelRegistry:
    """Versions under ``root``; see the module docstring for the layout and the rules."""

    def __init__(
        self, root: str | Path, public_key: PublicKeySource, signing_key: PrivateKeySource | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_key = load_public_key(public_key)
        self.signing_key = signing_key

    # ------------------------------------------------------------------------- reading
    def versions(self) -> list[int]:
        """Registered versions, ascending."""
        found = []
        for path in self.root.iterdir():
            match = _VERSION_DIR.match(path.name)
            if match and (path / MANIFEST).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def bundle_dir(self, version: int) -> Path:
        path = self.root / f"v{version}"
        if not (path / MANIFEST).is_file():
            raise RegistryError(f"no model version {version} in the registry", status=404)
        return path

    def release_dir(self, version: int, rollback_of: int | None = None) -> Path:
        """Directory of a release: the version's own, or its signed rollback copy."""
        if rollback_of is None:
            return self.bundle_dir(version)
        path = self.root / ROLLBACKS / release_name(version, rollback_of)
        if not (path / MANIFEST).is_file():
            raise RegistryError(
                f"no release {release_name(version, rollback_of)} in the registry", status=404
            )
        return path

    def current(self) -> Release | None:
        """The current release, or None before the first promotion."""
        try:
            data = json.loads((self.root / POINTER).read_text())
            return Release(**{**data, "history": tuple(data.get("history", ()))})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise RegistryError(f"{self.root / POINTER} is unreadable: {exc}", status=500) from None

    def current_bundle(self, tiers: tuple[str, ...] = ("cloud",)) -> Bundle | None:
        """The current release's bundle, verified (signature and the files of ``tiers``)."""
        current = self.current()
        if current is None:
            return None
        return load_bundle(
            self.release_dir(current.version, current.rollback_of), tiers, public_key=self.public_key
        )

    def pointer_stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever ``current`` is replaced: cheap to poll from every server process."""
        try:
            st = os.stat(self.root / POINTER)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def metrics(self, version: int) -> dict[str, Any]:
        """A version's ``metrics.json`` (any JSON object), else the metrics in its manifest."""
        path = self.bundle_dir(version)
        try:
            data = json.loads((path / METRICS).read_text())
            if isinstance(data, dict):
                return data
            logger.warning("%s is not a JSON object; ignoring it", path / METRICS)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s: %s", path / METRICS, exc)
        try:
            return dict(json.loads((path / MANIFEST).read_text()).get("metrics", {}))
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def listing(self) -> list[dict[str, Any]]:
        """Every version with its name, metrics and whether it is current (no file hashing)."""
        current = self.current()
        entries = []
        for version in self.versions():
            path = self.bundle_dir(version)
            entry: dict[str, Any] = {
                "version": version,
                "current": current is not None and current.version == version,
            }
            try:
                entry["name"] = json.loads((path / MANIFEST).read_text())["name"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                entry["error"] = f"unreadable manifest: {exc}"
            entry["signed"] = (path / SIGNATURE).is_file()
            entry["metrics"] = self.metrics(version)
            entry["registered_at"] = (path / MANIFEST).stat().st_mtime
            entries.append(entry)
        return entries

    # ------------------------------------------------------------------------- writing
    def register(self, bundle_dir: str | Path, metrics: dict[str, Any] | None = None) -> int:
        """Copy a bundle in as a candidate version (not current); returns its version.

        The copy must verify with the cloud's key; an unsigned bundle is signed with the
        registry's signing key if it has one. ``metrics`` (else the bundle's own
        ``metrics.json``, if any) is stored beside it for the listing and the promotion gate.
        """
        source = Path(bundle_dir)
        bundle = load_bundle(source)  # every file present and matching the manifest
        version = bundle.manifest.version
        with self._locked():
            if (self.root / f"v{version}").exists():
                raise RegistryError(f"version {version} is already registered")
            self._check_classes(bundle.manifest, rollback=False)
            self._copy_in(source, bundle, metrics)
        logger.info("registered %s v%d from %s", bundle.manifest.name, version, source)
        return version

    def adopt(self, bundle_dir: str | Path) -> Release:
        """The current release; in an empty registry, first register and promote ``bundle_dir``.

        One step under the registry's lock, so server processes that start together on an
        empty registry adopt the bundle once (each checking, then registering, raced).
        """
        source = Path(bundle_dir)
        with self._locked():
            current = self.current()
            if current is not None:
                return current  # ``bundle_dir`` is not read: after the first start it may be gone
            bundle = load_bundle(source)  # every file present and matching the manifest
            version = bundle.manifest.version
            if not (self.root / f"v{version}").exists():
                self._copy_in(source, bundle, None)
            release = self._promote(version)
        logger.info("empty registry: registered and promoted %s as v%d", source, version)
        return release

    def _copy_in(self, source: Path, bundle: Bundle, metrics: dict[str, Any] | None) -> None:
        """Copy, sign if unsigned, verify and add ``bundle`` as ``v<version>`` (the lock held)."""
        if metrics is None and (source / METRICS).is_file():
            metrics = json.loads((source / METRICS).read_text())
        target = self.root / f"v{bundle.manifest.version}"
        staging = Path(tempfile.mkdtemp(prefix=".register-", dir=self.root))
        try:
            names = [
                MANIFEST,
                SIGNATURE,
                *(name for p in bundle.manifest.partitions for name, _ in p.files),
            ]
            for name in names:
                if (source / name).is_file():
                    shutil.copyfile(source / name, staging / name)
            if not (staging / SIGNATURE).is_file():
                if self.signing_key is None:
                    raise RegistryError(f"{source} is not signed and this registry has no signing key")
                sign_bundle(staging, self.signing_key)
            load_bundle(staging, public_key=self.public_key)
            if metrics is not None:
                atomic_write(staging / METRICS, json.dumps(metrics, indent=2, sort_keys=True).encode())
            staging.chmod(0o755)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)

    def promote(self, version: int) -> Release:
        """Make ``version`` current, atomically; promoting the current version changes nothing."""
        with self._locked():
            return self._promote(version)

    def _promote(self, version: int) -> Release:
        current = self.current()
        if current is not None and current.version == version:
            return current
        highest = max(version, current.highest if current else 0)
        history = (*(current.history if current else ()), version)
        return self._release(version, highest, history)

    def rollback(self) -> Release:
        """Make the previous version current again, as a signed rollback release."""
        with self._locked():
            current = self.current()
            if current is None or len(current.history) < 2:
                raise RegistryError("nothing to roll back to: no version was current before this one")
            return self._release(current.history[-2], current.highest, current.history[:-1], undo=True)

    # ----------------------------------------------------------------------- internals
    def _release(self, version: int, highest: int, history: tuple[int, ...], undo: bool = False) -> Release:
        """Make ``version`` current; ``undo``: the current one is being rolled back."""
        source = self._verified(self.bundle_dir(version))
        self._check_classes(source.manifest, rollback=version < highest)
        path, rollback_of = source.path, None
        if version < highest:
            path, rollback_of = self._rollback_release(source, highest), highest
        release = Release(
            version=version,
            name=source.manifest.name,
            manifest_sha256=hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest(),
            rollback_of=rollback_of,
            highest=highest,
            history=history[-HISTORY:],
            promoted_at=time.time(),
        )
        previous = self.current()
        atomic_write(self.root / POINTER, json.dumps(release.to_dict(), indent=2).encode())
        _fsync_dir(self.root)
        logger.info("model %s is now %s", release.name, release.release)
        self._set_status(version, "promoted", release.promoted_at)
        if (undo or rollback_of is not None) and previous is not None and previous.version != version:
            self._set_status(previous.version, "rolled_back", release.promoted_at)
        return release

    def _set_status(self, version: int, status: str, when: float) -> None:
        """Record in the version's ``metrics.json`` (if any) what it now is; never fails the release."""
        path = self.root / f"v{version}" / METRICS
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                return
            data["status"] = status
            data[f"{status}_at"] = when
            atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # the pointer is what counts; this is bookkeeping
            logger.warning("cannot record status %s in %s: %s", status, path, exc)

    def _check_classes(self, manifest: Manifest, *, rollback: bool) -> None:
        """Refuse a version whose classes are not the current release's followed by new ones.

        A rollback goes back the other way: the current release's classes must extend its.
        """
        current = self.current()
        if current is None:
            return
        running = load_bundle(self.release_dir(current.version, current.rollback_of), tiers=()).manifest
        try:
            if rollback:
                check_classes_grow(manifest.classes, running.classes)
            else:
                check_classes_grow(running.classes, manifest.classes)
        except ClassListError as exc:
            logger.warning("refusing %s v%d: %s", manifest.name, manifest.version, exc)
            raise RegistryError(
                f"version {manifest.version} cannot follow version {current.version}: {exc}"
            ) from None

    def _verified(self, path: Path) -> Bundle:
        try:
            return load_bundle(path, public_key=self.public_key)
        except BundleError as exc:
            raise RegistryError(f"{path.name} does not verify, refusing to release it: {exc}") from None

    def _rollback_release(self, source: Bundle, highest: int) -> Path:
        """The signed copy of ``source`` that may replace versions up to ``highest``; made once."""
        rollbacks = self.root / ROLLBACKS
        target = rollbacks / release_name(source.manifest.version, highest)
        if (target / MANIFEST).is_file():
            return self._verified(target).path
        if self.signing_key is None:
            raise RegistryError("rolling back needs the cloud's signing key (registry.signing_key)")
        rollbacks.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".rollback-", dir=rollbacks))
        try:
            for name in (name for part in source.manifest.partitions for name, _ in part.files):
                try:
                    os.link(source.path / name, staging / name)  # same bytes, no copy
                except OSError:
                    shutil.copyfile(source.path / name, staging / name)
            write_manifest(staging, replace(source.manifest, rollback_of=highest))
            sign_bundle(staging, self.signing_key)
            staging.chmod(0o755)
            shutil.rmtree(target, ignore_errors=True)  # a broken leftover
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(rollbacks)
        return self._verified(target).path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across threads and server processes."""
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
