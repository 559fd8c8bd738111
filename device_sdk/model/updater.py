"""Follow the cloud's model announcements: download, verify, hot-swap; never serve what fails.

A :class:`ModelUpdater` subscribes to the retained announcement
(:mod:`edgecascade.device_sdk.model.announcement`). Announcements are parsed and their signature checked on
the MQTT thread; everything else happens on the updater's own thread, off the request
path: download the release into a staging directory under ``update.dir``, check that the
manifest is the announced one, verify its signature and the version rule before fetching
the partitions (:func:`~edgecascade.device_sdk.model.signing.load_verified_update`: signature, every sha256,
no older version unless the signed manifest is a rollback; :func:`check_update_classes`:
the class list only grows), then hand the bundle to the
node's ``install`` callback, which builds the new runners and swaps one reference
(:mod:`edgecascade.device_sdk.model.hotswap`).

Any failure (corrupt or truncated download, foreign signature, cloud unreachable) is
logged and counted, the node keeps serving what it runs, and the same announcement is
retried with exponential back-off (``retry_initial`` doubling up to ``retry_max``, with
jitter so a fleet does not retry in step). A signed bundle refused by the version or class
rule is not retried: it will not change. A newer announcement is tried at once.

Verified releases stay in ``update.dir/<release>-<sha>/`` and ``update.dir/active`` names
the one running, so a restarted node starts from it (:func:`installed_bundle`).

**Fallback when the broker is unreachable.** Every ``poll_interval`` seconds (0: never) the
worker also asks the cloud for the current release, ``GET /v1/models/current`` with the
node's token, and offers the signed announcement it answers exactly like one from MQTT: the
same signature check and the same download path, so a node whose broker is down still
reaches the new release within ``poll_interval``. A failed check is counted
(``poll_failed_<Error>``) and logged; the next one comes ``poll_interval`` later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import (
    BundleError,
    ClassListError,
    ConfigError,
    EdgeCascadeError,
    RollbackError,
)
from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.model.announcement import Announcement, release_path
from edgecascade.device_sdk.model.bundle import (
    MANIFEST,
    Bundle,
    Manifest,
    check_classes_grow,
    load_bundle,
    load_verified_update,
)
from edgecascade.device_sdk.model.signing import SIGNATURE, PublicKeySource, load_public_key
from edgecascade.device_sdk.transport.fetch import Fetcher

logger = logging.getLogger(__name__)

ACTIVE = "active"
CURRENT_ROUTE = f"{wire.ROUTE_MODELS}/current"  # the cloud's signed announcement of its current release
MAX_CURRENT_BYTES = 64 * 1024
_RELEASE_DIR = re.compile(r"^v\d+(-rollback-of-\d+)?-[0-9a-f]{12}$")

#: ``handler(topic, payload, response_topic, correlation_data)``, as :mod:`~.transport.mqtt` calls it
Handler = Callable[[str, bytes, str | None, bytes | None], None]


class Subscriber(Protocol):
    """Where announcements come from: an :class:`~.transport.mqtt.MqttLink` or a transport."""

    def subscribe(self, topic: str, handler: Handler) -> None: ...


@dataclass(frozen=True)
class UpdateSettings:
    """The ``[update]`` section: whether to follow announcements, where releases go, retry pace.

    ``ca_file`` is the CA of an ``https`` cloud URL (default: the system's CAs).
    ``poll_interval``: seconds between checks of the cloud's current release, the fallback
    for announcements lost while the broker is unreachable (0: announcements only).
    """

    enabled: bool = False
    dir: Path = Path("state/models")
    timeout: float = 10.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    ca_file: Path | None = None
    max_file_bytes: int = 256 * 1024 * 1024
    poll_interval: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if self.timeout <= 0:
            problems.append("update.timeout must be > 0")
        if self.poll_interval < 0:
            problems.append("update.poll_interval must be >= 0 (0: off)")
        if not 0 < self.retry_initial <= self.retry_max:
            problems.append("update.retry_initial must be > 0 and <= update.retry_max")
        if self.max_file_bytes < 1024:
            problems.append("update.max_file_bytes must be >= 1024")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            problems.append(f"update.ca_file: no such file {self.ca_file}")
        if problems:
            raise ConfigError(problems)


def manifest_sha256(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical bytes: what a signed bundle's ``manifest.json`` holds."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()


class ModelUpdater:
    """Keeps one node on the announced release; ``install(bundle)`` swaps it in."""

    def __init__(
        self,
        settings: UpdateSettings,
        *,
        public_key: PublicKeySource,
        tiers: tuple[str, ...],
        running: Callable[[], Manifest],
        install: Callable[[Bundle], None],
        fetcher: Fetcher,
        name: str = "node",
    ) -> None:
        if public_key is None:
            raise ConfigError("updates must be verified: a public key (verify_key) is required")
        self.settings = settings
        self.tiers = tiers
        self.counters = Counters()
        self.last_error: str | None = None
        self._key = load_public_key(public_key)
        self._running = running
        self._install = install
        self._fetcher = fetcher
        self._wanted: Announcement | None = None
        self._refused: tuple[str, int] | None = None  # (manifest sha256, running version) refused
        self._failures = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"updater-{name}", daemon=True)
        self.dir = Path(settings.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------- lifecycle
    def start(self, subscriber: Subscriber | None = None) -> None:
        """Start the worker; with ``subscriber``, follow the announcement topic through it."""
        self._thread.start()
        if subscriber is not None:
            subscriber.subscribe(wire.MODELS_TOPIC, self.on_message)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current attempt (a swap is never left half done)."""
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -------------------------------------------------------------- announcement intake
    def on_message(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        """MQTT handler for :data:`~edgecascade.device_sdk.wire.MODELS_TOPIC`."""
        self.offer(payload)

    def offer(self, payload: bytes) -> bool:
        """Take an announcement; False (counted, logged) when it is malformed or not the cloud's."""
        if not payload:  # a cleared retained message
            return False
        try:
            announcement = Announcement.from_bytes(payload)
            announcement.verify(self._key)
        except EdgeCascadeError as exc:
            self.counters.add(f"announcement_rejected_{type(exc).__name__}")
            logger.warning("ignoring a model announcement: %s", exc)
            return False
        self.counters.add("announcements")
        previous = self._wanted
        self._wanted = announcement
        if previous is None or previous.manifest_sha256 != announcement.manifest_sha256:
            self._failures = 0
            logger.info("model %s %s announced", announcement.name, announcement.release)
        self._wake.set()
        return True

    @property
    def pending(self) -> Announcement | None:
        """The announced release when the node does not run it yet (and has not refused it)."""
        wanted = self._wanted
        return None if wanted is None or self._satisfied(wanted) else wanted

    # ------------------------------------------------------------------------ worker
    def _satisfied(self, wanted: Announcement) -> bool:
        """Whether the node runs the wanted release, or refused it under the version it runs."""
        running = self._running()
        if wanted.manifest_sha256 == manifest_sha256(running):
            return True
        return self._refused == (wanted.manifest_sha256, running.version)

    def _run(self) -> None:
        retry_at: float | None = None  # when a failed update is tried again
        poll = self.settings.poll_interval
        poll_at = time.monotonic() + poll if poll > 0 else None  # the next check of the cloud
        while True:
            deadlines = [t for t in (retry_at, poll_at) if t is not None]
            self._wake.wait(max(0.0, min(deadlines) - time.monotonic()) if deadlines else None)
            if self._stopped.is_set():
                return
            now = time.monotonic()
            if poll_at is not None and now >= poll_at:
                poll_at = now + poll
                self.check_current()  # a valid answer wakes the worker, as an announcement does
            if not self._wake.is_set() and (retry_at is None or now < retry_at):
                continue
            self._wake.clear()
            retry_at = None
            wanted = self._wanted
            if wanted is None or self._satisfied(wanted):
                continue
            try:
                self._apply(wanted)
            except (RollbackError, ClassListError) as exc:  # signed and final: retrying cannot change it
                self._refused = (wanted.manifest_sha256, self._running().version)
                self._fail(wanted, exc, retry=False)
            except Exception as exc:  # any failure: keep the running model, try again later
                self._failures += 1
                delay = min(self.settings.retry_max, self.settings.retry_initial * 2 ** (self._failures - 1))
                delay *= random.uniform(0.8, 1.2)
                retry_at = time.monotonic() + delay
                self._fail(wanted, exc, retry=True, delay=delay)
            else:
                self._failures = 0
                self.last_error = None

    def check_current(self) -> bool:
        """Ask the cloud for its current release and offer the announcement; False if that failed."""
        try:
            body = json.loads(self._fetcher.read(CURRENT_ROUTE, MAX_CURRENT_BYTES))
            payload = json.dumps(body["announcement"]).encode()
        except (EdgeCascadeError, OSError, ValueError, TypeError, KeyError) as exc:
            self.counters.add(f"poll_failed_{type(exc).__name__}")
            logger.warning("cannot check the cloud's current release: %s", exc)
            return False
        self.counters.add("polls")
        return self.offer(payload)

    def _fail(self, wanted: Announcement, exc: Exception, *, retry: bool, delay: float = 0.0) -> None:
        self.counters.add("update_failed")
        self.counters.add(f"update_failed_{type(exc).__name__}")
        self.last_error = f"{wanted.release}: {exc}"
        if retry:
            logger.warning(
                "update to %s refused or failed (%s); retrying in %.1f s", wanted.release, exc, delay
            )
        else:
            logger.warning("update to %s refused for good: %s", wanted.release, exc)
        if not isinstance(exc, EdgeCascadeError):
            logger.debug("update failure", exc_info=exc)

    def _apply(self, wanted: Announcement) -> None:
        """Download, verify and install one release; raises (leaving nothing behind) on failure."""
        staging = Path(tempfile.mkdtemp(prefix=f".{wanted.release}-", dir=self.dir))
        try:
            bundle = self._download(wanted, staging)
            final = self.dir / f"{wanted.release}-{wanted.manifest_sha256[:12]}"
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        bundle = Bundle(final, bundle.manifest)
        self._install(bundle)  # builds the new runners, then swaps a reference
        atomic_write(self.dir / ACTIVE, final.name.encode())
        self.counters.add("updates_installed")
        logger.info("now serving %s %s", bundle.manifest.name, wanted.release)
        self._prune(keep=final.name)

    def _download(self, wanted: Announcement, staging: Path) -> Bundle:
        route = release_path(wanted.version, wanted.rollback_of)
        self._fetcher.fetch(f"{route}/{MANIFEST}", staging / MANIFEST)
        self._fetcher.fetch(f"{route}/{SIGNATURE}", staging / SIGNATURE)
        if hashlib.sha256((staging / MANIFEST).read_bytes()).hexdigest() != wanted.manifest_sha256:
            raise BundleError(f"the downloaded manifest of {wanted.release} is not the announced one")
        running_manifest = self._running()
        running = running_manifest.version
        # signature, version and class rules first: never fetch files a manifest we cannot trust names
        head = load_bundle(staging, tiers=(), public_key=self._key, min_version=running)
        if (head.manifest.version, head.manifest.rollback_of) != (wanted.version, wanted.rollback_of):
            raise BundleError(f"the manifest served for {wanted.release} is another release")
        check_update_classes(running_manifest, head.manifest)
        for tier in self.tiers:
            for file, _ in head.manifest.partition(tier).files:
                self._fetcher.fetch(f"{route}/{file}", staging / file)
        return load_verified_update(staging, self._key, running, self.tiers)

    def _prune(self, keep: str) -> None:
        """Remove release directories other than the active one and the one before it."""
        releases = sorted(
            (p for p in self.dir.iterdir() if p.is_dir() and _RELEASE_DIR.match(p.name)),
            key=lambda p: p.stat().st_mtime,
        )
        for old in [p for p in releases if p.name != keep][:-1]:
            shutil.rmtree(old, ignore_errors=True)


def check_update_classes(running: Manifest, update: Manifest) -> None:
    """Refuse (:class:`ClassListError`) an update whose classes are not the running ones plus new ones.

    A signed rollback may go back to a version with fewer classes, but only to one whose
    list the running one extends (the version the class-incremental one grew from).
    """
    if update.rollback_of is None:
        check_classes_grow(running.classes, update.classes)
    else:
        check_classes_grow(update.classes, running.classes)


def installed_bundle(
    directory: str | Path, public_key: PublicKeySource, tiers: tuple[str, ...], min_version: int
) -> Bundle | None:
    """The release an updater last installed in ``directory``, if it still verifies, else None.

    ``min_version`` is the configured bundle's version: an installed release older than it
    (and not a signed rollback from it or newer) is not used.
    """
    root = Path(directory)
    try:
        name = (root / ACTIVE).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read %s: %s", root / ACTIVE, exc)
        return None
    if not _RELEASE_DIR.match(name):
        logger.warning("%s names %r, not a release directory; ignoring it", root / ACTIVE, name)
        return None
    try:
        return load_bundle(root / name, tiers, public_key=public_key, min_version=min_version)
    except EdgeCascadeError as exc:
        logger.warning("not using the installed release %s: %s", name, exc)
        return None
