"""Per-site exit thresholds: fit a site's overlay from its audited examples, and hand it out.

Routes and scopes::

    POST /v1/sites/<site>/thresholds   admin                   fit, sign and store the overlay
    GET  /v1/sites/<site>/overlay      device, gateway, admin  ?version= (default: the served one)
    GET  /v1/sites/<site>/examples.npz the site's own token, admin  ?limit= (default 20000)

A site is the name of the token its hard examples were uploaded with (a gateway's, or a
device's own). The fit (:mod:`edgecascade.cloud_service.site_thresholds`) runs the served
bundle on the site's labelled audited raw inputs and needs at least ``min_examples`` of
them (400 with how many there are and how many are needed); it needs a model registry with
a signing key (409 otherwise), where the overlay is kept. Both answers carry the overlay
as an object and the exact bytes of its file and signature, which a node stores as they
are (``edgecascade site thresholds`` does) and verifies with the cloud's public key.

``examples.npz`` hands a site back the examples a person labelled for it, newest first,
with their raw inputs (:mod:`edgecascade.cloud_service.site_examples`): the labels its
collaborative training adds to its own data (``edgecascade site examples`` fetches them).
Only an admin or a token named after the site may read them: they are the site's inputs.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, Conflict, NotFound

from edgecascade.cloud_service import validation
from edgecascade.cloud_service.auth import current_token, require_scope
from edgecascade.cloud_service.config import CloudConfig
from edgecascade.cloud_service.learning import Learning
from edgecascade.cloud_service.site_examples import MAX_EXAMPLES, human_labelled, npz_bytes
from edgecascade.cloud_service.site_thresholds import (
    MIN_EXAMPLES,
    audited_examples,
    count_audited,
    fit_overlay,
    save_overlay,
    saved_overlay,
)
from edgecascade.cloud_service.unknown_groups import extended_classes
from edgecascade.device_sdk.errors import BundleError, ScopeError
from edgecascade.device_sdk.model.bundle import TIERS, load_bundle
from edgecascade.device_sdk.model.overlay import SITE_NAME

logger = logging.getLogger(__name__)

ROUTE_SITES = "/v1/sites"
MAX_MIN_EXAMPLES = 100_000
DEFAULT_EXAMPLES = 20_000
MAX_LOSS = 0.2  # largest accuracy an early exit may give up on what it answers, as a fraction
THRESHOLDS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_examples": {"type": "integer", "minimum": 1, "maximum": MAX_MIN_EXAMPLES},
        "max_loss": {"type": "number", "minimum": 0, "maximum": MAX_LOSS},
    },
}

sites_api = Blueprint("sites", __name__)
_EXTENSION = "edgecascade.sites"


class Sites:
    """What the routes need: the learning loop (examples, served bundle) and the registry's settings."""

    def __init__(self, config: CloudConfig, learning: Learning) -> None:
        self.config = config
        self.learning = learning


def init_app(app: Flask, config: CloudConfig, learning: Learning) -> None:
    """Register the site routes."""
    app.extensions[_EXTENSION] = Sites(config, learning)
    app.register_blueprint(sites_api)


def _sites() -> Sites:
    return cast(Sites, current_app.extensions[_EXTENSION])


def _site(site: str) -> str:
    if not SITE_NAME.fullmatch(site):
        raise BadRequest(f"a site name is 1-64 of [A-Za-z0-9_.-], got {site[:80]!r}")
    return site


def _answer(content: bytes, signature: bytes) -> dict[str, Any]:
    return {
        "overlay": json.loads(content),
        "file": content.decode("ascii"),
        "signature": signature.decode("ascii"),
    }


def _too_few(site: str, found: int, skipped: int, needed: int) -> str:
    unusable = f" ({skipped} more unusable)" if skipped else ""
    return (
        f"site {site!r} has {found} labelled audited examples with a raw input{unusable}; "
        f"at least {needed} are needed (keep an audit sample with raw inputs: "
        "[hard_examples] audit_rate and keep_raw)"
    )


