"""The cloud API's OpenAPI 3.1 description, served without a token at ``GET /openapi.json``.

:func:`build_spec` describes every route the app can register: the path items of
:mod:`edgecascade.cloud_service.openapi_paths`, the components of
:mod:`edgecascade.cloud_service.openapi_schemas`. A test compares the described paths with
``app.url_map`` both ways, and a schemathesis run checks the live app's answers against
it. The document a cloud serves (:func:`openapi_document`) lists only the routes that app
registered: without ``registry.models_dir`` there are no model-registry routes.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

from edgecascade.cloud_service import openapi_schemas as components
from edgecascade.cloud_service.openapi_paths import ROUTE_OPENAPI, paths

OPENAPI_VERSION = "3.1.0"
SCOPES = {
    "device": "a device calling directly (its own envelopes and hard examples only)",
    "gateway": "a gateway forwarding for the devices of its site",
    "admin": "an operator: metrics, fleet, hard examples, labels, retraining, promotion and rollback",
    "enroll": "a one-time token that lets one named device enrol",
}

openapi_api = Blueprint("openapi", __name__)
_RULE_ARG = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def init_app(app: Flask) -> None:
    """Register ``GET /openapi.json``."""
    app.register_blueprint(openapi_api)


@openapi_api.get(ROUTE_OPENAPI)
def openapi_json() -> Any:
    return jsonify(openapi_document(current_app))


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``/v1/jobs/<int:job_id>`` → ``/v1/jobs/{job_id}``."""
    return _RULE_ARG.sub(r"{\1}", rule)


def registered_operations(app: Flask) -> set[tuple[str, str]]:
    """``(path, method)`` of every route of ``app``, in OpenAPI spelling (HEAD and OPTIONS left out)."""
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def openapi_document(app: Flask) -> dict[str, Any]:
    """The description of the routes ``app`` registered."""
    spec = build_spec()
    present = registered_operations(app)
    described = {}
    for path, item in spec["paths"].items():
        kept = {method: op for method, op in item.items() if (path, method) in present}
        if kept:
            described[path] = kept
    spec["paths"] = described
    return spec


def build_spec() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document, every route the app can register (a fresh dict each call)."""
    scopes = "; ".join(f"`{name}`: {text}" for name, text in SCOPES.items())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "EdgeCascade cloud API",
            "version": _version(),
            "description": 'Errors are JSON `{"error": <code>, "message": <text>}` with a 4xx/5xx status.',
        },
        "tags": [
            {"name": t} for t in ("meta", "inference", "enrolment", "learning", "models", "fleet", "sites")
        ],
        "paths": paths(),
        "components": {
            "schemas": components.schemas(),
            "responses": components.responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "ec_<token_id>.<secret>",
                    "description": f"One scope per token, named as a role in each security requirement. "
                    f"{scopes}.",
                }
            },
        },
    }


def _version() -> str:
    try:
        return importlib.metadata.version("edgecascade")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
