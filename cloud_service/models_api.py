"""Model registry routes, the announcement on promotion, and keeping inference on the current release.

Routes and scopes::

    GET  /v1/models                                   device, gateway, admin: versions, metrics, current
    GET  /v1/models/current                           device, gateway, admin: the (signed) announcement
    GET  /v1/models/<v>/<file>                        files of version v
    GET  /v1/models/<v>/rollback-of/<n>/<file>        files of a signed rollback release
    POST /v1/models/<v>/promote                       admin
    POST /v1/models/rollback                          admin

A file is ``manifest.json``, ``manifest.sig`` or a partition the token's scope runs: a
device token gets the device partition, a gateway token the gateway partition, an admin
any (the cloud partition never leaves the cloud otherwise). A promotion first swaps this
process's own inference to the new release, then announces it, so the cloud already
answers the new version when gateways start sending it; other server processes notice the
new ``current`` pointer within ``registry.check_interval`` seconds, or at once when a
request names a version they do not serve (:class:`RegistryFollower`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_file
from werkzeug.exceptions import InternalServerError

from edgecascade.cloud_service.announce import Announcer
from edgecascade.cloud_service.auth import current_token, require_scope
from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.inference import CloudInference
from edgecascade.cloud_service.registry import ModelRegistry, Release
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import EdgeCascadeError, RegistryError, ScopeError
from edgecascade.device_sdk.model.announcement import Announcement, release_path
from edgecascade.device_sdk.model.bundle import MANIFEST, load_bundle
from edgecascade.device_sdk.model.signing import SIGNATURE, PrivateKeySource

logger = logging.getLogger(__name__)
models_api = Blueprint("models", __name__)
_EXTENSION = "edgecascade.rollout"
_TIERS_BY_SCOPE = {"device": ("device",), "gateway": ("gateway",), "admin": ("device", "gateway", "cloud")}


class RegistryFollower:
    """Keeps one server process's :class:`CloudInference` on the registry's current release."""

    def __init__(
        self, registry: ModelRegistry, inference: CloudInference, check_interval: float = 1.0
    ) -> None:
        self.registry = registry
        self.inference = inference
        self.check_interval = check_interval
        self._stamp = registry.pointer_stamp()
        current = registry.current()
        self.serving = current.manifest_sha256 if current is not None else None  # manifest sha256 served
        self._next_check = 0.0
        self._lock = threading.Lock()
        inference.refresh = lambda: self.sync(force=True)

    def sync(self, force: bool = False) -> None:
        """Swap to the current release if it changed (checked at most every ``check_interval``).

        Without ``force`` a thread never waits for another one that is loading: it keeps
        answering with the model it has.
        """
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._next_check = now + self.check_interval
            stamp = self.registry.pointer_stamp()
            if stamp == self._stamp and not force:
                return
            self._stamp = stamp
            current = self.registry.current()
            if current is None or current.manifest_sha256 == self.serving:
                return
            path = self.registry.release_dir(current.version, current.rollback_of)
            bundle = load_bundle(path, tiers=("cloud",), public_key=self.registry.public_key)
            self.inference.swap(bundle)
            self.serving = current.manifest_sha256
        except EdgeCascadeError as exc:  # keep answering with what runs
            self.inference.counters.add("model_swap_failed")
            logger.error("cannot switch to the registry's current release: %s", exc)
        finally:
            self._lock.release()


@dataclass
class Rollout:
    """What the routes need: the registry, the follower, and how to sign and announce.

    ``follower`` is None in a process that serves no model (``edgecascade retrain``): it
    promotes and announces, and the server processes' followers notice the new ``current``
    within ``registry.check_interval``, or at once when a request names the new version.
    """

    registry: ModelRegistry
    follower: RegistryFollower | None
    announcer: Announcer | None = None
    signing_key: PrivateKeySource | None = None
    public_url: str = ""

    def announcement(self, release: Release, base_url: str) -> Announcement:
        """The announcement of ``release`` (signed when the cloud has its signing key)."""
        announcement = Announcement(
            name=release.name,
            version=release.version,
            manifest_sha256=release.manifest_sha256,
            rollback_of=release.rollback_of,
            url=(self.public_url or base_url).rstrip("/")
            + release_path(release.version, release.rollback_of),
            issued_at=release.promoted_at,
        )
        return announcement.sign(self.signing_key) if self.signing_key is not None else announcement

    def release(self, release: Release, base_url: str) -> dict[str, Any]:
        """Swap this process to ``release``, then announce it; says whether the announcement went out.

        Raises :class:`RegistryError` (500) when this process cannot serve the release: nodes
        would then run what the cloud cannot, so nothing is announced.
        """
        if self.follower is not None:
            self.follower.sync(force=True)
        if self.follower is not None and self.follower.serving != release.manifest_sha256:
            raise RegistryError(
                f"{release.release} is current in the registry but this cloud cannot serve it (see its log); "
                "not announced: promote a version that loads",
                status=500,
            )
        announcement = self.announcement(release, base_url)
        announced, error = False, None
        if self.announcer is not None:
            try:
                self.announcer.publish(announcement)
                announced = True
            except EdgeCascadeError as exc:  # the promotion stands; promoting again re-announces
                error = str(exc)
                logger.error("promoted %s but could not announce it: %s", release.release, exc)
        return {
            "current": release.to_dict(),
            "announcement": _as_dict(announcement),
            "announced": announced,
            "error": error,
        }

    def promote_candidate(self, version: int, base_url: str) -> dict[str, Any]:
        """Promote ``version``, swap to it and announce it (``retrain.auto_promote``, outside a request)."""
        result = self.release(self.registry.promote(version), base_url)
        logger.info("auto-promoted v%d (announced: %s)", version, result["announced"])
        return result


def standalone_rollout(config: CloudConfig, registry: ModelRegistry) -> Rollout:
    """A rollout for a process that serves no model (a retraining command, a federated run):
    it promotes and announces, and the server processes' followers pick the promotion up."""
    from edgecascade.cloud_service.announce import MqttAnnouncer

    settings = config.registry
    announcer = MqttAnnouncer(config.mqtt, settings.announce_timeout) if settings.announce else None
    return Rollout(registry, None, announcer, settings.signing_key, settings.public_url)


