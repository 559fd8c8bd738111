"""Flask app factory for the cloud service.

``create_app(config)`` loads and verifies the bundle, opens the token store, registers the
API, enrolment and learning-loop blueprints and answers every error as JSON:
``{"error": <code>, "message": <text>}`` with a 4xx/5xx status (401 with
``WWW-Authenticate: Bearer`` for a bad credential, 403 for one outside its scope).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from cloud_service import auth, enroll, learning
from cloud_service.auth import require_scope
from cloud_service.config import CloudConfig
from cloud_service.inference import CloudInference
from cloud_service.scheduler import Launcher, spawn_job_process
from cloud_service.tokens import TokenStore
from device_sdk import serving, wire
from device_sdk.bundle import load_bundle
from device_sdk.errors import AuthError, EdgeCascadeError, ScopeError

logger = logging.getLogger(__name__)
api = Blueprint("api", __name__)


def create_app(
    config: CloudConfig | None = None,
    *,
    inference: CloudInference | None = None,
    tokens: TokenStore | None = None,
    launcher: Launcher = spawn_job_process,
) -> Flask:
    """Build the app; ``inference`` and ``tokens`` may be injected, else they come from the config.

    ``launcher`` starts retraining job processes (tests inject one that starts nothing).
    """
    config = config or CloudConfig()
    app = Flask("cloud_service")
    app.config["MAX_CONTENT_LENGTH"] = config.cloud.max_body_bytes
    if inference is None:
        bundle = load_bundle(config.cloud.bundle, tiers=("cloud",), public_key=config.cloud.verify_key)
        inference = CloudInference(bundle)
    app.extensions["edgecascade"] = inference
    auth.init_app(app, tokens or TokenStore(config.cloud.token_store))
    enroll.init_app(app, config.cloud)
    learning.init_app(app, config, inference, launcher)
    app.register_blueprint(api)
    app.register_error_handler(AuthError, _auth_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _inference() -> CloudInference:
    inference: CloudInference = current_app.extensions["edgecascade"]
    return inference


def _json_error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error=code, message=message), status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    _inference().counters.add(f"http_{status}")
    return _json_error(status, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")


def _auth_error(exc: AuthError) -> tuple[Response, int]:
    status = 403 if isinstance(exc, ScopeError) else 401
    _inference().counters.add(f"http_{status}")
    logger.warning("refused %s %s: %s", request.method, request.path, exc)
    response, _ = _json_error(status, "forbidden" if status == 403 else "unauthorized", str(exc))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="edgecascade"'
    return response, status


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("unexpected error")
    _inference().counters.add("http_500")
    return _json_error(500, "internal", "internal error")


@api.post(wire.ROUTE_INFER)
@require_scope("gateway", "device")
def infer() -> Any:
    inference = _inference()
    payload = request.get_data(cache=False)
    auth.check_device_identity(payload, auth.current_token())
    inference.counters.add("requests")
    inference.counters.add("bytes_in", len(payload))
    try:
        reply = inference.infer(payload)
    except EdgeCascadeError as exc:
        code = serving.error_code(exc)
        inference.counters.add(f"rejected_{code.name.lower()}")
        logger.warning("rejected inference request: %s", exc)
        return _json_error(int(code), code.name.lower(), str(exc))
    return Response(reply, status=200, content_type=wire.CONTENT_TYPE)


@api.get(wire.ROUTE_HEALTH)
def healthz() -> Any:
    manifest = _inference().bundle.manifest
    return jsonify(status="ok", model=manifest.name, version=manifest.version)


@api.get(wire.ROUTE_METRICS)
@require_scope("admin")
def metrics() -> Any:
    return jsonify(dict(_inference().counters))
