"""Flask app factory for the cloud service.

``create_app(config)`` loads and verifies the bundle (with ``[registry]``: the registry's
current release), opens the token store, registers the API, enrolment, learning-loop,
model-registry and dashboard blueprints (with ``retrain.auto_promote``, a succeeded retraining job's
candidate is promoted and announced by the process that started the job) and answers
every error as JSON:
``{"error": <code>, "message": <text>}`` with a 4xx/5xx status (401 with
``WWW-Authenticate: Bearer`` for a bad credential, 403 for one outside its scope).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from edgecascade.cloud_service import (
    auth,
    dashboard,
    drift_events,
    enroll,
    federation_api,
    learning,
    models_api,
    openapi,
    unknown_api,
    validation,
)
from edgecascade.cloud_service import metrics as cloud_metrics
from edgecascade.cloud_service import sites as site_overlays
from edgecascade.cloud_service.announce import Announcer, MqttAnnouncer
from edgecascade.cloud_service.auth import require_scope
from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.inference import CloudInference
from edgecascade.cloud_service.jobs import JobRow
from edgecascade.cloud_service.registry import ModelRegistry
from edgecascade.cloud_service.scheduler import Launcher, spawn_job_process
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.errors import AuthError, EdgeCascadeError, ScopeError
from edgecascade.device_sdk.logs import LogLimiter
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.signing import PublicKeySource, load_private_key

logger = logging.getLogger(__name__)
api = Blueprint("api", __name__)
_LOG_LIMITER = "edgecascade.log_limiter"


def create_app(
    config: CloudConfig | None = None,
    *,
    inference: CloudInference | None = None,
    tokens: TokenStore | None = None,
    announcer: Announcer | None = None,
    launcher: Launcher = spawn_job_process,
) -> Flask:
    """Build the app; ``inference``, ``tokens`` and ``announcer`` may be injected, else the config says.

    ``launcher`` starts retraining job processes (tests inject one that starts nothing).
    """
    config = config or CloudConfig()
    app = Flask("cloud_service", static_folder=None)  # an API: no /static/<path> route
    validation.bound_url_parameters(app)  # before any route: no path value reaches the database unbounded
    app.config["MAX_CONTENT_LENGTH"] = config.cloud.max_body_bytes
    registry = open_registry(config) if config.registry.models_dir is not None else None
    if inference is None:
        if registry is not None:
            bundle = registry.current_bundle(("cloud",))
            assert bundle is not None  # open_registry() made sure there is a current release
        else:
            bundle = load_bundle(config.cloud.bundle, tiers=("cloud",), public_key=config.cloud.verify_key)
        inference = CloudInference(bundle, grace=config.registry.grace)
    app.extensions["edgecascade"] = inference
    auth.init_app(app, tokens or TokenStore(config.cloud.token_store))
    enroll.init_app(app, config.cloud)
    learning_loop = learning.init_app(app, config, inference, launcher)
    site_overlays.init_app(app, config, learning_loop)  # per-site exit thresholds, fitted and signed
    drift_events.init_app(app, lambda: learning_loop.store.engine)  # the devices' drift alarms
    dashboard.init_app(app, learning_loop, inference)  # the operator's page and the fleet API
    if registry is not None:
        if announcer is None and config.registry.announce:
            announcer = MqttAnnouncer(config.mqtt, config.registry.announce_timeout)
        follower = models_api.RegistryFollower(registry, inference, config.registry.check_interval)
        rollout = models_api.Rollout(
            registry, follower, announcer, config.registry.signing_key, config.registry.public_url
        )
        models_api.init_app(app, rollout)
        if config.retrain.auto_promote:
            base_url = own_url(config)

            def promote(job: JobRow) -> None:
                if job.candidate_version is not None:
                    rollout.promote_candidate(job.candidate_version, base_url)

            learning_loop.on_job_succeeded = promote
    app.register_blueprint(api)
    cloud_metrics.init_app(app, config)  # GET /metrics: Prometheus text, admin token
    unknown_api.init_app(app)  # groups of unknown uploads, named as new classes (and their gauges)
    federation_api.init_app(app)  # collaborative training's runs and rounds (and their metrics)
    app.extensions[_LOG_LIMITER] = LogLimiter(logger)  # refusals a flood could repeat at will
    openapi.init_app(app)  # GET /openapi.json, open like /healthz
    app.register_error_handler(AuthError, _auth_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def own_url(config: CloudConfig) -> str:
    """This cloud's URL from its own settings: the announced download base unless ``registry.public_url``."""
    scheme = "https" if config.cloud.tls_cert is not None else "http"
    return f"{scheme}://{config.cloud.host}:{config.cloud.port}"


