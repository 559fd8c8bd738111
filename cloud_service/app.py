"""Flask app factory for the cloud service.

``create_app(config)`` loads and verifies the bundle, registers the API blueprint and
answers every error as JSON: ``{"error": <code>, "message": <text>}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from cloud_service.config import CloudConfig
from cloud_service.inference import CloudInference
from device_sdk import serving, wire
from device_sdk.bundle import load_bundle
from device_sdk.errors import EdgeCascadeError

logger = logging.getLogger(__name__)
api = Blueprint("api", __name__)


def create_app(config: CloudConfig | None = None, *, inference: CloudInference | None = None) -> Flask:
    """Build the app; ``inference`` may be injected (tests), else it is loaded from the bundle."""
    config = config or CloudConfig()
    app = Flask("cloud_service")
    app.config["MAX_CONTENT_LENGTH"] = config.cloud.max_body_bytes
    if inference is None:
        inference = CloudInference(load_bundle(config.cloud.bundle, tiers=("cloud",)))
    app.extensions["edgecascade"] = inference
    app.register_blueprint(api)
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


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("unexpected error")
    _inference().counters.add("http_500")
    return _json_error(500, "internal", "internal error")


@api.post(wire.ROUTE_INFER)
def infer() -> Any:
    inference = _inference()
    payload = request.get_data(cache=False)
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


@api.get("/v1/metrics")
def metrics() -> Any:
    return jsonify(dict(_inference().counters))