def init_app(app: Flask, rollout: Rollout) -> None:
    """Register the registry routes; every request first checks for a promotion elsewhere."""
    app.extensions[_EXTENSION] = rollout
    app.register_blueprint(models_api)
    follower = rollout.follower
    if follower is not None:
        app.before_request(lambda: follower.sync())
    app.register_error_handler(RegistryError, _registry_error)


def _rollout() -> Rollout:
    return cast(Rollout, current_app.extensions[_EXTENSION])


def _registry_error(exc: RegistryError) -> tuple[Response, int]:
    code = {404: "not_found", 409: "conflict"}.get(exc.status, "registry_error")
    logger.warning("registry refused %s %s: %s", request.method, request.path, exc)
    return jsonify(error=code, message=str(exc)), exc.status


@models_api.get(wire.ROUTE_MODELS)
@require_scope("device", "gateway", "admin")
def list_models() -> Any:
    registry = _rollout().registry
    current = registry.current()
    return jsonify(current=current.to_dict() if current else None, models=registry.listing())


@models_api.get(f"{wire.ROUTE_MODELS}/current")
@require_scope("device", "gateway", "admin")
def current_model() -> Any:
    rollout = _rollout()
    current = rollout.registry.current()
    if current is None:
        raise RegistryError("no model version has been promoted yet", status=404)
    return jsonify(
        announcement=_as_dict(rollout.announcement(current, request.host_url)),
        highest=current.highest,
        history=list(current.history),
    )


@models_api.get(f"{wire.ROUTE_MODELS}/<int:version>/<file>")
@require_scope("device", "gateway", "admin")
def model_file(version: int, file: str) -> Any:
    return _send(version, None, file)


@models_api.get(f"{wire.ROUTE_MODELS}/<int:version>/rollback-of/<int:newest>/<file>")
@require_scope("device", "gateway", "admin")
def rollback_file(version: int, newest: int, file: str) -> Any:
    return _send(version, newest, file)


def _send(version: int, rollback_of: int | None, file: str) -> Any:
    root = _rollout().registry.release_dir(version, rollback_of)
    if file not in (MANIFEST, SIGNATURE):
        manifest = load_bundle(root, tiers=()).manifest
        tier = next((p.tier for p in manifest.partitions if file in (name for name, _ in p.files)), None)
        if tier is None:
            raise RegistryError(f"release has no file {file!r}", status=404)
        scope = current_token().scope
        if tier not in _TIERS_BY_SCOPE.get(scope, ()):
            raise ScopeError(f"a {scope} token cannot download the {tier} partition")
    mimetype = "application/json" if file == MANIFEST else "application/octet-stream"
    response = send_file(root / file, mimetype=mimetype, conditional=False, etag=False, max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response


@models_api.post(f"{wire.ROUTE_MODELS}/<int:version>/promote")
@require_scope("admin")
def promote(version: int) -> Any:
    return _released(_rollout().registry.promote(version))


@models_api.post(f"{wire.ROUTE_MODELS}/rollback")
@require_scope("admin")
def rollback() -> Any:
    return _released(_rollout().registry.rollback())


def _released(release: Release) -> Any:
    """Swap this process to ``release``, then announce it; the answer says whether that worked."""
    try:
        return jsonify(_rollout().release(release, request.host_url))
    except RegistryError as exc:
        if exc.status != 500:
            raise
        raise InternalServerError(str(exc)) from None


def _as_dict(announcement: Announcement) -> dict[str, Any]:
    return dataclasses.asdict(announcement)