def open_registry(config: CloudConfig) -> ModelRegistry:
    """The model registry; on first start it registers and promotes ``cloud.bundle``."""
    settings = config.registry
    assert settings.models_dir is not None
    public_key: PublicKeySource
    if config.cloud.verify_key is not None:
        public_key = config.cloud.verify_key
    else:  # CloudConfig made sure one of the two keys is set
        assert settings.signing_key is not None
        public_key = load_private_key(settings.signing_key).public_key()
    registry = ModelRegistry(settings.models_dir, public_key, settings.signing_key)
    registry.adopt(config.cloud.bundle)
    return registry


def _inference() -> CloudInference:
    inference: CloudInference = current_app.extensions["edgecascade"]
    return inference


def _log_limited(level: int, key: tuple[str, ...], msg: str, *args: object, exc_info: bool = False) -> None:
    """Log unless ``key`` logged its share of this minute (the counters keep every one)."""
    limiter: LogLimiter = current_app.extensions[_LOG_LIMITER]
    limiter.log(level, key, msg, *args, exc_info=exc_info)


def _json_error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error=code, message=message), status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    _inference().counters.add(f"http_{status}")
    response, _ = _json_error(status, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")
    for name, value in exc.get_headers():  # e.g. the Allow of a 405, which RFC 9110 requires
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, status


def _auth_error(exc: AuthError) -> tuple[Response, int]:
    status = 403 if isinstance(exc, ScopeError) else 401
    _inference().counters.add(f"http_{status}")
    _log_limited(
        logging.WARNING,
        ("refused", str(status), request.remote_addr or "?"),
        "refused %s %s: %s",
        request.method,
        request.path[:200],
        exc,
    )
    response, _ = _json_error(status, "forbidden" if status == 403 else "unauthorized", str(exc))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="edgecascade"'
    return response, status


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    """The safety net: an exception no view turned into a 4xx is a bug, but still a JSON 500
    (never an HTML traceback), logged with its traceback and counted ``http_500``."""
    _log_limited(
        logging.ERROR,
        ("unexpected", request.path[:200]),
        "unexpected error in %s %s",
        request.method,
        request.path[:200],
        exc_info=True,
    )
    _inference().counters.add("http_500")
    return _json_error(500, "internal", "internal error")


@api.post(wire.ROUTE_INFER)
@require_scope("gateway", "device")
def infer() -> Any:
    inference = _inference()
    started = time.perf_counter()
    payload = validation.read_body()  # 413 beyond cloud.max_body_bytes, chunked or not
    inference.counters.add("requests")
    inference.counters.add("bytes_in", len(payload))
    try:
        envelope = wire.envelope_from_bytes(payload)  # the only parse of this request
        auth.check_device_identity(envelope.header, auth.current_token())
        decoded = time.perf_counter()
        inference.counters.observe("decode", decoded - started)
        reply = inference.infer(envelope)
        inference.counters.observe("inference", time.perf_counter() - decoded)
        dashboard.saw_device(envelope.header.device_id, auth.current_token())
    except AuthError:
        raise  # answered 401/403 by its handler
    except EdgeCascadeError as exc:
        code = serving.error_code(exc)
        inference.counters.add(f"rejected_{code.name.lower()}")
        token = auth.current_token()
        _log_limited(
            logging.WARNING,
            ("rejected", code.name.lower(), token.name),
            "rejected inference request from %s: %s",
            token.name,
            exc,
        )
        return _json_error(int(code), code.name.lower(), str(exc))
    body = wire.envelope_to_bytes(reply)
    inference.counters.add("bytes_out", len(body))
    inference.counters.observe("total", time.perf_counter() - started)
    return Response(body, status=200, content_type=wire.CONTENT_TYPE)


@api.get(wire.ROUTE_HEALTH)
def healthz() -> Any:
    manifest = _inference().bundle.manifest
    return jsonify(status="ok", model=manifest.name, version=manifest.version)


@api.get(wire.ROUTE_METRICS)
@require_scope("admin")
def metrics() -> Any:
    return jsonify(_inference().counters.snapshot())