@sites_api.post(f"{ROUTE_SITES}/<string(maxlength=64):site>/thresholds")
@require_scope("admin")
def fit_thresholds(site: str) -> Any:
    site = _site(site)
    body = validation.json_body(THRESHOLDS_SCHEMA) if request.content_length or request.mimetype else {}
    needed = int(body.get("min_examples", MIN_EXAMPLES))
    max_loss = float(body.get("max_loss", 0.0))
    state = _sites()
    registry = state.config.registry
    if registry.models_dir is None or registry.signing_key is None:
        raise Conflict("fitting site thresholds needs a model registry with a signing key ([registry])")
    store = state.learning.store
    found = count_audited(store, site)
    if found < needed:  # before any bundle is loaded or tensor read
        raise BadRequest(_too_few(site, found, 0, needed))
    served = state.learning.inference.bundle
    try:
        bundle = load_bundle(served.path, tiers=TIERS, public_key=state.config.cloud.verify_key)
    except BundleError as exc:
        raise Conflict(f"the served bundle cannot run every tier here: {exc}") from None
    manifest = bundle.manifest
    examples = audited_examples(store, site, manifest.input.shape, len(manifest.classes))
    if len(examples) < needed:
        raise BadRequest(_too_few(site, len(examples), examples.skipped, needed))
    overlay = fit_overlay(bundle, site, examples, max_loss=max_loss)
    path = save_overlay(registry.models_dir, overlay, registry.signing_key)
    logger.info(
        "site %s: exits %s for model v%d fitted on %d audited examples (%s)",
        site,
        {tier: spec.threshold for tier, spec in overlay.exits.items()},
        overlay.version,
        overlay.examples,
        path,
    )
    stored = saved_overlay(registry.models_dir, site, overlay.version)
    assert stored is not None  # just written
    return jsonify(_answer(*stored) | {"skipped": examples.skipped})


@sites_api.get(f"{ROUTE_SITES}/<string(maxlength=64):site>/overlay")
@require_scope("device", "gateway", "admin")
def get_overlay(site: str) -> Any:
    site = _site(site)
    state = _sites()
    problems: list[str] = []
    version = None
    raw = request.args.get("version")
    if raw:
        try:
            version = validation.bounded_int(1, 2**32 - 1)(raw)
        except ValueError as exc:
            problems.append(f"version: cannot read {raw[:40]!r} ({exc})")
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    if version is None:
        version = state.learning.inference.bundle.manifest.version
    models_dir = state.config.registry.models_dir
    stored = saved_overlay(models_dir, site, version) if models_dir is not None else None
    if stored is None:
        raise NotFound(f"no overlay for site {site!r} and model v{version}")
    return jsonify(_answer(*stored))


@sites_api.get(f"{ROUTE_SITES}/<string(maxlength=64):site>/examples.npz")
@require_scope("device", "gateway", "admin")
def get_examples(site: str) -> Any:
    site = _site(site)
    token = current_token()
    if token.scope != "admin" and token.name != site:
        raise ScopeError(f"the token of {token.name!r} cannot read the examples of site {site!r}")
    problems: list[str] = []
    limit = validation.query_arg(request.args, "limit", validation.bounded_int(1, MAX_EXAMPLES), problems)
    if problems:
        raise BadRequest("invalid query: " + "; ".join(problems))
    learning = _sites().learning
    manifest = learning.inference.bundle.manifest
    classes = extended_classes(learning.store.engine, manifest.classes)
    examples = human_labelled(
        learning.store, site, manifest.input.shape, len(classes), limit or DEFAULT_EXAMPLES
    )
    logger.info(
        "site %s: handed out %d labelled examples (%d unusable) to %s %s",
        site,
        len(examples),
        examples.skipped,
        token.scope,
        token.name,
    )
    return Response(
        npz_bytes(examples, classes),
        mimetype="application/octet-stream",
        headers={"Cache-Control": "no-store"},
    )
