"""Device enrolment: a one-time token and the device's X25519 key in, its bearer token out.

An operator creates an enrolment token bound to one device id
(``edgecascade tokens create --scope enroll --name cam-01``; single use, expires after
24 h by default). The device posts ``{"device_id", "public_key", "key_id"}`` (raw X25519
key in base64; ``key_id`` its generation, default 1) with that token as its bearer
credential and receives its own ``device`` token, the gateways' X25519 public key and the
gateway name bound into the keys, from which both sides derive payload keys
(:mod:`edgecascade.device_sdk.wire.crypto`). The key is written to the
keyring directory in the gateways' layout. Spending the enrolment token, storing the key
and creating the device token happen in one store transaction, so a token cannot enrol
twice even when two workers race. Re-enrolling a device (a new token from the operator)
replaces its keys and revokes its old tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, ServiceUnavailable

from edgecascade.cloud_service.auth import current_token, require_scope, token_store
from edgecascade.cloud_service.config import CloudSettings
from edgecascade.cloud_service.keyring import DeviceKeyring, parse_x25519, raw_base64
from edgecascade.cloud_service.validation import json_body
from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import AuthError, ScopeError
from edgecascade.device_sdk.wire.crypto import MAX_KEY_ID, load_x25519_public

MAX_BODY_BYTES = 4096  # an enrolment request is ~120 bytes
ENROLL_SCHEMA = {
    "type": "object",
    "required": ["device_id", "public_key"],
    "additionalProperties": False,
    "properties": {
        "device_id": {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"},
        "public_key": {"type": "string", "minLength": 44, "maxLength": 44},
        "key_id": {"type": "integer", "minimum": 1, "maximum": MAX_KEY_ID},
    },
}

enroll_api = Blueprint("enroll", __name__)
_EXTENSION = "edgecascade.enroll"


@dataclass(frozen=True)
class Enrolment:
    """Where enrolled keys go and which gateway key devices get back (None: enrolment is off)."""

    keyring: DeviceKeyring
    gateway_key: X25519PublicKey | None
    gateway_name: str


def init_app(app: Flask, settings: CloudSettings) -> None:
    """Register the enrolment route; a configured gateway key that cannot be read is a ConfigError."""
    path = settings.gateway_public_key
    app.extensions[_EXTENSION] = Enrolment(
        DeviceKeyring(settings.device_keyring),
        load_x25519_public(path) if path is not None else None,
        settings.gateway_name,
    )
    app.register_blueprint(enroll_api)


@enroll_api.post(wire.ROUTE_ENROLL)
@require_scope("enroll")
def enroll() -> Any:
    enrolment = cast(Enrolment, current_app.extensions[_EXTENSION])
    if enrolment.gateway_key is None:
        raise ServiceUnavailable("enrolment is not configured on this cloud (set cloud.gateway_public_key)")
    request.max_content_length = MAX_BODY_BYTES
    body = json_body(ENROLL_SCHEMA)
    token = current_token()
    device_id = body["device_id"]
    if device_id != token.name:
        raise ScopeError(f"this enrolment token is for device {token.name!r}, not {device_id!r}")
    try:
        device_key = parse_x25519(body["public_key"])
    except ValueError as exc:
        raise BadRequest(f"invalid request body: $.public_key: {exc}") from None
    store = token_store()
    with store.transaction() as db:
        if not store.spend(token.token_id, db):
            raise AuthError(f"token {token.token_id} is used")
        store.revoke_named("device", device_id, db)
        enrolment.keyring.enrol(device_id, body.get("key_id", 1), device_key)
        device_token, info = store.create("device", device_id, db=db)
    return jsonify(
        device_id=device_id,
        key_id=body.get("key_id", 1),
        token=device_token,
        token_id=info.token_id,
        scope=info.scope,
        gateway_public_key=raw_base64(enrolment.gateway_key),
        gateway_name=enrolment.gateway_name,
    ), 201
